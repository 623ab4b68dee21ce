"""Beyond the reference, end to end: CS-KD, later-layer forgetting, --evaluate, --export_slim,
torchvision weights."""
import re

import pandas as pd
import pytest
import torch
import torchvision

from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, TINY, run_cli
from utils.export import load_exported


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("beyond")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(8, 3, 4),
                       size=(36, 36))
    return base


def train(base, name, *extra, log_dir=None):
    """A run on the module's dataset, its experiment under `log_dir` (default: the module's)."""
    log_dir = log_dir or base / "ckpt"
    result = run_cli("--data", str(base / "datasets"), "--log-dir", str(log_dir),
                     "--name", name, "--epochs", "1", *TINY, *extra)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return log_dir / name


@pytest.fixture(scope="module")
def plain_run(two_generations):
    """The session's finished run (conftest.two_generations): 2 generations x 2 epochs."""
    return two_generations / "ckpt" / "tiny"


def test_cs_kd_run_over_two_generations(base):
    # lr 0.01: at TINY's 0.05 CS-KD's loss can blow up on this small model (its classifier is
    # drawn by --init), depending on the intra-op threads' summation order
    exp = train(base, "cskd", "--num_generations", "2", "--cs_kd", *SMALL, "--lr", "0.01")
    table = pd.read_csv(exp / "cskd.csv")
    assert table["Generation"].tolist() == [0, 0, 1, 1]
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "slim", "0.5", "slim"]


def test_later_layer_forgetting_resets_only_the_prefix(base, tmp_path):
    exp = train(base, "llf", "--num_generations", "2", "--reset_layer_name", "layer4",
                log_dir=tmp_path)
    table = pd.read_csv(exp / "llf.csv")
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "0.5"]  # no slim rows
    end0 = torch.load(exp / "gen_0" / "checkpoints" / "epoch_0.state", weights_only=True)["state_dict"]
    start1 = torch.load(exp / "gen_1" / "checkpoints" / "initial.state", weights_only=True)["state_dict"]
    reset = [k for k in end0 if k.startswith("layer4.") and k.endswith("weight")
             and end0[k].dim() == 4]
    assert len(reset) == 5  # 4 convs of the two blocks + the downsample conv
    for key in end0:
        if key in reset:
            # redrawn: float32 draws of a million weights may repeat a value or two by chance
            assert (end0[key] != start1[key]).float().mean() > 0.999, key
        elif not key.startswith("layer4.") or "bn" in key or "downsample.1" in key or key.endswith("mask"):
            assert torch.equal(end0[key], start1[key]), key


def test_evaluate_reproduces_the_reported_test_accuracy(plain_run):
    ckpt = plain_run / "gen_1" / "checkpoints" / "epoch_1.state"
    result = run_cli("--evaluate", str(ckpt), "--num_threads", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    reported = pd.read_csv(plain_run / "tiny.csv").iloc[2]["Current Tst Top 1"]
    test_line = re.search(r"^test: top-1 ([\d.]+) top-5 [\d.]+ \((\d+) images\)", result.stdout, re.M)
    assert float(test_line.group(1)) == pytest.approx(reported, abs=0.005)
    assert test_line.group(2) == "12"
    assert re.search(r"^val: top-1 [\d.]+", result.stdout, re.M)


def test_export_slim_then_evaluate_the_exported_file(plain_run, tmp_path):
    ckpt = plain_run / "gen_1" / "checkpoints" / "epoch_1.state"
    out = tmp_path / "slim.pt2"
    result = run_cli("--export_slim", str(ckpt), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_exported(str(out))
    assert not model.training and model.metadata["class_names"] == [0, 1, 2]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    again = run_cli("--export_slim", str(ckpt), str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    # the file records its dataset (--set, --data) and image size: no data flag needed
    assert model.metadata["dataset"] == {"set": "Flower102Pytorch",
                                         "data": str(plain_run.parent.parent / "datasets")}
    result = run_cli("--evaluate", str(out), "--num_threads", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    reported = pd.read_csv(plain_run / "tiny.csv").iloc[3]["Current Tst Top 1"]  # slim row, gen 1
    test_top1 = float(re.search(r"^test: top-1 ([\d.]+)", result.stdout, re.M).group(1))
    assert test_top1 == pytest.approx(reported, abs=0.005)


def test_pretrained_torchvision_weights_skip_the_classifier(base, tmp_path):
    torch.manual_seed(1)
    weights = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(weights, path)
    exp = train(base, "pretrained", "--num_generations", "1", "--pretrained", str(path),
                log_dir=tmp_path)
    start = torch.load(exp / "gen_0" / "checkpoints" / "initial.state", weights_only=True)["state_dict"]
    redrawn = 0
    for key, value in weights.items():
        conv = key.endswith("weight") and value.dim() == 4       # BatchNorm is never re-drawn
        mask = start.get(key[: -len("weight")] + "mask") if conv else None
        if key.startswith("fc."):
            assert start[key].shape[0] == 3
        elif mask is not None:     # as the reference: the fit part pretrained, the rest re-drawn
            fit = mask.bool()
            assert torch.equal(start[key][fit], value[fit]), key
            assert (start[key][~fit] != value[~fit]).float().mean() > 0.999, key
            redrawn += 1
        else:
            assert torch.equal(start[key], value), key
    assert redrawn == 20          # every conv of ResNet18 (stem, 16 in the blocks, 3 downsample)
    assert "skipped its classifier (fc.weight, fc.bias" in (exp / "train_log.txt").read_text()
