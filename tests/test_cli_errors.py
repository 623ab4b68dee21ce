"""Bad input ends with exit status 2, one line on stderr, no traceback."""
import re
from pathlib import Path

import pytest

from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, TINY, run_cli

DOCUMENTED_FLAGS = ["--data", "--set", "--arch", "--name", "--epochs", "--num_generations",
              "--batch_size", "--lr", "--learning-rate", "--lr_policy", "--warmup_length",
              "--multistep-lr-adjust", "--multistep-lr-gamma", "--optimizer", "--momentum", "--wd",
              "--weight_decay", "--no-bn-decay", "--label_smoothing", "--split_rate",
              "--bias_split_rate", "--split_mode", "--evolve_mode", "--reset_hypothesis", "--init",
              "--mode", "--nonlinearity", "--scale-fan", "--conv_type", "--bn_type",
              "--linear_type", "--num_threads", "--gpu", "--seed", "--test_interval",
              "--save_every", "--print-freq", "--resume", "--pretrained", "--log-dir",
              "--log_file", "--cs_kd", "--image_size", "-a", "-b", "-t", "-p"]


def test_help_lists_every_spec_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in DOCUMENTED_FLAGS:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", result.stdout, re.M), flag
    # the reference's own flags are refused, so --help does not offer them
    assert "--trainer" not in result.stdout and "--start-epoch" not in result.stdout


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["--set", "ImageNet"], ["--set", "Flower102Pytorch"]),
    (["--lr_policy", "poly"], ["--lr_policy", "cosine_lr"]),
    (["--reset_bn"], ["--reset_bn", "--reset_layer_name"]),
    (["--cs_kd", "--batch_size", "7"], ["--cs_kd", "even"]),
    (["--trainer", "default"], ["--trainer", "a flag of the reference implementation",
                                "one training loop"]),
    (["--warm", "1"], ["--warm", "needs --task retrieval"]),
    (["--epoch", "3"], ["unrecognized arguments: --epoch 3"]),    # no prefix matching
    (["--lr-decay-step", "30"], ["--lr-decay-step", "needs --task retrieval"]),
])
def test_bad_flags(argv, needles):
    """More cases, with data and checkpoints, are in test_bad_input.py."""
    assert_one_line_error(run_cli(*argv), *needles)


def test_a_run_that_failed_on_bad_data_can_be_started_again(tmp_path):
    datasets = tmp_path / "datasets"
    folder = Path(make_lists_dataset(datasets, "Flower102Pytorch", num_classes=2,
                                     per_class=(2, 1, 1), size=(32, 32)))
    trn = folder / "lists" / "trn.csv"
    good = trn.read_text()
    trn.write_text(good + "no_such_image.jpg,0\n")
    argv = ["--data", str(datasets), "--log-dir", str(tmp_path / "ckpt"), "--name", "retry",
            "--num_generations", "1", "--epochs", "1", *SMALL, *TINY]
    assert_one_line_error(run_cli(*argv), "no_such_image.jpg")
    assert not (tmp_path / "ckpt").exists()         # stopped before anything was written
    trn.write_text(good)
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ckpt" / "retry" / "retry.csv").exists()
