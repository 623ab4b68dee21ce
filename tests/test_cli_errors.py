"""Bad input ends with exit status 2, one line on stderr, no traceback."""
import os
import re
from pathlib import Path

import pytest

from tests.datagen import make_lists_dataset
from tests.test_train_e2e import TINY, run_cli

SPEC_FLAGS = ["--data", "--set", "--arch", "--name", "--epochs", "--num_generations",
              "--batch_size", "--lr", "--learning-rate", "--lr_policy", "--warmup_length",
              "--multistep-lr-adjust", "--multistep-lr-gamma", "--optimizer", "--momentum", "--wd",
              "--weight_decay", "--no-bn-decay", "--label_smoothing", "--split_rate",
              "--bias_split_rate", "--split_mode", "--evolve_mode", "--reset_hypothesis", "--init",
              "--mode", "--nonlinearity", "--scale-fan", "--conv_type", "--bn_type",
              "--linear_type", "--num_threads", "--gpu", "--seed", "--test_interval",
              "--save_every", "--print-freq", "--resume", "--pretrained", "--log-dir",
              "--log_file", "--trainer", "--cs_kd", "--image_size", "-a", "-b", "-t", "-p"]


def test_help_lists_every_spec_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in SPEC_FLAGS:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", result.stdout, re.M), flag


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["--arch", "Split_ResNet7"], ["--arch", "Split_ResNet18"]),
    (["--split_rate", "0"], ["--split_rate", "(0, 1]"]),
    (["--split_rate", "1.5"], ["--split_rate", "(0, 1]"]),
    (["--epochs", "0"], ["--epochs", ">= 1"]),
    (["--set", "ImageNet"], ["--set", "Flower102Pytorch"]),
    (["--lr_policy", "poly"], ["--lr_policy", "cosine_lr"]),
])
def test_bad_flags(argv, needles):
    assert_one_line_error(run_cli(*argv), *needles)


@pytest.fixture
def dataset(tmp_path):
    datasets = tmp_path / "datasets"
    folder = Path(make_lists_dataset(datasets, "Flower102Pytorch", num_classes=2, per_class=(2, 1, 1),
                                size=(32, 32)))
    return datasets, folder


def run_on(datasets, tmp_path):
    return run_cli("--data", str(datasets), "--log-dir", str(tmp_path / "ckpt"), "--name", "bad",
                   "--num_generations", "1", "--epochs", "1", *TINY)


def test_missing_dataset_folder_says_where_and_how(tmp_path):
    result = run_on(tmp_path / "nowhere", tmp_path)
    assert_one_line_error(result, str(tmp_path / "nowhere"), "SyntheticShapes")


def test_csv_without_label_column(dataset, tmp_path):
    datasets, folder = dataset
    trn = folder / "lists" / "trn.csv"
    trn.write_text(trn.read_text().replace("label", "class", 1))
    assert_one_line_error(run_on(datasets, tmp_path), "trn.csv", "label")


def test_listed_image_that_does_not_exist(dataset, tmp_path):
    datasets, folder = dataset
    trn = folder / "lists" / "trn.csv"
    trn.write_text(trn.read_text() + "no_such_image.jpg,0\n")
    assert_one_line_error(run_on(datasets, tmp_path), "no_such_image.jpg")
