"""The "lists" on-disk format: an image folder plus lists/{trn,val,tst}.csv.

    <datasets_dir>/<folder>/<images>/...           the image files
    <datasets_dir>/<folder>/lists/trn.csv          header with at least file_name,label
    <datasets_dir>/<folder>/lists/val.csv          optional: without it validation uses tst.csv
    <datasets_dir>/<folder>/lists/tst.csv          optional: without it there is no test split

`file_name` is relative to the image folder. Labels (ints or strings) map to 0..K-1 in the sorted
order of trn.csv's unique labels (numeric order when every label is an integer).
Every problem the user can fix is raised as a one-line DataError that names the file.

Checked before training starts (`load_lists`), each as one message that names the CSV file, counts
the offending rows and quotes the first few by line number (the header is line 1):
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

`build_splits` does the label and image checks and builds the datasets for every other source
too (data/formats.py, data/originals.py, data/torchvision_sets.py): they hand it their splits as
ListFiles without line numbers (`image_list`).
"""
import csv
import logging
import os
import re
import stat
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from errors import SHOWN, one_line, short
from data.transforms import eval_transform, load_rgb, to_rgb, train_transform
from data import DataError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("file_name", "label")
SPLIT_FILES = {"train": "trn.csv", "val": "val.csv", "test": "tst.csv"}
_PROBE_SIZE = (32, 32)  # JPEGs are checked decoded at the smallest DCT scale that is still this big
_PROBE_THREADS = 8


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
    files: List[str] = field(default_factory=list)
    labels: List[str] = field(default_factory=list)
    lines: List[int] = field(default_factory=list)
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
        except Exception as e:   # PIL raises OSError, ValueError, ... for unreadable files
            raise ImageReadError(f"cannot read image {path} ({one_line(e)}); it was readable when "
                                 f"training started: replace the file or remove its row from the "
                                 f"list, then continue with --resume") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self):
        return f"ListsDataset({len(self)} images under {self.root})"


def _rows_problem(csv_path: str, what: str, problems, fix: str) -> DataError:
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
        raise _rows_problem(csv_path, "malformed row(s)", malformed,
                            f"every row needs the header's {len(columns)} comma-separated fields "
                            f"({','.join(columns)}) with a non-empty file_name and label (quote "
                            f"a file_name that contains a comma): fix or remove those rows")
    if duplicates:
        raise _rows_problem(csv_path, "duplicate row(s) list an image already listed", duplicates,
                            "list each image once: remove the repeated rows")
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
    """Class indices of `listfile`'s rows; DataError naming the rows whose label is unknown."""
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
        first = f"{'line' if listfile.numbered else 'item'} {unknown[0][1]}"
        raise DataError(f"{listfile.path}: {len(unknown)} row(s) have labels that do not appear in "
                        f"{train_csv} ({short(labels)}; first at {first}); every "
                        f"class needs training images: add them to {os.path.basename(train_csv)} "
                        f"or remove those rows")
    return targets


def set_pixel_limit(max_pixels: int):
    """PIL's own decompression-bomb limit, for every later decode (DataLoader workers forked
    from this process inherit it). PIL warns above the limit and refuses above twice it; the
    warning is made an error so that nothing between the two is decoded either."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _open_regular(path: str):
    """The file at `path` opened for reading, or the reason it is not an image file. Opened
    non-blocking and checked with fstat, so a FIFO, device or socket is refused, never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except IsADirectoryError:
        return "is a folder, not an image"
    except PermissionError:
        return "cannot be opened (permission denied)"
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        return "is a folder, not an image"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"is {kind}, not a regular file"


def probe_image(path: str) -> Optional[str]:
    """None when the image at `path` decodes as training will read it, else a short reason.

    Only regular files are opened. The pixel count comes from the header (Image.open decodes
    nothing) and must be within PIL's limit (`set_pixel_limit`) before anything is decoded.
    JPEGs are decoded at a reduced DCT scale (`Image.draft`): much faster, and the decoder still
    reads every scan, so a file cut short raises as it would at full size."""
    opened = _open_regular(path)
    if isinstance(opened, str):
        return opened
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with opened, Image.open(opened) as img:
            if limit and img.width * img.height > limit:
                return f"has {img.width}x{img.height} pixels, more than --max_image_pixels {limit}"
            img.draft("RGB", _PROBE_SIZE)
            img.load()
            to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as bomb:
        count = re.search(r"\((\d+) pixels\)", str(bomb))
        return (f"has {count.group(1) if count else 'more'} pixels, more than "
                f"--max_image_pixels {limit}")
    except UnidentifiedImageError:
        return "is not an image file"
    except Exception as e:       # PIL raises OSError, ValueError, SyntaxError, ... on bad data
        text = one_line(e)
        return "is truncated" if "truncated" in text.lower() else f"cannot be decoded ({text})"
    return None


def probe_images(image_dir: str, names: Sequence[str]) -> Dict[str, Optional[str]]:
    """{file_name: reason or None} for every distinct name, decoded in a thread pool (PIL
    releases the GIL while decoding)."""
    names = list(dict.fromkeys(names))
    threads = max(1, min(_PROBE_THREADS, os.cpu_count() or 1, len(names)))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="check-images") as pool:
        reasons = dict(zip(names, pool.map(lambda n: probe_image(os.path.join(image_dir, n)), names)))
    log.info("checked %d images in %.1f s", len(names), time.perf_counter() - start)
    return reasons


def _image_problem(lf: ListFile, bad, others, image_dir: str) -> DataError:
    missing = sum(reason == "does not exist" for _, _, reason in bad)
    if missing == len(bad):
        what = f"do not exist under {image_dir}"
        fix = ("file_name must be relative to the image folder: fix the paths or restore the "
               "images, or pass --skip_bad_images to drop those rows")
    else:
        what = (f"under {image_dir} cannot be read" if not missing else
                f"under {image_dir} are missing ({missing}) or unreadable ({len(bad) - missing})")
        fix = ("replace or restore those files (file_name is relative to the image folder), or "
               "remove their rows, or pass --skip_bad_images to drop those rows")
    if not lf.numbered:
        fix = "replace, restore or delete those files, or pass --skip_bad_images to leave them out"
    shown = _bad_rows(lf, bad)
    elsewhere = (" (also " + ", ".join(f"{len(b)} in {os.path.basename(o.path)}" for o, b in others)
                 + ")") if others else ""
    return DataError(f"{lf.path}: {len(bad)} of {len(lf)} listed images {what} ({shown})"
                     f"{elsewhere}; {fix}")


def _bad_rows(lf: ListFile, bad) -> str:
    """The first few (line, name, reason) of `bad`, and how many more."""
    shown = "; ".join(lf.row(line, f"{name} {reason}") for line, name, reason in bad[:SHOWN])
    return shown + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")


def check_images(image_dir: str, lists: Sequence[ListFile], skip: bool = False) -> List[ListFile]:
    """Every listed image must exist and decode. Otherwise one DataError that counts them and
    names the first few by line, or, with `skip`, a warning per list and the lists without
    those rows (returned in the same order)."""
    reasons = probe_images(image_dir, [name for lf in lists for name in lf.files])
    report = []
    for lf in lists:
        bad = [(line, name, reasons[name]) for name, line in zip(lf.files, lf.lines) if reasons[name]]
        if bad:
            report.append((lf, bad))
    if not report:
        return list(lists)
    if not skip:
        lf, bad = report[0]
        raise _image_problem(lf, bad, report[1:], image_dir)
    dropped = {id(lf): bad for lf, bad in report}
    kept = []
    for lf in lists:
        bad = dropped.get(id(lf))
        if not bad:
            kept.append(lf)
            continue
        shown = _bad_rows(lf, bad)
        log.warning("--skip_bad_images: dropped %d of %d rows of %s whose images are missing or "
                    "unreadable (%s)", len(bad), len(lf), lf.path, shown)
        if len(bad) == len(lf):
            raise DataError(f"{lf.path}: none of its {len(lf)} listed images can be read under "
                            f"{image_dir} ({shown}); nothing is left after "
                            f"--skip_bad_images: fix the paths or restore the images")
        gone = {name for _, name, _ in bad}
        rows = [(f, lab, line) for f, lab, line in zip(lf.files, lf.labels, lf.lines)
                if f not in gone]
        kept.append(replace(lf, files=[r[0] for r in rows], labels=[r[1] for r in rows],
                            lines=[r[2] for r in rows]))
    return kept


def outside_paths(lf: ListFile) -> List[tuple]:
    """(line, file_name) of the rows whose file_name is absolute or climbs out with `..`."""
    bad = []
    for name, line in zip(lf.files, lf.lines):
        norm = os.path.normpath(name)
        if os.path.isabs(name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            bad.append((line, name))
    return bad


def check_paths(lists: Sequence[ListFile], image_dir: str):
    """DataError for the first list with file_names outside `image_dir`."""
    for lf in lists:
        bad = outside_paths(lf)
        if bad:
            raise _rows_problem(
                lf.path, "file_name(s) outside the image folder", bad,
                f"file_name must be relative to {image_dir} and stay inside it (no absolute "
                f"path, no leading ..): move the images into it and fix those rows, or pass "
                f"--allow_outside_paths to read them where they are")


def fallback_splits(train: Dataset, built: Dict[str, Dataset], classes: list, no_val: str,
                    no_test: str) -> DataSplits:
    """DataSplits from the train split and the val / test splits that exist.

    Without a validation split validation uses the test split (`val_is_test`, a warning that
    starts with `no_val`); without a test split there is none (test numbers are 0)."""
    test = built.get("test")
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


def build_splits(image_dir: str, lists: Dict[str, ListFile], image_size: int, *,
                 order: Optional[Sequence] = None, expected_classes: Optional[int] = None,
                 set_name: str = "", skip_bad_images: bool = False,
                 no_val: str = "no validation split", no_test: str = "no test split") -> DataSplits:
    """Check the splits of any source and build its datasets: one code path for every format.

    `lists` maps "train" (required) and "val" / "test" (optional, one of them required) to
    their rows. Labels of val / test must be training labels; every image must decode (or,
    with `skip_bad_images`, its row is dropped with a warning). The classes are the training
    labels, in the order of `order` (the dataset's official class order) when given, else
    sorted (`class_order`)."""
    trn = lists["train"]
    optional = {split: lists[split] for split in ("val", "test") if split in lists}

    def classes_of(labels):
        present = set(labels)
        return [c for c in order if c in present] if order is not None else class_order(labels)

    classes = classes_of(trn.labels)
    for lf in optional.values():                  # cheap checks first, before decoding images
        _targets(lf, classes, trn.path)
    listed_labels = set(trn.labels)
    checked = check_images(image_dir, [trn] + list(optional.values()), skip=skip_bad_images)
    trn, optional = checked[0], dict(zip(optional, checked[1:]))
    lost = sorted(listed_labels - set(trn.labels))
    if lost:
        raise DataError(f"{trn.path}: --skip_bad_images dropped every training image of label(s) "
                        f"{short(lost)}; replace those images, or remove the label's rows from "
                        f"every list")

    classes = classes_of(trn.labels)
    train_tf, eval_tf = train_transform(image_size), eval_transform(image_size)
    train = ListsDataset(image_dir, trn.files, _targets(trn, classes, trn.path), train_tf)
    built = {split: ListsDataset(image_dir, lf.files, _targets(lf, classes, trn.path), eval_tf)
             for split, lf in optional.items()}
    if expected_classes is not None and len(classes) != expected_classes:
        what = f"{set_name} usually has" if set_name else "the configuration expects"
        log.warning("%s has %d classes but %s %d; using the %d classes found in the data",
                    trn.path, len(classes), what, expected_classes, len(classes))
    return fallback_splits(train, built, classes, no_val, no_test)


def load_lists(dataset_dir: str, images: str, image_size: int, expected_classes: Optional[int] = None,
               set_name: str = "", skip_bad_images: bool = False,
               allow_outside_paths: bool = False) -> DataSplits:
    """Read and validate a lists-format dataset folder and build its three splits.

    With `skip_bad_images`, rows whose image is missing or unreadable are dropped (a warning
    counts them) instead of failing; `allow_outside_paths` accepts absolute file_names and
    file_names that leave the image folder with `..`."""
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
                        no_test=f"{os.path.join(lists_dir, SPLIT_FILES['test'])} not found")
