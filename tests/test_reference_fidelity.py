"""Same numbers as the reference implementation (ahmdtaha/knowledge_evolution), and the
documented deviations from it (README, "Differences from the reference").

Every expectation here is computed independently in the test (a two-pass CS-KD step written
out, the reference's formulas for the learning rate and the label smoothing, counts of
parameters by name) or is a figure derived by hand in a comment. One short CLI run (a 3-class
CSVList dataset, --pretrained) is shared by the tests that read its outputs, and one argparse
error runs as its own process.
"""
import copy
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import train_KE_cls
from argtypes import ROLES_KEY
from configs.base_config import Config, resolve
from layers.split_base import SplitMixin
from models import evolution, factory
from tests.datagen import make_lists_dataset
from trainers.experiment import Experiment
from trainers.generation import GenerationTrainer
from trainers.knowledge_evolution import pretrained_start
from trainers.signals import StopRequest
from utils.checkpoint import load_checkpoint
from utils.cs_kd import cs_kd_forward, cs_kd_loss
from utils.distributed import World
from utils.optim import build_optimizer
from utils.schedulers import build_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # two shared cores


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread):
    """Two shared cores: one intra-op thread is several times faster than two fighting."""
    yield


def config(*argv, num_classes=3, seed=0):
    """The resolved configuration of these flags (as the trainer uses it), on the CPU."""
    cfg = Config().parse(["--set", "CSVList", "--data", "/nowhere", "-t", "0",
                          "--image_size", "32", *[str(a) for a in argv]])
    return resolve(cfg, num_classes, 1, seed)


def split_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SplitMixin)]


# ------------------------------------------------------------------ the shared short CLI run

TRAIN, VAL, TEST = 8, 4, 4          # images per class; 3 classes


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One generation of 1 epoch on a generated 3-class CSVList dataset, from a --pretrained
    file, without --seed (so the drawn seed must be recorded)."""
    base = tmp_path_factory.mktemp("fidelity")
    folder = make_lists_dataset(base / "data", "CUB200", num_classes=3,
                                per_class=(TRAIN, VAL, TEST), size=(36, 36))
    torch.manual_seed(1234)
    pre_cfg = config("--arch", "Split_ResNet18")
    pretrained = factory.get_model(pre_cfg)
    with torch.no_grad():                        # BatchNorm unlike a fresh one, too
        for m in pretrained.modules():
            if isinstance(m, _BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    pre_path = base / "pretrained.state"
    torch.save({"arch": "Split_ResNet18", "state_dict": pretrained.state_dict()}, pre_path)
    args = ["--set", "CSVList", "--data", folder, "--log-dir", str(base / "ckpt"), "--name", "fid",
            "--num_generations", "1", "--epochs", "1", "--image_size", "32", "--batch_size", "8",
            "--num_threads", "0", "--lr", "0.05", "--warmup_length", "0", "--test_interval", "1",
            "--pretrained", str(pre_path)]
    result = subprocess.run([PY, os.path.join(ROOT, "train_KE_cls.py"), *args],
                            capture_output=True, text=True, cwd=ROOT, env=ONE_THREAD, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = base / "ckpt" / "fid"
    with open(exp / "settings.json") as f:
        settings = json.load(f)
    return {"exp": exp, "settings": settings, "pretrained": pretrained.state_dict(),
            "data": folder}


# ------------------------------------------------ item 2: the last partial batch is trained on

class Tiny(torch.utils.data.Dataset):
    """N one-number 'images' with labels i % 10."""

    def __init__(self, n):
        self.targets = [i % 10 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), self.targets[i]


class Splits:
    def __init__(self, n):
        self.train = Tiny(n)
        self.num_classes, self.classes = 10, [str(c) for c in range(10)]


def make_trainer(cfg, n=16, folder="/nowhere"):
    return GenerationTrainer(cfg, Experiment(str(folder), "t"), 0, torch.device("cpu"), Splits(n),
                             None, nn.CrossEntropyLoss(), StopRequest(), World())


def epoch_batches(trainer, epoch=0):
    trainer.start_epoch(epoch, 0)
    return [len(target) for _, target in trainer.train_loader]


@pytest.mark.parametrize("n,batch,steps,last", [
    (1020, 32, 32, 28),          # Flowers-102's 1,020 training images: ceil(1020/32) = 32 steps
    (97, 32, 3, 32),             # 3*32 + 1: the one-image batch is dropped, 3 steps
    (98, 32, 4, 2),              # 3*32 + 2: a batch of two is kept
    (50, 8, 7, 2),               # ceil(50/8) = 7
])
def test_training_loader_keeps_the_last_partial_batch(n, batch, steps, last):
    trainer = make_trainer(config("-b", batch), n)
    sizes = epoch_batches(trainer)
    expected_steps = math.ceil(n / batch) - (1 if n % batch == 1 else 0)
    assert len(sizes) == expected_steps == steps
    assert sizes[-1] == last and sum(sizes) == n - (1 if n % batch == 1 else 0)
    assert len(trainer.train_loader) == steps


@pytest.mark.parametrize("n,batch,steps,last_anchors", [
    (1020, 32, 64, 12),          # 16 anchors a batch: ceil(1020/16) = 64 steps, the last of 12
    (81, 32, 5, 16),             # 5*16 + 1 anchors: a one-anchor batch (BatchNorm on one image
                                 # in both passes) is dropped
    (82, 32, 6, 2),
])
def test_cs_kd_loader_keeps_the_last_partial_batch(n, batch, steps, last_anchors):
    trainer = make_trainer(config("-b", batch, "--cs_kd"), n)
    sizes = epoch_batches(trainer)
    assert len(sizes) == steps == len(trainer.train_loader)
    assert sizes[-1] == 2 * last_anchors
    assert all(s == batch for s in sizes[:-1])


# ------------------------------------------ item 3: --pretrained, then the reset part re-drawn

@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("pre")
    torch.manual_seed(99)
    model = factory.get_model(config("--arch", "Split_ResNet18"))
    path = base / "pre.state"
    torch.save({"arch": "Split_ResNet18", "state_dict": model.state_dict()}, path)
    return path, model.state_dict()


def check_fit_kept_reset_redrawn(state, reference):
    """Fit weights equal `reference`, reset weights re-drawn; BatchNorm and masks equal."""
    masks = {k[:-len(".mask")]: v for k, v in state.items() if k.endswith(".mask")}
    assert masks
    redrawn = 0
    for layer, mask in masks.items():
        weight, ref = state[layer + ".weight"], reference[layer + ".weight"]
        if weight.dim() == 1:                       # BatchNorm: a channel mask, never reset
            assert torch.equal(weight, ref)
            continue
        assert torch.equal(weight[mask], ref[mask]), layer
        # re-drawn: float32 draws coincide with the old value now and then (about one in 10^7)
        same = int((weight[~mask] == ref[~mask]).sum())
        assert same <= max(2, 1e-5 * int((~mask).sum())), (layer, same)
        redrawn += int((~mask).sum())
    for key in state:
        if any(word in key for word in ("running", "num_batches", "mask", "bias")):
            assert torch.equal(state[key], reference[key]), key
    return redrawn


def test_pretrained_fit_part_loaded_reset_part_redrawn(pretrained_file, tmp_path):
    path, reference = pretrained_file
    trainer = make_trainer(config("--arch", "Split_ResNet18", "--pretrained", path), folder=tmp_path)
    model = trainer.start(pretrained_start(trainer.cfg, trainer.fresh_model()))
    redrawn = check_fit_kept_reset_redrawn(model.state_dict(), reference)
    fit = evolution.count_fit_weights(model)
    assert redrawn > fit  # KELS at 0.5 keeps a quarter of a conv (half the rows x half the columns)
    trainer.checkpoints.wait()                  # initial.state is written in the background
    saved = load_checkpoint(tmp_path / "gen_0" / "checkpoints" / "initial.state")["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_keep_pretrained_reset_keeps_every_weight(pretrained_file, tmp_path):
    path, reference = pretrained_file
    trainer = make_trainer(config("--arch", "Split_ResNet18", "--pretrained", path,
                                  "--keep_pretrained_reset"), folder=tmp_path)
    state = trainer.start(pretrained_start(trainer.cfg, trainer.fresh_model())).state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


def test_cli_pretrained_initial_state(cli_run):
    initial = load_checkpoint(cli_run["exp"] / "gen_0" / "checkpoints" / "initial.state")
    check_fit_kept_reset_redrawn(initial["state_dict"], cli_run["pretrained"])


# --------------------------------------------------------------------- item 4: the CS-KD step

def reference_label_smoothing(logits, target, smoothing):
    """The reference's LabelSmoothing (utils/evolution.py), written out."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
    return ((1 - smoothing) * nll + smoothing * (-logp.mean(dim=-1))).mean()


def reference_kd(anchor_logits, partner_logits, t=4.0):
    """The reference's KDLoss(4): KLDivLoss(reduction='sum')(log p, q) * T^2 / pairs."""
    log_p = F.log_softmax(anchor_logits / t, dim=1)
    q = F.softmax(partner_logits / t, dim=1)
    return (q * (q.log() - log_p)).sum() * t * t / anchor_logits.shape[0]


def test_cs_kd_loss_figure():
    # anchor logits [0, 0] -> p = (1/2, 1/2); partner logits [4 ln 3, 0] at T=4 -> q = (3/4, 1/4)
    # KL(q||p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120; x T^2 = 16 -> 2.0929925 per pair
    anchor = torch.zeros(1, 2)
    partner = torch.tensor([[4 * math.log(3.0), 0.0]])
    assert cs_kd_loss(anchor, partner) == pytest.approx(2.0929925, abs=1e-5)
    # 'batchmean': two identical pairs give the same value, not half of it (per-element mean
    # over pairs x classes would give 2.0929925 / 2 = 1.0464962)
    assert cs_kd_loss(anchor.repeat(2, 1), partner.repeat(2, 1)) == pytest.approx(2.0929925, abs=1e-5)


def test_cs_kd_step_equals_two_pass_reference_step():
    torch.manual_seed(0)
    cfg = config("--arch", "Split_ResNet18", "--cs_kd", num_classes=5)
    ours = factory.get_model(cfg)
    theirs = copy.deepcopy(ours)
    ours.train()
    theirs.train()
    images = torch.randn(8, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])     # anchors, then their partners
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)  # what the trainer uses

    loss, logits, anchor_targets = cs_kd_forward(ours, images, targets, criterion)
    loss.backward()

    out = theirs(images[:4])
    with torch.no_grad():
        partner = theirs(images[4:])
    expected = reference_label_smoothing(out, targets[:4], 0.1) + 3 * reference_kd(out, partner)
    expected.backward()

    assert torch.equal(anchor_targets, targets[:4]) and logits.shape == (4, 5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours_params.items():
        q = theirs_params[name].grad
        assert q is not None and q.abs().max() > 0, name
        worst = max(worst, ((p.grad - q).abs().max() / q.abs().max()).item())
    assert worst < 1e-5      # float32 rounding only (the CE is summed in another order)
    theirs_buffers = dict(theirs.named_buffers())
    bns = 0
    for name, b in ours.named_buffers():
        if "num_batches_tracked" in name:
            assert b.item() == 2, name                  # two passes per step
            bns += 1
        if "running" in name:
            assert torch.allclose(b, theirs_buffers[name], rtol=1e-5, atol=1e-6), name
    assert bns == 20                                    # ResNet18: 20 BatchNorm layers


def test_cs_kd_batchnorm_counts_two_per_step():
    torch.manual_seed(0)
    cfg = config("--arch", "Split_ResNet18", "--cs_kd", num_classes=4)
    model = factory.get_model(cfg)
    optimizer = build_optimizer(model, cfg)
    for _ in range(3):
        loss, _, _ = cs_kd_forward(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]),
                                   nn.CrossEntropyLoss())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.bn1.num_batches_tracked.item() == 6


def test_trainer_uses_the_cs_kd_step():
    trainer = make_trainer(config("--cs_kd"))
    assert trainer.forward is cs_kd_forward


# ------------------------------------------------- items 5 and 8: recipe and optimizer defaults

@pytest.mark.parametrize("argv,weight_decay", [
    (["--arch", "Split_vgg11_bn"], 5e-4),
    (["--arch", "Split_vgg16_bn", "--optimizer", "rmsprop"], 5e-4),
    (["--arch", "Split_ResNet18"], 1e-4),
    (["--arch", "Split_densenet121", "--optimizer", "adamw"], 1e-4),
    (["--arch", "Split_ResNet50", "--optimizer", "adam"], 0.0),
    (["--arch", "Split_vgg11_bn", "--optimizer", "adam"], 0.0),
    (["--arch", "Split_vgg11_bn", "--wd", "3e-3"], 3e-3),
    (["--arch", "Split_ResNet18", "--optimizer", "adam", "--weight_decay", "2e-5"], 2e-5),
])
def test_weight_decay_default_per_recipe(argv, weight_decay):
    assert config(*argv).weight_decay == weight_decay


def test_settings_records_weight_decay(cli_run):
    assert cli_run["settings"]["weight_decay"] == 1e-4         # Split_ResNet18, sgd
    assert cli_run["settings"]["optimizer"] == "sgd"


def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("argv,kind,expected", [
    # the reference's get_optimizer (KE_model.py): SGD(momentum, weight_decay), Adam(lr) only,
    # RMSprop(alpha=0.9, momentum=0.9, weight_decay), AdamW(weight_decay); PyTorch's eps 1e-8
    ([], torch.optim.SGD, {"lr": 0.256, "momentum": 0.9, "dampening": 0, "nesterov": False,
                           "weight_decay": 1e-4}),
    (["--optimizer", "adam"], torch.optim.Adam, {"lr": 0.256, "weight_decay": 0.0,
                                                 "betas": (0.9, 0.999), "eps": 1e-8,
                                                 "amsgrad": False}),
    (["--optimizer", "rmsprop"], torch.optim.RMSprop, {"lr": 0.256, "alpha": 0.9, "momentum": 0.9,
                                                       "eps": 1e-8, "centered": False,
                                                       "weight_decay": 1e-4}),
    (["--optimizer", "rmsprop", "--momentum", "0.5"], torch.optim.RMSprop, {"alpha": 0.9,
                                                                          "momentum": 0.5}),
    (["--optimizer", "adamw"], torch.optim.AdamW, {"lr": 0.256, "weight_decay": 1e-4,
                                                   "eps": 1e-8}),
])
def test_optimizer_settings_as_the_reference(argv, kind, expected):
    optimizer = build_optimizer(small_net(), config(*argv))
    assert type(optimizer) is kind and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    for key, value in expected.items():
        assert group[key] == value, key


# ----------------------------------------------------------- item 6: settings.json == config

def test_settings_json_is_the_runs_config(cli_run):
    settings = cli_run["settings"]
    assert settings["num_cls"] == 3                 # the data's classes, not a catalog guess
    assert isinstance(settings["seed"], int) and 0 <= settings["seed"] < 2**32
    ckpts = sorted((cli_run["exp"] / "gen_0" / "checkpoints").glob("epoch_*.state"))
    assert [p.name for p in ckpts] == ["epoch_0.state"]
    saved = load_checkpoint(ckpts[0])["config"]
    assert set(settings) - {ROLES_KEY} == set(saved)      # the roles: for the reports only
    assert set(settings[ROLES_KEY]) == {"method", "recipe", "run"}
    for key in saved:
        assert json.loads(json.dumps(saved[key])) == settings[key], key
    assert settings["process_batch_size"] == 8 and settings["batch_size"] == 8


# --------------------------------------------------------------- item 7: reference flags

REFUSED = [
    (["--start-epoch", "3"], "--resume"),
    (["--world_size", "2"], "torchrun"),
    (["--slim_factor", "0.5"], "--export_slim"),
    (["--reset_mask"], "--reset_hypothesis"),
]


@pytest.mark.parametrize("argv,instead", REFUSED, ids=[a[0] for a, _ in REFUSED])
def test_reference_flag_refused_with_what_to_use(argv, instead, capsys):
    with pytest.raises(SystemExit) as info:
        train_KE_cls.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.out == ""
    assert argv[0] in lines[0] and instead in lines[0]


@pytest.mark.parametrize("argv", [["--epoch", "3"], ["--warmup", "2"], ["--lr_pol", "step_lr"]])
def test_abbreviations_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_KE_cls.main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "unrecognized arguments" in lines[0] and argv[0] in lines[0]


def test_refused_flag_from_the_command_line():
    result = subprocess.run([PY, os.path.join(ROOT, "train_KE_cls.py"), "--world_size", "2"],
                            capture_output=True, text=True, cwd=ROOT, env=ONE_THREAD,
                            timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "torchrun" in result.stderr and result.stdout == ""


def test_xavier_constant_init_is_used():
    torch.manual_seed(0)
    model = factory.get_model(config("--arch", "Split_ResNet18", "--init", "xavier_constant"))
    # conv1: 64 x 3 x 7 x 7, fan_in 147, fan_out 3136: sqrt(2 / 3283) = 0.0246822
    values = model.conv1.weight.detach().abs().unique()
    assert values.numel() == 1 and values.item() == pytest.approx(0.0246822, rel=1e-5)
    w = model.layer1[0].conv1.weight.detach()      # 64 x 64 x 3 x 3: sqrt(2 / 1152) = 0.0416667
    assert torch.allclose(w.abs(), torch.full_like(w, 0.0416667), rtol=1e-5)
    assert (w > 0).any() and (w < 0).any()
    fc = model.fc.weight.detach().abs()            # 3 x 512: sqrt(2 / 515) = 0.0623177
    assert torch.allclose(fc, torch.full_like(fc, 0.0623177), rtol=1e-5)


# ------------------------------------------------------ deviations listed in the README section

@torch.no_grad()
def test_densenet_slim_is_exactly_the_fit_hypothesis_at_0_3():
    torch.manual_seed(0)
    cfg = config("--arch", "Split_densenet121", "--split_rate", "0.3", "--evolve_mode", "zero")
    dense = factory.get_model(cfg)
    evolution.split_reinitialize(cfg, dense)               # reset hypothesis zeroed
    bns = [m for m in dense.modules() if isinstance(m, _BatchNorm)]
    for m in bns:                       # channel-dependent BatchNorm, statistics measured on the
        m.weight.uniform_(0.5, 1.5)     # zeroed network so the signal keeps its scale
        m.bias.normal_(0.0, 0.1)
        m.reset_running_stats()
        m.momentum = None
    dense.train()
    dense(torch.randn(4, 3, 32, 32))
    slim = evolution.extract_slim(factory.get_model(cfg, slim=True), dense)
    layer = slim.features.denseblock1.denselayer1
    # bottleneck: ceil(0.3 * 128) = 39 filters, the fit rows of the dense 128 (the reference
    # builds 4 * ceil(0.3 * 32) = 40 and so copies one reset filter)
    assert layer.conv1.out_channels == 39 and layer.conv2.in_channels == 39
    assert layer.conv2.out_channels == 10                   # ceil(0.3 * 32)
    dense_conv1 = dict(dense.named_modules())["features.denseblock1.denselayer1.conv1"]
    assert int(dense_conv1.mask[:, 0].flatten().sum()) == 39
    dense.eval()
    slim.eval()
    x = torch.randn(3, 3, 32, 32)
    expected, got = dense(x), slim(x)
    scale = expected.abs().max().item()
    assert scale > 0 and (expected[0] - expected[1]).abs().max().item() > 0.05 * scale
    assert (got - expected).abs().max().item() <= 1e-4 * scale


def test_best_test_accuracy_is_that_of_model_best(cli_run):
    from data.loading import get_data
    table = pd.read_csv(cli_run["exp"] / "fid.csv")
    dense = table[table["Split Rate"].astype(str) != "slim"]
    assert len(dense) == 1
    cfg = Config().parse(["--set", "CSVList", "--data", cli_run["data"], "-t", "0",
                          "--image_size", "32"])
    cfg = resolve(cfg, 3, 1, 0)
    splits = get_data(cfg)
    model = factory.get_model(cfg)
    model.load_state_dict(load_checkpoint(cli_run["exp"] / "gen_0" / "checkpoints" /
                                          "model_best.pth")["state_dict"])
    model.eval()
    loader = torch.utils.data.DataLoader(splits.test, batch_size=6)
    correct = total = 0
    with torch.no_grad():
        for images, target in loader:
            correct += int((model(images).argmax(1) == target).sum())
            total += len(target)
    assert total == 3 * TEST
    assert dense["Best Tst Top 1"].item() == pytest.approx(100.0 * correct / total, abs=0.01)
    # 3 classes: top-5 is top-3, every image; the reference writes 0.00 in both columns
    assert dense["Best Tst Top 5"].item() == pytest.approx(100.0)


def test_results_csv_is_standard_with_a_generation_column(cli_run):
    path = cli_run["exp"] / "fid.csv"
    header = path.read_text().splitlines()[0]
    assert ", " not in header and header.startswith("Date Finished,Name,Split Rate,")
    table = pd.read_csv(path)
    assert "Current Tst Top 1" in table.columns
    assert list(table.columns[-2:]) == ["Generation", "Forget"]
    assert table["Forget"].tolist() == ["ke"] * len(table)
    assert table["Generation"].tolist() == [0] * len(table)
    assert table["Name"].tolist() == ["fid"] * len(table)


def test_reset_hypothesis_draws_new_wels_masks_each_generation():
    torch.manual_seed(0)
    cfg = config("--arch", "Split_ResNet18", "--split_mode", "wels", "--reset_hypothesis")
    model = factory.get_model(cfg)
    before = {n: m.mask.clone() for n, m in split_modules(model)}
    evolution.split_reinitialize(cfg, model)                 # the start of generation 1
    after = {n: m.mask.clone() for n, m in split_modules(model)}
    assert len(before) == 21                                 # 20 convs + the classifier
    for name, mask in after.items():
        assert not torch.equal(mask, before[name]), name
    big = model.layer4[0].conv2.mask                          # 512 x 512 x 3 x 3 weights
    assert big.float().mean().item() == pytest.approx(0.5, abs=0.01)
    same = (before["layer4.0.conv2"] == big).float().mean().item()
    assert same == pytest.approx(0.5, abs=0.01)              # independent draws agree half the time
    kept = config("--arch", "Split_ResNet18", "--split_mode", "wels")
    evolution.split_reinitialize(kept, model)                 # without the flag: masks kept
    assert all(torch.equal(m.mask, after[n]) for n, m in split_modules(model))


def test_multistep_lr_sequence():
    lr, gamma, adjust, epochs = 0.1, 0.5, 2, 7
    cfg = config("--lr_policy", "multistep_lr", "--lr", lr, "--multistep-lr-gamma", gamma,
                 "--multistep-lr-adjust", adjust, "--epochs", epochs)
    optimizer = build_optimizer(small_net(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # the reference's rule: lr * gamma ** (epoch // adjust)
    expected = [lr * gamma ** (e // adjust) for e in range(epochs)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])


def test_no_bn_decay_groups():
    model = factory.get_model(config("--arch", "Split_ResNet18"))
    optimizer = build_optimizer(model, config("--arch", "Split_ResNet18", "--no-bn-decay"))
    decay, no_decay = optimizer.param_groups
    bn_params = {id(p) for m in model.modules() if isinstance(m, _BatchNorm)
                 for p in m.parameters(recurse=False)}
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    assert {id(p) for p in no_decay["params"]} == bn_params | biases
    assert len(no_decay["params"]) == 41                 # 20 BatchNorms x 2 + the classifier bias
    assert len(decay["params"]) == 21                     # 20 conv weights + the classifier weight
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    plain = build_optimizer(model, config("--arch", "Split_ResNet18"))
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 1e-4


def test_label_smoothing_matches_the_reference_criterion():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    ours = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    assert ours.item() == pytest.approx(reference_label_smoothing(logits, target, 0.1).item(),
                                        rel=1e-6)
    assert Config().parse([]).label_smoothing == 0.1


def test_first_conv_keeps_every_input_channel():
    # the reference's KELS mask of the image conv: ceil(s * 64) = 32 rows x all 3 colour channels
    model = factory.get_model(config("--arch", "Split_ResNet18"))
    rows = model.conv1.mask[:, :, 0, 0]
    assert rows[:32].all() and not rows[32:].any()
    assert int(model.conv1.mask.sum()) == 32 * 3 * 7 * 7
    # the classifier keeps every class row and the first ceil(s * 512) = 256 input columns
    assert model.fc.mask[:, :256].all() and not model.fc.mask[:, 256:].any()


def lr_sequence(*argv):
    cfg = config(*argv)
    optimizer = build_optimizer(small_net(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(cfg.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_and_step_lr_as_the_reference():
    # the reference's utils/schedulers.py, written out: warm-up lr*(e+1)/W, then half a cosine
    lr, epochs, warmup = 0.256, 10, 3
    expected = [lr * (e + 1) / warmup if e < warmup else
                0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) * lr
                for e in range(epochs)]
    got = lr_sequence("--lr_policy", "cosine_lr", "--epochs", epochs, "--warmup_length", warmup)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[:4] == pytest.approx([0.0853333, 0.1706667, 0.256, 0.256], rel=1e-6)
    # step_lr: /10 from epoch >= 0.5 E, /100 from epoch >= 0.75 E (E = 7: epochs 4 and 6)
    expected = [lr / (10 if e >= 3.5 else 1) / (10 if e >= 5.25 else 1) for e in range(7)]
    got = lr_sequence("--lr_policy", "step_lr", "--epochs", 7, "--lr", lr)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx([0.256] * 4 + [0.0256] * 2 + [0.00256], rel=1e-9)
