"""The datasets the toolkit knows by name: folder layout and usual class count.

Kept free of heavy imports so the configuration can read class counts without touching disk.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    folder: str        # under the datasets directory
    images: str        # image folder inside `folder`; CSV `file_name`s are relative to it
    num_classes: int   # the usual count; the data itself decides, a mismatch is only a warning


CATALOG = {
    "Flower102Pytorch": DatasetInfo("flower102", "jpg", 102),
    "Aircraft100Pytorch": DatasetInfo("aircrafts", "images", 100),
    "CUB200": DatasetInfo("CUB_200_2011", "images", 200),
    "Dog120": DatasetInfo("stanford_dogs", "images", 120),
    "MIT67": DatasetInfo("mit67", "images", 67),
    "SyntheticShapes": DatasetInfo("synthetic_shapes", "images", 10),
}
