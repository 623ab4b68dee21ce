"""Original downloads read through their torchvision.datasets class (never downloading), with
the official splits. `--data` is the root the class takes: the folder that holds `folder`.

--set          class (arguments)                   <data>/...                      train/val/test
Flowers102     Flowers102                          flowers-102/jpg/, imagelabels.mat,  1020/1020/6149
                                                   setid.mat
Aircraft100    FGVCAircraft(annotation_level=      fgvc-aircraft-2013b/data/images/,   3334/3333/3333
               "variant")                          variants.txt, images_variant_*.txt
StanfordCars   StanfordCars                        stanford_cars/cars_train/, cars_test/,  8144/-/8041
                                                   devkit/, cars_test_annos_withlabels.mat
DTD            DTD(partition=1)                    dtd/dtd/images/, dtd/dtd/labels/    1880/1880/1880
OxfordIIITPet  OxfordIIITPet ("trainval" as train) oxford-iiit-pet/images/, annotations/  3680/-/3669
Food101        Food101                             food-101/images/, meta/             75750/-/25250

The class parses the split files; its (image path, class) pairs then go through
`data.splits.build_splits` like every other source, labelled with the class names, in the
class's order. Without an official validation split validation uses the test split.
"""
import logging
import os
from dataclasses import dataclass, field

import torchvision.datasets as tvd

from data import DataError
from data.catalog import CATALOG
from data.lists import ListFile, image_list
from data.originals import require_files
from errors import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    cls: str                       # the torchvision.datasets class
    splits: dict[str, str]         # our split -> the class's `split` argument
    files: tuple[str, ...]         # what the dataset folder must hold (a trailing /: a folder)
    url: str                       # where the files are published
    kwargs: dict = field(default_factory=dict)


SOURCES = {
    "Flowers102": Source(
        "Flowers102", {"train": "train", "val": "val", "test": "test"},
        ("jpg/", "imagelabels.mat", "setid.mat"),
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, "
        "setid.mat)"),
    "Aircraft100": Source(
        "FGVCAircraft", {"train": "train", "val": "val", "test": "test"},
        ("data/images/", "data/variants.txt", "data/images_variant_train.txt",
         "data/images_variant_val.txt", "data/images_variant_test.txt"),
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)",
        {"annotation_level": "variant"}),
    "StanfordCars": Source(
        "StanfordCars", {"train": "train", "test": "test"},
        ("cars_train/", "cars_test/", "devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
         "cars_test_annos_withlabels.mat"),
        "the Stanford Cars dataset (https://ai.stanford.edu/~jkrause/cars/car_dataset.html, "
        "now offline: use a published copy with the devkit and cars_test_annos_withlabels.mat)"),
    "DTD": Source(
        "DTD", {"train": "train", "val": "val", "test": "test"},
        ("dtd/images/", "dtd/labels/train1.txt", "dtd/labels/val1.txt", "dtd/labels/test1.txt"),
        "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz, extracted inside dtd/)",
        {"partition": 1}),
    "OxfordIIITPet": Source(
        "OxfordIIITPet", {"train": "trainval", "test": "test"},
        ("images/", "annotations/trainval.txt", "annotations/test.txt"),
        "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz, annotations.tar.gz)"),
    "Food101": Source(
        "Food101", {"train": "train", "test": "test"},
        ("images/", "meta/train.json", "meta/test.json"),
        "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)"),
}


def _pairs(dataset) -> list:
    """(image path, class index) of every item, from where each class keeps them."""
    if hasattr(dataset, "_samples"):                          # StanfordCars
        return [(str(p), int(t)) for p, t in dataset._samples]
    files = getattr(dataset, "_image_files", None)
    if files is None:
        files = dataset._images                               # OxfordIIITPet
    return [(str(p), int(t)) for p, t in zip(files, dataset._labels, strict=True)]


def read_torchvision(root: str, set_name: str) -> tuple[str, dict[str, ListFile], list]:
    """(image folder, {split: ListFile}, class names in the class's order) of `set_name`."""
    source, info = SOURCES[set_name], CATALOG[set_name]
    folder = os.path.join(root, info.folder)
    require_files(folder, source.files, set_name, source.url,
                  f"with --data naming the folder that holds {info.folder}/")
    image_dir = os.path.normpath(os.path.join(folder, info.images))
    cls = getattr(tvd, source.cls)
    lists, classes = {}, None
    for split, argument in source.splits.items():
        try:
            dataset = cls(root, split=argument, download=False, **source.kwargs)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise DataError(f"--set {set_name}: torchvision.datasets.{source.cls} cannot read "
                            f"{folder} ({one_line(error)}); its files are there, so one is not "
                            f"the official version: download it again from {source.url}") from None
        classes = classes or list(dataset.classes)
        pairs = _pairs(dataset)
        lists[split] = image_list(f"{folder} ({source.cls} {argument} split)",
                                  [os.path.relpath(p, image_dir) for p, _ in pairs],
                                  [dataset.classes[t] for _, t in pairs])
    log.info("--set %s: the original download in %s, read by torchvision.datasets.%s (%s)",
             set_name, folder, source.cls,
             ", ".join(f"{split} {len(lf)}" for split, lf in lists.items()))
    return image_dir, lists, classes
