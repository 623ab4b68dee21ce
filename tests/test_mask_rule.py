"""One mask rule: `layers.split_base.fit_channels` alone decides which channels are fit.

The masks of every split layer (hand-written and graph-derived models alike), the widths of the
slim network and what `extract_slim` copies all follow it: replacing it changes all three. The
slim network of every hand-written family has exactly the fit counts of the dense masks.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from configs.base_config import Config
from layers import split_base
from models import evolution, factory

HAND_WRITTEN_FAMILIES = ["Split_ResNet18", "Split_ResNet50", "Split_densenet121",
                         "Split_googlenet", "Split_vgg11_bn"]


def config(arch, split_rate, *extra):
    return Config().parse(["--arch", arch, "--split_rate", str(split_rate), *extra])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def last_quarter_rule(original):
    """Another rule: the LAST ceil(rate*c/2) channels of every chunk c (the fit channels were
    the first ceil(rate*c)); whole-width fits stay whole."""
    def rule(width, rate, chunks=None, all_fit=False):
        if all_fit:
            return original(width, rate, chunks, all_fit)
        chunks = [width] if chunks is None else list(chunks)
        fit = torch.zeros(width, dtype=torch.bool)
        start = 0
        for size in chunks:
            start += size
            fit[start - math.ceil(rate * size / 2):start] = True
        return fit
    return rule


def fit_rows(mask):
    return mask.flatten(1).any(1).nonzero().flatten()


def fit_columns(mask):
    return mask.transpose(0, 1).flatten(1).any(1).nonzero().flatten()


def split_modules(model):
    return {name: m for name, m in model.named_modules() if evolution.is_split(m)}


def assert_slim_follows_masks(dense, slim):
    """Every split layer of `dense` has a plain slim layer of its fit counts at the same name,
    and the slim model has nothing else (same state-dict keys, less the masks)."""
    slim_modules = dict(slim.named_modules())
    split = split_modules(dense)
    assert split
    for name, layer in split.items():
        cut = slim_modules[name]
        assert not evolution.is_split(cut) and not hasattr(cut, "mask")
        if isinstance(layer, _BatchNorm):
            assert cut.num_features == int(layer.mask.sum()), name
            assert cut.eps == layer.eps
            continue
        rows, columns = fit_rows(layer.mask), fit_columns(layer.mask)
        assert cut.weight.shape[0] == len(rows), name
        assert cut.weight.shape[1] == len(columns), name
        assert cut.weight.shape[2:] == layer.weight.shape[2:]
    keys = {k for k in dense.state_dict() if not k.endswith("mask")}
    assert set(slim.state_dict()) == keys


@pytest.mark.parametrize("arch", HAND_WRITTEN_FAMILIES)
def test_slim_widths_are_the_fit_counts_of_the_dense_masks(arch):
    cfg = config(arch, 0.3)   # 0.3: the chunk-wise counts differ from the whole-width ones
    with torch.device("meta"):   # shapes only; the masks keep their values on the CPU
        dense = factory.get_model(cfg)
        slim = factory.get_model(cfg, slim=True)
    assert all(m.mask.device.type == "cpu" for m in split_modules(dense).values())
    assert_slim_follows_masks(dense, slim)


def test_slim_of_a_graph_derived_model_follows_its_masks():
    cfg = config("Split_mobilenet_v3_small", 0.3)
    with torch.device("meta"):
        dense = factory.get_model(cfg)
        slim = factory.get_model(cfg, slim=True)
    assert_slim_follows_masks(dense, slim)
    depthwise = [m for m in slim.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


@pytest.mark.parametrize("arch", ["Split_densenet121", "Split_mobilenet_v3_small"])
def test_replacing_the_rule_changes_masks_slim_widths_and_extraction(arch, monkeypatch):
    cfg = config(arch, 0.5)
    torch.manual_seed(0)
    before = factory.get_model(cfg)
    before_widths = {k: v.shape for k, v in factory.get_model(cfg, slim=True).state_dict().items()}
    monkeypatch.setattr(split_base, "fit_channels", last_quarter_rule(split_base.fit_channels))
    torch.manual_seed(0)
    dense = factory.get_model(cfg)
    # the masks follow the replacement rule: a hidden conv keeps its last rows, not its first
    conv = next(m for m in dense.modules()
                if isinstance(m, nn.Conv2d) and not m.mask.flatten(1).all(1).all())
    rows = fit_rows(conv.mask)
    assert rows[-1] == conv.out_channels - 1 and rows[0] > 0
    changed = [n for n, m in split_modules(dense).items()
               if not torch.equal(m.mask, split_modules(before)[n].mask)]
    assert changed
    # the slim widths follow them
    slim = factory.get_model(cfg, slim=True)
    widths = {k: v.shape for k, v in slim.state_dict().items()}
    assert widths != before_widths
    assert_slim_follows_masks(dense, slim)
    # and extract_slim copies the rows and columns they mark
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_()
    slim = evolution.extract_slim(slim, dense)
    name = next(n for n, m in dense.named_modules() if m is conv)
    cut = slim.get_submodule(name)
    expected = conv.weight[fit_rows(conv.mask)][:, fit_columns(conv.mask)]
    assert torch.equal(cut.weight, expected)


@pytest.mark.parametrize("arch", ["Split_googlenet", "Split_mobilenet_v3_small"])
def test_slim_network_equals_the_extraction_of_its_dense_model(arch):
    """`slim_network(dense)` holds what `extract_slim` copies out of `dense`, and the slim network
    computes what the dense one computes with its reset hypothesis zeroed."""
    cfg = config(arch, 0.5, "--evolve_mode", "zero")
    torch.manual_seed(1)
    dense = factory.get_model(cfg)
    evolution.split_reinitialize(cfg, dense)
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    cut = evolution.slim_network(copy.deepcopy(dense))
    extracted = evolution.extract_slim(factory.get_model(cfg, slim=True), dense)
    assert cut.state_dict().keys() == extracted.state_dict().keys()
    for key, value in cut.state_dict().items():
        assert torch.equal(value, extracted.state_dict()[key]), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = dense.eval()(x), cut.eval()(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_building_the_slim_network_leaves_the_random_stream_alone():
    cfg = config("Split_ResNet18", 0.5)
    torch.manual_seed(5)
    factory.get_model(cfg, slim=True)
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))


def test_no_width_table_is_left_in_the_architectures():
    """The hand-written models build only dense widths; no slim factor reaches them."""
    import inspect

    from models.hand_written import HAND_WRITTEN_ARCHS
    for arch, build in HAND_WRITTEN_ARCHS.items():
        assert list(inspect.signature(build).parameters) == ["builder", "num_classes"], arch
    import models.split_densenet
    import models.split_googlenet
    import models.split_resnet
    import models.split_vgg
    for module in (models.split_densenet, models.split_googlenet, models.split_resnet,
                   models.split_vgg):
        source = inspect.getsource(module)
        assert "slim_factor" not in source and "fit_width" not in source
