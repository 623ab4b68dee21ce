"""Dataset formats besides the named datasets: `--set CSVList | ImageFolder | CIFAR10 | CIFAR100`.
`get_data` sends the catalog entries of these formats here.

CSVList      --data DIR is one dataset folder in the lists layout:
                 DIR/images/...            the image files
                 DIR/lists/trn.csv         header with at least file_name,label (required)
                 DIR/lists/val.csv         optional (without it validation uses tst.csv)
                 DIR/lists/tst.csv         optional (without it there is no test split)
             read by data/splits.py's `load_lists`, with the same checks and messages.
ImageFolder  --data DIR holds one sub-folder per split, one class folder per class:
                 DIR/train/<class>/<image>     required; the classes are train's folder names,
                                               sorted as strings (torchvision's order)
                 DIR/val/<class>/<image>       optional, same fallbacks as the lists layout:
                 DIR/test/<class>/<image>      no val/ -> test/ used for validation (warning),
                                               no test/ -> no test split; one of them is needed
             A val/ or test/ class folder that train/ lacks is an error; a train class without
             val/test images is fine. The folders are read with torchvision.datasets.ImageFolder;
             the images then go through the checks of every source (data.splits.build_splits).
CIFAR10      --data DIR holds the extracted python version of the archive
CIFAR100         (DIR/cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta;
                 DIR/cifar-100-python/ with train, test, meta); DIR may also be that folder.
             Read by torchvision.datasets.CIFAR10 / CIFAR100, which accept only the official
             files (md5 sums): that check runs before anything is unpickled, so a doctored file
             cannot run code. Nothing is downloaded or extracted. There is no validation split:
             validation uses the test split (with a warning). Images stay 32x32: train
             RandomCrop(32, padding=4) + RandomHorizontalFlip + Normalize, eval Normalize only,
             with the dataset's own per-channel mean / std (`CIFAR_STATS`); --image_size must be
             32 when given and is set to 32 otherwise (by Config.parse, from the catalog).
"""
import copy
import logging
import os
from collections.abc import Sequence

import torch
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder, cifar
from torchvision.transforms import v2

from data import DataError
from data.catalog import DatasetInfo
from data.holdout import HoldOut, split_record, stratified_indices
from data.lists import DataSplits, image_list
from data.splits import build_splits, fallback_splits, load_lists
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from errors import one_line, short

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# normalisation


# Per-channel mean / std of the training images, on the [0, 1] scale.
CIFAR_STATS = {
    "CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "CIFAR100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_SIZE = 32


def normalisation(set_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that the transforms of `--set set_name` normalise with."""
    return CIFAR_STATS.get(set_name, (IMAGENET_MEAN, IMAGENET_STD))


def _to_tensor(set_name: str) -> list:
    mean, std = normalisation(set_name)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def cifar_train_transform(set_name: str) -> v2.Compose:
    return v2.Compose([v2.RandomCrop(CIFAR_SIZE, padding=4), v2.RandomHorizontalFlip(),
                       *_to_tensor(set_name)])


def cifar_eval_transform(set_name: str) -> v2.Compose:
    return v2.Compose(_to_tensor(set_name))


# ------------------------------------------------------------------------------------------------
# entry point


def load_format(cfg, info: DatasetInfo) -> DataSplits:
    """The DataSplits of `cfg.set` (a CSVList, ImageFolder or CIFAR entry) read from `cfg.data`."""
    readers = {"csvlist": _load_csvlist, "imagefolder": _load_imagefolder, "cifar": _load_cifar}
    return readers[info.format](cfg, info)


def _dataset_root(cfg, layout: str) -> str:
    root = cfg.data
    if not os.path.isdir(root):
        raise DataError(f"dataset folder not found: {root} (--set {cfg.set} reads --data DIR "
                        f"itself); {layout}")
    return root


# ------------------------------------------------------------------------------------------------
# CSVList


_CSVLIST_LAYOUT = ("it must hold images/ with the image files and lists/trn.csv (plus val.csv "
                   "and/or tst.csv) with the columns file_name,label")


def _load_csvlist(cfg, info: DatasetInfo) -> DataSplits:
    root = _dataset_root(cfg, _CSVLIST_LAYOUT)
    return load_lists(root, info.images, cfg.image_size, expected_classes=None, set_name=cfg.set,
                      skip_bad_images=cfg.skip_bad_images,
                      allow_outside_paths=cfg.allow_outside_paths, hold_out=HoldOut.of(cfg))


# ------------------------------------------------------------------------------------------------
# ImageFolder

_IMAGEFOLDER_LAYOUT = ("it must hold train/<class>/<images> and val/<class>/<images> and/or "
                       "test/<class>/<images>")


def _class_folders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class _FixedClassesFolder(ImageFolder):
    """An ImageFolder whose class indices are given (train's) instead of found in its own
    folder, so that val/ and test/ index classes exactly like train/ even when some are absent."""

    def __init__(self, root: str, classes: Sequence[str], **kwargs):
        self._given_classes = list(classes)
        super().__init__(root, **kwargs)

    def find_classes(self, directory):
        return list(self._given_classes), {c: i for i, c in enumerate(self._given_classes)}


def _image_folder(root: str, split: str, classes: Sequence[str], allow_empty: bool):
    """The images of `root/split` as an unnumbered ListFile (paths relative to `root`)."""
    folder = os.path.join(root, split)
    try:
        found = _FixedClassesFolder(folder, classes, allow_empty=allow_empty)
    except FileNotFoundError as error:         # a class folder without any image file
        raise DataError(f"{folder}: {one_line(error)}; every class folder needs at least one "
                        f"image") from None
    return image_list(folder, [os.path.relpath(path, root) for path, _ in found.samples],
                      [classes[target] for _, target in found.samples])


def _load_imagefolder(cfg, info: DatasetInfo) -> DataSplits:
    root = _dataset_root(cfg, _IMAGEFOLDER_LAYOUT)
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataError(f"training folder not found: {train_dir}; --set ImageFolder --data {root} "
                        f"needs {root}/train/<class>/<images> and {root}/val/ and/or "
                        f"{root}/test/ laid out the same way")
    classes = _class_folders(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; put each class's training images in "
                        f"{train_dir}/<class name>/")
    lists = {"train": _image_folder(root, "train", classes, allow_empty=False)}
    for split in ("val", "test"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            continue
        unknown = [c for c in _class_folders(folder) if c not in set(classes)]
        if unknown:
            raise DataError(f"{folder} has class folder(s) that {train_dir} lacks "
                            f"({short(unknown)}); every class needs training images: add "
                            f"them to train/ or remove those folders")
        lists[split] = _image_folder(root, split, classes, allow_empty=True)
        if not len(lists[split]):
            raise DataError(f"{folder} holds no images; add <class>/<image> files or delete "
                            f"the folder")
    if len(lists) == 1:
        raise DataError(f"neither {root}/val/ nor {root}/test/ found; add at least one "
                        f"(validation uses test/ when val/ is absent)")
    return build_splits(root, lists, cfg.image_size, order=classes, set_name=cfg.set,
                        skip_bad_images=cfg.skip_bad_images,
                        no_val=f"{root}/val/ not found", no_test=f"{root}/test/ not found",
                        hold_out=HoldOut.of(cfg))


# ------------------------------------------------------------------------------------------------
# CIFAR

CIFAR_CLASSES = {"CIFAR10": CIFAR10, "CIFAR100": CIFAR100}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _cifar_root(root: str, cls) -> str:
    """The folder that holds cls.base_folder: `root`, or its parent when `root` is that folder."""
    if not os.path.isdir(os.path.join(root, cls.base_folder)) and \
            os.path.basename(os.path.normpath(root)) == cls.base_folder:
        return os.path.dirname(os.path.normpath(root))
    return root


def _check_cifar_files(root: str, set_name: str, cls):
    """DataError naming the missing files or the files that are not the official ones."""
    folder = os.path.join(root, cls.base_folder)
    archive = os.path.join(root, cls.filename)
    if not os.path.isdir(folder):
        if os.path.isfile(archive):
            raise DataError(f"--set {set_name}: found {archive} but not its extracted folder "
                            f"{folder}/; extract it first: tar -xzf {archive} -C {root}")
        raise DataError(f"--set {set_name}: {folder}/ not found; download the python version "
                        f"({cls.filename}) from {CIFAR_URL}, extract it in {root} (or pass "
                        f"--data with the folder that holds {cls.base_folder}/); nothing is "
                        f"downloaded here")
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [name for name, _ in files if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DataError(f"--set {set_name}: {', '.join(missing)} missing in {folder}/; the "
                        f"python version of the archive ({cls.filename} from {CIFAR_URL}) has "
                        f"{', '.join(name for name, _ in files)}")
    altered = [name for name, md5 in files if not cifar.check_integrity(os.path.join(folder, name), md5)]
    if altered:
        raise DataError(f"--set {set_name}: {short(altered)} in {folder}/ are not the official "
                        f"files (md5 sum differs; a modified or partial copy is refused, so that "
                        f"no foreign pickle is ever loaded); download {cls.filename} again from "
                        f"{CIFAR_URL}, or convert your copy to the lists layout (--set CSVList)")


def _check_cifar_image_size(cfg):
    """CIFAR trains at its own 32x32 (Config.parse sets it; a configuration made otherwise,
    e.g. a hand-edited settings.json, is refused rather than changed)."""
    if cfg.image_size != CIFAR_SIZE:
        raise DataError(f"argument --image_size: --set {cfg.set} has {CIFAR_SIZE}x{CIFAR_SIZE} "
                        f"images and is trained at that size; pass --image_size {CIFAR_SIZE} or "
                        f"drop the flag")


def _load_cifar(cfg, info: DatasetInfo) -> DataSplits:
    _check_cifar_image_size(cfg)
    cls = CIFAR_CLASSES[cfg.set]
    root = _cifar_root(cfg.data, cls)
    _check_cifar_files(root, cfg.set, cls)
    train = cls(root, train=True, transform=cifar_train_transform(cfg.set))
    test = cls(root, train=False, transform=cifar_eval_transform(cfg.set))
    where = os.path.join(root, cls.base_folder)
    log.info("--set %s: %d training and %d test images of %d classes from %s",
             cfg.set, len(train), len(test), len(train.classes), where)
    built, record = {"test": test}, None
    hold_out = HoldOut.of(cfg)
    if hold_out is not None:
        train, built["val"], record = _cifar_hold_out(train, hold_out, cfg.set)
    return fallback_splits(train, built, train.classes,
                           f"{cfg.set} has no validation split (official: train / test)",
                           f"{where} has no test batch", record)


def _cifar_hold_out(train, hold_out: HoldOut, set_name: str):
    """(remaining training images, held-out validation images with the evaluation transform,
    the val_split.csv text); both share the training batches' arrays."""
    kept, held = stratified_indices(train.targets, hold_out, f"--set {set_name}'s training batches")
    record = split_record(kept, held, None, [train.classes[t] for t in train.targets])

    def part(indices, transform):
        dataset = copy.copy(train)
        dataset.data = train.data[indices]
        dataset.targets = [train.targets[i] for i in indices]
        dataset.transform = transform
        return dataset
    return part(kept, train.transform), part(held, cifar_eval_transform(set_name)), record
