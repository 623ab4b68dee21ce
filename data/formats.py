"""Dataset formats besides the named lists-layout datasets: `--set CSVList | ImageFolder |
CIFAR10 | CIFAR100`. `get_data` sends every catalog entry whose `format` is not "lists" here.

CSVList      --data DIR is one dataset folder in the lists layout:
                 DIR/images/...            the image files
                 DIR/lists/trn.csv         header with at least file_name,label (required)
                 DIR/lists/val.csv         optional (without it validation uses tst.csv)
                 DIR/lists/tst.csv         optional (without it there is no test split)
             read by data/lists.py's `load_lists`, with the same checks and messages.
ImageFolder  --data DIR holds one sub-folder per split, one class folder per class:
                 DIR/train/<class>/<image>     required; the classes are train's folder names,
                                               sorted as strings (torchvision's order)
                 DIR/val/<class>/<image>       optional, same fallbacks as the lists layout:
                 DIR/test/<class>/<image>      no val/ -> test/ used for validation (warning),
                                               no test/ -> no test split; one of them is needed
             A val/ or test/ class folder that train/ lacks is an error; a train class without
             val/test images is fine. Read with torchvision.datasets.ImageFolder (every image
             converted to RGB, the usual train / eval transforms).
CIFAR10      --data DIR holds the python version of the archive, either extracted
CIFAR100         (DIR/cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta;
                 DIR/cifar-100-python/ with train, test, meta and the fine labels)
             or as downloaded (DIR/cifar-10-python.tar.gz, DIR/cifar-100-python.tar.gz, read
             in place without extracting); DIR may also be the extracted folder itself.
             Nothing is ever downloaded. There is no validation split: validation uses the test
             split (with a warning). Images stay 32x32: train RandomCrop(32, padding=4) +
             RandomHorizontalFlip + Normalize, eval Normalize only, with the dataset's own
             per-channel mean / std (`CIFAR_STATS`); --image_size must be 32 when given and
             is set to 32 otherwise (by Config.parse, from the catalog's `image_size`).

torchvision's CIFAR classes are not used: they check every file against the md5 sums of the
official archive, so any other copy in the same format (a subset, a re-pack, test data) is
refused. `read_cifar` reads the same pickle format itself, through an unpickler that only
rebuilds numpy arrays (the files hold nothing else), so a doctored file cannot run code.
"""
import io
import logging
import os
import pickle
import tarfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from data.catalog import DatasetInfo
from data.lists import DataSplits, load_lists
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, load_rgb, train_transform
from utils.errors import UserError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# normalisation


# Per-channel mean / std of the training images, on the [0, 1] scale.
CIFAR_STATS = {
    "CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "CIFAR100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_SIZE = 32


def normalisation(set_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) that the transforms of `--set set_name` normalise with."""
    return CIFAR_STATS.get(set_name, (IMAGENET_MEAN, IMAGENET_STD))


def cifar_train_transform(set_name: str) -> v2.Compose:
    mean, std = normalisation(set_name)
    return v2.Compose([v2.RandomCrop(CIFAR_SIZE, padding=4), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def cifar_eval_transform(set_name: str) -> v2.Compose:
    mean, std = normalisation(set_name)
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


# ------------------------------------------------------------------------------------------------
# entry point


def load_format(cfg, info: DatasetInfo) -> DataSplits:
    """The DataSplits of `cfg.set` (a non-lists catalog entry) read from `cfg.data`."""
    readers = {"csvlist": _load_csvlist, "imagefolder": _load_imagefolder,
               "cifar10": _load_cifar, "cifar100": _load_cifar}
    if info.format not in readers:
        raise ValueError(f"no reader for dataset format {info.format!r}")
    return readers[info.format](cfg, info)


def _dataset_root(cfg, layout: str) -> str:
    root = cfg.data
    if not os.path.isdir(root):
        raise UserError(f"dataset folder not found: {root} (--set {cfg.set} reads --data DIR "
                        f"itself); {layout}")
    return root


# ------------------------------------------------------------------------------------------------
# CSVList


_CSVLIST_LAYOUT = ("it must hold images/ with the image files and lists/trn.csv (plus val.csv "
                   "and/or tst.csv) with the columns file_name,label")


def _load_csvlist(cfg, info: DatasetInfo) -> DataSplits:
    root = _dataset_root(cfg, _CSVLIST_LAYOUT)
    return load_lists(root, info.images, cfg.image_size, expected_classes=None, set_name=cfg.set,
                      skip_bad_images=getattr(cfg, "skip_bad_images", False))


# ------------------------------------------------------------------------------------------------
# ImageFolder

IMAGEFOLDER_SPLITS = ("train", "val", "test")
_IMAGEFOLDER_LAYOUT = ("it must hold train/<class>/<images> and val/<class>/<images> and/or "
                       "test/<class>/<images>")


def _class_folders(folder: str) -> List[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class _FixedClassesFolder(ImageFolder):
    """An ImageFolder whose class indices are given (train's) instead of found in its own
    folder, so that val/ and test/ index classes exactly like train/ even when some are absent."""

    def __init__(self, root: str, classes: Sequence[str], **kwargs):
        self._given_classes = list(classes)
        super().__init__(root, **kwargs)

    def find_classes(self, directory):
        return list(self._given_classes), {c: i for i, c in enumerate(self._given_classes)}


def _image_folder(folder: str, classes: Sequence[str], transform, allow_empty: bool) -> ImageFolder:
    try:
        return _FixedClassesFolder(folder, classes, transform=transform, loader=load_rgb,
                                   allow_empty=allow_empty)
    except FileNotFoundError as error:         # a class folder without any image file
        raise UserError(f"{folder}: {' '.join(str(error).split())}; every class folder needs "
                        f"at least one image") from None


def _load_imagefolder(cfg, info: DatasetInfo) -> DataSplits:
    root = _dataset_root(cfg, _IMAGEFOLDER_LAYOUT)
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"training folder not found: {train_dir}; --set ImageFolder --data {root} "
                        f"needs {root}/train/<class>/<images> and {root}/val/ and/or "
                        f"{root}/test/ laid out the same way")
    classes = _class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir} has no class folders; put each class's training images in "
                        f"{train_dir}/<class name>/")
    train = _image_folder(train_dir, classes, train_transform(cfg.image_size), allow_empty=False)

    built = {}
    for split in ("val", "test"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            continue
        unknown = [c for c in _class_folders(folder) if c not in set(classes)]
        if unknown:
            raise UserError(f"{folder} has class folder(s) that {train_dir} lacks "
                            f"({_short(unknown)}); every class needs training images: add "
                            f"them to train/ or remove those folders")
        dataset = _image_folder(folder, classes, eval_transform(cfg.image_size), allow_empty=True)
        if len(dataset) == 0:
            raise UserError(f"{folder} holds no images; add <class>/<image> files or delete "
                            f"the folder")
        built[split] = dataset
    if not built:
        raise UserError(f"neither {root}/val/ nor {root}/test/ found; add at least one "
                        f"(validation uses test/ when val/ is absent)")
    return _splits(built, train, classes, root, "val/", "test/")


def _short(items, n: int = 3) -> str:
    items = list(items)
    text = ", ".join(str(x) for x in items[:n])
    return text + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _splits(built: Dict[str, Dataset], train: Dataset, classes: list, where: str, val_name: str,
            test_name: str) -> DataSplits:
    """DataSplits with the lists layout's fallbacks for a missing val or test split."""
    test = built.get("test")
    if "val" in built:
        val, val_is_test = built["val"], False
    else:
        log.warning("%s has no %s: validating on the test split (%s), so the best-validation "
                    "numbers are test numbers", where, val_name, test_name)
        val, val_is_test = test, True
    if test is None:
        log.warning("%s has no %s: there is no test split; test accuracies are reported as 0",
                    where, test_name)
    return DataSplits(train=train, val=val, test=test, classes=list(classes),
                      val_is_test=val_is_test)


# ------------------------------------------------------------------------------------------------
# CIFAR


CIFAR_FORMATS = {
    # set: (extracted folder, archive, train files, test files, meta file, class-names key,
    #       labels key)
    "CIFAR10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                "label_names", "labels"),
    "CIFAR100": ("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta",
                 "fine_label_names", "fine_labels"),
}


class CifarDataset(Dataset):
    """(image tensor, class index) pairs from uint8 images held in memory ([N, 3, 32, 32]).

    The transform receives a tv_tensors.Image; without a transform an item is a PIL image (as
    in torchvision's CIFAR classes), which is what --cache_images (data/cache.py) reads.
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], transform=None):
        if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(targets):
            raise ValueError("images must be [N, 3, H, W] with one target per image")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index: int):
        if self.transform is None:
            return Image.fromarray(self.images[index].permute(1, 2, 0).numpy()), self.targets[index]
        return self.transform(tv_tensors.Image(self.images[index])), self.targets[index]

    def __repr__(self):
        return f"CifarDataset({len(self)} images)"


def _numpy_reconstructors() -> dict:
    """The only globals a CIFAR pickle needs: what rebuilds a numpy array (under the module
    names numpy 1 and numpy 2 write), and the bytes decoding of protocol-2 pickles."""
    import codecs
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    allowed = None

    def find_class(self, module, name):
        if _ArrayUnpickler.allowed is None:
            _ArrayUnpickler.allowed = _numpy_reconstructors()
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:
        raise UserError(f"{source} is not a CIFAR python-format batch file ({_one_line(error)}); "
                        f"replace it with the file from the python version of the archive") from None
    if not isinstance(obj, dict):
        raise UserError(f"{source} is not a CIFAR python-format batch file (it holds a "
                        f"{type(obj).__name__}, not a dict)")
    # Python 2 pickles read with encoding="latin1" give str keys; bytes keys come from
    # pickles written with bytes (encoding="bytes" style): accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _cifar_source(root: str, set_name: str):
    """('dir', folder) or ('tar', archive path) for the first copy found; UserError if none."""
    folder, archive, train_files, _, meta, _, _ = CIFAR_FORMATS[set_name]
    extracted = os.path.join(root, folder)
    if os.path.isdir(extracted):
        return "dir", extracted
    if os.path.isfile(os.path.join(root, meta)) and os.path.isfile(os.path.join(root, train_files[0])):
        return "dir", root                                  # --data is the extracted folder
    tar_path = os.path.join(root, archive)
    if os.path.isfile(tar_path):
        return "tar", tar_path
    raise UserError(f"--set {set_name}: no CIFAR data under {root} (looked for the folder "
                    f"{extracted}/ and the archive {tar_path}); put the python version of the "
                    f"archive ({archive}, as published, or its extracted {folder}/ folder) in "
                    f"{root} or pass --data with the folder that holds it; nothing is downloaded")


def _read_files(kind: str, where: str, folder: str, names: Sequence[str]) -> Dict[str, bytes]:
    """The bytes of each named file of the CIFAR folder, from the folder or the archive."""
    found: Dict[str, bytes] = {}
    if kind == "dir":
        for name in names:
            path = os.path.join(where, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    found[name] = f.read()
    else:
        wanted = {f"{folder}/{name}": name for name in names}
        try:
            with tarfile.open(where, "r:*") as tar:
                for member in tar:                  # one pass: a .tar.gz reads sequentially
                    key = member.name[2:] if member.name.startswith("./") else member.name
                    if key in wanted and member.isfile():
                        found[wanted[key]] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"cannot read the archive {where} ({_one_line(error)}); download it "
                            f"again or extract it by hand") from None
    missing = [n for n in names if n not in found]
    if missing:
        inside = f"{where}/" if kind == "dir" else f"{folder}/ in {where}"
        raise UserError(f"CIFAR file(s) missing: {', '.join(missing)} not found in {inside}; "
                        f"the python version of the archive has {', '.join(names)}")
    return found


def read_cifar(root: str, set_name: str):
    """Read a local CIFAR-10/100 copy under `root` (see the module docstring).

    Returns (train images, train labels, test images, test labels, class names, source path);
    images are uint8 tensors [N, 3, 32, 32], labels int lists.
    """
    folder, _, train_files, test_files, meta_file, names_key, labels_key = CIFAR_FORMATS[set_name]
    kind, where = _cifar_source(root, set_name)
    raw = _read_files(kind, where, folder, (*train_files, *test_files, meta_file))

    def source(name):
        return os.path.join(where, name) if kind == "dir" else f"{where}:{folder}/{name}"

    meta = _unpickle(raw[meta_file], source(meta_file))
    if names_key not in meta:
        raise UserError(f"{source(meta_file)} has no {names_key!r} entry; it is not the "
                        f"{set_name} meta file")
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[names_key]]

    def batches(files):
        images, labels = [], []
        for name in files:
            batch = _unpickle(raw[name], source(name))
            data, lab = batch.get("data"), batch.get(labels_key)
            if not isinstance(data, np.ndarray) or lab is None:
                raise UserError(f"{source(name)} lacks the 'data' array or the {labels_key!r} "
                                f"list; it is not a {set_name} batch file")
            lab = [int(v) for v in lab]
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIZE ** 2 \
                    or data.shape[0] != len(lab):
                raise UserError(f"{source(name)}: 'data' is {data.dtype} {list(data.shape)} for "
                                f"{len(lab)} labels; expected uint8 [N, 3072] with one label per "
                                f"row (a corrupted or foreign file)")
            bad = [v for v in lab if not 0 <= v < len(classes)]
            if bad:
                raise UserError(f"{source(name)}: label(s) {_short(sorted(set(bad)))} are not "
                                f"among the {len(classes)} classes of {source(meta_file)}")
            images.append(torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, CIFAR_SIZE,
                                                                              CIFAR_SIZE))
            labels.extend(lab)
        return torch.cat(images), labels

    train_images, train_labels = batches(train_files)
    test_images, test_labels = batches(test_files)
    return train_images, train_labels, test_images, test_labels, classes, where


def _cifar_image_size(cfg):
    """--image_size must be 32 for CIFAR when given; otherwise it is set to 32 (logged).

    Config.parse already does this (from the catalog's `image_size`); this covers configurations
    made otherwise (tests, a settings.json from elsewhere)."""
    if cfg.image_size == CIFAR_SIZE:
        return
    if "image_size" in (getattr(cfg, "given_flags", None) or ()):
        raise UserError(f"argument --image_size: --set {cfg.set} has {CIFAR_SIZE}x{CIFAR_SIZE} "
                        f"images and is trained at that size; pass --image_size {CIFAR_SIZE} or "
                        f"drop the flag")
    log.info("--set %s: images are %dx%d, so --image_size %d is not used (set to %d)",
             cfg.set, CIFAR_SIZE, CIFAR_SIZE, cfg.image_size, CIFAR_SIZE)
    cfg.image_size = CIFAR_SIZE


def _load_cifar(cfg, info: DatasetInfo) -> DataSplits:
    _cifar_image_size(cfg)
    train_x, train_y, test_x, test_y, classes, where = read_cifar(cfg.data, cfg.set)
    train = CifarDataset(train_x, train_y, cifar_train_transform(cfg.set))
    test = CifarDataset(test_x, test_y, cifar_eval_transform(cfg.set))
    log.info("--set %s: %d training and %d test images of %d classes from %s",
             cfg.set, len(train), len(test), len(classes), where)
    expected = getattr(cfg, "num_cls", info.num_classes)
    if expected is not None and expected != len(classes):
        log.warning("%s has %d classes but %s usually has %d; using the %d classes found",
                    where, len(classes), cfg.set, expected, len(classes))
    return _splits({"test": test}, train, classes, where, "validation split", "the test batch")
