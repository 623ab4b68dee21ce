"""Split layers on their own: KELS / WELS masks, re-initialisation, slim copies, builder inits.

Expected index sets and statistics are written out by hand (or derived from first principles
in the test), never computed with the code under test.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.bn_type import SplitBatchNorm
from layers.conv_type import SplitConv
from layers.linear_type import SplitLinear
from models.builder import get_builder
from models.evolution import convert_sync_batchnorm, extract_slim

pytestmark = pytest.mark.usefixtures("single_thread")

# A layer fed by the concatenation of three tensors of 64, 32 and 32 channels.
CHUNKS = [64, 32, 32]
# The first ceil(s*c) channels of every chunk, written out by hand:
#   s = 0.5: 32, 16, 16 -> 0..31, 64..79, 96..111
#   s = 0.3: ceil(19.2) = 20, ceil(9.6) = 10, ceil(9.6) = 10 -> 0..19, 64..73, 96..105
CHUNKED_FIT = {
    0.5: set(range(0, 32)) | set(range(64, 80)) | set(range(96, 112)),
    0.3: set(range(0, 20)) | set(range(64, 74)) | set(range(96, 106)),
}


def rows_of(mask):
    """Output rows holding at least one fit weight."""
    return {i for i in range(mask.shape[0]) if bool(mask[i].any())}


def columns_of(mask):
    """Input columns holding at least one fit weight."""
    return {j for j in range(mask.shape[1]) if bool(mask[:, j].any())}


def outer_mask(shape, rows, columns):
    """The mask that is 1 exactly on rows x columns (every kernel tap)."""
    expected = torch.zeros(shape, dtype=torch.bool)
    for i in rows:
        for j in columns:
            expected[i, j] = True
    return expected


# ---------------------------------------------------------------------------------------------
# KELS masks
# ---------------------------------------------------------------------------------------------

def test_conv_mask_is_buffer_with_weight_shape():
    conv = SplitConv(12, 7, 3, padding=1, split_rate=0.5)
    assert conv.mask.shape == conv.weight.shape
    assert conv.mask.requires_grad is False
    assert "mask" in dict(conv.named_buffers())
    assert all(name != "mask" for name, _ in conv.named_parameters())
    assert "mask" in conv.state_dict()


@pytest.mark.parametrize("rate, n_rows, n_cols", [
    (0.5, 4, 6),   # ceil(3.5) = 4 of 7 filters, 6 of 12 inputs
    (0.3, 3, 4),   # ceil(2.1) = 3, ceil(3.6) = 4
    (0.8, 6, 10),  # ceil(5.6) = 6, ceil(9.6) = 10
    (1.0, 7, 12),
])
def test_conv_mask_single_chunk(rate, n_rows, n_cols):
    conv = SplitConv(12, 7, 3, padding=1, split_rate=rate)
    expected = outer_mask(conv.weight.shape, range(n_rows), range(n_cols))
    assert torch.equal(conv.mask.bool(), expected)
    assert int(conv.mask.sum()) == n_rows * n_cols * 9


def test_conv_mask_image_input_keeps_all_three_channels():
    stem = SplitConv(3, 64, 7, stride=2, padding=3, split_rate=0.5, image_input=True)
    assert rows_of(stem.mask) == set(range(32))
    assert columns_of(stem.mask) == {0, 1, 2}
    assert int(stem.mask.sum()) == 32 * 3 * 49
    # without image_input the same layer would keep ceil(1.5) = 2 input channels
    plain = SplitConv(3, 64, 7, stride=2, padding=3, split_rate=0.5)
    assert columns_of(plain.mask) == {0, 1}


@pytest.mark.parametrize("rate, n_rows", [(0.5, 8), (0.3, 5)])  # ceil(0.3*16) = ceil(4.8) = 5
def test_conv_mask_chunk_wise(rate, n_rows):
    conv = SplitConv(128, 16, 3, padding=1, split_rate=rate, in_chunks=CHUNKS)
    assert rows_of(conv.mask) == set(range(n_rows))
    assert columns_of(conv.mask) == CHUNKED_FIT[rate]
    assert torch.equal(conv.mask.bool(), outer_mask(conv.weight.shape, range(n_rows), CHUNKED_FIT[rate]))


def test_conv_chunk_sizes_must_add_up():
    with pytest.raises(ValueError):
        SplitConv(128, 16, 3, split_rate=0.5, in_chunks=[64, 32])


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_split_rate_outside_unit_interval_is_refused(rate):
    with pytest.raises(ValueError):
        SplitConv(8, 8, 3, split_rate=rate)
    with pytest.raises(ValueError):
        SplitLinear(8, 8, split_rate=rate)


@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_classifier_mask_chunk_wise_all_rows(rate):
    fc = SplitLinear(128, 10, split_rate=rate, last_layer=True, in_chunks=CHUNKS)
    assert rows_of(fc.mask) == set(range(10))
    assert columns_of(fc.mask) == CHUNKED_FIT[rate]
    assert torch.equal(fc.mask.bool(), outer_mask(fc.weight.shape, range(10), CHUNKED_FIT[rate]))


@pytest.mark.parametrize("rate, n_rows", [(0.5, 17), (0.3, 10)])  # ceil(16.5), ceil(9.9)
def test_hidden_linear_mask_chunk_wise(rate, n_rows):
    fc = SplitLinear(128, 33, split_rate=rate, last_layer=False, in_chunks=CHUNKS)
    assert rows_of(fc.mask) == set(range(n_rows))
    assert columns_of(fc.mask) == CHUNKED_FIT[rate]
    assert torch.equal(fc.mask.bool(), outer_mask(fc.weight.shape, range(n_rows), CHUNKED_FIT[rate]))


def test_classifier_single_chunk_uses_ceil():
    fc = SplitLinear(7, 5, split_rate=0.5, last_layer=True)  # ceil(3.5) = 4 columns
    assert torch.equal(fc.mask.bool(), outer_mask(fc.weight.shape, range(5), range(4)))


def flattened_channel_ids(channels, height, width):
    """Channel index of each feature of a flattened [channels, height, width] map."""
    ids = torch.arange(channels).view(channels, 1, 1).expand(channels, height, width)
    return torch.flatten(ids.unsqueeze(0), 1)[0].tolist()


def test_linear_features_per_channel():
    # input: an 8-channel 2x3 map flattened; ceil(0.3 * 8) = 3 fit channels: 0, 1, 2
    ids = flattened_channel_ids(8, 2, 3)
    fc = SplitLinear(48, 5, split_rate=0.3, last_layer=True, features_per_channel=6)
    expected = {j for j, c in enumerate(ids) if c in {0, 1, 2}}
    assert expected == set(range(18))
    assert columns_of(fc.mask) == expected
    assert rows_of(fc.mask) == set(range(5))


def test_linear_features_per_channel_with_chunks():
    # channels concatenated from two chunks of 4; s = 0.5 -> channels 0, 1 and 4, 5 are fit
    ids = flattened_channel_ids(8, 2, 2)
    fc = SplitLinear(32, 6, split_rate=0.5, last_layer=False, in_chunks=[4, 4],
                     features_per_channel=4)
    expected = {j for j, c in enumerate(ids) if c in {0, 1, 4, 5}}
    assert expected == {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}
    assert columns_of(fc.mask) == expected
    assert rows_of(fc.mask) == {0, 1, 2}


def test_linear_features_per_channel_must_divide():
    with pytest.raises(ValueError):
        SplitLinear(50, 5, split_rate=0.5, features_per_channel=4)


@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_batchnorm_mask_chunk_wise(rate):
    bn = SplitBatchNorm(128, split_rate=rate, in_chunks=CHUNKS)
    assert bn.mask.shape == (128,)
    assert {i for i in range(128) if bool(bn.mask[i])} == CHUNKED_FIT[rate]
    assert "mask" in bn.state_dict() and bn.mask.requires_grad is False


def test_batchnorm_mask_single_chunk_uses_ceil():
    bn = SplitBatchNorm(33, split_rate=0.3)  # ceil(9.9) = 10
    assert {i for i in range(33) if bool(bn.mask[i])} == set(range(10))


# ---------------------------------------------------------------------------------------------
# Slim copies of single layers
# ---------------------------------------------------------------------------------------------

def test_conv_copy_fit_into_takes_chunked_rows_and_columns():
    torch.manual_seed(0)
    conv = SplitConv(128, 16, 3, padding=1, split_rate=0.3, in_chunks=CHUNKS)
    slim = nn.Conv2d(40, 5, 3, padding=1, bias=False)  # 20 + 10 + 10 inputs, 5 filters
    conv.copy_fit_into(slim)
    columns = list(range(0, 20)) + list(range(64, 74)) + list(range(96, 106))
    for i in range(5):
        for k, j in enumerate(columns):
            assert torch.equal(slim.weight[i, k], conv.weight[i, j])


def test_conv_copy_fit_into_refuses_wrong_shape():
    conv = SplitConv(128, 16, 3, split_rate=0.3, in_chunks=CHUNKS)
    with pytest.raises(ValueError):
        conv.copy_fit_into(nn.Conv2d(39, 5, 3, bias=False))


def test_classifier_copy_fit_into_keeps_rows_and_bias():
    torch.manual_seed(0)
    fc = SplitLinear(128, 10, split_rate=0.5, last_layer=True, in_chunks=CHUNKS)
    slim = nn.Linear(64, 10)
    fc.copy_fit_into(slim)
    columns = sorted(CHUNKED_FIT[0.5])
    assert torch.equal(slim.weight, fc.weight[:, columns])
    assert torch.equal(slim.bias, fc.bias)


def test_batchnorm_copy_fit_into_takes_fit_channels():
    torch.manual_seed(0)
    bn = SplitBatchNorm(128, split_rate=0.3, in_chunks=CHUNKS)
    for t in (bn.weight.data, bn.bias.data, bn.running_mean):
        t.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.num_batches_tracked.fill_(11)
    slim = nn.BatchNorm2d(40)
    extract_slim(nn.Sequential(slim), nn.Sequential(bn))
    channels = sorted(CHUNKED_FIT[0.3])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(slim, name), getattr(bn, name)[channels]), name
    assert int(slim.num_batches_tracked) == 11
    with pytest.raises(ValueError, match="41"):
        extract_slim(nn.Sequential(nn.BatchNorm2d(41)), nn.Sequential(bn))


def test_sync_batchnorm_conversion_keeps_the_channel_mask():
    model = nn.Sequential(SplitBatchNorm(128, split_rate=0.3, in_chunks=CHUNKS))
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced[0], nn.SyncBatchNorm)
    assert sorted(synced[0].mask.nonzero().flatten().tolist()) == sorted(CHUNKED_FIT[0.3])
    assert "0.mask" in synced.state_dict()
    slim = nn.Sequential(nn.BatchNorm2d(40))
    extract_slim(slim, synced)
    assert torch.equal(slim[0].running_var, synced[0].running_var[sorted(CHUNKED_FIT[0.3])])


# ---------------------------------------------------------------------------------------------
# Forward pass and re-initialisation
# ---------------------------------------------------------------------------------------------

def test_forward_uses_the_whole_weight():
    """The mask is bookkeeping only: a split layer computes exactly what the plain one does."""
    torch.manual_seed(0)
    conv = SplitConv(6, 8, 3, padding=1, split_rate=0.5, bias=True)
    x = torch.randn(2, 6, 9, 9)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    fc = SplitLinear(6, 4, split_rate=0.5, last_layer=True)
    v = torch.randn(3, 6)
    assert torch.equal(fc(v), F.linear(v, fc.weight, fc.bias))


def test_reinitialize_rand_conv_with_bias():
    torch.manual_seed(0)
    conv = SplitConv(64, 32, 3, padding=1, split_rate=0.3, bias=True, bias_split_rate=0.5)
    with torch.no_grad():
        conv.weight.fill_(10.0)  # far outside the fresh draw's range
        conv.bias.fill_(10.0)
    mask = conv.mask.clone()
    conv.reinitialize("rand")
    fit = mask.bool()
    weight, bias = conv.weight.detach(), conv.bias.detach()
    assert torch.equal(conv.mask, mask)
    assert bool((weight[fit] == 10.0).all())
    reset = weight[~fit]
    assert reset.numel() == 32 * 64 * 9 - 10 * 20 * 9  # ceil(9.6) = 10 rows, ceil(19.2) = 20 columns
    # PyTorch's default init, kaiming_uniform(a=sqrt(5)): bound = 1/sqrt(fan_in)
    bound = 1 / math.sqrt(64 * 9)
    assert bool((reset.abs() <= bound).all())
    assert float(reset.abs().max()) > 0.95 * bound
    assert abs(float(reset.std()) - bound / math.sqrt(3)) < 0.03 * bound
    # bias: the first ceil(0.5 * 32) = 16 entries are fit, the others redrawn within the bound
    assert bool((bias[:16] == 10.0).all())
    assert bool((bias[16:].abs() <= bound).all())


def test_reinitialize_zero_conv_with_bias():
    torch.manual_seed(0)
    conv = SplitConv(64, 32, 3, padding=1, split_rate=0.5, bias=True)
    before_w, before_b = conv.weight.detach().clone(), conv.bias.detach().clone()
    conv.reinitialize("zero")
    fit = conv.mask.bool()
    assert torch.equal(conv.weight[fit], before_w[fit])
    assert bool((conv.weight[~fit] == 0).all())
    assert torch.equal(conv.bias[:16], before_b[:16])
    assert bool((conv.bias[16:] == 0).all())


@pytest.mark.parametrize("mode", ["rand", "zero"])
def test_reinitialize_classifier_keeps_the_whole_bias(mode):
    torch.manual_seed(0)
    fc = SplitLinear(128, 10, split_rate=0.3, last_layer=True, in_chunks=CHUNKS)
    before_w, before_b = fc.weight.detach().clone(), fc.bias.detach().clone()
    fc.reinitialize(mode)
    assert torch.equal(fc.bias, before_b)
    columns = sorted(CHUNKED_FIT[0.3])
    reset_columns = sorted(set(range(128)) - CHUNKED_FIT[0.3])
    assert torch.equal(fc.weight[:, columns], before_w[:, columns])
    if mode == "zero":
        assert bool((fc.weight[:, reset_columns] == 0).all())
    else:
        assert bool((fc.weight[:, reset_columns] != before_w[:, reset_columns]).all())


def test_reinitialize_refuses_unknown_evolve_mode():
    conv = SplitConv(8, 8, 3, split_rate=0.5)
    with pytest.raises(ValueError):
        conv.reinitialize("ones")


def test_reinitialize_generator_is_reproducible():
    torch.manual_seed(0)
    a = SplitConv(16, 16, 3, split_rate=0.5)
    b = SplitConv(16, 16, 3, split_rate=0.5)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    a.reinitialize("rand", torch.Generator().manual_seed(42))
    torch.manual_seed(2)  # the global RNG must not matter
    b.reinitialize("rand", torch.Generator().manual_seed(42))
    assert torch.equal(a.weight, b.weight)


# ---------------------------------------------------------------------------------------------
# WELS masks on single layers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8])
def test_wels_layer_fit_fraction(rate):
    torch.manual_seed(0)
    conv = SplitConv(128, 128, 3, split_rate=rate, split_mode="wels")
    n = conv.weight.numel()
    assert abs(int(conv.mask.sum()) - n * rate) <= 3 * math.sqrt(n * rate * (1 - rate))
    # not kernel-structured: the taps of one kernel disagree somewhere
    per_kernel = conv.mask.float().flatten(2).mean(2)
    assert bool(((per_kernel > 0) & (per_kernel < 1)).any())


def test_wels_redraw_mask_and_no_slim_rows():
    torch.manual_seed(0)
    conv = SplitConv(64, 64, 3, split_rate=0.5, split_mode="wels")
    old = conv.mask.clone()
    conv.redraw_mask()
    assert not torch.equal(conv.mask, old)
    assert conv.mask.shape == old.shape
    with pytest.raises(ValueError, match="(?i)kels"):
        conv.fit_rows_and_columns()
    kels = SplitConv(64, 64, 3, split_rate=0.5)
    with pytest.raises(ValueError):
        kels.redraw_mask()


# ---------------------------------------------------------------------------------------------
# Builder initialisations (conv weights), through the configuration
# ---------------------------------------------------------------------------------------------

IN_CH, OUT_CH = 256, 512
FAN_IN, FAN_OUT = IN_CH * 9, OUT_CH * 9


def built_conv(make_cfg, *flags):
    torch.manual_seed(0)
    builder = get_builder(make_cfg(*flags))
    return builder.conv3x3(IN_CH, OUT_CH).weight.detach()


def close(value, target, rel=0.01):
    return abs(value - target) <= rel * target


@pytest.mark.parametrize("mode, fan", [("fan_in", FAN_IN), ("fan_out", FAN_OUT)])
def test_init_kaiming_normal(make_cfg, mode, fan):
    w = built_conv(make_cfg, "--init", "kaiming_normal", "--mode", mode)
    assert close(float(w.std()), math.sqrt(2.0 / fan))
    assert abs(float(w.mean())) < 0.01 * math.sqrt(2.0 / fan)


def test_init_fan_out_changes_std_by_sqrt_two(make_cfg):
    # fan_out / fan_in = 512 / 256 = 2 -> std ratio sqrt(2)
    w_in = built_conv(make_cfg, "--init", "kaiming_normal", "--mode", "fan_in")
    w_out = built_conv(make_cfg, "--init", "kaiming_normal", "--mode", "fan_out")
    assert close(float(w_in.std()) / float(w_out.std()), math.sqrt(2.0))


def test_init_kaiming_uniform(make_cfg):
    w = built_conv(make_cfg, "--init", "kaiming_uniform")
    bound = math.sqrt(2.0) * math.sqrt(3.0 / FAN_IN)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound
    assert close(float(w.std()), bound / math.sqrt(3.0))


def test_init_xavier_normal(make_cfg):
    w = built_conv(make_cfg, "--init", "xavier_normal")
    assert close(float(w.std()), math.sqrt(2.0 / (FAN_IN + FAN_OUT)))


def test_init_standard_is_pytorch_default(make_cfg):
    w = built_conv(make_cfg, "--init", "standard")
    bound = 1.0 / math.sqrt(FAN_IN)  # kaiming_uniform with a = sqrt(5)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound
    assert close(float(w.std()), bound / math.sqrt(3.0))


def test_init_signed_constant(make_cfg):
    w = built_conv(make_cfg, "--init", "signed_constant")
    value = math.sqrt(2.0) / math.sqrt(FAN_IN)
    assert torch.allclose(w.abs(), torch.full_like(w, value), rtol=1e-6, atol=0)
    positive = float((w > 0).float().mean())
    assert 0.49 < positive < 0.51


def test_init_unsigned_constant(make_cfg):
    w = built_conv(make_cfg, "--init", "unsigned_constant")
    value = math.sqrt(2.0) / math.sqrt(FAN_IN)
    assert bool((w == w.flatten()[0]).all())
    assert math.isclose(float(w.flatten()[0]), value, rel_tol=1e-6)


def test_init_nonlinearity_sets_gain(make_cfg):
    w = built_conv(make_cfg, "--init", "signed_constant", "--nonlinearity", "tanh")
    value = (5.0 / 3.0) / math.sqrt(FAN_IN)
    assert torch.allclose(w.abs(), torch.full_like(w, value), rtol=1e-6, atol=0)


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_init_scale_fan(make_cfg, rate):
    plain = built_conv(make_cfg, "--init", "kaiming_normal", "--split_rate", rate)
    scaled = built_conv(make_cfg, "--init", "kaiming_normal", "--split_rate", rate, "--scale-fan")
    assert close(float(scaled.std()), math.sqrt(2.0 / FAN_IN) / math.sqrt(rate))
    assert close(float(scaled.std()) / float(plain.std()), 1 / math.sqrt(rate))
    constant = built_conv(make_cfg, "--init", "signed_constant", "--split_rate", rate,
                          "--scale-fan")
    value = math.sqrt(2.0) / math.sqrt(FAN_IN * rate)
    assert torch.allclose(constant.abs(), torch.full_like(constant, value), rtol=1e-6, atol=0)
