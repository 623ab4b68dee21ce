"""The methods package: a method added from outside in one class, DNR's saliency and kept set, LW's
stages, the context's promises, and the one-line refusals of bad method flags."""
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import methods
from argtypes import UNIT
from configs.base_config import Config, resolve
from methods import METHODS, Method
from methods.dnr import MASK_FILE, unpack_file
from models.evolution import network_stages
from models.factory import get_model
from tests.datagen import make_lists_dataset
from tests.helpers import SMALL, assert_one_line_error, run_cli
from trainers.forget_context import ForgetContext
from trainers.state import seed_everything

SEED = 3
CLASSES = 3
ARGS = ["--set", "Flower102Pytorch", "--image_size", "32", "--batch_size", "6",
        "--num_threads", "0", "--lr", "0.05", "--warmup_length", "0", "--test_interval", "1",
        "--seed", str(SEED)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods_data")
    make_lists_dataset(root, "Flower102Pytorch", num_classes=CLASSES, per_class=(6, 2, 2),
                       size=(36, 36))
    return root


def train(data, log_dir, name, *flags, process=False):
    result = run_cli("--data", data, "--log-dir", log_dir, "--name", name, *ARGS, *flags,
                     process=process)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return log_dir / name


def weights(exp, g, file):
    return torch.load(exp / f"gen_{g}" / "checkpoints" / file, weights_only=True)["state_dict"]


def fresh_draw(flags, generation):
    """Generation `generation`'s own draw of the model of a run with `flags`."""
    cfg = resolve(Config().parse([*ARGS, *flags]), CLASSES, 1, SEED)
    seed_everything(SEED + generation)
    return cfg, get_model(cfg)


# ---- a method from outside: one class, registered, trained two generations

class Halve(Method):
    summary = "every weight and buffer halved (a test method)"
    flags = {"--halve_by": dict(default=0.5, type=UNIT, help="factor on the previous weights")}
    slim_reason = "a test method"

    def forget(self, ctx):
        ctx.fresh.load_state_dict(ctx.previous.state_dict())
        with torch.no_grad():
            for p in ctx.fresh.parameters():
                p.mul_(ctx.cfg.halve_by)
        return ctx.fresh


@pytest.fixture
def halve(monkeypatch):
    monkeypatch.setitem(METHODS, "halve", Halve)
    monkeypatch.setattr(Halve, "name", "halve")
    return Halve


def test_a_method_defined_in_one_class_trains_two_generations(halve, data, tmp_path):
    exp = train(data, tmp_path, "halve", *SMALL, "--forget", "halve", "--halve_by", "0.25",
                "--num_generations", "2", "--epochs", "1")
    before, start = weights(exp, 0, "epoch_0.state"), weights(exp, 1, "initial.state")
    params = {name for name, _ in get_model(Config().parse(SMALL)).named_parameters()}
    assert params and all(torch.equal(start[k], before[k] * 0.25) for k in params)
    assert all(torch.equal(start[k], before[k]) for k in before if k not in params)
    assert "halve: every weight and buffer halved" in " ".join(Config().parser.format_help().split())
    assert "_fghalve" in Config().parse([*SMALL, "--forget", "halve"]).name
    result = run_cli(*SMALL, "--halve_by", "0.5")
    assert_one_line_error(result, ["--halve_by", "only --forget halve uses it"])


# ---- LW

@pytest.mark.parametrize("arch, expected", [
    ("Split_ResNet18", [["layer1"], ["layer2"], ["layer3"], ["layer4"]]),
    ("Split_googlenet", [["inception3a", "inception3b"],
                         [f"inception4{c}" for c in "abcde"], ["inception5a", "inception5b"]]),
    ("Split_densenet121", [["features.denseblock1", "features.transition1"],
                           ["features.denseblock2", "features.transition2"],
                           ["features.denseblock3", "features.transition3"],
                           ["features.denseblock4", "features.norm5"]]),
    ("Split_vgg11_bn", [["features.0", "features.1"], ["features.4", "features.5"],
                        ["features.8", "features.9", "features.11", "features.12"],
                        ["features.15", "features.16", "features.18", "features.19"],
                        ["features.22", "features.23", "features.25", "features.26"]]),
    ("Split_mobilenet_v3_small", [["features"]]),
])
def test_stages_of_every_family(arch, expected):
    stages = network_stages(get_model(Config().parse(["--arch", arch])))
    assert stages.stages == expected


def test_a_network_without_stages_is_refused_by_name():
    with pytest.raises(ValueError, match="no stages found"):
        network_stages(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    cfg = Config().parse(["--forget", "lw"])
    with pytest.raises(ValueError, match="--forget lw: Split_ResNet18 has no stages"):
        METHODS["lw"].check_model(cfg, nn.Sequential(nn.Linear(3, 2)))


def test_lw_keeps_the_first_stages_and_redraws_the_rest(data, tmp_path, single_thread):
    flags = ["--arch", "Split_ResNet18", "--forget", "lw", "--num_generations", "3",
             "--epochs", "1"]
    exp = train(data, tmp_path, "lw", *flags)
    for g, kept in ((1, ["layer1"]), (2, ["layer1", "layer2"])):
        previous, start = weights(exp, g - 1, "epoch_0.state"), weights(exp, g, "initial.state")
        _, fresh = fresh_draw(flags, g)
        fresh = fresh.state_dict()
        for key, value in start.items():
            top = key.split(".")[0]
            from_previous = top in ["conv1", "bn1", *kept] or key.endswith("mask")
            source = previous if from_previous else fresh
            assert torch.equal(value, source[key]), (g, key)
        # the re-drawn BatchNorm statistics are the fresh ones, not the trained ones
        assert not torch.equal(start["layer4.0.bn1.running_var"], previous["layer4.0.bn1.running_var"])


# ---- DNR

DNR = [*SMALL, "--forget", "dnr", "--dnr_sparsity", "0.3", "--dnr_batches", "2",
       "--num_generations", "2", "--epochs", "2"]


@pytest.fixture(scope="module")
def dnr_run(data, tmp_path_factory, single_thread):
    return train(data, tmp_path_factory.mktemp("dnr"), "dnr", *DNR)


def independent_saliency(data, exp):
    """|w| x sum over the context's batches of |grad|, for every conv and linear weight, by a
    loop of the test's own (BatchNorm in eval mode, the run's label-smoothed cross-entropy)."""
    cfg, model = fresh_draw(DNR, 0)
    model.load_state_dict(weights(exp, 0, "epoch_1.state"))
    model.eval()
    from data.loading import get_data
    cfg = resolve(Config().parse(["--data", str(data), *ARGS, *DNR]), CLASSES, 1, SEED)
    splits = get_data(cfg)
    ctx = ForgetContext(cfg, 1, model, model, torch.device("cpu"), None, splits.train,
                        cfg.process_batch_size, save=None)
    loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    layers = {f"{n}.weight": m for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    sums = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    batches = 0
    for images, targets in ctx.batches(cfg.dnr_batches):
        model.zero_grad()
        loss(model(images), targets).backward()
        for name, m in layers.items():
            sums[name] += m.weight.grad.abs()
        batches += 1
    assert batches == 2
    return {name: sums[name] * layers[name].weight.detach().abs() for name in layers}


def test_dnr_redraws_exactly_the_weights_below_the_saliency_threshold(data, dnr_run):
    scores = independent_saliency(data, dnr_run)
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = round(0.3 * flat.numel())
    threshold = flat.sort(descending=True).values[keep - 1]
    kept = unpack_file(dnr_run / "gen_1" / MASK_FILE)
    assert sorted(kept) == sorted(scores)
    assert sum(int(k.sum()) for k in kept.values()) == keep
    assert all(torch.equal(kept[n], scores[n] >= threshold) for n in scores)
    previous, start = weights(dnr_run, 0, "epoch_1.state"), weights(dnr_run, 1, "initial.state")
    _, fresh = fresh_draw(DNR, 1)
    fresh = fresh.state_dict()
    for name, mask in kept.items():
        assert torch.equal(start[name][mask], previous[name][mask])
        assert torch.equal(start[name][~mask], fresh[name][~mask])
    others = [k for k in start if k not in kept]
    assert others and all(torch.equal(start[k], previous[k]) for k in others)  # BN buffers too


def test_dnr_logs_and_writes_its_kept_rows(dnr_run):
    log = (dnr_run / "train_log.txt").read_text()
    assert "generation 1 (2 of 2): dnr kept" in log and "(30.0%)" in log and "by stage: stage 1" in log
    rows = (dnr_run / "dnr.csv").read_text().splitlines()
    kinds = [row.split(",")[2] for row in rows[1:]]
    assert kinds == ["0.5", "kept", "0.5"] or kinds == ["0.5", "0.5", "kept"]
    assert not (dnr_run / "gen_0" / MASK_FILE).exists()


@pytest.mark.slow      # a kill and resume in generation 1: tests/test_forgetting.py's quick one
def test_dnr_is_reproducible_and_resumes_exactly(data, dnr_run, tmp_path):
    """Killed in generation 1 (SIGKILL once its first epoch is saved) and resumed: the weights
    and rows of the uninterrupted run."""
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT
    name = "dnr"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_KE_cls.py"), "--data",
                             str(data), "--log-dir", str(tmp_path), "--name", name, *ARGS, *DNR],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))   # as this process
    trigger = tmp_path / name / "gen_1" / "checkpoints" / "resume.state"
    deadline = time.monotonic() + 300
    while proc.poll() is None and not trigger.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_cli("--data", data, "--log-dir", tmp_path, "--name", name, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    for g in (0, 1):
        a, b = weights(dnr_run, g, "epoch_1.state"), weights(tmp_path / name, g, "epoch_1.state")
        assert all(torch.equal(a[k], b[k]) for k in a)
    def strip(text):
        return [row.split(",")[1:] for row in text.splitlines()]
    assert strip((tmp_path / name / "dnr.csv").read_text()) == \
        strip((dnr_run / "dnr.csv").read_text())


def test_the_context_leaves_batchnorm_and_the_training_stream_alone(data):
    cfg, model = fresh_draw(DNR, 0)
    from data.loading import get_data
    cfg = resolve(Config().parse(["--data", str(data), *ARGS, *DNR]), CLASSES, 1, SEED)
    splits = get_data(cfg)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    ctx = ForgetContext(cfg, 1, model, model, torch.device("cpu"), nn.CrossEntropyLoss(),
                        splits.train, 4, save=lambda obj, name: None)
    from methods.dnr import saliency
    saliency(ctx, dict(methods.dnr.pools(model, "weights")[0]))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    first = [t.tolist() for _, t in ForgetContext(
        cfg, 1, model, model, torch.device("cpu"), None, splits.train, 4, save=None).batches(2)]
    again = ForgetContext(cfg, 1, model, model, torch.device("cpu"), None, splits.train, 4,
                          save=None)
    assert [t.tolist() for _, t in again.batches(2)] == first


# ---- bad values

@pytest.mark.parametrize("argv, needles", [
    (["--forget", "dnr", "--dnr_sparsity", "0"], ["--dnr_sparsity", "(0, 1)"]),
    (["--forget", "dnr", "--dnr_sparsity", "1"], ["--dnr_sparsity", "(0, 1)"]),
    (["--forget", "dnr", "--dnr_sparsity", "1.5"], ["--dnr_sparsity"]),
    (["--forget", "dnr", "--dnr_batches", "0"], ["--dnr_batches", ">= 1"]),
    (["--dnr_sparsity", "0.5"], ["--dnr_sparsity", "only --forget dnr uses it"]),
    (["--forget", "lw", "--shrink", "0.3"], ["--shrink", "only --forget shrink_perturb"]),
    (["--forget", "dnr", "--reset_bn"], ["--reset_bn", "--reset_layer_name PREFIX"]),
    (["--forget", "lw", "--evolve_mode", "zero"], ["--evolve_mode", "only --forget ke"]),
    (["--forget", "dnr", "--dnr_pool", "all"], ["--dnr_pool"]),
])
def test_bad_method_flags_are_refused_in_one_line(argv, needles):
    assert_one_line_error(run_cli(*argv), needles)


def test_the_config_names_no_method():
    import configs.base_config as base
    source = Path(base.__file__).read_text()
    named = [f'"{m}"' for m in METHODS if m != "none"]       # "none" is also an --amp choice
    named += ["cfg.forget", "--shrink", "--perturb", "reset_layer_name", "reset_bn", "distill_"]
    assert [text for text in named if text in source] == []
