"""The datasets the toolkit knows by name: folder layout and usual class count.

Kept free of heavy imports so the configuration can read class counts without touching disk.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DatasetInfo:
    folder: str        # under the datasets directory ("" : --data is the dataset itself)
    images: str        # image folder inside `folder`; CSV `file_name`s are relative to it
    num_classes: Optional[int]   # the usual count (None: unknown until the data is read); the
                                 # data itself decides, a mismatch is only a warning
    format: str = "lists"        # on-disk format; anything but "lists" is read by data/formats.py
    image_size: Optional[int] = None   # a fixed input size (CIFAR: 32) that --image_size must match


CATALOG = {
    "Flower102Pytorch": DatasetInfo("flower102", "jpg", 102),
    "Aircraft100Pytorch": DatasetInfo("aircrafts", "images", 100),
    "CUB200": DatasetInfo("CUB_200_2011", "images", 200),
    "Dog120": DatasetInfo("stanford_dogs", "images", 120),
    "MIT67": DatasetInfo("mit67", "images", 67),
    "SyntheticShapes": DatasetInfo("synthetic_shapes", "images", 10),
    # Generic formats (data/formats.py): --data names the dataset folder itself, or for CIFAR
    # the folder that holds the extracted archive or the .tar.gz.
    "CSVList": DatasetInfo("", "images", None, format="csvlist"),
    "ImageFolder": DatasetInfo("", "", None, format="imagefolder"),
    "CIFAR10": DatasetInfo("cifar-10-batches-py", "", 10, format="cifar10", image_size=32),
    "CIFAR100": DatasetInfo("cifar-100-python", "", 100, format="cifar100", image_size=32),
}
