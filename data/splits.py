"""Checked splits from lists: `build_splits` runs the label and image checks of every source and
builds its datasets; `load_lists` reads a dataset folder in the lists layout (data/lists.py)."""
import logging
import os
from collections.abc import Sequence

from torch.utils.data import Dataset

from data import DataError
from data.cache import checked_decodes_keeper
from data.holdout import SPLIT_FILE, HoldOut, hold_out_list
from data.image_checks import check_images, check_paths
from data.lists import SPLIT_FILES, DataSplits, ListFile, ListsDataset, class_order, read_list, targets_of
from data.transforms import eval_transform, train_transform
from errors import short

log = logging.getLogger(__name__)


def fallback_splits(train: Dataset, built: dict[str, Dataset], classes: list, no_val: str,
                    no_test: str, held_out_record: str | None = None) -> DataSplits:
    """DataSplits from the train split and the val / test splits that exist.

    Without a validation split validation uses the test split (`val_is_test`, a warning that
    starts with `no_val`); without a test split there is none (test numbers are 0).
    `held_out_record`: the val split was held out of the training split (data/holdout.py), as
    that text of val_split.csv says."""
    test = built.get("test")
    if held_out_record is not None:
        log.info("validation: %d training images held out (--val_fraction), %d kept for training",
                 len(built["val"]), len(train))
        return DataSplits(train=train, val=built["val"], test=test, classes=list(classes),
                          val_is_test=False, held_out=True,
                          records={SPLIT_FILE: held_out_record})
    if "val" in built:
        val, val_is_test = built["val"], False
    else:
        log.warning("%s: validating on the test split instead, so the best-validation numbers "
                    "are test numbers", no_val)
        val, val_is_test = test, True
    if test is None:
        log.warning("%s: there is no test split; test accuracies are reported as 0", no_test)
    return DataSplits(train=train, val=val, test=test, classes=list(classes),
                      val_is_test=val_is_test)


def build_splits(image_dir: str, lists: dict[str, ListFile], image_size: int, *,
                 order: Sequence | None = None, expected_classes: int | None = None,
                 set_name: str = "", skip_bad_images: bool = False,
                 no_val: str = "no validation split", no_test: str = "no test split",
                 hold_out: HoldOut | None = None) -> DataSplits:
    """Check the splits of any source and build its datasets: one code path for every format.

    `lists` maps "train" (required) and "val" / "test" (optional, one of them required) to
    their rows. Labels of val / test must be training labels; every image must decode (or,
    with `skip_bad_images`, its row is dropped with a warning). The classes are the training
    labels, in the order of `order` (the dataset's official class order) when given, else
    sorted (`class_order`). `hold_out`: the validation split is held out of the training
    rows (refused when `lists` has a "val" split)."""
    trn, record = lists["train"], None
    if hold_out is not None:
        if "val" in lists:
            raise DataError(f"--val_fraction: {lists['val'].path} is a validation split already; "
                            f"drop --val_fraction (it holds validation out of the training split "
                            f"of a dataset that has none)")
        trn, held, record = hold_out_list(trn, hold_out)
        lists = {**lists, "train": trn, "val": held}
    optional = {split: lists[split] for split in ("val", "test") if split in lists}

    def classes_of(labels):
        present = set(labels)
        return [c for c in order if c in present] if order is not None else class_order(labels)

    classes = classes_of(trn.labels)
    for lf in optional.values():                  # cheap checks first, before decoding images
        targets_of(lf, classes, trn.path)
    listed_labels = set(trn.labels)
    keeper = checked_decodes_keeper(image_dir, trn, list(optional.values()), image_size)
    checked = check_images(image_dir, [trn] + list(optional.values()), skip=skip_bad_images,
                           keeper=keeper)
    trn, optional = checked[0], dict(zip(optional, checked[1:], strict=True))
    lost = sorted(listed_labels - set(trn.labels))
    if lost:
        raise DataError(f"{trn.path}: --skip_bad_images dropped every training image of label(s) "
                        f"{short(lost)}; replace those images, or remove the label's rows from "
                        f"every list")

    classes = classes_of(trn.labels)
    train_tf, eval_tf = train_transform(image_size), eval_transform(image_size)
    train = ListsDataset(image_dir, trn.files, targets_of(trn, classes, trn.path), train_tf)
    built = {split: ListsDataset(image_dir, lf.files, targets_of(lf, classes, trn.path), eval_tf)
             for split, lf in optional.items()}
    if expected_classes is not None and len(classes) != expected_classes:
        what = f"{set_name} usually has" if set_name else "the configuration expects"
        log.warning("%s has %d classes but %s %d; using the %d classes found in the data",
                    trn.path, len(classes), what, expected_classes, len(classes))
    return fallback_splits(train, built, classes, no_val, no_test, record)


def load_lists(dataset_dir: str, images: str, image_size: int, expected_classes: int | None = None,
               set_name: str = "", skip_bad_images: bool = False,
               allow_outside_paths: bool = False, hold_out: HoldOut | None = None) -> DataSplits:
    """Read and validate a lists-format dataset folder and build its three splits.

    With `skip_bad_images`, rows whose image is missing or unreadable are dropped (a warning
    counts them) instead of failing; `allow_outside_paths` accepts absolute file_names and
    file_names that leave the image folder with `..`; `hold_out` as in build_splits."""
    image_dir = os.path.join(dataset_dir, images)
    lists_dir = os.path.join(dataset_dir, "lists")
    if not os.path.isdir(image_dir):
        raise DataError(f"image folder not found: {image_dir}; the dataset folder {dataset_dir} "
                        f"must hold the images in {images}/ (file_name in the lists is relative "
                        f"to it)")
    trn_path = os.path.join(lists_dir, SPLIT_FILES["train"])
    if not os.path.isfile(trn_path):
        raise DataError(f"training list not found: {trn_path}; create it with a header "
                        f"file_name,label and one row per training image (paths relative to "
                        f"{image_dir})")
    lists = {"train": read_list(trn_path)}
    if len(lists["train"]) == 0:
        raise DataError(f"{trn_path} has a header but no rows; add one row per training image")
    for split in ("val", "test"):
        path = os.path.join(lists_dir, SPLIT_FILES[split])
        if os.path.isfile(path):
            lf = read_list(path)
            if len(lf) == 0:
                raise DataError(f"{path} has a header but no rows; add rows or delete the file")
            lists[split] = lf
    if len(lists) == 1:
        raise DataError(f"neither {SPLIT_FILES['val']} nor {SPLIT_FILES['test']} found in "
                        f"{lists_dir}; add at least one (validation uses tst.csv when val.csv "
                        f"is absent)")
    if not allow_outside_paths:
        check_paths(lists.values(), image_dir)
    return build_splits(image_dir, lists, image_size, expected_classes=expected_classes,
                        set_name=set_name, skip_bad_images=skip_bad_images,
                        no_val=f"{os.path.join(lists_dir, SPLIT_FILES['val'])} not found",
                        no_test=f"{os.path.join(lists_dir, SPLIT_FILES['test'])} not found",
                        hold_out=hold_out)
