"""LR schedules, optimizer groups, the results CSV and model profiling (utils/)."""
import io
import math
import os
import types

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision

from configs.base_config import Config
from errors import UserError
from models.factory import get_model
from utils import csv_utils
from utils.csv_utils import RESULT_COLUMNS, append_result, read_results
from utils.model_profile import count_flops, count_parameters, format_generation_table
from utils.optim import build_optimizer
from utils.schedulers import build_scheduler

E, W, LR = 10, 3, 0.256


# ---------------------------------------------------------------- LR schedules

def expected_lrs(policy, epochs=E, warmup=W, lr=LR, adjust=30, gamma=0.1):
    """The LR of every epoch, straight from the formulas of utils/schedulers.py's docstring."""
    out = []
    for e in range(epochs):
        if policy in ("cosine_lr", "constant_lr") and e < warmup:
            out.append(lr * (e + 1) / warmup)
        elif policy == "cosine_lr":
            out.append(0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) * lr)
        elif policy == "constant_lr":
            out.append(lr)
        elif policy == "step_lr":
            out.append(lr if e < 0.5 * epochs else lr / 10 if e < 0.75 * epochs else lr / 100)
        elif policy == "multistep_lr":
            out.append(lr * gamma ** (e // adjust))
    return out


def make_cfg(policy, epochs=E, warmup=W, adjust=30, gamma=0.1, **extra):
    return types.SimpleNamespace(lr_policy=policy, lr=LR, epochs=epochs, warmup_length=warmup,
                                 multistep_lr_adjust=adjust, multistep_lr_gamma=gamma,
                                 optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                                 no_bn_decay=False, **extra)


def make_optimizer(cfg):
    return build_optimizer(nn.Linear(2, 2), cfg)


def run_epochs(optimizer, scheduler, epochs):
    """Train-loop shape: read the LR at the start of each epoch, step, then step the scheduler."""
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("policy,warmup,adjust,gamma", [
    ("cosine_lr", W, 30, 0.1), ("constant_lr", W, 30, 0.1), ("step_lr", W, 30, 0.1),
    ("multistep_lr", W, 3, 0.1), ("multistep_lr", 0, 4, 0.5),
    ("cosine_lr", 0, 30, 0.1), ("cosine_lr", 1, 30, 0.1), ("constant_lr", 0, 30, 0.1),
    ("constant_lr", 1, 30, 0.1), ("cosine_lr", E, 30, 0.1), ("cosine_lr", E + 5, 30, 0.1),
])
def test_lr_per_epoch(policy, warmup, adjust, gamma):
    cfg = make_cfg(policy, warmup=warmup, adjust=adjust, gamma=gamma)
    optimizer = make_optimizer(cfg)
    seen = run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    assert seen == pytest.approx(expected_lrs(policy, warmup=warmup, adjust=adjust, gamma=gamma),
                                 rel=1e-9, abs=1e-15)


def test_lr_known_values():
    """Spot values written out by hand, so the formulas above are not the only witness."""
    cfg = make_cfg("cosine_lr")
    optimizer = make_optimizer(cfg)
    seen = run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    assert seen[:4] == pytest.approx([LR / 3, 2 * LR / 3, LR, LR])
    assert seen[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)) * LR)
    cfg = make_cfg("multistep_lr", adjust=3, gamma=0.1)
    optimizer = make_optimizer(cfg)
    seen = run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    assert seen == pytest.approx([LR] * 3 + [LR / 10] * 3 + [LR / 100] * 3 + [LR / 1000])
    cfg = make_cfg("step_lr")
    optimizer = make_optimizer(cfg)
    seen = run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    assert seen == pytest.approx([LR] * 5 + [LR / 10] * 3 + [LR / 100] * 2)


@pytest.mark.parametrize("policy,adjust", [("cosine_lr", 30), ("constant_lr", 30),
                                           ("step_lr", 30), ("multistep_lr", 3)])
@pytest.mark.parametrize("stop", [2, 3, 6])
def test_scheduler_state_dict_round_trip(policy, adjust, stop):
    cfg = make_cfg(policy, adjust=adjust)
    optimizer = make_optimizer(cfg)
    scheduler = build_scheduler(optimizer, cfg)
    run_epochs(optimizer, scheduler, stop)
    # Through a checkpoint file, as a resumed run reads it (weights_only: plain data only).
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    saved_opt, saved_sched = saved["optimizer"], saved["scheduler"]
    rest = run_epochs(optimizer, scheduler, E - stop)

    # Resume as a fresh process would: new optimizer and scheduler, then both states loaded.
    optimizer2 = make_optimizer(cfg)
    scheduler2 = build_scheduler(optimizer2, cfg)
    optimizer2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    resumed = run_epochs(optimizer2, scheduler2, E - stop)
    assert resumed == pytest.approx(rest, rel=1e-12)
    assert resumed == pytest.approx(expected_lrs(policy, adjust=adjust)[stop:], rel=1e-9)


def test_schedule_restarts_on_a_reused_optimizer():
    """A new generation's schedule starts from cfg.lr, warm-up included."""
    cfg = make_cfg("cosine_lr")
    optimizer = make_optimizer(cfg)
    run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    seen = run_epochs(optimizer, build_scheduler(optimizer, cfg), E)
    assert seen == pytest.approx(expected_lrs("cosine_lr"), rel=1e-9)


def test_unknown_policy():
    cfg = make_cfg("poly_lr")
    with pytest.raises(ValueError, match="poly_lr"):
        build_scheduler(make_optimizer(cfg), cfg)


# ---------------------------------------------------------------- optimizer

@pytest.fixture(scope="module")
def resnet18():
    return get_model(Config().parse(["--arch", "Split_ResNet18"]))


def test_no_bn_decay_groups(resnet18):
    cfg = Config().parse(["--arch", "Split_ResNet18", "--no-bn-decay", "--wd", "5e-4"])
    optimizer = build_optimizer(resnet18, cfg)
    bn_names = {name for name, m in resnet18.named_modules() if isinstance(m, nn.BatchNorm2d)}
    expected_no_decay = expected_decay = 0
    for name, p in resnet18.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in bn_names or name.endswith(".bias"):
            expected_no_decay += p.numel()
        else:
            expected_decay += p.numel()
    assert expected_no_decay > 0 and expected_decay > 0
    by_wd = {}
    for group in optimizer.param_groups:
        by_wd[group["weight_decay"]] = by_wd.get(group["weight_decay"], 0) + sum(
            p.numel() for p in group["params"])
    assert len(optimizer.param_groups) == 2
    assert by_wd == {5e-4: expected_decay, 0.0: expected_no_decay}
    # Every parameter exactly once, and no buffer (masks, BN statistics).
    in_groups = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(list(resnet18.parameters()))
    buffers = {id(b) for b in resnet18.buffers()}
    assert not any(id(p) in buffers for p in in_groups)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW),
                                      ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = make_cfg("cosine_lr")
    cfg.optimizer, cfg.lr, cfg.weight_decay = name, 0.01, 3e-4
    optimizer = build_optimizer(model, cfg)
    assert type(optimizer) is cls
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 3e-4
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is False


# ---------------------------------------------------------------- results CSV

def dense_row(gen=1, **extra):
    row = {"Name": "exp", "Split Rate": 0.5, "Bias Split Rate": 0.5, "Generation": gen,
           "Current Val Top 1": 56.2345, "Best Val Top 1": 60, "Current Tst Top 1": 52.756,
           "Best Trn Top 5": 99.999}
    row.update(extra)
    return row


def test_csv_header_rows_and_format(tmp_path):
    path = tmp_path / "exp.csv"
    append_result(path, dense_row(1, **{"Date Finished": "01-02-21_03:04:05"}))
    append_result(path, dense_row(1, **{"Split Rate": "slim", "Bias Split Rate": "slim",
                                        "Current Tst Top 1": 1.53}))
    append_result(path, dense_row(2, **{"Split Rate": 0.125}))
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(RESULT_COLUMNS)
    assert len(lines) == 4
    assert lines[1] == ("01-02-21_03:04:05,exp,0.5,0.5,56.23,0.00,60.00,0.00,52.76,0.00,"
                        "0.00,0.00,0.00,100.00,1,")
    cells = lines[2].split(",")
    assert cells[2:4] == ["slim", "slim"] and cells[8] == "1.53" and cells[-2:] == ["1", ""]
    assert cells[0].count("_") == 1
    date, time = cells[0].split("_")
    assert len(date.split("-")) == 3 and len(time.split(":")) == 3
    assert lines[3].split(",")[2] == "0.125"

    frame = pd.read_csv(path)
    assert list(frame.columns) == RESULT_COLUMNS
    assert len(frame) == 3
    assert frame["Current Val Top 1"].tolist() == [56.23, 56.23, 56.23]
    assert frame["Split Rate"].tolist() == ["0.5", "slim", "0.125"]
    assert frame["Generation"].tolist() == [1, 1, 2]

    rows = read_results(path)
    assert [r["Split Rate"] for r in rows] == [0.5, "slim", 0.125]
    assert rows[0]["Current Tst Top 1"] == 52.76 and rows[0]["Best Tst Top 5"] == 0.0
    assert rows[0]["Date Finished"] == "01-02-21_03:04:05"
    assert [r["Generation"] for r in rows] == [1, 1, 2]


def test_csv_rejects_bad_rows(tmp_path):
    path = tmp_path / "exp.csv"
    with pytest.raises(ValueError, match="Best Val Top 10"):
        append_result(path, dense_row(**{"Best Val Top 10": 1.0}))
    with pytest.raises(ValueError, match="Name"):
        append_result(path, {k: v for k, v in dense_row().items() if k != "Name"})
    with pytest.raises(ValueError, match="Best Val Top 1"):
        append_result(path, dense_row(**{"Best Val Top 1": "high"}))
    assert not path.exists()
    assert read_results(path) == []


def test_csv_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "exp.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UserError):
        append_result(path, dense_row())
    assert path.read_text() == "a,b\n1,2\n"


def test_csv_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "exp.csv"
    append_result(path, dense_row(1))
    good = path.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(csv_utils.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        append_result(path, dense_row(2))
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["exp.csv"]
    monkeypatch.undo()
    append_result(path, dense_row(2))
    assert [r["Generation"] for r in read_results(path)] == [1, 2]


# ---------------------------------------------------------------- model profile

def test_conv_flops():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    conv.train()
    assert count_flops(conv, 16) == 2 * 8 * 3 * 9 * 16 * 16
    assert conv.training


def test_flops_and_params_match_torchvision():
    cfg = Config().parse(["--arch", "Split_ResNet18", "--split_rate", "1"])
    ours = get_model(cfg, slim=True)                  # plain layers at full width
    ours.train()
    reference = torchvision.models.resnet18(num_classes=cfg.num_cls)
    assert count_flops(ours, 64) == count_flops(reference, 64) > 0
    assert ours.training and all(m.training for m in ours.modules())
    assert count_parameters(ours) == count_parameters(reference)


def test_count_parameters_ignores_masks(resnet18):
    expected = sum(p.numel() for _, p in resnet18.named_parameters())
    assert count_parameters(resnet18) == expected
    assert count_parameters(resnet18) < expected + sum(b.numel() for b in resnet18.buffers())


def test_eval_mode_restored_per_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    model.train()
    model[2].eval()
    count_flops(model, 8)
    assert [m.training for m in model] == [True, True, False]


def test_generation_table():
    rows = [dict(generation=1, dense_top1=52.76, slim_top1=1.53, dense_gflops=3.64,
                 slim_gflops=0.95, params=11_228_838, slim_params=2_825_094),
            dict(generation=2, dense_top1=55.1, slim_top1=None, dense_gflops=3.64,
                 slim_gflops=None, params=11_228_838)]
    lines = format_generation_table(rows).splitlines()
    assert lines[0] == ("generation | dense test top-1 | slim test top-1 | dense GFLOPs | "
                        "slim GFLOPs | params")
    body = lines[2:]
    assert len(body) == len(rows)
    first = [c.strip() for c in body[0].split("|")]
    second = [c.strip() for c in body[1].split("|")]
    assert first == ["1", "52.76", "1.53", "3.64", "0.95", "11.23M / 2.83M"]
    assert second == ["2", "55.10", "-", "3.64", "-", "11.23M"]
    # Fixed width: the column separators line up.
    assert len({line.index("|") for line in [lines[0]] + body}) == 1


def test_the_launcher_of_a_resume_command(monkeypatch):
    """Outside torchrun the interpreter alone; under torchrun the same processes per node."""
    import sys

    from utils.distributed import launcher
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launcher() == [sys.executable]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert launcher() == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launcher() == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "4",
                          "--nproc_per_node", "2"]
