"""`python export_lists.py`: any source written in the lists layout and read back."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from configs.base_config import Config
from data.loading import get_data
from export_lists import main
from tests.datagen import make_original, write_cifar10


@pytest.fixture(autouse=True)
def generated_files_pass_the_md5_checks(monkeypatch):
    from torchvision.datasets import cifar, flowers102
    for module in (cifar, flowers102):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def load(set_name, data, *extra):
    return get_data(Config().parse(["--set", set_name, "--data", str(data), "-t", "0", *extra]))


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def labelled(dataset, classes):
    """{image path: class} of a split, with the class as the source names it (as a string)."""
    return {os.path.realpath(dataset.path(i)): str(classes[t]) for i, t in enumerate(dataset.targets)}


def test_flowers102_exported_and_read_back(tmp_path, capsys):
    make_original(tmp_path / "data", "Flowers102", per_split=(3, 2, 1))
    out = tmp_path / "out"
    assert main(["--set", "Flowers102", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"wrote {out / 'lists' / 'trn.csv'} (9 rows)" in printed
    assert f"wrote {out / 'lists' / 'val.csv'} (6 rows)" in printed
    assert printed[-1] == f"train on it with: python train_KE_cls.py --set CSVList --data {out}"
    assert os.path.islink(out / "images")
    assert os.readlink(out / "images") == str(tmp_path / "data" / "flowers-102" / "jpg")
    trn = rows(out / "lists" / "trn.csv")
    assert trn[0] == ["file_name", "label"] and len(trn) == 10
    assert trn[1] == ["image_00001.jpg", "pink primrose"]
    source, back = load("Flowers102", tmp_path / "data"), load("CSVList", out)
    assert sorted(back.classes) == sorted(source.classes) and not back.val_is_test
    for split in ("train", "val", "test"):
        assert labelled(getattr(back, split), back.classes) == \
            labelled(getattr(source, split), source.classes), split


def test_no_validation_split_writes_no_val_csv_and_copy_copies(tmp_path):
    make_original(tmp_path / "data", "MIT67", per_split=(2, 0, 1))
    out = tmp_path / "out"
    assert main(["--set", "MIT67", "--data", str(tmp_path / "data"), "--out", str(out), "--copy"]) == 0
    assert sorted(os.listdir(out / "lists")) == ["trn.csv", "tst.csv"]
    assert not os.path.islink(out / "images")
    assert sorted(os.listdir(out / "images")) == ["airport_inside", "bakery", "winecellar"]
    back = load("CSVList", out)
    assert back.val_is_test and (len(back.train), len(back.test)) == (6, 3)
    assert back.train.files[0] == "airport_inside/train_0.jpg"
    assert back.classes[back.train.targets[0]] == "airport_inside"


def test_cifar_images_are_written_as_png(tmp_path):
    train_labels, test_labels = write_cifar10(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["--set", "CIFAR10", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    source = load("CIFAR10", tmp_path / "data")
    tst = rows(out / "lists" / "tst.csv")
    assert tst[1:] == [[f"test/{i:05d}.png", source.classes[t]] for i, t in enumerate(test_labels)]
    with Image.open(out / "images" / "test" / "00002.png") as img:
        assert np.array_equal(np.asarray(img), source.test.data[2])
    back = load("CSVList", out)
    assert len(back.train) == len(train_labels) and back.val_is_test


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--set", "Food101", "--data", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --set Food101: {tmp_path / 'food-101'}")
    assert not out.exists()
    make_original(tmp_path, "Food101", per_split=(1, 0, 1))
    os.makedirs(out)
    (out / "keep.txt").write_text("mine")
    assert main(["--set", "Food101", "--data", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: --out {out} already exists and is not an empty folder; name a new "
                   f"folder (nothing is overwritten)"]
    assert os.listdir(out) == ["keep.txt"]
    with pytest.raises(SystemExit) as info:
        main(["--set", "NoSuchSet", "--out", str(out)])
    assert info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
