"""--set CSVList, ImageFolder, CIFAR10, CIFAR100 (data/formats.py) on generated data.

Generated CIFAR files cannot match the official md5 sums that torchvision checks; the
`official_cifar` fixture makes that check accept any existing file (and only then)."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from configs.base_config import Config
from data.catalog import CATALOG
from data.formats import CIFAR_STATS, normalisation
from data.lists import DataSplits
from data.loading import get_data
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.datagen import CIFAR10_NAMES, make_lists_dataset, write_cifar10, write_cifar100, write_pickle
from tests.helpers import error_of


def cfg_for(set_name, data, *extra):
    return Config().parse(["--set", set_name, "--data", str(data), "-t", "0", "-b", "4", *extra])


@pytest.fixture
def official_cifar(monkeypatch):
    """Every existing CIFAR file passes torchvision's md5 check."""
    from torchvision.datasets import cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar_image_size_is_32(tmp_path, capsys, caplog, official_cifar):
    assert cfg_for("CIFAR100", "/x", "--image_size", "32").image_size == 32
    with pytest.raises(SystemExit) as info:
        cfg_for("CIFAR10", "/x", "--image_size", "224")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--image_size" in err and "32x32" in err
    assert cfg_for("CIFAR10", "/x").image_size == 32      # not given: CIFAR's size
    write_cifar10(tmp_path)                         # a configuration made without parse
    cfg = cfg_for("CIFAR10", tmp_path)
    cfg.image_size = 224
    assert "--image_size 32" in error_of(cfg) and cfg.image_size == 224   # refused, not changed


def test_new_sets_are_choices_of_set():
    for name in ("CSVList", "ImageFolder", "CIFAR10", "CIFAR100"):
        assert name in CATALOG
        cfg = cfg_for(name, "/nowhere")
        assert cfg.set == name
    assert cfg_for("CIFAR100", "/x").num_cls == 100
    assert cfg_for("CSVList", "/x").num_cls is None        # decided by the data


# ---- CSVList ------------------------------------------------------------------------------------

def test_csvlist_reads_the_folder_itself(tmp_path, caplog):
    # datagen writes <root>/<folder>/<images>/ ; CSVList wants DIR/images/ + DIR/lists/.
    folder = make_lists_dataset(tmp_path, "CUB200", num_classes=3, per_class=(2, 1, 1),
                                labels=["b", "a", "c"], with_val=False)
    assert os.path.basename(folder) == "CUB_200_2011" and os.path.isdir(os.path.join(folder, "images"))
    with caplog.at_level(logging.WARNING):
        splits = get_data(cfg_for("CSVList", folder, "--image_size", "24"))
    assert isinstance(splits, DataSplits)
    assert splits.classes == ["a", "b", "c"] and splits.num_classes == 3
    assert (len(splits.train), len(splits.test)) == (6, 3)
    assert splits.val is splits.test and splits.val_is_test
    assert any("val.csv" in r.getMessage() for r in caplog.records)
    assert not any("usually has" in r.getMessage() for r in caplog.records)
    for i in range(len(splits.train)):
        label = splits.train.files[i].split("/")[0][len("class_"):]
        assert splits.classes[splits.train.targets[i]] == label
    x, y = splits.train[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32


def test_csvlist_errors(tmp_path):
    msg = error_of(cfg_for("CSVList", tmp_path / "absent"))
    assert "absent" in msg and "images/" in msg and "trn.csv" in msg
    os.makedirs(tmp_path / "ds" / "images")
    msg = error_of(cfg_for("CSVList", tmp_path / "ds"))
    assert "trn.csv" in msg and str(tmp_path / "ds") in msg


# ---- ImageFolder --------------------------------------------------------------------------------

def write_image_folder(root, layout, size=(20, 16), seed=0):
    """layout: {split: {class: count}}; images coloured by class, various PIL modes."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "P", "RGBA"]
    for split, classes in layout.items():
        for c, count in classes.items():
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(count):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(arr).convert(modes[i % len(modes)])
                img.save(os.path.join(root, split, c, f"{i}.png"))
    return root


def test_image_folder_splits_classes_and_labels(tmp_path):
    root = write_image_folder(tmp_path, {
        "train": {"cat": 3, "ant": 2, "dog": 1},
        "val": {"dog": 2, "cat": 1},                 # 'ant' has no val images: fine
        "test": {"ant": 1, "cat": 1, "dog": 1}})
    os.makedirs(tmp_path / "train" / ".hidden")     # ignored
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    splits = get_data(cfg_for("ImageFolder", root, "--image_size", "16"))
    assert splits.classes == ["ant", "cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    assert not splits.val_is_test
    assert sorted(splits.train.targets) == [0, 0, 1, 1, 1, 2]
    # val lacks 'ant': its indices still follow train's classes, not its own folder list
    assert sorted(splits.val.targets) == [1, 2, 2]
    for ds, split in ((splits.train, "train"), (splits.val, "val"), (splits.test, "test")):
        for i, t in enumerate(ds.targets):
            assert ds.files[i].split("/")[:2] == [split, splits.classes[t]]
            assert ds.path(i) == os.path.join(root, ds.files[i])
    x, _ = splits.train[1]                          # an 'L' image: still 3 channels
    assert x.shape == (3, 16, 16)
    x, y = splits.val[0]
    assert x.shape == (3, 16, 16) and y == splits.val.targets[0]
    cached = get_data(cfg_for("ImageFolder", root, "--image_size", "16", "--cache_images"))
    assert cached.val.targets == splits.val.targets
    torch.testing.assert_close(cached.val[0][0], x, atol=0.05, rtol=0)


def test_image_folder_fallbacks(tmp_path, caplog):
    root = write_image_folder(tmp_path / "a", {"train": {"x": 1, "y": 1}, "test": {"x": 1}})
    with caplog.at_level(logging.WARNING):
        splits = get_data(cfg_for("ImageFolder", root, "--image_size", "16"))
    assert splits.val is splits.test and splits.val_is_test
    assert any("validating on the test split" in r.getMessage() for r in caplog.records)
    root = write_image_folder(tmp_path / "b", {"train": {"x": 1, "y": 1}, "val": {"y": 2}})
    splits = get_data(cfg_for("ImageFolder", root, "--image_size", "16"))
    assert splits.test is None and len(splits.val) == 2 and splits.val.targets == [1, 1]


def test_image_folder_errors(tmp_path):
    msg = error_of(cfg_for("ImageFolder", tmp_path / "none"))
    assert "none" in msg and "train/" in msg
    os.makedirs(tmp_path / "e")
    msg = error_of(cfg_for("ImageFolder", tmp_path / "e"))
    assert "training folder not found" in msg and str(tmp_path / "e" / "train") in msg
    root = write_image_folder(tmp_path / "u", {"train": {"x": 1}, "val": {"x": 1, "zebra": 1}})
    msg = error_of(cfg_for("ImageFolder", root))
    assert "zebra" in msg and "lacks" in msg and str(root / "val") in msg
    root = write_image_folder(tmp_path / "n", {"train": {"x": 1}})
    msg = error_of(cfg_for("ImageFolder", root))
    assert "neither" in msg and "val/" in msg and "test/" in msg
    root = write_image_folder(tmp_path / "m", {"train": {"x": 1}, "test": {"x": 1}})
    os.makedirs(root / "train" / "empty")
    msg = error_of(cfg_for("ImageFolder", root))
    assert "empty" in msg and "at least one image" in msg


# ---- CIFAR --------------------------------------------------------------------------------------

def test_cifar10_splits_labels_and_pixels(tmp_path, caplog, official_cifar):
    train_labels, test_labels = write_cifar10(tmp_path)
    cfg = cfg_for("CIFAR10", tmp_path)
    assert cfg.image_size == 32                     # CIFAR's size, not the 224 default
    with caplog.at_level(logging.INFO):
        splits = get_data(cfg)
    assert any("CIFAR10 has no validation split" in r.getMessage() and
               "validating on the test split" in r.getMessage() for r in caplog.records)
    assert splits.classes == CIFAR10_NAMES and splits.num_classes == 10
    assert (len(splits.train), len(splits.test)) == (15, 4)
    assert splits.val is splits.test and splits.val_is_test
    assert splits.train.targets == train_labels and splits.test.targets == test_labels
    # image i is the i-th row of the concatenated batches, decoded as HWC
    assert splits.train.data[7, 0, 0, 0] == train_labels[7]
    assert splits.train.data[7, 0, 0, 1] == 1 + 10 * 3     # batch 3, row 1
    mean, std = CIFAR_STATS["CIFAR10"]
    x, y = splits.test[2]                           # eval: Normalize only, exact values
    raw = torch.from_numpy(splits.test.data[2]).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == test_labels[2]
    torch.testing.assert_close(x, expected)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == train_labels[0]


def test_cifar_with_cache_images(tmp_path, official_cifar):
    train_labels, test_labels = write_cifar10(tmp_path)
    plain = get_data(cfg_for("CIFAR10", tmp_path))
    cached = get_data(cfg_for("CIFAR10", tmp_path, "--cache_images"))
    assert type(cached.test).__name__ == "CachedImages"
    assert cached.train.targets == train_labels and cached.test.targets == test_labels
    for i in range(len(test_labels)):
        torch.testing.assert_close(cached.test[i][0], plain.test[i][0])
    assert cached.train[3][0].shape == (3, 32, 32)


def test_cifar_train_transform_crops_with_padding_and_flips(tmp_path, official_cifar):
    write_cifar10(tmp_path)
    splits = get_data(cfg_for("CIFAR10", tmp_path))
    mean, std = CIFAR_STATS["CIFAR10"]
    zero = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(3, 1)   # a padded pixel
    raw = torch.from_numpy(splits.train.data[0]).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    padded_seen = flipped_or_shifted = 0
    torch.manual_seed(0)
    for _ in range(20):
        x, _ = splits.train[0]
        assert x.shape == (3, 32, 32)
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
        padded_seen += bool(torch.isclose(border, zero, atol=1e-6).all(0).any())
        flipped_or_shifted += not torch.allclose(x, expected)
    assert padded_seen > 0 and flipped_or_shifted > 0


def test_cifar100_fine_labels(tmp_path, official_cifar):
    tr, te, names = write_cifar100(tmp_path)
    splits = get_data(cfg_for("CIFAR100", tmp_path, "--image_size", "32"))
    assert splits.classes == names and splits.num_classes == 100
    assert splits.train.targets == tr and splits.test.targets == te
    mean, _ = normalisation("CIFAR100")
    assert mean == CIFAR_STATS["CIFAR100"][0] and normalisation("CUB200") == (IMAGENET_MEAN, IMAGENET_STD)


def test_cifar_data_may_name_the_extracted_folder(tmp_path, official_cifar):
    tr, _, _ = write_cifar100(tmp_path)
    splits = get_data(cfg_for("CIFAR100", tmp_path / "cifar-100-python"))
    assert splits.train.targets == tr and splits.train.data.shape == (6, 32, 32, 3)


def test_cifar_errors(tmp_path, official_cifar):
    msg = error_of(cfg_for("CIFAR10", tmp_path))
    assert str(tmp_path / "cifar-10-batches-py") in msg and "cifar-10-python.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "nothing is downloaded" in msg
    assert not os.listdir(tmp_path)                 # and nothing was written
    write_cifar10(tmp_path, as_tar=True)            # the archive, not extracted
    msg = error_of(cfg_for("CIFAR10", tmp_path))
    assert f"tar -xzf {tmp_path / 'cifar-10-python.tar.gz'} -C {tmp_path}" in msg
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz"]     # not extracted by us
    os.remove(tmp_path / "cifar-10-python.tar.gz")
    write_cifar10(tmp_path)
    cfg = cfg_for("CIFAR10", tmp_path)
    cfg.image_size = 64
    msg = error_of(cfg)
    assert "--image_size" in msg and "32" in msg
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    msg = error_of(cfg_for("CIFAR10", tmp_path))
    assert msg.startswith("--set CIFAR10: data_batch_4 missing in")


def test_cifar_copies_that_are_not_official_are_refused_before_unpickling(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    write_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": Evil()}, 2)
    msg = error_of(cfg_for("CIFAR10", tmp_path))
    assert "data_batch_1, data_batch_2, data_batch_3 (and 4 more)" in msg
    assert "are not the official files (md5 sum differs" in msg and "--set CSVList" in msg
    assert not (tmp_path / "pwned").exists()


def test_image_folder_bad_image_stops_the_cli_before_training(tmp_path):
    from tests.helpers import TINY, run_cli
    root = write_image_folder(tmp_path / "data", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    bad = root / "train" / "b" / "1.png"
    bad.write_text("<html>404 Not Found</html>")              # a failed download
    result = run_cli("--set", "ImageFolder", "--data", str(root), "--log-dir", str(tmp_path / "ckpt"),
                     "--name", "bad", "--num_generations", "1", "--epochs", "1", *TINY)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"error: {root / 'train'}: 1 of 4 listed images under {root} cannot be read "
        f"(train/b/1.png is not an image file); replace, restore or delete those files, or pass "
        f"--skip_bad_images to leave them out"]
    written = [f for _, _, files in os.walk(tmp_path / "ckpt") for f in files]
    assert not [f for f in written if f.endswith((".state", ".pth", ".csv"))], written
