"""The "lists" on-disk format: an image folder plus lists/{trn,val,tst}.csv.

    <datasets_dir>/<folder>/<images>/...           the image files
    <datasets_dir>/<folder>/lists/trn.csv          header with at least file_name,label
    <datasets_dir>/<folder>/lists/val.csv          optional: without it validation uses tst.csv
    <datasets_dir>/<folder>/lists/tst.csv          optional: without it there is no test split

`file_name` is relative to the image folder. Labels (ints or strings) map to 0..K-1 in the sorted
order of trn.csv's unique labels (numeric order when every label is an integer).
Every problem the user can fix is raised as a one-line DataError that names the file.

Checked before training starts (data/splits.py's `load_lists`), each as one message that names
the CSV file, counts the offending rows and quotes the first few by line number (the header is line 1):
  - a missing image folder or trn.csv, no val.csv and no tst.csv, a list without rows;
  - a header without file_name or label, a row with another number of fields than the header,
    an empty file_name or label, the same file_name listed twice in one CSV;
  - a file_name that is absolute or leaves the image folder with `..` (accepted with
    `allow_outside_paths`);
  - val/tst labels that trn.csv does not have;
  - listed images that do not exist, are not regular files (a FIFO, device, socket or folder:
    never read, so nothing hangs), have more pixels than `--max_image_pixels` (read from the
    header, before decoding) or cannot be decoded (not an image, truncated, unreadable).
    Every image is decoded once, JPEGs at reduced scale (`Image.draft`, which still reads every
    scan, so a file cut short is caught), in a thread pool. With `skip_bad_images` those rows
    are dropped with a logged warning instead.

This module reads the list files and holds the datasets built from them; the image checks are
in data/image_checks.py, and data/splits.py builds checked splits from lists (`build_splits`, for
every source: data/formats.py, data/originals.py and data/torchvision_sets.py hand it their splits
as ListFiles without line numbers, `image_list`) and reads a lists-layout folder (`load_lists`).
"""
import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from data import DataError
from data.transforms import load_rgb
from errors import SHOWN, one_line, short

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("file_name", "label")
SPLIT_FILES = {"train": "trn.csv", "val": "val.csv", "test": "tst.csv"}


class ImageReadError(DataError):
    """An image that cannot be read at load time.

    Raised inside a DataLoader worker, it is rebuilt in the main process from a message that
    carries the worker's whole traceback; the constructor keeps only the original one line.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            message = last[len(prefix):] if last.startswith(prefix) else last
        super().__init__(message)


@dataclass
class ListFile:
    """The rows of one CSV list: image paths relative to the image folder, raw labels, and the
    line of the file each row came from (the header is line 1)."""
    path: str
    files: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    numbered: bool = True    # False: rows of a split file that is not a CSV (no line numbers)

    def __len__(self):
        return len(self.files)

    def row(self, line: int, text: str) -> str:
        """`text` about one row, prefixed with its line number when the rows have them."""
        return f"line {line}: {text}" if self.numbered else text


def image_list(source: str, files: Sequence[str], labels: Sequence) -> ListFile:
    """A ListFile for a split read from a dataset's own files (`source` names them)."""
    return ListFile(source, list(files), [str(x) for x in labels],
                    list(range(1, len(files) + 1)), numbered=False)


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset | None
    classes: list            # the original label values, in index order (index i <-> classes[i])
    val_is_test: bool        # True when val.csv is absent and validation uses the test split
    held_out: bool = False   # True when val was held out of the training split (--val_fraction)
    records: dict[str, str] = field(default_factory=dict)   # file name -> text, for the
                             # experiment folder: how the data was changed (data/holdout.py,
                             # data/label_noise.py)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def validation_split(self) -> str:
        """What validation read: "val" (a real validation split), "held_out" (part of the
        training split, --val_fraction) or "test" (the test split, for want of either)."""
        return "held_out" if self.held_out else "test" if self.val_is_test else "val"


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
        except Exception as e:   # PIL raises OSError, ValueError, ... for unreadable files
            raise ImageReadError(f"cannot read image {path} ({one_line(e)}); it was readable when "
                                 f"training started: replace the file or remove its row from the "
                                 f"list, then continue with --resume") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self):
        return f"ListsDataset({len(self)} images under {self.root})"


def rows_problem(csv_path: str, what: str, problems, fix: str) -> DataError:
    """One message for all offending rows of a list: count, the first few, and the fix."""
    shown = "; ".join(f"line {line}: {text}" for line, text in problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return DataError(f"{csv_path}: {len(problems)} {what} ({shown}{more}); {fix}")


def read_list(csv_path: str) -> ListFile:
    """Read one list CSV; raise DataError on a missing column, on malformed rows (another
    number of fields than the header, an empty file_name or label) or on a file_name listed
    twice, naming every offending row's line."""
    out = ListFile(csv_path)
    malformed, duplicates, first_line = [], [], {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{csv_path} is empty; it needs a header line with the columns "
                                f"file_name,label followed by one row per image")
            columns = [c.strip() for c in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                what = " or ".join(repr(c) for c in missing)
                raise DataError(f"{csv_path} has no {what} column (its header has: "
                                f"{', '.join(columns) or 'nothing'}); "
                                f"the header must name the columns file_name,label")
            i_file, i_label = columns.index("file_name"), columns.index("label")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue                       # blank or all-empty line
                line = reader.line_num
                extra = row[len(columns):]
                if len(row) < len(columns) or any(cell.strip() for cell in extra):
                    malformed.append((line, f"{len(row)} field{'s' * (len(row) != 1)}, the header "
                                            f"has {len(columns)}"))
                    continue
                name, label = row[i_file].strip(), row[i_label].strip()
                if not name or not label:
                    empty = " and ".join(c for c, v in (("file_name", name), ("label", label)) if not v)
                    malformed.append((line, f"empty {empty}"))
                    continue
                if name in first_line:
                    duplicates.append((line, f"{name} again (first at line {first_line[name]})"))
                    continue
                first_line[name] = line
                out.files.append(name)
                out.labels.append(label)
                out.lines.append(line)
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path} is not UTF-8 text ({e.reason}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{csv_path} is not a valid CSV file ({e}); fix its quoting") from None
    except OSError as e:
        raise DataError(f"cannot read {csv_path}: {e.strerror or e}") from None
    if malformed:
        raise rows_problem(csv_path, "malformed row(s)", malformed,
                            f"every row needs the header's {len(columns)} comma-separated fields "
                            f"({','.join(columns)}) with a non-empty file_name and label (quote "
                            f"a file_name that contains a comma): fix or remove those rows")
    if duplicates:
        raise rows_problem(csv_path, "duplicate row(s) list an image already listed", duplicates,
                            "list each image once: remove the repeated rows")
    return out


def _as_int(text: str) -> int | None:
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


def targets_of(listfile: ListFile, classes: list, train_csv: str) -> list[int]:
    """Class indices of `listfile`'s rows; DataError naming the rows whose label is unknown."""
    numeric = bool(classes) and isinstance(classes[0], int)
    index = {c: i for i, c in enumerate(classes)}
    targets, unknown = [], []
    for label, line in zip(listfile.labels, listfile.lines, strict=True):
        key = _as_int(label) if numeric else label
        if key not in index:
            unknown.append((label, line))
            continue
        targets.append(index[key])
    if unknown:
        labels = sorted({lab for lab, _ in unknown})
        first = f"{'line' if listfile.numbered else 'item'} {unknown[0][1]}"
        raise DataError(f"{listfile.path}: {len(unknown)} row(s) have labels that do not appear in "
                        f"{train_csv} ({short(labels)}; first at {first}); every "
                        f"class needs training images: add them to {os.path.basename(train_csv)} "
                        f"or remove those rows")
    return targets
