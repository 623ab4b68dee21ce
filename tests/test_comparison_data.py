"""The data of a fair comparison: a validation split held out of the training split
(--val_fraction, --split_seed) and synthetic label noise (--label_noise, --noise_type,
--noise_seed), each drawn from a seed of its own, never from the training seed."""
import csv
import io
import json
import os
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from data import DataError
from data.formats import _cifar_hold_out
from data.holdout import HoldOut, stratified_indices
from data.label_noise import noisy_targets
from data.loading import get_data
from errors import UserError
from tests.datagen import make_lists_dataset, make_original
from tests.helpers import SMALL, TINY, assert_one_line_error, run_cli
from trainers.data_records import check_records, write_records

CLASSES, PER_CLASS = 3, 10        # training images per class of the generated dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A lists dataset without val.csv (train / test) and one with it."""
    root = tmp_path_factory.mktemp("comparison_data")
    make_lists_dataset(root / "no_val", "Flower102Pytorch", num_classes=CLASSES,
                       per_class=(PER_CLASS, 2, 3), size=(16, 16), with_val=False)
    make_lists_dataset(root / "with_val", "Flower102Pytorch", num_classes=CLASSES,
                       per_class=(4, 2, 2), size=(16, 16))
    return root


def splits_of(make_cfg, data, *argv):
    return get_data(make_cfg("--data", data, "--image_size", "16", "--num_threads", "0", *argv))


def files_and_targets(dataset):
    inner = getattr(dataset, "original", None) or dataset       # a cached split keeps its source
    return list(zip(inner.files, dataset.targets, strict=True))


# ---- label noise -------------------------------------------------------------------------------

def test_symmetric_noise_flips_at_the_rate_to_other_classes():
    clean = np.arange(1000) % 10
    noisy = noisy_targets(clean, 10, 0.4, "symmetric", seed=0)
    changed = noisy != clean
    assert abs(changed.mean() - 0.4) <= 0.03
    assert ((noisy >= 0) & (noisy < 10)).all()
    # the new class is uniform over the 9 others: each gets about 1/9 of class 0's flips
    targets_of_class_0 = Counter(noisy[(clean == 0) & changed].tolist())
    assert set(targets_of_class_0) == set(range(1, 10))


def test_pairflip_moves_to_the_next_class_at_the_rate():
    clean = np.arange(1000) % 7
    noisy = noisy_targets(clean, 7, 0.4, "pairflip", seed=3)
    changed = noisy != clean
    assert abs(changed.mean() - 0.4) <= 0.03
    assert (noisy[changed] == (clean[changed] + 1) % 7).all()


def test_noise_depends_on_its_seed_alone():
    clean = np.arange(200) % 5
    a = noisy_targets(clean, 5, 0.4, "symmetric", seed=1)
    assert (a == noisy_targets(clean, 5, 0.4, "symmetric", seed=1)).all()
    assert (a != noisy_targets(clean, 5, 0.4, "symmetric", seed=2)).any()


def test_every_method_and_training_seed_gets_the_same_noisy_labels(make_cfg, datasets):
    data = datasets / "no_val"
    clean = splits_of(make_cfg, data)
    ke = splits_of(make_cfg, data, "--label_noise", "0.4", "--forget", "ke", "--seed", "1")
    none = splits_of(make_cfg, data, "--label_noise", "0.4", "--forget", "none", "--seed", "7")
    other = splits_of(make_cfg, data, "--label_noise", "0.4", "--noise_seed", "5")
    assert ke.train.targets == none.train.targets
    assert ke.records["noisy_labels.csv"] == none.records["noisy_labels.csv"]
    assert ke.train.targets != clean.train.targets
    assert other.train.targets != ke.train.targets
    # validation (here the test split) and test keep their clean labels
    for noisy in (ke, none):
        assert files_and_targets(noisy.test) == files_and_targets(clean.test)
        assert files_and_targets(noisy.val) == files_and_targets(clean.val)


def test_noise_leaves_held_out_validation_clean(make_cfg, datasets):
    data = datasets / "no_val"
    clean = splits_of(make_cfg, data, "--val_fraction", "0.3")
    noisy = splits_of(make_cfg, data, "--val_fraction", "0.3", "--label_noise", "0.6",
                      "--noise_type", "pairflip")
    assert files_and_targets(noisy.val) == files_and_targets(clean.val)
    assert files_and_targets(noisy.test) == files_and_targets(clean.test)
    changed = [(a, b) for a, b in zip(clean.train.targets, noisy.train.targets, strict=True) if a != b]
    assert changed and all(b == (a + 1) % CLASSES for a, b in changed)
    rows = list(csv.DictReader(io.StringIO(noisy.records["noisy_labels.csv"])))
    assert len(rows) == len(noisy.train)                 # training images only
    assert {r["file_name"] for r in rows}.isdisjoint(f for f, _ in files_and_targets(noisy.val))


# ---- validation hold-out -----------------------------------------------------------------------

def test_hold_out_is_stratified_and_depends_on_the_split_seed_alone(make_cfg, datasets):
    data = datasets / "no_val"
    full = splits_of(make_cfg, data)
    assert full.validation_split == "test"
    a = splits_of(make_cfg, data, "--val_fraction", "0.3", "--seed", "1", "--forget", "ke")
    b = splits_of(make_cfg, data, "--val_fraction", "0.3", "--seed", "2", "--forget", "none")
    c = splits_of(make_cfg, data, "--val_fraction", "0.3", "--split_seed", "1")
    assert a.validation_split == "held_out"
    assert Counter(a.val.targets) == {k: 3 for k in range(CLASSES)}        # round(0.3 x 10)
    assert Counter(a.train.targets) == {k: 7 for k in range(CLASSES)}
    train, val = files_and_targets(a.train), files_and_targets(a.val)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(files_and_targets(full.train))
    assert files_and_targets(a.test) == files_and_targets(full.test)
    assert (train, val) == (files_and_targets(b.train), files_and_targets(b.val))
    assert a.records["val_split.csv"] == b.records["val_split.csv"]
    assert files_and_targets(c.val) != val
    rows = list(csv.DictReader(io.StringIO(a.records["val_split.csv"])))
    assert sorted(r["file_name"] for r in rows if r["split"] == "val") == sorted(f for f, _ in val)
    assert len(rows) == CLASSES * PER_CLASS


@pytest.mark.parametrize("set_name", ["CUB200", "Dog120", "MIT67", "OxfordIIITPet"])
def test_hold_out_of_an_original_download_without_validation(make_cfg, tmp_path, set_name):
    make_original(tmp_path, set_name, per_split=(4, 0, 1))
    splits = splits_of(make_cfg, tmp_path, "--set", set_name, "--val_fraction", "0.25")
    assert splits.validation_split == "held_out"
    assert Counter(splits.val.targets) == {0: 1, 1: 1, 2: 1}
    assert Counter(splits.train.targets) == {0: 3, 1: 3, 2: 3}
    assert len(splits.test) == 3


def test_hold_out_of_cifar_batches_shares_nothing_with_training():
    labels = [i % 4 for i in range(40)]
    train = SimpleNamespace(data=np.arange(40)[:, None], targets=labels, transform="train",
                            classes=list("abcd"))
    kept, held, record = _cifar_hold_out(train, HoldOut(0.25, 0), "CIFAR10")
    assert Counter(held.targets) == {k: 3 for k in range(4)}         # round(0.25 x 10)
    assert set(kept.data[:, 0]).isdisjoint(held.data[:, 0])
    assert len(kept.data) + len(held.data) == 40 and held.transform != "train"
    assert all(labels[i] == t for i, t in zip(held.data[:, 0], held.targets, strict=True))
    assert record.count("\nval,") == 12


@pytest.mark.parametrize("fraction, needle", [
    (0.01, "too few training images to hold any out"),
    (0.99, "would keep no training image"),
])
def test_a_fraction_that_empties_a_class_is_refused(fraction, needle):
    with pytest.raises(DataError, match=needle):
        stratified_indices(["x"] * 10 + ["y"] * 20, HoldOut(fraction, 0), "trn.csv")


def test_a_class_with_one_training_image_is_refused():
    with pytest.raises(DataError, match="single training image of class"):
        stratified_indices(["x"] * 10 + ["y"], HoldOut(0.5, 0), "trn.csv")


def test_hold_out_is_refused_before_decoding_and_with_a_real_validation_split(make_cfg, datasets,
                                                                                tmp_path):
    data = tmp_path / "broken"
    folder = make_lists_dataset(data, "Flower102Pytorch", num_classes=2, per_class=(4, 0, 2),
                                size=(16, 16), with_val=False)
    with open(os.path.join(folder, "jpg", "class_0", "trn_000.jpg"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match="--val_fraction 0.05"):   # not the broken image
        splits_of(make_cfg, data, "--val_fraction", "0.05")
    with pytest.raises(DataError, match="is a validation split already"):
        splits_of(make_cfg, datasets / "with_val", "--val_fraction", "0.5")
    assert splits_of(make_cfg, datasets / "with_val").validation_split == "val"


# ---- flags and records -------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--label_noise", "1"], "--label_noise"),
    (["--label_noise", "-0.1"], "--label_noise"),
    (["--val_fraction", "1.0"], "--val_fraction"),
    (["--val_fraction", "-0.5"], "--val_fraction"),
    (["--noise_type", "asymmetric"], "--noise_type"),
    (["--split_seed", "-1"], "--split_seed"),
    (["--set", "CUB200_RET", "--label_noise", "0.2"], "--label_noise"),
    (["--task", "retrieval", "--val_fraction", "0.2"], "--val_fraction"),
])
def test_bad_values_stop_in_one_line(argv, needle, tmp_path):
    result = run_cli("--data", tmp_path, "--log-dir", tmp_path / "ckpt", *argv)
    assert_one_line_error(result, [needle])
    assert not (tmp_path / "ckpt").exists()


def test_records_are_written_once_and_a_different_one_is_refused(tmp_path):
    write_records(str(tmp_path), {"val_split.csv": "split,index\nval,0\n"})
    write_records(str(tmp_path), {"val_split.csv": "split,index\nval,0\n"})     # a resume
    assert (tmp_path / "val_split.csv").read_text() == "split,index\nval,0\n"
    with pytest.raises(UserError, match="val_split.csv holds another validation hold-out"):
        check_records(str(tmp_path), {"val_split.csv": "split,index\nval,1\n"})
    assert (tmp_path / "val_split.csv").read_text() == "split,index\nval,0\n"
    assert os.listdir(tmp_path) == ["val_split.csv"]                          # no temporary left


def test_a_run_with_held_out_validation_and_noisy_labels(tmp_path):
    """One generation on the decoded cache with batched crops, both flags on; its resume after
    the training list changed is refused."""
    make_lists_dataset(tmp_path / "data", "Flower102Pytorch", num_classes=CLASSES,
                       per_class=(8, 0, 2), size=(36, 36), with_val=False)
    result = run_cli("--data", tmp_path / "data", "--log-dir", tmp_path / "ckpt", "--name", "run",
                     "--num_generations", "1", "--epochs", "1", *SMALL, *TINY,
                     "--cache_images", "--batched_crops", "on", "--val_fraction", "0.25",
                     "--split_seed", "4", "--label_noise", "0.5", "--noise_type", "pairflip")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training crops: batched" in result.stdout
    exp = tmp_path / "ckpt" / "run"
    settings = json.loads((exp / "settings.json").read_text())
    assert {k: settings[k] for k in ("validation_split", "val_fraction", "split_seed",
                                     "label_noise", "noise_type", "noise_seed")} == {
        "validation_split": "held_out", "val_fraction": 0.25, "split_seed": 4,
        "label_noise": 0.5, "noise_type": "pairflip", "noise_seed": 4}
    split = list(csv.DictReader((exp / "val_split.csv").open()))
    assert Counter(r["label"] for r in split if r["split"] == "val") == {"0": 2, "1": 2, "2": 2}
    noisy = list(csv.DictReader((exp / "noisy_labels.csv").open()))
    assert [r["file_name"] for r in noisy] == [r["file_name"] for r in split if r["split"] == "train"]
    assert all(int(r["noisy_label"]) in (int(r["label"]), (int(r["label"]) + 1) % CLASSES)
               for r in noisy)
    # the training list changes under the unfinished run: its hold-out is no longer the saved one
    (exp / "run.csv").write_text((exp / "run.csv").read_text().splitlines()[0] + "\n")
    trn = tmp_path / "data" / "flower102" / "lists" / "trn.csv"
    trn.write_text("".join(trn.read_text().splitlines(keepends=True)[:-1]))
    resumed = run_cli("--data", tmp_path / "data", "--log-dir", tmp_path / "ckpt", "--name", "run",
                      "--resume")
    assert_one_line_error(resumed, ["val_split.csv holds another validation hold-out"])
