"""The original downloads of CUB-200-2011, Stanford Dogs and MIT-67 (torchvision has no class
for them), read with their official train / test splits. None has a validation split.

CUB200   <data>/CUB_200_2011/   (CUB_200_2011.tgz)
             images/<class>/<image>.jpg, images.txt ("<id> <path>"),
             image_class_labels.txt ("<id> <class id>"), train_test_split.txt ("<id> <1|0>")
             -> 5,994 train / 5,794 test; the labels are the class ids 1..200.
Dog120   <data>/stanford_dogs/  (images.tar and lists.tar)
             Images/<synset-breed>/<image>.jpg, train_list.mat, test_list.mat ("file_list")
             -> 12,000 train / 8,580 test; the labels are the breed folder names.
MIT67    <data>/mit67/          (indoorCVPR_09.tar, TrainImages.txt, TestImages.txt)
             Images/<category>/<image>, TrainImages.txt, TestImages.txt ("<category>/<image>")
             -> 5,360 train / 1,340 test; the labels are the category folder names.

`read_original` returns the image folder and the splits as ListFiles for `build_splits`.
"""
import os
from collections.abc import Sequence

import numpy as np

from data import DataError
from data.lists import ListFile, image_list

URLS = {
    "CUB200": "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    "Dog120": "http://vision.stanford.edu/aditya86/ImageNetDogs/ (images.tar and lists.tar)",
    "MIT67": "https://web.mit.edu/torralba/www/indoor.html (indoorCVPR_09.tar, TrainImages.txt "
             "and TestImages.txt)",
}
FILES = {       # besides the image folder
    "CUB200": ("images.txt", "image_class_labels.txt", "train_test_split.txt"),
    "Dog120": ("train_list.mat", "test_list.mat"),
    "MIT67": ("TrainImages.txt", "TestImages.txt"),
}
LISTS_INSTEAD = ("or the lists layout instead (images/ and lists/trn.csv, val.csv, tst.csv with "
                 "file_name,label)")


def require_files(folder: str, names: Sequence[str], set_name: str, source: str, also: str = ""):
    """DataError naming the first of `names` (relative to `folder`; a trailing / for a folder)
    that is missing, what the folder must hold, and where to download it."""
    for name in names:
        path = os.path.join(folder, name)
        if not (os.path.isdir(path) if name.endswith("/") else os.path.isfile(path)):
            raise DataError(f"--set {set_name}: {path} not found; {folder}/ must hold "
                            f"{', '.join(names)} from the original download, {source}"
                            f"{', ' + also if also else ''}; nothing is downloaded here")


def _images_name(set_name: str, folder: str) -> str:
    """The image folder's name: images/ for CUB; Images/ as extracted for the others (or
    images/ when only that exists)."""
    if set_name == "CUB200" or (os.path.isdir(os.path.join(folder, "images")) and
                                not os.path.isdir(os.path.join(folder, "Images"))):
        return "images"
    return "Images"


def _table(path: str) -> dict[str, str]:
    """{first field: rest of the line} of a text file of "<id> <value>" lines."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=1)
            if len(fields) != 2:
                raise DataError(f"{path}: line {number} is not '<id> <value>' ({line.strip()!r}); "
                                f"restore the file from the original download")
            table[fields[0]] = fields[1].strip()
    return table


def _cub(folder: str) -> dict[str, ListFile]:
    paths = _table(os.path.join(folder, "images.txt"))
    labels = _table(os.path.join(folder, "image_class_labels.txt"))
    is_train = _table(os.path.join(folder, "train_test_split.txt"))
    unmatched = sorted(set(paths) ^ set(labels) | set(paths) ^ set(is_train))
    if unmatched:
        raise DataError(f"{folder}: images.txt, image_class_labels.txt and train_test_split.txt "
                        f"list different image ids ({', '.join(unmatched[:3])}...); restore them "
                        f"from the original download")
    splits = {}
    for split, flag in (("train", "1"), ("test", "0")):
        ids = [i for i in paths if is_train[i] == flag]
        splits[split] = image_list(os.path.join(folder, f"train_test_split.txt ({split})"),
                                   [paths[i] for i in ids], [labels[i] for i in ids])
    return splits


def _by_folder(source: str, files: Sequence[str]) -> ListFile:
    """Rows labelled by their first path component (the class folder)."""
    files = [f.strip().replace("\\", "/") for f in files if f.strip()]
    return image_list(source, files, [f.split("/", 1)[0] for f in files])


def _dogs(folder: str) -> dict[str, ListFile]:
    from scipy.io import loadmat
    splits = {}
    for split, name in (("train", "train_list.mat"), ("test", "test_list.mat")):
        path = os.path.join(folder, name)
        try:
            files = np.atleast_1d(loadmat(path, squeeze_me=True)["file_list"])
        except Exception as error:     # scipy raises ValueError, KeyError, ... on foreign files
            raise DataError(f"{path} is not the Stanford Dogs list (no readable 'file_list': "
                            f"{type(error).__name__}); restore it from lists.tar") from None
        splits[split] = _by_folder(path, [str(f) for f in files.ravel()])
    return splits


def _mit67(folder: str) -> dict[str, ListFile]:
    splits = {}
    for split, name in (("train", "TrainImages.txt"), ("test", "TestImages.txt")):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            splits[split] = _by_folder(path, f.read().splitlines())
    return splits


READERS = {"CUB200": _cub, "Dog120": _dogs, "MIT67": _mit67}


def read_original(folder: str, set_name: str) -> tuple[str, dict[str, ListFile]]:
    """(image folder, {"train": ..., "test": ...}) of the original download in `folder`."""
    images = _images_name(set_name, folder)
    require_files(folder, (images + "/", *FILES[set_name]), set_name, URLS[set_name],
                  LISTS_INSTEAD)
    return os.path.join(folder, images), READERS[set_name](folder)
