"""The paper's datasets (and torchvision's small ones) read from their original downloads,
built here in miniature: split sizes, class order, label mapping, messages for missing files."""
import logging
import os
import shutil

import pandas as pd
import pytest
import torch

from configs.base_config import Config
from data.loading import get_data
from tests.datagen import ORIGINALS, make_lists_dataset, make_original
from tests.helpers import error_of

NO_VAL = ("StanfordCars", "OxfordIIITPet", "Food101", "CUB200", "Dog120", "MIT67")
TORCHVISION = {"Flowers102": "Flowers102", "Aircraft100": "FGVCAircraft",
               "StanfordCars": "StanfordCars", "DTD": "DTD", "OxfordIIITPet": "OxfordIIITPet",
               "Food101": "Food101"}
# the class names each set reports, in its own order (datagen's names as torchvision words them)
EXPECTED_CLASSES = {**{name: spec[1] for name, spec in ORIGINALS.items()},
                    "OxfordIIITPet": ["Abyssinian", "American Bulldog", "Beagle"],
                    "CUB200": [1, 2, 3]}


@pytest.fixture(autouse=True)
def generated_flowers_pass_the_md5_check(monkeypatch):
    """torchvision checks Flowers-102's .mat files against the official md5 sums."""
    from torchvision.datasets import flowers102
    monkeypatch.setattr(flowers102, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def cfg_for(set_name, data, *extra):
    return Config().parse(["--set", set_name, "--data", str(data), "--image_size", "16",
                           "-t", "0", "-b", "4", *extra])


@pytest.mark.parametrize("set_name", sorted(ORIGINALS))
def test_splits_classes_and_labels(tmp_path, caplog, set_name):
    expected = make_original(tmp_path, set_name, per_split=(3, 2, 1))
    with caplog.at_level(logging.INFO):
        splits = get_data(cfg_for(set_name, tmp_path))
    log = "\n".join(r.getMessage() for r in caplog.records)
    if set_name in TORCHVISION:
        assert f"read by torchvision.datasets.{TORCHVISION[set_name]}" in log
    else:
        assert "has no lists/, so the original download is read (train 9, test 3)" in log
    assert splits.classes == EXPECTED_CLASSES[set_name] and splits.num_classes == 3
    assert len(splits.train) == 9 and len(splits.test) == 3
    if set_name in NO_VAL:
        assert splits.val is splits.test and splits.val_is_test
        assert f"{set_name} has no official validation split (train / test): validating on " \
               f"the test split instead" in log
    else:
        assert len(splits.val) == 6 and not splits.val_is_test
    for split in expected:
        dataset = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
        assert sorted(zip(dataset.files, dataset.targets, strict=True)) == sorted(expected[split]), split
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == splits.train.targets[0]


MISSING = {    # one required file each: (--set, path under --data)
    "Flowers102": "flowers-102/setid.mat",
    "Aircraft100": "fgvc-aircraft-2013b/data/images_variant_val.txt",
    "StanfordCars": "stanford_cars/devkit/cars_meta.mat",
    "DTD": "dtd/dtd/labels/test1.txt",
    "OxfordIIITPet": "oxford-iiit-pet/annotations/trainval.txt",
    "Food101": "food-101/meta/test.json",
    "CUB200": "CUB_200_2011/train_test_split.txt",
    "Dog120": "stanford_dogs/test_list.mat",
    "MIT67": "mit67/TrainImages.txt",
}
URL_PART = {"Flowers102": "robots.ox.ac.uk/~vgg/data/flowers/102/", "Aircraft100": "fgvc-aircraft",
            "StanfordCars": "car_dataset.html", "DTD": "robots.ox.ac.uk/~vgg/data/dtd/",
            "OxfordIIITPet": "robots.ox.ac.uk/~vgg/data/pets/", "Food101": "food-101",
            "CUB200": "cub_200_2011", "Dog120": "ImageNetDogs", "MIT67": "indoor.html"}


@pytest.mark.parametrize("set_name", sorted(MISSING))
def test_a_missing_file_is_named_with_where_to_download_it(tmp_path, set_name):
    make_original(tmp_path, set_name, per_split=(1, 1, 1))
    os.remove(tmp_path / MISSING[set_name])
    msg = error_of(cfg_for(set_name, tmp_path))
    assert msg.startswith(f"--set {set_name}: {tmp_path / MISSING[set_name]} not found; ")
    assert URL_PART[set_name] in msg and "nothing is downloaded here" in msg


def test_nothing_there_names_both_layouts(tmp_path):
    msg = error_of(cfg_for("MIT67", tmp_path))
    assert str(tmp_path / "mit67") in msg and "lists/" in msg and "indoor.html" in msg
    msg = error_of(cfg_for("Flowers102", tmp_path))
    assert str(tmp_path / "flowers-102" / "jpg") in msg and "--data" in msg


def test_the_lists_layout_wins_when_lists_is_there(tmp_path, caplog):
    make_original(tmp_path, "CUB200", per_split=(2, 0, 1))
    shutil.rmtree(tmp_path / "CUB_200_2011" / "images")          # both layouts use images/
    make_lists_dataset(tmp_path, "CUB200", num_classes=2, per_class=(2, 1, 1))
    with caplog.at_level(logging.INFO):
        splits = get_data(cfg_for("CUB200", tmp_path))
    assert any("reading the lists layout in" in r.getMessage() for r in caplog.records)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 2)
    assert splits.train.files[0] == "class_0/trn_000.jpg"


def test_stanford_dogs_with_a_lowercase_image_folder(tmp_path):
    make_original(tmp_path, "Dog120", per_split=(1, 0, 1))
    os.rename(tmp_path / "stanford_dogs" / "Images", tmp_path / "stanford_dogs" / "images")
    splits = get_data(cfg_for("Dog120", tmp_path))
    assert splits.train.root == str(tmp_path / "stanford_dogs" / "images") and len(splits.train) == 3


def test_bad_images_of_an_original_download_are_found_up_front(tmp_path, caplog):
    make_original(tmp_path, "Flowers102", per_split=(2, 1, 1))
    (tmp_path / "flowers-102" / "jpg" / "image_00002.jpg").write_text("not a jpeg")
    os.remove(tmp_path / "flowers-102" / "jpg" / "image_00008.jpg")       # a val image
    msg = error_of(cfg_for("Flowers102", tmp_path))
    folder = tmp_path / "flowers-102"
    assert msg.startswith(f"{folder} (Flowers102 train split): 1 of 6 listed images under "
                          f"{folder / 'jpg'} cannot be read (image_00002.jpg is not an image file)")
    assert "(also 1 in flowers-102 (Flowers102 val split))" in msg and "--skip_bad_images" in msg
    with caplog.at_level(logging.WARNING):
        splits = get_data(cfg_for("Flowers102", tmp_path, "--skip_bad_images"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 2, 3)
    assert "image_00002.jpg" not in splits.train.files
    assert sum("--skip_bad_images: dropped 1 of" in r.getMessage() for r in caplog.records) == 2


def test_cache_images_reads_an_original_download(tmp_path):
    make_original(tmp_path, "Aircraft100", per_split=(1, 1, 1))
    plain = get_data(cfg_for("Aircraft100", tmp_path))
    cached = get_data(cfg_for("Aircraft100", tmp_path, "--cache_images"))
    assert type(cached.val).__name__ == "CachedImages" and cached.val.targets == plain.val.targets
    torch.testing.assert_close(cached.val[1][0], plain.val[1][0])


def test_train_ke_cls_runs_on_an_original_download(tmp_path):
    from tests.helpers import SMALL, TINY, run_cli
    make_original(tmp_path / "data", "DTD", per_split=(3, 1, 1))
    result = run_cli("--set", "DTD", "--data", str(tmp_path / "data"), "--log-dir",
                     str(tmp_path / "ckpt"), "--name", "dtd", "--num_generations", "1",
                     "--epochs", "1", *SMALL, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read by torchvision.datasets.DTD (train 9, val 3, test 3)" in result.stdout
    rows = pd.read_csv(tmp_path / "ckpt" / "dtd" / "dtd.csv")
    assert rows["Generation"].tolist() == [0]
