"""Generation-0 initialisation follows the reference's rules, architecture by architecture and
--init by --init (measured standard deviations within 5% of the rule, constants exactly).

The rules, from the reference's models/builder.py and model files:
- the builder draws every conv and every linear weight by --init; biases keep PyTorch's default;
- DenseNet then re-draws every conv kaiming-normal (fan_in, gain sqrt(2)) and zeroes the
  classifier's bias;
- GoogLeNet then re-draws every conv and linear weight from N(0, 0.01) truncated at +-0.02;
- VGG-bn (torchvision's rule): conv kaiming-normal fan_out with bias 0, linear N(0, 0.01) with
  bias 0;
- BatchNorm starts at weight 1, bias 0 everywhere (no zero-initialised last BN in residual blocks).
"""
import math

import pytest
import torch
import torch.nn as nn

from configs.base_config import Config
from models import evolution, factory
from models.builder import INITS, get_builder

REL = 0.05  # tolerance on a measured standard deviation
SQRT2 = math.sqrt(2.0)
# Standard deviation of N(0, 0.01) truncated at +-2 std: 0.01 * sqrt(1 - 2*2*phi(2) / (2*Phi(2) - 1))
PHI_2 = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
TRUNCATED_STD = 0.01 * math.sqrt(1.0 - 4.0 * PHI_2 / math.erf(2.0 / SQRT2))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(*argv):
    return Config().parse([str(a) for a in argv])


def build(arch, *flags):
    torch.manual_seed(0)
    return factory.get_model(config("--arch", arch, "--split_rate", 0.5, *flags))


def std(tensor):
    return float(tensor.detach().std())


def close(value, target, rel=REL):
    return abs(value - target) <= rel * target


def fans(weight):
    return nn.init._calculate_fan_in_and_fan_out(weight)


def layers(model, kind):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]


def assert_batchnorm_is_one_zero(model):
    norms = layers(model, nn.BatchNorm2d)
    assert norms
    for name, bn in norms:
        assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all()), name


def assert_follows_init(weight, init, mode="fan_in", gain=SQRT2, fan_scale=1.0):
    """`weight` is what the reference's builder draws for --init `init`."""
    fan_in, fan_out = fans(weight)
    fan = (fan_in if mode == "fan_in" else fan_out) * fan_scale
    w = weight.detach()
    if init == "kaiming_normal":
        assert close(std(w), gain / math.sqrt(fan))
        assert abs(float(w.mean())) < 0.05 * gain / math.sqrt(fan)
    elif init == "kaiming_uniform":
        bound = gain * math.sqrt(3.0 / fan)
        assert float(w.abs().max()) <= bound
        assert close(std(w), bound / math.sqrt(3.0))
    elif init == "xavier_normal":
        assert close(std(w), math.sqrt(2.0 / (fan_in + fan_out)))
    elif init == "standard":  # PyTorch's default: kaiming_uniform(a=sqrt(5)), bound 1/sqrt(fan_in)
        bound = 1.0 / math.sqrt(fan_in)
        assert float(w.abs().max()) <= bound
        assert close(std(w), bound / math.sqrt(3.0))
    elif init == "signed_constant":
        value = gain / math.sqrt(fan)
        assert torch.allclose(w.abs(), torch.full_like(w, value), rtol=1e-6, atol=0)
        assert 0.4 < float((w > 0).float().mean()) < 0.6
    elif init == "unsigned_constant":
        assert torch.allclose(w, torch.full_like(w, gain / math.sqrt(fan)), rtol=1e-6, atol=0)
    else:
        assert init == "xavier_constant"
        value = math.sqrt(2.0 / (fan_in + fan_out))
        assert torch.allclose(w.abs(), torch.full_like(w, value), rtol=1e-6, atol=0)
        assert 0.4 < float((w > 0).float().mean()) < 0.6


def assert_pytorch_default_bias(bias, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    b = bias.detach()
    assert float(b.abs().max()) <= bound
    assert float(b.abs().max()) > 0.5 * bound  # drawn, not zeroed


# --------------------------------------------------------------------------- the builder

def test_truncated_std_figure():
    assert math.isclose(TRUNCATED_STD, 0.0087962, rel_tol=1e-4)


def test_xavier_constant_is_an_init_choice():
    assert "xavier_constant" in INITS
    assert config("--init", "xavier_constant").init == "xavier_constant"


@pytest.mark.parametrize("linear_type", ["SplitLinear", "DenseLinear"])
@pytest.mark.parametrize("init", INITS)
def test_builder_draws_linears_like_convs(init, linear_type):
    """Every --init applies to a linear exactly as to a conv (fan = its input / output width)."""
    builder = get_builder(config("--init", init, "--linear_type", linear_type, "--split_rate", 0.5))
    torch.manual_seed(0)
    linear = builder.linear(1024, 2048, last_layer=False)
    assert_follows_init(linear.weight, init)
    assert_pytorch_default_bias(linear.bias, 1024)
    conv = builder.conv3x3(256, 512)
    assert_follows_init(conv.weight, init)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_builder_linear_mode(mode):
    builder = get_builder(config("--init", "kaiming_normal", "--mode", mode))
    torch.manual_seed(0)
    weight = builder.linear(1024, 2048).weight
    assert close(std(weight), SQRT2 / math.sqrt(1024 if mode == "fan_in" else 2048))


def test_builder_linear_nonlinearity_sets_gain():
    builder = get_builder(config("--init", "signed_constant", "--nonlinearity", "tanh"))
    assert_follows_init(builder.linear(1024, 2048).weight, "signed_constant", gain=5.0 / 3.0)


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_scale_fan_scales_by_split_rate(rate):
    """--scale-fan: the fan counts the fit fraction (split rate) of the inputs, convs and linears
    alike (the reference reads an undefined prune rate here; see README)."""
    for init in ("kaiming_normal", "signed_constant", "unsigned_constant"):
        builder = get_builder(config("--init", init, "--split_rate", rate, "--scale-fan"))
        torch.manual_seed(0)
        assert_follows_init(builder.linear(1024, 2048).weight, init, fan_scale=rate)
        assert_follows_init(builder.conv3x3(256, 512).weight, init, fan_scale=rate)


# --------------------------------------------------------------------------- ResNet

@pytest.mark.parametrize("init", INITS)
def test_resnet18_every_conv_and_fc_follow_init(init):
    model = build("Split_ResNet18", "--init", init)
    convs = layers(model, nn.Conv2d)
    assert len(convs) == 20
    for _, conv in convs:
        assert_follows_init(conv.weight, init)
    assert_follows_init(model.fc.weight, init)
    assert_pytorch_default_bias(model.fc.bias, 512)
    assert_batchnorm_is_one_zero(model)


def test_resnet18_figures():
    """The reference's kaiming-normal fan_in: fc std sqrt(2/512) = 0.0625 (PyTorch's default
    would give 0.0255), stem conv sqrt(2/147) = 0.117."""
    model = build("Split_ResNet18")
    assert close(std(model.fc.weight), 0.0625)
    assert close(std(model.conv1.weight), 0.1166)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_resnet50_fc_follows_mode(mode):
    model = build("Split_ResNet50", "--init", "kaiming_normal", "--mode", mode)
    assert_follows_init(model.fc.weight, "kaiming_normal", mode=mode)
    for name, block in model.named_modules():
        if name.endswith("bn3"):  # the last BN of a bottleneck starts at 1 as well
            assert bool((block.weight == 1).all())


# --------------------------------------------------------------------------- DenseNet

@pytest.mark.parametrize("init, mode", [("kaiming_normal", "fan_in"),
                                        ("kaiming_normal", "fan_out"),
                                        ("signed_constant", "fan_in"),
                                        ("xavier_constant", "fan_in")])
def test_densenet121_convs_kaiming_fan_in_classifier_by_init(init, mode):
    model = build("Split_densenet121", "--init", init, "--mode", mode)
    convs = layers(model, nn.Conv2d)
    assert len(convs) == 120
    for name, conv in convs:  # whatever --init and --mode say
        assert close(std(conv.weight), SQRT2 / math.sqrt(fans(conv.weight)[0])), name
    assert_follows_init(model.classifier.weight, init, mode=mode)
    assert bool((model.classifier.bias == 0).all())
    assert_batchnorm_is_one_zero(model)


def test_densenet121_figures():
    model = build("Split_densenet121")
    assert close(std(model.features.conv0.weight), 0.1166)     # sqrt(2 / (3*7*7))
    assert close(std(model.classifier.weight), 0.0442)         # sqrt(2 / 1024)
    assert float(model.classifier.bias.detach().abs().max()) == 0.0


# --------------------------------------------------------------------------- GoogLeNet

@pytest.mark.parametrize("init", ["kaiming_normal", "signed_constant", "standard"])
def test_googlenet_truncated_normal_whatever_init(init):
    model = build("Split_googlenet", "--init", init)
    weighted = layers(model, (nn.Conv2d, nn.Linear))
    assert len(weighted) == 58
    for name, m in weighted:
        assert close(std(m.weight), TRUNCATED_STD), name
        assert float(m.weight.detach().abs().max()) <= 0.02, name
    assert_pytorch_default_bias(model.fc.bias, 1024)
    assert_batchnorm_is_one_zero(model)


def test_googlenet_figures():
    model = build("Split_googlenet")
    assert close(std(model.conv1.conv.weight), 0.0088)  # was 0.118 with kaiming-normal
    assert close(std(model.fc.weight), 0.0088)


# --------------------------------------------------------------------------- VGG-bn

def test_vgg11_bn_torchvision_init_whatever_init():
    model = build("Split_vgg11_bn", "--init", "signed_constant")
    convs = layers(model, nn.Conv2d)
    assert len(convs) == 8
    for name, conv in convs:
        assert close(std(conv.weight), SQRT2 / math.sqrt(fans(conv.weight)[1])), name
        assert float(conv.bias.detach().abs().max()) == 0.0, name
    linears = layers(model, nn.Linear)
    assert len(linears) == 3
    for name, linear in linears:
        assert close(std(linear.weight), 0.01), name
        assert float(linear.bias.detach().abs().max()) == 0.0, name
    assert close(std(model.features[0].weight), 0.0589)  # sqrt(2 / (64*3*3))
    assert_batchnorm_is_one_zero(model)


# --------------------------------------------------------------------------- graph-derived

@pytest.mark.parametrize("init", ["kaiming_normal", "xavier_normal", "signed_constant",
                                  "standard"])
def test_graph_derived_resnet18_fc_follows_init_as_the_hand_written_one(init):
    """Split_resnet18 (from torchvision's graph) draws its classifier by --init, as the
    hand-written Split_ResNet18 does: the same rule, the same measured spread."""
    graph_fc = build("Split_resnet18", "--init", init).fc
    hand_fc = build("Split_ResNet18", "--init", init).fc
    assert graph_fc.weight.shape == hand_fc.weight.shape == (102, 512)
    assert_follows_init(graph_fc.weight, init)
    assert_pytorch_default_bias(graph_fc.bias, 512)
    assert close(std(graph_fc.weight), std(hand_fc.weight), rel=0.02)


@pytest.mark.parametrize("flags, fan", [((), 512), (("--mode", "fan_out"), 102),
                                        (("--scale-fan",), 256)])
def test_graph_derived_fc_follows_mode_and_scale_fan(flags, fan):
    fc = build("Split_resnet18", "--init", "signed_constant", *flags).fc
    assert torch.allclose(fc.weight.abs(), torch.full_like(fc.weight, SQRT2 / math.sqrt(fan)))


def test_graph_derived_fc_draws_exactly_what_the_builder_draws():
    """From one generator state the graph-derived classifier holds the builder's own values,
    and kaiming_normal / xavier_normal scale the same draw by the ratio of their stds."""
    from models import graph_split
    fc_channels = graph_split.channel_graph("resnet18", 102).layers["fc"]
    torchvision_fc, weights = nn.Linear(512, 102), {}
    for init in ("kaiming_normal", "xavier_normal"):
        builder = get_builder(config("--init", init, "--split_rate", 0.5))
        torch.manual_seed(3)
        graph_fc = graph_split._split_layer(torchvision_fc, fc_channels, builder)
        torch.manual_seed(3)
        hand_fc = builder.linear(512, 102, last_layer=True)
        assert torch.equal(graph_fc.weight, hand_fc.weight)
        assert torch.equal(graph_fc.mask, hand_fc.mask)
        weights[init] = graph_fc.weight.detach()
    ratio = math.sqrt(2.0 / 512) / math.sqrt(2.0 / (512 + 102))
    assert torch.allclose(weights["kaiming_normal"], ratio * weights["xavier_normal"], rtol=1e-5)


# --------------------------------------------------------------------------- slim networks

@pytest.mark.parametrize("arch", ["Split_ResNet18", "Split_densenet121", "Split_googlenet"])
def test_slim_network_still_builds(arch):
    cfg = config("--arch", arch, "--split_rate", 0.5)
    slim = factory.get_model(cfg, slim=True)
    assert not evolution.split_layers(slim)
    out = slim.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, cfg.num_cls)
