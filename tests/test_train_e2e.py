"""End-to-end: train_KE_cls.py as a user runs it, on a tiny generated dataset and a small model
(the default ResNet-18 runs in tests/test_arch_runs.py)."""
import json
import os
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import SMALL, TINY, run_cli
from utils.csv_utils import RESULT_COLUMNS


@pytest.fixture(scope="module")
def finished_run(two_generations):
    """The session's finished run (conftest.two_generations) and its output."""
    stdout = (two_generations / "stdout.txt").read_text()
    return two_generations / "ckpt" / "tiny", SimpleNamespace(stdout=stdout)


def test_csv_has_dense_and_slim_rows_per_generation(finished_run):
    exp, _ = finished_run
    table = pd.read_csv(exp / "tiny.csv")
    assert list(table.columns) == RESULT_COLUMNS
    assert len(table) == 4
    assert table["Generation"].tolist() == [0, 0, 1, 1]
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "slim", "0.5", "slim"]
    assert (table["Name"] == "tiny").all()
    dense = table[table["Split Rate"].astype(str) != "slim"]
    assert ((dense["Current Tst Top 1"] >= 0) & (dense["Current Tst Top 1"] <= 100)).all()
    assert (dense["Best Trn Top 1"] > 0).all()


def scalars(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_train_and_val_scalars(finished_run):
    exp, _ = finished_run
    for g in (0, 1):
        tags = scalars(exp / f"gen_{g}" / "logs")
        for tag in ("train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5",
                    "lr", "epoch_time"):
            assert tags[tag] == [0, 1], tag
    summary = scalars(exp / "logs")
    assert summary["test/dense_top1"] == [0, 1]
    assert summary["test/slim_top1"] == [0, 1]


def test_checkpoints_have_the_documented_keys(finished_run):
    exp, _ = finished_run
    for g in (0, 1):
        # every file a run writes holds only tensors and plain values (the random generators'
        # states included), so the safe loader reads it
        names = sorted(os.listdir(exp / f"gen_{g}" / "checkpoints"))
        assert names == ["epoch_1.state", "initial.state", "model_best.pth"]
        for name in names:
            torch.load(exp / f"gen_{g}" / "checkpoints" / name, weights_only=True)
        for name in ("epoch_1.state", "model_best.pth"):
            ckpt = torch.load(exp / f"gen_{g}" / "checkpoints" / name, weights_only=True)
            for key in ("epoch", "generation", "arch", "state_dict", "optimizer", "best_acc1",
                        "best_acc5", "curr_acc1", "curr_acc5", "config"):
                assert key in ckpt, (name, key)
            assert ckpt["generation"] == g and ckpt["arch"] == SMALL[1]
        last = torch.load(exp / f"gen_{g}" / "checkpoints" / "epoch_1.state", weights_only=True)
        assert last["epoch"] == 1
        # the best epoch's state, when it is the last epoch's, is on disk once under both names
        best = torch.load(exp / f"gen_{g}" / "checkpoints" / "model_best.pth", weights_only=True)
        assert os.path.samefile(exp / f"gen_{g}" / "checkpoints" / "model_best.pth",
                                exp / f"gen_{g}" / "checkpoints" / "epoch_1.state") == (best["epoch"] == 1)


def test_generation_one_starts_from_generation_zero_fit_weights(finished_run):
    exp, _ = finished_run
    end0 = torch.load(exp / "gen_0" / "checkpoints" / "epoch_1.state", weights_only=True)["state_dict"]
    start1 = torch.load(exp / "gen_1" / "checkpoints" / "initial.state", weights_only=True)["state_dict"]
    assert end0.keys() == start1.keys()
    masked = [k[:-len(".mask")] for k in end0 if k.endswith(".mask") and end0[k].dim() > 1]
    plain = torchvision.models.get_model(SMALL[1].removeprefix("Split_"))
    assert len(masked) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in plain.modules())
    for layer in masked:
        mask = end0[f"{layer}.mask"]
        before, after = end0[f"{layer}.weight"], start1[f"{layer}.weight"]
        assert torch.equal(before[mask], after[mask]), layer
        assert (before[~mask] != after[~mask]).all(), layer
    split_layers = {f"{layer}.{name}" for layer in masked for name in ("weight", "bias")}
    for key in end0:                                  # BatchNorm, running statistics, masks
        if key not in split_layers:
            assert torch.equal(end0[key], start1[key]), key


def test_settings_log_and_table(finished_run):
    exp, result = finished_run
    settings = json.loads((exp / "settings.json").read_text())
    assert settings["num_generations"] == 2 and settings["epochs"] == 2 and settings["name"] == "tiny"
    log = (exp / "train_log.txt").read_text()
    assert "generation | dense test top-1 | slim test top-1" in log
    table_lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("0 ", "1 "))]
    assert len(table_lines) >= 2


def test_refuses_to_overwrite_an_existing_experiment(finished_run):
    exp, _ = finished_run
    before = (exp / "tiny.csv").read_bytes()
    result = run_cli("--data", str(exp.parent.parent / "datasets"), "--log-dir", str(exp.parent),
                     "--name", "tiny", "--num_generations", "2", "--epochs", "2", *TINY)
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "--resume" in result.stderr
    assert (exp / "tiny.csv").read_bytes() == before


def test_resume_on_a_finished_run_says_so(finished_run):
    exp, _ = finished_run
    before = (exp / "tiny.csv").read_bytes()
    result = run_cli("--log-dir", str(exp.parent), "--name", "tiny", "--resume")
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stdout
    assert (exp / "tiny.csv").read_bytes() == before


def test_the_run_records_its_compute_and_the_roles_of_its_settings(finished_run):
    exp, _ = finished_run
    record = json.loads((exp / "compute.json").read_text())
    # 3 classes x 8 training images, 2 epochs a generation, batches of 8 (none dropped)
    assert [record["generations"][g]["train_images"] for g in ("0", "1")] == [48, 48]
    assert all(record["generations"][g]["train_seconds"] > 0 for g in ("0", "1"))
    assert record["forward_flops_per_image"] > 0
    roles = json.loads((exp / "settings.json").read_text())["setting_roles"]
    assert "forget" in roles["method"] and "epochs" in roles["recipe"] and "seed" in roles["run"]
