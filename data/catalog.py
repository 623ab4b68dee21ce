"""The datasets the toolkit knows by name: folder layout and usual class count.

Kept free of heavy imports so the configuration can read class counts without touching disk.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    folder: str        # under the datasets directory ("" : --data is the dataset itself)
    images: str        # image folder inside `folder`; CSV `file_name`s are relative to it
    num_classes: int | None   # the usual count (None: unknown until the data is read); the
                                 # data itself decides, a mismatch is only a warning
    format: str = "lists"        # "lists" (data/lists.py), "torchvision" (data/torchvision_sets.py),
                                 # "csvlist" / "imagefolder" / "cifar" (data/formats.py)
    image_size: int | None = None   # a fixed input size (CIFAR: 32) that --image_size must match
    original: bool = False       # "lists" entries only: without lists/trn.csv the dataset's
                                 # original download is read (data/originals.py)
    reads: str | None = None  # another entry whose files this one reads (the _RET setups)
    task: str = "classification"  # "retrieval": the entry names a metric-learning setup

    def source(self, name: str) -> str:
        """The --set whose files `name` (this entry's own name) reads."""
        return self.reads or name


CATALOG = {
    # The reference's lists layout: <data>/<folder>/<images>/ + <data>/<folder>/lists/*.csv
    "Flower102Pytorch": DatasetInfo("flower102", "jpg", 102),
    "Aircraft100Pytorch": DatasetInfo("aircrafts", "images", 100),
    "CUB200": DatasetInfo("CUB_200_2011", "images", 200, original=True),
    "Dog120": DatasetInfo("stanford_dogs", "images", 120, original=True),
    "MIT67": DatasetInfo("mit67", "images", 67, original=True),
    "SyntheticShapes": DatasetInfo("synthetic_shapes", "images", 10),
    # Original downloads read by torchvision.datasets; --data is the root its class takes
    # (the folder that holds `folder`).
    "Flowers102": DatasetInfo("flowers-102", "jpg", 102, format="torchvision"),
    "Aircraft100": DatasetInfo("fgvc-aircraft-2013b", "data/images", 100, format="torchvision"),
    "StanfordCars": DatasetInfo("stanford_cars", "", 196, format="torchvision"),
    "DTD": DatasetInfo("dtd", "dtd/images", 47, format="torchvision"),
    "OxfordIIITPet": DatasetInfo("oxford-iiit-pet", "images", 37, format="torchvision"),
    "Food101": DatasetInfo("food-101", "images", 101, format="torchvision"),
    # The metric-learning setups of the paper (--task retrieval): the zero-shot split of the
    # classes (data/zero_shot.py) of the original downloads above.
    "CUB200_RET": DatasetInfo("CUB_200_2011", "images", 200, original=True, reads="CUB200",
                              task="retrieval"),
    "CARS196_RET": DatasetInfo("stanford_cars", "", 196, format="torchvision",
                               reads="StanfordCars", task="retrieval"),
    # Generic formats (data/formats.py): --data names the dataset folder itself, or for CIFAR
    # the folder that holds the extracted archive.
    "CSVList": DatasetInfo("", "images", None, format="csvlist"),
    "ImageFolder": DatasetInfo("", "", None, format="imagefolder"),
    "CIFAR10": DatasetInfo("cifar-10-batches-py", "", 10, format="cifar", image_size=32),
    "CIFAR100": DatasetInfo("cifar-100-python", "", 100, format="cifar", image_size=32),
}
