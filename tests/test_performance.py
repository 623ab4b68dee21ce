"""Speed options: mixed precision, channels-last, the shared-memory image cache.

They must not change what is computed beyond rounding: bf16 training gives finite losses and
moves the weights, the slim invariant holds for channels-last models, the cache returns the
tensors of the uncached pipeline, and the loader gives the same batches with any worker count.
"""
import copy
import logging
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from configs.base_config import Config
from data import loading
from data.cache import CachedImages, default_short_side
from data.samplers import EpochShuffleSampler, SeededSamples
from errors import UserError
from models.evolution import extract_slim, split_reinitialize
from models.factory import get_model
from tests.datagen import make_lists_dataset
from trainers.engine import evaluate, train_one_epoch
from utils.performance import Precision, compiled, configure_backends, prepare_model

pytestmark = pytest.mark.usefixtures("single_thread")

SET = "Flower102Pytorch"
CPU = torch.device("cpu")


def cfg_of(*argv):
    return Config().parse([str(a) for a in argv])


def data_cfg(root, *extra):
    """Flags of the tiny set, read per sample (--cache_budget 0) unless `extra` forces the cache."""
    return cfg_of("--set", SET, "--data", root, "--image_size", 32, "-t", 0, "-b", 4,
                  "--cache_budget", 0, *extra)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """3 classes; images larger than the 64-pixel default cache side of --image_size 32, in
    landscape and portrait, so the cache really resizes."""
    root = tmp_path_factory.mktemp("perf_data")
    make_lists_dataset(root, SET, num_classes=3, per_class=(4, 2, 2), size=(90, 70), seed=1)
    return root


# ---------------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------------

def test_performance_flags_default_off_and_parse():
    cfg = cfg_of()
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.cache_images, cfg.cache_short_side) == \
        ("none", False, False, False, None)
    cfg = cfg_of("--amp", "bf16", "--channels_last", "--compile", "--cache_images",
                 "--cache_short_side", "300")
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.cache_images, cfg.cache_short_side) == \
        ("bf16", True, True, True, 300)
    assert default_short_side(224) == 448


def test_bad_amp_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cfg_of("--amp", "fp8")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--amp" in err and "bf16" in err


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------

def small_model(*extra):
    torch.manual_seed(0)
    return get_model(cfg_of("-a", "Split_ResNet18", "--image_size", 32, *extra))


def test_bf16_step_gives_finite_loss_and_updates_float32_weights():
    model = small_model()
    precision = Precision("bf16", CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 102, (4,))
    model.train()
    with precision.autocast():
        out = model(x)
        loss = F.cross_entropy(out, y)
    assert out.dtype == torch.bfloat16           # the forward pass did run in bf16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    precision.step(loss, optimizer)
    after = model.state_dict()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters())
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert torch.equal(after["conv1.mask"], before["conv1.mask"])  # masks are never trained


def test_precision_none_is_the_plain_step():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 102, (4,))
    results = []
    for use_precision in (False, True):
        model = small_model().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        precision = Precision("none", CPU)
        for _ in range(2):
            with precision.autocast():
                loss = F.cross_entropy(model(x), y)
            if use_precision:
                precision.step(loss, optimizer)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_fp16_on_cpu_and_unknown_modes_are_user_errors():
    with pytest.raises(UserError, match="fp16.*CUDA"):
        Precision("fp16", CPU)
    with pytest.raises(UserError, match="--amp"):
        Precision("fp8", CPU)


def test_precision_state_round_trips():
    state = Precision("bf16", CPU).state_dict()
    assert state == {"amp": "bf16", "scaler": None}
    restored = Precision("bf16", CPU)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_without_compile_the_model_itself_is_called():
    model = small_model()
    assert compiled(model, cfg_of()) is model


def test_cudnn_autotuning_is_left_alone_on_the_cpu():
    before = torch.backends.cudnn.benchmark
    configure_backends(CPU)
    assert torch.backends.cudnn.benchmark == before


# ---------------------------------------------------------------------------------------------
# channels-last
# ---------------------------------------------------------------------------------------------

def train_a_little(model, steps=2, batch=4, size=48, channels_last=False):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size).to(memory_format=layout)
        loss = F.cross_entropy(model(x), torch.randint(0, 102, (batch,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size).to(memory_format=layout))


def conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch", ["Split_ResNet18", "Split_densenet121", "Split_googlenet"])
def test_slim_invariant_holds_for_channels_last_models(arch):
    torch.manual_seed(1)
    cfg = cfg_of("-a", arch, "--split_rate", 0.5, "--evolve_mode", "zero", "--channels_last")
    dense = prepare_model(get_model(cfg), cfg, CPU)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(dense))
    train_a_little(dense, channels_last=True)
    dense.eval()
    x = torch.randn(3, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = dense(x)
    split_reinitialize(cfg, dense)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(dense))
    slim = prepare_model(extract_slim(get_model(cfg, slim=True), dense), cfg, CPU).eval()
    with torch.no_grad():
        dense0_out, slim_out = dense(x), slim(x)
        plain_out = dense(x.contiguous())     # the same model read in the other layout
    scale = float(dense0_out.abs().max())
    assert torch.isfinite(dense0_out).all() and scale > 0
    assert float((slim_out - dense0_out).abs().max()) <= 1e-4 * scale
    assert float((plain_out - dense0_out).abs().max()) <= 1e-4 * scale
    assert float((slim_out - before).abs().max()) > 1e-2 * scale


def test_channels_last_state_dict_loads_into_a_plain_model():
    cfg = cfg_of("-a", "Split_ResNet18", "--channels_last")
    model = prepare_model(small_model(), cfg, CPU)
    plain = small_model("--split_rate", "0.5")
    plain.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


# ---------------------------------------------------------------------------------------------
# the image cache
# ---------------------------------------------------------------------------------------------

def test_cache_wraps_every_split_and_keeps_val_is_test(tiny_root):
    plain = loading.get_data(data_cfg(tiny_root))
    cached = loading.get_data(data_cfg(tiny_root, "--cache_images"))
    for split in ("train", "val", "test"):
        assert isinstance(getattr(cached, split), CachedImages)
        assert len(getattr(cached, split)) == len(getattr(plain, split))
        assert getattr(cached, split).targets == getattr(plain, split).targets
    assert cached.classes == plain.classes and not cached.val_is_test


def _image_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("images: ")]


# tiny_root: 12 training images of 90 x 70, stored at the default side 2 x 32 = 64 (64 x 82),
# and 6 + 6 evaluation images stored at 32 x 32
TINY_DECODED = 12 * 64 * int(64 * 90 / 70) * 3 + 12 * 32 * 32 * 3


def test_the_cache_is_the_default_when_the_splits_fit_the_budget(tiny_root, caplog):
    with caplog.at_level(logging.INFO, logger="data.cache"):
        splits = loading.get_data(cfg_of("--set", SET, "--data", tiny_root, "--image_size", 32,
                                         "-t", 0, "--cache_budget", "1M"))
    assert _image_lines(caplog) == ["images: decoded once into a 0.2 MB cache (budget 1.0 MB)"]
    assert all(isinstance(d, CachedImages) for d in (splits.train, splits.val, splits.test))
    stored = sum(d.images.nbytes for d in (splits.train, splits.val, splits.test))
    assert stored == TINY_DECODED == 225_792


def test_splits_over_the_budget_are_decoded_per_sample(tiny_root, caplog):
    with caplog.at_level(logging.INFO, logger="data.cache"):
        splits = loading.get_data(cfg_of(
            "--set", SET, "--data", tiny_root, "--image_size", 32, "-t", 0,
            "--cache_budget", str(TINY_DECODED - 1)))
    assert _image_lines(caplog) == [
        "images: decoded per sample (the decoded splits need 0.2 MB, over the budget 0.2 MB; "
        "raise --cache_budget or pass --cache_images)"]
    assert not any(isinstance(d, CachedImages) for d in (splits.train, splits.val, splits.test))


def test_cache_images_forces_the_cache_and_budget_0_disables_it(tiny_root, caplog):
    with caplog.at_level(logging.INFO, logger="data.cache"):
        forced = loading.get_data(data_cfg(tiny_root, "--cache_images"))
        plain = loading.get_data(data_cfg(tiny_root))
    assert _image_lines(caplog) == [
        "images: decoded once into a 0.2 MB cache (--cache_images; --cache_budget 0)",
        "images: decoded per sample (--cache_budget 0)"]
    assert isinstance(forced.train, CachedImages) and not isinstance(plain.train, CachedImages)


@pytest.mark.parametrize("text, expected", [("0", 0), ("123", 123), ("800M", 800 << 20),
                                            ("6G", 6 << 30), ("1.5g", 3 << 29), ("2GiB", 2 << 30)])
def test_cache_budget_sizes(text, expected):
    assert cfg_of("--cache_budget", text).cache_budget == expected
    assert cfg_of().cache_budget is None                      # a quarter of the RAM


def test_cache_budget_describes_the_machine_not_the_training():
    """A resumed run reads it from its own command line and never compares it with the
    checkpoints (the same run may resume on a machine with less memory)."""
    from configs.flag_kinds import EVALUATE_FROM_COMMAND_LINE, NOT_TRAINING, RESUME_FROM_COMMAND_LINE
    assert "cache_budget" in RESUME_FROM_COMMAND_LINE and "cache_budget" in NOT_TRAINING
    assert "cache_budget" in EVALUATE_FROM_COMMAND_LINE


def test_bad_cache_budget_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cfg_of("--cache_budget", "lots")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "--cache_budget: expected a size in bytes such as 0, 800M or 6G, got 'lots'" in err[0]


def test_cached_eval_tensors_equal_the_uncached_ones(tiny_root):
    """Resize + CenterCrop run once on the PIL image exactly as the uncached pipeline runs them,
    and ToImage / ToDtype / Normalize on the identical uint8 pixels: bit-identical tensors."""
    plain = loading.get_data(data_cfg(tiny_root))
    cached = loading.get_data(data_cfg(tiny_root, "--cache_images"))
    for split in ("val", "test"):
        for i in range(len(plain.val)):
            (a, ya), (b, yb) = getattr(plain, split)[i], getattr(cached, split)[i]
            assert a.shape == b.shape == (3, 32, 32) and a.dtype == b.dtype == torch.float32
            assert torch.equal(a, b) and ya == yb


def test_cached_train_tensors_match_within_one_grey_level(tiny_root):
    """With a cache side at least the image's, the random crop is drawn with the same numbers
    from the same image; torch's uint8 antialiased resize then rounds within 1 of PIL's."""
    plain = loading.get_data(data_cfg(tiny_root)).train
    cached = CachedImages.build(plain, short_side=1000)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for i in range(len(plain)):
        torch.manual_seed(i)
        a, _ = plain[i]
        torch.manual_seed(i)
        b, _ = cached[i]
        assert a.shape == b.shape == (3, 32, 32)
        assert float(((a - b) * std).abs().max()) <= 1 / 255 + 1e-6


def test_cache_downscales_training_images_and_never_enlarges(tiny_root):
    train = loading.get_data(data_cfg(tiny_root)).train
    shrunk = CachedImages.build(train, short_side=35)
    heights_widths = {tuple(shrunk.images.location[i, 2:]) for i in range(len(train))}
    assert heights_widths == {(35, 45)}                         # 90x70 -> short side 35
    kept = CachedImages.build(train, short_side=500)
    assert {tuple(kept.images.location[i, 2:]) for i in range(len(train))} == {(70, 90)}
    torch.manual_seed(0)
    x, y = shrunk[0]
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all() and y == train.targets[0]


def test_cache_lives_in_shared_memory_that_workers_read_without_copying(tiny_root):
    cached = loading.get_data(data_cfg(tiny_root, "--cache_images")).val
    assert cached.images.segments and all(s.is_shared() for s in cached.images.segments)
    loader = DataLoader(cached, batch_size=len(cached), num_workers=1, persistent_workers=True)
    first, _ = next(iter(loader))
    # Write into the cache from this process after the worker started: a worker holding a copy
    # (or a copy-on-write page) would not see it; one mapping the shared pages does.
    for segment in cached.images.segments:
        segment.fill_(255)
    second, _ = next(iter(loader))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    white = ((1 - mean) / std).view(1, 3, 1, 1).expand_as(second)
    assert not torch.allclose(first, white)
    assert torch.allclose(second, white)


def test_cached_loader_gives_the_same_batches_with_0_and_2_workers(tiny_root):
    results = []
    for workers in (0, 2):
        cfg = data_cfg(tiny_root, "--cache_images")
        cfg.num_threads = workers
        splits = loading.get_data(cfg)
        sampler = EpochShuffleSampler(len(splits.train), seed=3)
        sampler.set_epoch(1)
        loader = loading.make_loader(SeededSamples(splits.train), cfg.batch_size, cfg.num_threads,
                                     train=True, sampler=sampler)
        results.append([(x.clone(), y.clone()) for x, y in loader])
    assert len(results[0]) == len(results[1]) == 3
    for (xa, ya), (xb, yb) in zip(*results, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeded_cached_items_do_not_depend_on_what_came_before(tiny_root):
    cached = SeededSamples(loading.get_data(data_cfg(tiny_root, "--cache_images")).train)
    first = cached[(2, 77)][0]
    cached[(5, 1)]
    torch.rand(10)
    assert torch.equal(cached[(2, 77)][0], first)
    assert not torch.equal(cached[(2, 78)][0], first)


# ---------------------------------------------------------------------------------------------
# the engine with bf16 and channels-last
# ---------------------------------------------------------------------------------------------

def test_engine_trains_and_evaluates_with_bf16_and_channels_last(tiny_root):
    cfg = data_cfg(tiny_root, "--cache_images", "--amp", "bf16", "--channels_last",
                   "-a", "Split_ResNet18")
    splits = loading.get_data(cfg)
    cfg.num_cls = splits.num_classes
    torch.manual_seed(0)
    model = prepare_model(get_model(cfg), cfg, CPU)
    forward = compiled(model, cfg)
    precision = Precision(cfg.amp, CPU)
    # lr 0.05 on batches of 4 diverges with the reference initialisation (loss 6 -> 15 in bf16,
    # 6 -> 8 in float32): this test is about bf16 and channels-last, not about the step size
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    sampler = EpochShuffleSampler(len(splits.train), seed=0)
    loader = loading.make_loader(SeededSamples(splits.train), cfg.batch_size, cfg.num_threads,
                                 train=True, sampler=sampler)
    before = model.fc.weight.detach().clone()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(forward, loader, criterion, optimizer, CPU, splits.num_classes,
                                precision=precision, channels_last=True)
        assert stats["count"] == 12 and stats["stopped_after"] is None
        assert 0 < stats["loss"] < 10
    assert not torch.equal(model.fc.weight, before)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    loader = loading.make_loader(splits.val, cfg.batch_size, cfg.num_threads, train=False)
    result = evaluate(forward, loader, criterion, CPU, splits.num_classes, precision=precision,
                      channels_last=True)
    # (after six steps the BatchNorm running statistics are far from settled: only finiteness
    # of the eval loss is meaningful here)
    assert result["count"] == 6 and 0 < result["loss"] < float("inf")
    assert 0 <= result["top1"] <= result["top5"] <= 100


# ---------------------------------------------------------------------------------------------
# start-up: what a training run imports
# ---------------------------------------------------------------------------------------------

def test_a_training_run_imports_no_plotting_tensorboard_scipy_or_torchvision():
    """The modules of a plain training run load none of the heavy optional libraries: they are
    imported where a run uses them (the summary plot, the first TensorBoard scalar, the v2
    transforms of the uncached path, torchvision's models for Split_<name>). (torch.fx is not
    in the list: `import torch` itself loads it, passes included.)"""
    import subprocess
    import sys
    heavy = ["matplotlib", "torch.utils.tensorboard", "tensorboard", "scipy", "pandas",
             "torchvision", "torchvision.datasets", "torch._dynamo"]
    code = ("import sys, train_KE_cls, trainers.knowledge_evolution, trainers.generation, "
            f"data.loading, data.cache; print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# checkpoints written in the background
# ---------------------------------------------------------------------------------------------

def test_snapshot_is_a_copy_that_training_does_not_change():
    from collections import OrderedDict

    from utils.checkpoint_writer import snapshot
    model = nn.BatchNorm1d(3)
    state = {"state_dict": model.state_dict(), "rng": [torch.ones(2), (1, 2)], "epoch": 4}
    copy = snapshot(state)
    with torch.no_grad():
        model.weight.add_(1)                              # what a training step does
    assert torch.equal(copy["state_dict"]["weight"], torch.ones(3))
    assert isinstance(copy["state_dict"], OrderedDict)
    assert copy["state_dict"]._metadata == model.state_dict()._metadata   # BN's version
    assert isinstance(copy["rng"][1], tuple) and copy["epoch"] == 4


def test_writer_runs_one_write_at_a_time_in_order():
    import threading

    from utils.checkpoint_writer import CheckpointWriter
    events, release = [], threading.Event()

    def first():
        events.append("first starts")
        release.wait()
        events.append("first ends")

    writer = CheckpointWriter()
    writer.submit(first)
    assert writer.busy
    threading.Thread(target=release.set).start()
    writer.submit(lambda: events.append("second"))        # waits for the first
    assert events[:2] == ["first starts", "first ends"]
    writer.wait()
    assert events == ["first starts", "first ends", "second"] and not writer.busy


def test_writer_raises_a_background_error_once_in_the_training_thread():
    from utils.checkpoint_writer import CheckpointWriter

    def full_disk():
        raise UserError("cannot write x (No space left on device); resume with: y")

    writer = CheckpointWriter()
    writer.submit(full_disk)
    with pytest.raises(UserError, match=r"^cannot write x .*resume with: y$"):
        writer.submit(lambda: None)                        # the next save reports it
    writer.submit(full_disk)
    writer.wait(reraise=False)                             # another error is on its way
    writer.wait()                                          # reported once only
