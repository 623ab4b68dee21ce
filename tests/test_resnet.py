"""Split ResNets end to end: counts, masks, the slim invariant, re-initialisation, WELS, config.

Expected shapes and counts come from torchvision's own ResNets (built on the meta device, so
nothing is allocated) and the KELS rule written out here, never from the code under test.
"""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from layers.bn_type import SplitBatchNorm
from layers.conv_type import SplitConv
from layers.linear_type import SplitLinear
from models.evolution import count_fit_weights, extract_slim, split_reinitialize
from models.factory import get_model

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_CLASSES = 102  # the default dataset, Flowers-102
# unsplit layers make a valid run only with later-layer forgetting; the flag changes no layer
DENSE_FLAGS = ("--conv_type", "DenseConv", "--bn_type", "NormalBatchNorm",
               "--linear_type", "DenseLinear", "--reset_layer_name", "fc")
DEPTHS = (18, 34, 50, 101)


def arch(depth):
    return f"Split_ResNet{depth}"


def torchvision_resnet(depth):
    """torchvision's ResNet of this depth on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return getattr(torchvision.models, f"resnet{depth}")(num_classes=NUM_CLASSES)


def n_fit(width, rate):
    return math.ceil(rate * width)


def expected_slim_shapes(depth, rate):
    """state_dict shapes of the slim network: every width w -> ceil(rate*w), image kept at 3."""
    shapes = {}
    for key, value in torchvision_resnet(depth).state_dict().items():
        shape = tuple(value.shape)
        if len(shape) == 4:  # conv weight [out, in, kh, kw]
            out, inp, kh, kw = shape
            shapes[key] = (n_fit(out, rate), inp if inp == 3 else n_fit(inp, rate), kh, kw)
        elif key == "fc.weight":
            shapes[key] = (shape[0], n_fit(shape[1], rate))
        elif key == "fc.bias" or len(shape) == 0:
            shapes[key] = shape
        else:  # BatchNorm vectors
            shapes[key] = (n_fit(shape[0], rate),)
    return shapes


def expected_fit_weights(depth, rate):
    """Sum of all KELS masks: fit rows x fit columns x taps for convs, all rows for the classifier."""
    total = 0
    for key, value in torchvision_resnet(depth).state_dict().items():
        shape = tuple(value.shape)
        if len(shape) == 4:
            out, inp, kh, kw = shape
            total += n_fit(out, rate) * (inp if inp == 3 else n_fit(inp, rate)) * kh * kw
        elif key == "fc.weight":
            total += shape[0] * n_fit(shape[1], rate)
    return total


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def masks_of(model):
    return {name: m.mask.clone() for name, m in model.named_modules()
            if isinstance(m, (SplitConv, SplitLinear))}


# ---------------------------------------------------------------------------------------------
# Counts and structure
# ---------------------------------------------------------------------------------------------

def test_resnet18_reference_counts(make_cfg):
    """The reference's published figures (102 classes, s = 0.5, masks not counted)."""
    assert expected_fit_weights(18, 0.5) == 2_820_192  # the hand rule agrees with the reference
    cfg = make_cfg("-a", "Split_ResNet18", "--split_rate", 0.5)
    dense = get_model(cfg)
    assert count_params(dense) == 11_228_838
    assert count_fit_weights(dense) == 2_820_192
    slim = get_model(cfg, slim=True)
    assert count_params(slim) == 2_825_094


@pytest.mark.parametrize("depth, rate", [(18, 0.3), (34, 0.8), (50, 0.3), (50, 0.5)])
def test_fit_count_and_slim_shapes_follow_kels(make_cfg, depth, rate):
    cfg = make_cfg("-a", arch(depth), "--split_rate", rate)
    dense = get_model(cfg)
    assert count_fit_weights(dense) == expected_fit_weights(depth, rate)
    assert count_params(dense) == count_params(torchvision_resnet(depth))
    slim = get_model(cfg, slim=True)
    shapes = {key: tuple(value.shape) for key, value in slim.state_dict().items()}
    assert shapes == expected_slim_shapes(depth, rate)
    assert not any(isinstance(m, (SplitConv, SplitLinear, SplitBatchNorm)) for m in slim.modules())


@pytest.mark.parametrize("depth", [18, 50])
def test_dense_build_is_torchvision_resnet(make_cfg, depth):
    model = get_model(make_cfg("-a", arch(depth), *DENSE_FLAGS))
    reference = torchvision_resnet(depth)
    assert count_params(model) == count_params(reference)
    assert list(model.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert tuple(model.state_dict()[key].shape) == tuple(value.shape), key
    assert count_fit_weights(model) == 0
    with pytest.raises(ValueError):
        split_reinitialize(make_cfg("-a", arch(depth), *DENSE_FLAGS), model)


def test_split_model_keys_are_torchvision_keys_plus_masks(make_cfg):
    model = get_model(make_cfg("-a", "Split_ResNet18"))
    keys = list(model.state_dict())
    reference = list(torchvision_resnet(18).state_dict())
    assert [k for k in keys if not k.endswith(".mask")] == reference
    # one mask per conv, per BatchNorm and for the classifier
    expected_masks = {k[:-len(".weight")] + ".mask" for k in reference
                      if k.endswith(".weight")}
    assert {k for k in keys if k.endswith(".mask")} == expected_masks


def test_masks_are_buffers(make_cfg):
    model = get_model(make_cfg("-a", "Split_ResNet18"))
    param_names = {name for name, _ in model.named_parameters()}
    buffer_names = {name for name, _ in model.named_buffers()}
    mask_names = {f"{name}.mask" for name, m in model.named_modules()
                  if isinstance(m, (SplitConv, SplitLinear, SplitBatchNorm))}
    assert len(mask_names) == 20 + 20 + 1  # 20 convs, 20 BatchNorms, the classifier
    assert mask_names <= buffer_names
    assert not any(name.endswith("mask") for name in param_names)
    state = model.state_dict()
    for name in mask_names:
        assert name in state
        assert state[name].requires_grad is False
    mask_ids = {id(m.mask) for m in model.modules() if hasattr(m, "mask")}
    assert not any(id(p) in mask_ids for p in model.parameters())


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8])
def test_every_mask_follows_kels(make_cfg, depth, rate):
    model = get_model(make_cfg("-a", arch(depth), "--split_rate", rate))
    n_convs = sum(1 for m in torchvision_resnet(depth).modules() if isinstance(m, nn.Conv2d))
    seen = 0
    for name, m in model.named_modules():
        if isinstance(m, SplitConv):
            seen += 1
            out, inp = m.weight.shape[:2]
            if name == "conv1":
                assert inp == 3
                cols = 3  # the stem keeps every image channel
            else:
                assert inp != 3
                cols = n_fit(inp, rate)
            expected = torch.zeros(m.weight.shape, dtype=torch.bool)
            expected[:n_fit(out, rate), :cols] = True
            assert torch.equal(m.mask.bool(), expected), name
        elif isinstance(m, SplitLinear):
            assert name == "fc"
            expected = torch.zeros(m.weight.shape, dtype=torch.bool)
            expected[:, :n_fit(m.in_features, rate)] = True  # every row: the classifier
            assert torch.equal(m.mask.bool(), expected)
        elif isinstance(m, SplitBatchNorm):
            expected = torch.zeros(m.num_features, dtype=torch.bool)
            expected[:n_fit(m.num_features, rate)] = True
            assert torch.equal(m.mask.bool(), expected), name
    assert seen == n_convs


# ---------------------------------------------------------------------------------------------
# The slim invariant: the slim network computes what the dense one does with its reset part zeroed
# ---------------------------------------------------------------------------------------------

def train_a_little(model, steps=2, batch=4, size=64):
    """A few SGD steps on random data, so weights and BatchNorm statistics are not trivial.

    BatchNorm momentum 1 makes the running statistics those of the last batch: with only two
    steps on random images, the default 0.1 leaves eval-mode activations of deep nets unbounded.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, NUM_CLASSES, (batch,))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))  # statistics of the trained weights


@pytest.mark.parametrize("depth, rate", [
    pytest.param(depth, rate, marks=[pytest.mark.slow] if depth in (34, 101) and rate != 0.5 else [])
    for depth in DEPTHS for rate in (0.3, 0.5, 0.8)])     # ResNet34/101 at every rate: test-slow
def test_slim_invariant(make_cfg, depth, rate):
    torch.manual_seed(depth * 10 + int(rate * 10))
    cfg = make_cfg("-a", arch(depth), "--split_rate", rate, "--evolve_mode", "zero")
    dense = get_model(cfg)
    train_a_little(dense)
    bns = [m for m in dense.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    assert all(bool(m.running_mean.abs().max() > 0) for m in bns)

    dense.eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        before = dense(x)
    split_reinitialize(cfg, dense)  # dense0: reset hypothesis = 0
    slim = extract_slim(get_model(cfg, slim=True), dense).eval()
    with torch.no_grad():
        dense0_out, slim_out = dense(x), slim(x)
    scale = float(dense0_out.abs().max())
    assert torch.isfinite(dense0_out).all() and scale > 0
    assert slim_out.shape == (3, NUM_CLASSES)
    assert float((slim_out - dense0_out).abs().max()) <= 1e-4 * scale
    # the comparison has teeth: the reset hypothesis did contribute before it was zeroed
    assert float((slim_out - before).abs().max()) > 1e-2 * scale


def test_extract_slim_copies_values(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("-a", "Split_ResNet18", "--split_rate", 0.3)
    dense = get_model(cfg)
    with torch.no_grad():
        dense.bn1.running_mean.normal_()
        dense.layer4[1].bn2.running_var.uniform_(0.5, 2.0)
    slim = extract_slim(get_model(cfg, slim=True), dense)
    assert torch.equal(slim.conv1.weight, dense.conv1.weight[:20])  # ceil(19.2) = 20, all 3 inputs
    assert torch.equal(slim.layer2[0].conv1.weight, dense.layer2[0].conv1.weight[:39, :20])
    assert torch.equal(slim.layer4[1].bn2.running_var, dense.layer4[1].bn2.running_var[:154])
    assert torch.equal(slim.bn1.running_mean, dense.bn1.running_mean[:20])
    assert torch.equal(slim.fc.weight, dense.fc.weight[:, :154])
    assert torch.equal(slim.fc.bias, dense.fc.bias)


# ---------------------------------------------------------------------------------------------
# split_reinitialize
# ---------------------------------------------------------------------------------------------

def randomize_batchnorm(model):
    """Non-default BatchNorm parameters and statistics (and classifier bias), to see them kept."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(5)
        model.fc.bias.normal_()


@pytest.mark.parametrize("evolve_mode", ["rand", "zero"])
def test_split_reinitialize(make_cfg, evolve_mode):
    torch.manual_seed(0)
    cfg = make_cfg("-a", "Split_ResNet18", "--split_rate", 0.3, "--evolve_mode", evolve_mode)
    model = get_model(cfg)
    randomize_batchnorm(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split_reinitialize(cfg, model)
    after = model.state_dict()
    split = {name: m for name, m in model.named_modules() if isinstance(m, (SplitConv, SplitLinear))}
    assert len(split) == 21
    weight_keys = {f"{name}.weight" for name in split}
    for name, m in split.items():
        key = f"{name}.weight"
        fit = before[f"{name}.mask"].bool()
        assert torch.equal(after[key][fit], before[key][fit]), key  # bit-identical
        reset = after[key][~fit]
        assert reset.numel() > 0
        if evolve_mode == "zero":
            assert bool((reset == 0).all()), key
        else:
            assert bool((reset != before[key][~fit]).all()), key
            bound = 1 / math.sqrt(m.weight[0].numel())  # kaiming_uniform(a=sqrt(5))
            assert bool((reset.abs() <= bound).all()), key
    untouched = [k for k in before if k not in weight_keys]
    assert {"bn1.running_mean", "bn1.running_var", "bn1.weight", "bn1.bias", "fc.bias",
            "conv1.mask", "fc.mask", "layer4.1.bn2.num_batches_tracked"} <= set(untouched)
    for key in untouched:
        assert torch.equal(after[key], before[key]), key


def test_split_reinitialize_reproducible_under_seed(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("-a", "Split_ResNet18", "--evolve_mode", "rand")
    a = get_model(cfg)
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    torch.manual_seed(123)
    split_reinitialize(cfg, a)
    torch.manual_seed(123)
    split_reinitialize(cfg, b)
    torch.manual_seed(124)
    split_reinitialize(cfg, c)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], sc["layer1.0.conv1.weight"])


def test_split_reinitialize_with_generator(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("-a", "Split_ResNet18", "--evolve_mode", "rand")
    a = get_model(cfg)
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    torch.manual_seed(1)
    global_state = torch.get_rng_state()
    split_reinitialize(cfg, a, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_state)  # the generator alone was used
    torch.manual_seed(2)
    split_reinitialize(cfg, b, generator=torch.Generator().manual_seed(7))
    split_reinitialize(cfg, c, generator=torch.Generator().manual_seed(8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], sc["layer1.0.conv1.weight"])


# ---------------------------------------------------------------------------------------------
# WELS
# ---------------------------------------------------------------------------------------------

def assert_binomial(mask_count, n, rate):
    assert abs(mask_count - n * rate) <= 3 * math.sqrt(n * rate * (1 - rate)), (mask_count, n)


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_wels_fit_fraction(make_cfg, rate):
    torch.manual_seed(0)
    model = get_model(make_cfg("-a", "Split_ResNet18", "--split_mode", "wels", "--split_rate", rate))
    masks = masks_of(model)
    n = sum(m.numel() for m in masks.values())
    # every conv / linear weight: all parameters but the 9,600 BatchNorm ones (4,800 channels x 2)
    # and the fc bias
    assert n == 11_228_838 - 9_600 - NUM_CLASSES
    assert_binomial(count_fit_weights(model), n, rate)
    # and not the KELS pattern: some classifier column mixes fit and reset weights
    fc = masks["fc"].float().mean(0)
    assert bool(((fc > 0) & (fc < 1)).any())


def test_wels_mask_survives_state_dict_round_trip(make_cfg):
    cfg = make_cfg("-a", "Split_ResNet18", "--split_mode", "wels")
    torch.manual_seed(0)
    saved = get_model(cfg)
    torch.manual_seed(1)
    fresh = get_model(cfg)
    assert not torch.equal(masks_of(saved)["layer1.0.conv1"], masks_of(fresh)["layer1.0.conv1"])
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    old, new = masks_of(saved), masks_of(fresh)
    assert old.keys() == new.keys() and len(old) == 21
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_wels_has_no_slim_network(make_cfg):
    cfg = make_cfg("-a", "Split_ResNet18", "--split_mode", "wels")
    dense = get_model(cfg)
    with pytest.raises(ValueError) as error:
        extract_slim(get_model(cfg, slim=True), dense)
    message = str(error.value).lower()
    assert "kels" in message and "wels" in message


def test_wels_reset_hypothesis_draws_a_new_mask(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("-a", "Split_ResNet18", "--split_mode", "wels", "--reset_hypothesis",
                   "--split_rate", 0.5)
    model = get_model(cfg)
    before_masks = masks_of(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split_reinitialize(cfg, model)
    after_masks = masks_of(model)
    n = 0
    for name, old in before_masks.items():
        new = after_masks[name].bool()
        assert not torch.equal(new, old.bool()), name
        weight, old_weight = model.state_dict()[f"{name}.weight"], before[f"{name}.weight"]
        assert torch.equal(weight[new], old_weight[new]), name  # fit under the new mask: kept
        assert bool((weight[~new] != old_weight[~new]).all()), name
        n += new.numel()
    assert_binomial(sum(int(m.sum()) for m in after_masks.values()), n, 0.5)
    # the classifier bias stays entirely fit
    assert torch.equal(model.fc.bias, before["fc.bias"])


def test_kels_masks_do_not_change_under_reinitialize(make_cfg):
    cfg = make_cfg("-a", "Split_ResNet18")
    model = get_model(cfg)
    before = masks_of(model)
    split_reinitialize(cfg, model)
    after = masks_of(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# Builder initialisation on a whole network
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_signed_constant_on_every_conv(make_cfg, mode):
    torch.manual_seed(0)
    model = get_model(make_cfg("-a", "Split_ResNet18", "--init", "signed_constant", "--mode", mode))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    for conv in convs:
        out, inp, kh, kw = conv.weight.shape
        fan = (inp if mode == "fan_in" else out) * kh * kw
        value = math.sqrt(2.0) / math.sqrt(fan)
        w = conv.weight.detach()
        assert torch.allclose(w.abs(), torch.full_like(w, value), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# Configuration errors: status 2 and one line naming the flag
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag, accepted", [
    (["--split_rate", "0"], "--split_rate", "(0, 1]"),
    (["--split_rate", "1.5"], "--split_rate", "(0, 1]"),
    (["--split_rate", "half"], "--split_rate", "(0, 1]"),
    (["--split_rate", "nan"], "--split_rate", "(0, 1]"),
    (["--lr", "inf"], "--lr", "> 0"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--arch", "Split_ResNet19"], "--arch", "Split_ResNet18"),
    (["-a", "resnet18"], "--arch", "Split_ResNet101"),
    (["--split_mode", "random"], "--split_mode", "kels"),
    (["--reset_hypothesis"], "--reset_hypothesis", "wels"),
])
def test_bad_flag_exits_2_with_one_line(make_cfg, capsys, argv, flag, accepted):
    with pytest.raises(SystemExit) as exit_info:
        make_cfg(*argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert flag in lines[0]
    assert accepted in lines[0]
    assert "Traceback" not in captured.err


def test_reset_hypothesis_accepted_with_wels(make_cfg):
    cfg = make_cfg("--split_mode", "wels", "--reset_hypothesis")
    assert cfg.reset_hypothesis is True and cfg.split_mode == "wels"
