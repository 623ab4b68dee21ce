"""The "lists" on-disk format: an image folder plus lists/{trn,val,tst}.csv.

    <datasets_dir>/<folder>/<images>/...           the image files
    <datasets_dir>/<folder>/lists/trn.csv          header with at least file_name,label
    <datasets_dir>/<folder>/lists/val.csv          optional: without it validation uses tst.csv
    <datasets_dir>/<folder>/lists/tst.csv          optional: without it there is no test split

`file_name` is relative to the image folder. Labels (ints or strings) map to 0..K-1 in the sorted
order of trn.csv's unique labels (numeric order when every label is an integer).
Every problem the user can fix is raised as a one-line UserError that names the file.
"""
import csv
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from torch.utils.data import Dataset

from data.transforms import eval_transform, load_rgb, train_transform
from utils.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("file_name", "label")
SPLIT_FILES = {"train": "trn.csv", "val": "val.csv", "test": "tst.csv"}
_SHOWN = 3          # how many offending rows an error message quotes


@dataclass
class ListFile:
    """The rows of one CSV list: image paths relative to the image folder, raw labels, and the
    line of the file each row came from (the header is line 1)."""
    path: str
    files: List[str] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)
    lines: List[int] = field(default_factory=list)

    def __len__(self):
        return len(self.files)


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Optional[Dataset]
    classes: list            # the original label values, in index order (index i <-> classes[i])
    val_is_test: bool        # True when val.csv is absent and validation uses the test split

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ListsDataset(Dataset):
    """(image tensor, class index) pairs read from `root/<file_name>`."""

    def __init__(self, root: str, files: Sequence[str], targets: Sequence[int], transform=None):
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        self.root = root
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    def __getitem__(self, index: int):
        path = self.path(index)
        try:
            img = load_rgb(path)
        except (OSError, ValueError) as e:   # PIL raises these for unreadable / truncated files
            raise UserError(f"cannot read image {path}: {e}; replace the file or remove its row "
                            f"from the list") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self):
        return f"ListsDataset({len(self)} images under {self.root})"


def _short(items, n=_SHOWN) -> str:
    items = list(items)
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")


def read_list(csv_path: str) -> ListFile:
    """Read one list CSV; raise UserError on a missing column or an empty cell."""
    out = ListFile(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(f"{csv_path} is empty; it needs a header line with the columns "
                                f"file_name,label followed by one row per image")
            columns = [c.strip() for c in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                what = " or ".join(repr(c) for c in missing)
                raise UserError(f"{csv_path} has no {what} column (its header has: "
                                f"{', '.join(columns) or 'nothing'}); "
                                f"the header must name the columns file_name,label")
            i_file, i_label = columns.index("file_name"), columns.index("label")
            width = max(i_file, i_label) + 1
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue                       # blank or all-empty line
                line = reader.line_num
                if len(row) < width:
                    raise UserError(f"{csv_path} line {line} has {len(row)} fields but the header "
                                    f"has {len(columns)}; fix that row")
                name, label = row[i_file].strip(), row[i_label].strip()
                if not name or not label:
                    what = "file_name" if not name else "label"
                    raise UserError(f"{csv_path} line {line} has an empty {what}; fill it in or "
                                    f"remove the row")
                out.files.append(name)
                out.labels.append(label)
                out.lines.append(line)
    except UnicodeDecodeError as e:
        raise UserError(f"{csv_path} is not UTF-8 text ({e.reason}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise UserError(f"{csv_path} is not a valid CSV file ({e}); fix its quoting") from None
    except OSError as e:
        raise UserError(f"cannot read {csv_path}: {e.strerror or e}") from None
    return out


def _as_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def class_order(raw_labels: Sequence[str]) -> list:
    """Sorted unique labels: ints in numeric order when every label is an integer, else strings."""
    as_ints = [_as_int(x) for x in raw_labels]
    if as_ints and all(v is not None for v in as_ints):
        return sorted(set(as_ints))
    return sorted(set(raw_labels))


def _targets(listfile: ListFile, classes: list, train_csv: str) -> List[int]:
    """Class indices of `listfile`'s rows; UserError naming the rows whose label is unknown."""
    numeric = bool(classes) and isinstance(classes[0], int)
    index = {c: i for i, c in enumerate(classes)}
    targets, unknown = [], []
    for label, line in zip(listfile.labels, listfile.lines):
        key = _as_int(label) if numeric else label
        if key not in index:
            unknown.append((label, line))
            continue
        targets.append(index[key])
    if unknown:
        labels = sorted({lab for lab, _ in unknown})
        raise UserError(f"{listfile.path}: {len(unknown)} row(s) have labels that do not appear in "
                        f"{train_csv} ({_short(labels)}; first at line {unknown[0][1]}); every "
                        f"class needs training images: add them to {os.path.basename(train_csv)} "
                        f"or remove those rows")
    return targets


def check_images(image_dir: str, lists: Sequence[ListFile]):
    """Every listed image must exist; one UserError counting and naming the missing ones."""
    report = []
    for lf in lists:
        missing = [(line, name) for name, line in zip(lf.files, lf.lines)
                   if not os.path.isfile(os.path.join(image_dir, name))]
        if missing:
            report.append((lf, missing))
    if not report:
        return
    lf, missing = report[0]
    shown = "; ".join(f"line {line}: {name}" for line, name in missing[:_SHOWN])
    more = "" if len(missing) <= _SHOWN else f"; and {len(missing) - _SHOWN} more"
    others = sum(len(m) for _, m in report[1:])
    elsewhere = (f" ({others} more missing in {', '.join(os.path.basename(r.path) for r, _ in report[1:])})"
                 if others else "")
    raise UserError(f"{lf.path}: {len(missing)} of {len(lf)} listed images do not exist under "
                    f"{image_dir} ({shown}{more}){elsewhere}; file_name must be relative to the "
                    f"image folder: fix the paths or restore the images")


def load_lists(dataset_dir: str, images: str, image_size: int, expected_classes: Optional[int] = None,
               set_name: str = "") -> DataSplits:
    """Read and validate a lists-format dataset folder and build its three splits."""
    image_dir = os.path.join(dataset_dir, images)
    lists_dir = os.path.join(dataset_dir, "lists")
    if not os.path.isdir(image_dir):
        raise UserError(f"image folder not found: {image_dir}; the dataset folder {dataset_dir} "
                        f"must hold the images in {images}/ (file_name in the lists is relative "
                        f"to it)")
    trn_path = os.path.join(lists_dir, SPLIT_FILES["train"])
    if not os.path.isfile(trn_path):
        raise UserError(f"training list not found: {trn_path}; create it with a header "
                        f"file_name,label and one row per training image (paths relative to "
                        f"{image_dir})")
    trn = read_list(trn_path)
    if len(trn) == 0:
        raise UserError(f"{trn_path} has a header but no rows; add one row per training image")

    optional = {}
    for split in ("val", "test"):
        path = os.path.join(lists_dir, SPLIT_FILES[split])
        if os.path.isfile(path):
            lf = read_list(path)
            if len(lf) == 0:
                raise UserError(f"{path} has a header but no rows; add rows or delete the file")
            optional[split] = lf
    if "val" not in optional and "test" not in optional:
        raise UserError(f"neither {SPLIT_FILES['val']} nor {SPLIT_FILES['test']} found in "
                        f"{lists_dir}; add at least one (validation uses tst.csv when val.csv "
                        f"is absent)")

    check_images(image_dir, [trn] + list(optional.values()))

    classes = class_order(trn.labels)
    train_tf, eval_tf = train_transform(image_size), eval_transform(image_size)
    train = ListsDataset(image_dir, trn.files, _targets(trn, classes, trn_path), train_tf)
    built = {split: ListsDataset(image_dir, lf.files, _targets(lf, classes, trn_path), eval_tf)
             for split, lf in optional.items()}
    if expected_classes is not None and len(classes) != expected_classes:
        what = f"{set_name} usually has" if set_name else "the configuration expects"
        log.warning("%s has %d classes but %s %d; using the %d classes found in the data",
                    trn_path, len(classes), what, expected_classes, len(classes))
    test = built.get("test")
    if "val" in built:
        val, val_is_test = built["val"], False
    else:
        log.warning("%s not found: validating on the test split (%s), so the best-validation "
                    "numbers are test numbers", os.path.join(lists_dir, SPLIT_FILES["val"]),
                    os.path.join(lists_dir, SPLIT_FILES["test"]))
        val, val_is_test = test, True
    if test is None:
        log.warning("%s not found: there is no test split; test accuracies are reported as 0",
                    os.path.join(lists_dir, SPLIT_FILES["test"]))
    return DataSplits(train=train, val=val, test=test, classes=classes, val_is_test=val_is_test)
