"""--forget methods, --lr_policy long_cosine_lr and --distill_previous: what each generation
starts from, the schedule of the long baseline, the born-again loss, resuming, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from configs.base_config import Config, resolve
from methods import METHODS
from models.evolution import conv_linear_parameters
from models.factory import get_model
from tests.datagen import make_lists_dataset
from tests.helpers import ROOT, SMALL, assert_one_line_error, run_cli
from trainers.state import seed_everything
from utils.distill import TeacherForward, distillation_loss

SEED = 5
ARGS = ["--image_size", "32", "--batch_size", "6", "--num_threads", "0", "--lr", "0.05",
        "--test_interval", "1", "--seed", str(SEED), "--num_generations", "2",
        "--save_every_minutes", "0", *SMALL]      # a resume state after every epoch
CLASSES = 3
SHRINK_PERTURB = ["--forget", "shrink_perturb", "--shrink", "0.3", "--perturb", "0.6",
                  "--distill_previous"]
RUNS = {   # name: flags; every run has 2 generations
    "shrink_perturb": ["--epochs", "3", "--warmup_length", "1", *SHRINK_PERTURB],
    "reinit": ["--epochs", "1", "--warmup_length", "1", "--forget", "reinit"],
    "long": ["--epochs", "3", "--warmup_length", "2", "--forget", "none", "--lr_policy",
             "long_cosine_lr", "--save_every", "1"],    # also the test of --forget none
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("forgetting")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=CLASSES,
                       per_class=(6, 2, 2), size=(36, 36))
    outputs = {}
    for name, flags in RUNS.items():
        result = run_cli("--data", base / "datasets", "--log-dir", base / "ckpt", "--name", name,
                         *ARGS, *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = result.stdout
    return SimpleNamespace(base=base, outputs=outputs)


def state_dict(run_dir, g, file):
    return torch.load(run_dir / f"gen_{g}" / "checkpoints" / file, weights_only=True)["state_dict"]


def fresh_draw(name, generation):
    """The model a new run of `name`'s flags draws for `generation` (seed + generation)."""
    cfg = resolve(Config().parse([*ARGS, *RUNS[name]]), CLASSES, 1, SEED)
    seed_everything(SEED + generation)
    return get_model(cfg)


def test_registry_holds_every_method():
    assert sorted(METHODS) == ["dnr", "ke", "llf", "lw", "none", "reinit", "shrink_perturb"]
    assert [m for m in METHODS if METHODS[m].slim_reason is None] == ["ke"]


def test_shrink_perturb_is_shrink_times_w_plus_perturb_times_a_fresh_draw(runs):
    run = runs.base / "ckpt" / "shrink_perturb"
    before, start = state_dict(run, 0, "epoch_2.state"), state_dict(run, 1, "initial.state")
    fresh = fresh_draw("shrink_perturb", 1)
    changed = dict(conv_linear_parameters(fresh))
    assert any(name.startswith("classifier") for name in changed) and len(changed) > 50
    for name, w0 in changed.items():
        assert torch.equal(start[name], 0.3 * before[name] + 0.6 * w0), name
    kept = [k for k in start if k not in changed]
    assert any("running_mean" in k for k in kept) and any(k.endswith("mask") for k in kept)
    assert all(torch.equal(start[k], before[k]) for k in kept)
    assert "no slim rows: --forget shrink_perturb" in runs.outputs["shrink_perturb"]


def test_reinit_starts_each_generation_from_its_own_fresh_draw(runs):
    start = state_dict(runs.base / "ckpt" / "reinit", 1, "initial.state")
    fresh = fresh_draw("reinit", 1).state_dict()
    assert start.keys() == fresh.keys()
    assert all(torch.equal(start[k], fresh[k]) for k in fresh)
    before = state_dict(runs.base / "ckpt" / "reinit", 0, "epoch_0.state")
    assert not torch.equal(start["classifier.3.weight"], before["classifier.3.weight"])


def test_none_keeps_every_tensor_across_the_generation_boundary(runs):
    run = runs.base / "ckpt" / "long"
    before, start = state_dict(run, 0, "epoch_2.state"), state_dict(run, 1, "initial.state")
    assert before.keys() == start.keys()
    assert [k for k in before if not torch.equal(before[k], start[k])] == []
    rows = (run / "long.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",slim," not in r for r in rows)     # header + 2 dense rows


def test_long_cosine_lr_is_one_schedule_over_all_generations(runs):
    """The lr of every epoch of both generations (the optimizer holds the next epoch's after
    each saved epoch) equals one warm-up + cosine schedule of 2 x 3 epochs built directly."""
    run = runs.base / "ckpt" / "long"
    seen = []                                  # the lr of epochs 1..6 (6: after the last one)
    for g in (0, 1):
        for e in range(3):
            ckpt = torch.load(run / f"gen_{g}" / "checkpoints" / f"epoch_{e}.state",
                              weights_only=True)
            seen.append(ckpt["optimizer"]["param_groups"][0]["lr"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)
    schedule = SequentialLR(optimizer, [LinearLR(optimizer, start_factor=0.5, total_iters=1),
                                        CosineAnnealingLR(optimizer, T_max=6 - 2)], milestones=[2])
    expected = []
    for _ in range(7):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx(expected[1:], rel=1e-12, abs=1e-15)
    assert expected[:3] == [0.025, 0.05, 0.05] and expected[6] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(expected[2:], expected[3:], strict=False))    # no restart at epoch 3
    # the momentum carried on: generation 1 starts from generation 0's optimizer state
    last = torch.load(run / "gen_0" / "checkpoints" / "epoch_2.state", weights_only=True)
    assert last["optimizer"]["state"], "SGD keeps a momentum buffer"


def test_born_again_loss_equals_a_hand_computed_figure():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])
    t = 2.0

    def softmax(row):
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p, q = softmax(s_row), softmax(t_row)
        total += sum(q[c] * (math.log(q[c]) - math.log(p[c])) for c in range(3))
    figure = t * t * total / 2
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(figure, rel=1e-6)
    assert figure > 0.1

    torch.manual_seed(0)
    model, teacher_model = nn.Linear(4, 3), nn.Linear(4, 3)
    images, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss, logits, _ = TeacherForward(teacher_model, 0.7, t)(model, images, target,
                                                            nn.CrossEntropyLoss())
    expected = (nn.functional.cross_entropy(model(images), target)
                + 0.7 * distillation_loss(model(images), teacher_model(images), t))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert not teacher_model.training and not any(p.requires_grad for p in teacher_model.parameters())
    loss.backward()
    assert model.weight.grad is not None and teacher_model.weight.grad is None


@pytest.mark.parametrize("method", [
    SHRINK_PERTURB,                     # its uninterrupted run is the module's
    pytest.param(["--forget", "none", "--lr_policy", "long_cosine_lr"], marks=pytest.mark.slow),
    pytest.param([], marks=pytest.mark.slow),
    pytest.param(["--reset_layer_name", "classifier"], marks=pytest.mark.slow),
    pytest.param(["--forget", "reinit", "--distill_previous"], marks=pytest.mark.slow),
    pytest.param(["--forget", "none"], marks=pytest.mark.slow),
    # CS-KD on this tiny model diverges at --lr 0.05 already in generation 0 (no teacher yet)
    pytest.param(["--distill_previous", "--cs_kd", "--lr", "0.005"], marks=pytest.mark.slow),
], ids=lambda m: "_".join(a.strip("-") for a in m) or "ke")
def test_killed_in_generation_1_and_resumed_ends_with_the_same_weights(runs, tmp_path, method):
    """Killed during generation 1 (which restores its teacher, its fresh draw or its carried
    schedule on resume) with --keep_checkpoints last (generation 0's files must stay until
    generation 1 ends)."""
    flags = [*ARGS, "--epochs", "3", "--warmup_length", "1", *method]
    data = ["--data", runs.base / "datasets"]
    if method is SHRINK_PERTURB:
        reference = runs.base / "ckpt" / "shrink_perturb"
    else:
        reference = tmp_path / "ref" / "run"
        done = run_cli(*data, "--log-dir", reference.parent, "--name", "run", *flags)
        assert done.returncode == 0, done.stderr[-3000:]
    flags += ["--keep_checkpoints", "last"]
    killed = tmp_path / "killed" / "run"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_KE_cls.py"), *data,
                                "--log-dir", killed.parent, "--name", "run", *flags], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline \
            and not (killed / "gen_1" / "checkpoints" / "resume.state").exists():
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "run" / "gen_1" / "checkpoints" / "epoch_2.state").exists()
    result = run_cli(*data, "--log-dir", tmp_path / "killed", "--name", "run", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = state_dict(reference, 1, "epoch_2.state")
    weights = state_dict(tmp_path / "killed" / "run", 1, "epoch_2.state")
    assert [k for k in expected if not torch.equal(expected[k], weights[k])] == []
    assert not os.path.exists(tmp_path / "killed" / "run" / "gen_0" / "checkpoints")   # last


def test_reset_layer_name_alone_means_llf():
    assert Config().parse(["--reset_layer_name", "layer4"]).forget == "llf"
    cfg = Config().parse(["--forget", "shrink_perturb"])
    assert (cfg.shrink, cfg.perturb) == (0.4, 0.1)
    assert Config().parse([]).shrink is None


@pytest.mark.parametrize("argv, needles", [
    (["--lr_policy", "long_cosine_lr"], ["long_cosine_lr", "--forget none", "--forget ke"]),
    (["--lr_policy", "long_cosine_lr", "--forget", "reinit"], ["--forget reinit"]),
    (["--forget", "shrink_perturb", "--shrink", "1.5"], ["--shrink", "[0, 1]", "1.5"]),
    (["--forget", "shrink_perturb", "--perturb", "-0.1"], ["--perturb", "[0, 1]"]),
    (["--distill_previous", "--num_generations", "1"], ["--distill_previous", "--num_generations 2"]),
    (["--reset_layer_name", "layer4", "--forget", "none"], ["--reset_layer_name", "--forget llf"]),
    (["--forget", "llf"], ["--forget llf", "--reset_layer_name PREFIX"]),
    (["--shrink", "0.5"], ["--shrink", "--forget shrink_perturb", "ke"]),
    (["--forget", "reinit", "--perturb", "0.5"], ["--perturb", "reinit"]),
    (["--distill_temperature", "2"], ["--distill_temperature", "--distill_previous"]),
    (["--forget", "none", "--split_mode", "wels", "--reset_hypothesis"], ["--reset_hypothesis"]),
    (["--forget", "reinit", "--evolve_mode", "zero"], ["--evolve_mode", "--forget reinit"]),
], ids=lambda v: "_".join(v).strip("-") if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_bad_forgetting_input_is_one_line_before_anything_is_written(tmp_path, argv, needles):
    result = run_cli("--log-dir", tmp_path / "runs", "--data", tmp_path / "data", *argv)
    assert_one_line_error(result, needles)
    assert not (tmp_path / "runs").exists()


def test_report_groups_runs_by_method_with_mean_and_std(tmp_path):
    from argtypes import ROLES_KEY, roles_record
    from configs.base_config import build_parser
    from utils.csv_utils import append_result
    from utils.report import main
    roles = {ROLES_KEY: roles_record(build_parser())}
    runs = {"ke_a": ({"forget": "ke", "lr_policy": "cosine_lr", "seed": 0}, [40.0, 50.0]),
            "ke_b": ({"forget": "ke", "lr_policy": "cosine_lr", "seed": 1}, [42.0, 54.0]),
            "long": ({"forget": "none", "lr_policy": "long_cosine_lr", "seed": 0}, [30.0, 60.0])}
    for name, (settings, top1) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.json").write_text(json.dumps(dict(settings, **roles)))
        for g, value in enumerate(top1):
            append_result(tmp_path / name / f"{name}.csv",
                          {"Name": name, "Split Rate": 0.5, "Bias Split Rate": 0.5,
                           "Current Tst Top 1": value, "Generation": g})
    assert main([str(tmp_path / n) for n in runs] + ["--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp-methods.md").read_text().splitlines()
    # ke: 40, 42 and 50, 54 (sd sqrt(2) and 2 sqrt(2)); t(0.975, 1) = 12.706; one long run
    assert table[2] == "| generation | forget=ke | forget=none lr_policy=long_cosine_lr |"
    assert table[4] == "| 0 | 41.00 ± 12.71 (n=2) | 30.00 (n=1) |"
    assert table[5] == "| 1 | 52.00 ± 25.41 (n=2) | 60.00 (n=1) |"
    assert (tmp_path / "cmp-methods.png").stat().st_size > 1000
