"""Split_<torchvision CNN>: masks derived from the torch.fx graph, slim networks, CLI runs."""
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision

from configs.base_config import Config
from errors import UserError
from layers.split_base import fit_channels
from models import evolution, factory, graph_split
from models.builder import get_builder
from models.channel_spaces import GraphSplitError
from models.graph_channels import read_channels
from models.names import GRAPH_DERIVED, HAND_WRITTEN
from models.registry import ARCHITECTURES
from tests.datagen import make_lists_dataset
from tests.helpers import TINY, run_cli
from trainers.experiment import has_slim

# Parameters of the dense model (= torchvision's) and of its slim network at s = 0.5, 102 classes.
COVERED = {
    "wide_resnet50_2": (67_043_238, 16_832_518),
    "resnext50_32x4d": (23_188_902, 5_868_934),
    "mobilenet_v2": (2_354_534, 646_150),
    "mobilenet_v3_large": (4_332_694, 1_146_590),
    "efficientnet_b0": (4_138_210, 1_125_828),
    "regnet_y_400mf": (3_948_126, 1_006_634),
    "mnasnet1_0": (3_232_974, 890_778),
    "squeezenet1_1": (774_822, 208_006),
    "resnet18": (11_228_838, 2_825_094),
    "resnet50": (23_717_030, 5_997_190),
    "densenet121": (7_058_406, 1_814_054),
    "googlenet": (5_704_454, 1_458_294),
    "vgg11_bn": (129_189_734, 32_406_502),
}
HAND_WRITTEN_TWINS = {"resnet18": "Split_ResNet18", "resnet50": "Split_ResNet50",
                      "densenet121": "Split_densenet121", "googlenet": "Split_googlenet",
                      "vgg11_bn": "Split_vgg11_bn"}
RATES = (0.3, 0.5, 0.8)
# The default suite checks the invariant of each new family at one rate (rotating); the rest of
# the grid, and the hand-written families' twins, run with `make test-slow`.
QUICK = {"resnext50_32x4d": 0.3, "mobilenet_v2": 0.5, "mobilenet_v3_large": 0.8,
         "efficientnet_b0": 0.3, "regnet_y_400mf": 0.8, "mnasnet1_0": 0.5,
         "squeezenet1_1": 0.3, "resnet18": 0.5}


@pytest.fixture(autouse=True, scope="module")
def one_thread(single_thread):
    yield


def config(arch, split_rate=0.5, *extra):
    return Config().parse(["--arch", arch, "--split_rate", str(split_rate), *extra])


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def graph_model(name, split_rate, *extra):
    cfg = config(HAND_WRITTEN_TWINS.get(name, f"Split_{name}"), split_rate, *extra)
    return graph_split.split_model(name, get_builder(cfg), cfg.num_cls)


def fit_of(mask):
    rows = mask.flatten(1).any(1).nonzero().flatten().tolist()
    columns = mask.transpose(0, 1).flatten(1).any(1).nonzero().flatten().tolist()
    return rows, columns


def ranges(*spans):
    return [i for start, stop in spans for i in range(start, stop)]


# --------------------------------------------------------------------------- names and counts

def test_every_graph_name_resolves_on_the_command_line():
    assert not set(GRAPH_DERIVED) & set(HAND_WRITTEN)
    assert tuple(ARCHITECTURES) == HAND_WRITTEN + GRAPH_DERIVED
    assert {f"Split_{n}" for n in COVERED} <= set(ARCHITECTURES)
    assert config("Split_mobilenet_v2").arch == "Split_mobilenet_v2"
    available = set(torchvision.models.list_models(module=torchvision.models))
    assert {graph_split.torchvision_name(a) for a in GRAPH_DERIVED} <= available


@pytest.mark.slow
@pytest.mark.parametrize("arch", GRAPH_DERIVED)
def test_every_graph_architecture_is_analysed(arch):
    """Every listed name traces; only the channel-mixing families lack a slim network."""
    graph = graph_split.channel_graph(graph_split.torchvision_name(arch))
    assert graph.layers
    mixes = arch.startswith(("Split_convnext", "Split_shufflenet"))
    assert bool(graph.slim_blockers) == mixes


@pytest.mark.parametrize("name", list(COVERED))
def test_parameter_counts(name):
    """Dense: torchvision's names, shapes and count; slim (s = 0.5): the count the README lists."""
    dense_count, slim_count = COVERED[name]
    cfg = config(f"Split_{name}", 0.5)
    with torch.device("meta"):
        ref = graph_split.plain_model(name, 102)
        dense = graph_split.split_model(name, get_builder(cfg), 102)
        slim = evolution.slim_network(graph_split.split_model(name, get_builder(cfg, slim=True),
                                                              102))
    assert ({n: p.shape for n, p in dense.named_parameters()}
            == {n: p.shape for n, p in ref.named_parameters()})
    assert n_params(dense) == n_params(ref) == dense_count
    assert n_params(slim) == slim_count
    assert not evolution.split_layers(slim)


# --------------------------------------------------------------------------- masks

@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "googlenet",
                                  pytest.param("vgg11_bn", marks=pytest.mark.slow)])
def test_masks_equal_the_hand_written_models(name):
    """At s = 0.3 (ceil and chunks matter) every mask of the graph path is the hand-written one."""
    torch.manual_seed(0)
    hand = factory.get_model(config(HAND_WRITTEN_TWINS[name], 0.3))
    graph = graph_model(name, 0.3)
    hand_masks = {n: b for n, b in hand.named_buffers() if n.endswith("mask")}
    graph_masks = {n: b for n, b in graph.named_buffers() if n.endswith("mask")}
    assert set(hand_masks) == set(graph_masks) and hand_masks
    for key, mask in hand_masks.items():
        assert torch.equal(graph_masks[key], mask), key
    assert evolution.count_fit_weights(graph) == evolution.count_fit_weights(hand)


def test_resnet18_reference_figure_through_the_graph():
    model = graph_model("resnet18", 0.5)
    assert n_params(model) == 11_228_838
    assert evolution.count_fit_weights(model) == 2_820_192


def test_grouped_conv_asks_its_producer_for_per_group_prefixes():
    model = graph_model("resnext50_32x4d", 0.3)
    block = model.layer1[0]  # conv1 1x1 64->128, conv2 3x3 in 32 groups of 4, conv3 1x1 128->256
    per_group = fit_channels(128, 0.3, [4] * 32)  # ceil(0.3*4) = 2 of every 4
    assert per_group.nonzero().flatten().tolist()[:6] == [0, 1, 4, 5, 8, 9]
    assert fit_of(block.conv1.mask)[0] == per_group.nonzero().flatten().tolist()
    assert torch.equal(block.bn1.mask, per_group) and torch.equal(block.bn2.mask, per_group)
    rows, columns = fit_of(block.conv2.mask)
    assert block.conv2.mask.shape == (128, 4, 3, 3)
    assert rows == per_group.nonzero().flatten().tolist() and columns == [0, 1]
    assert fit_of(block.conv3.mask) == (list(range(77)), per_group.nonzero().flatten().tolist())


def test_depthwise_conv_follows_its_input_and_squeeze_excitation_shares_it():
    model = graph_model("efficientnet_b0", 0.3)
    block = model.features[2][0].block  # expand 16->96, depthwise 96, SE 96->4->96, project
    expand_rows = fit_of(block[0][0].mask)[0]
    assert expand_rows == list(range(29))
    depthwise = block[1][0]
    assert depthwise.groups == 96 and depthwise.mask.shape == (96, 1, 3, 3)
    assert fit_of(depthwise.mask) == (expand_rows, [0])
    assert fit_of(block[2].fc1.mask) == (list(range(2)), expand_rows)   # ceil(0.3*4) = 2
    assert fit_of(block[2].fc2.mask) == (expand_rows, list(range(2)))
    assert fit_of(block[3][0].mask)[1] == expand_rows


def test_classifier_conv_keeps_every_class():
    model = graph_model("squeezenet1_1", 0.3)
    final = model.classifier[1]
    assert final.mask.shape[0] == 102 and fit_of(final.mask)[0] == list(range(102))
    assert final.bias_all_fit and final._bias_fit().all()
    # a Fire module's output is the concatenation of its two 64-channel expansions
    fire_next = model.features[4].squeeze
    assert fit_of(fire_next.mask)[1] == ranges((0, 20), (64, 84))


# --------------------------------------------------------------------------- slim invariant

def invariant_error(name, split_rate, size=32):
    """max |slim(x) - dense0(x)| / max |dense0(x)| (float64, eval mode), and the input
    dependence of the logits relative to their scale."""
    torch.manual_seed(0)
    cfg = config(HAND_WRITTEN_TWINS.get(name, f"Split_{name}"), split_rate, "--evolve_mode", "zero")
    dense = graph_split.split_model(name, get_builder(cfg), cfg.num_cls)
    evolution.split_reinitialize(cfg, dense)
    norms = [m for m in dense.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None
        if not norms:  # no BatchNorm (SqueezeNet): biases would swamp the zeroed signal
            for m in dense.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    m.bias.zero_()
        dense.train()
        dense(torch.randn(4, 3, size, size))  # statistics of the zeroed network
    slim = graph_split.split_model(name, get_builder(cfg, slim=True), cfg.num_cls)
    slim = evolution.slim_network(slim)
    slim = evolution.extract_slim(slim, dense)
    assert n_params(slim) < n_params(dense)
    # float64: exactness is checked well below float32 rounding of these deep, tiny-image nets
    dense, slim = dense.double().eval(), slim.double().eval()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected, got = dense(x), slim(x)
    scale = expected.abs().max().item()
    assert torch.isfinite(expected).all() and scale > 0
    return (got - expected).abs().max().item() / scale, \
        (expected[0] - expected[1]).abs().max().item() / scale


INVARIANT_CASES = [
    pytest.param(name, rate, marks=() if QUICK.get(name) == rate else pytest.mark.slow)
    for name in COVERED for rate in RATES
]


@pytest.mark.parametrize("name,split_rate", INVARIANT_CASES)
def test_slim_invariant(name, split_rate):
    size = 64 if name in ("squeezenet1_1", "googlenet") else 32
    error, dependence = invariant_error(name, split_rate, size)
    assert dependence > 0.01  # the logits depend on the image
    assert error <= 1e-4


# --------------------------------------------------------------------------- no exact slim

def test_channel_mixing_models_train_without_slim():
    """ShuffleNet's channel shuffle: KE masks, no slim network, the reason names the op."""
    arch = "Split_shufflenet_v2_x0_5"
    assert not graph_split.slim_exists(arch) and graph_split.slim_exists("Split_mobilenet_v2")
    assert "reshapes across channels" in graph_split.slim_blockers(arch)[0]
    assert "layer_norm" in graph_split.slim_blockers("Split_convnext_tiny")[0]
    cfg = config(arch, 0.5, "--num_generations", "3")
    assert not has_slim(cfg) and has_slim(config("Split_mobilenet_v2", 0.5))
    model = factory.get_model(cfg)
    assert 0 < evolution.count_fit_weights(model) < sum(m.mask.numel() for _, m in
                                                         evolution.split_layers(model))
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    with pytest.raises(ValueError, match="no exact slim network: "):
        factory.get_model(cfg, slim=True)


def test_an_unsupported_op_is_named():
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return torch.fft.fft2(self.conv(x)).real

    with pytest.raises(GraphSplitError, match="op 'fft_fft2'") as info:
        read_channels(Sliced())
    assert "--arch" not in str(info.value)      # the flag is named where a user meets it


def test_an_untraceable_model_is_named_with_its_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(GraphSplitError, match=r"torch.fx cannot trace this model at test_graph_split"
                                        r"\.py:\d+ `return self.conv\(x\) if x.sum\(\) > 0"):
        read_channels(Branchy())


# --------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("graph_archs")
    make_lists_dataset(base / "datasets", "Flower102Pytorch", num_classes=3, per_class=(4, 2, 2),
                       size=(36, 36))
    return base


def cli(datasets, arch, generations):
    name = f"{arch}_G{generations}"
    result = run_cli("--data", str(datasets / "datasets"), "--log-dir", str(datasets / "ckpt"),
                     "--name", name, "--arch", arch, "--num_generations", str(generations),
                     "--epochs", "1", *TINY)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result, pd.read_csv(datasets / "ckpt" / name / f"{name}.csv")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in COVERED if f"Split_{n}" in GRAPH_DERIVED])
def test_one_generation_cli_run(datasets, name):
    _, table = cli(datasets, f"Split_{name}", 1)
    assert table["Generation"].tolist() == [0]


@pytest.mark.slow
def test_two_generations_with_slim_rows(datasets):
    _, table = cli(datasets, "Split_regnet_y_400mf", 2)
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "slim", "0.5", "slim"]


def test_channel_shuffle_run_has_no_slim_rows_and_says_why(datasets):
    result, table = cli(datasets, "Split_shufflenet_v2_x0_5", 2)
    assert table["Split Rate"].astype(str).tolist() == ["0.5", "0.5"]
    assert table["Generation"].tolist() == [0, 1]
    assert "no slim rows: Split_shufflenet_v2_x0_5 has no exact slim network" in \
        result.stdout + result.stderr


def test_a_graph_that_cannot_be_split_stops_training_naming_the_flag(datasets, monkeypatch):
    """The analysis states the problem (GraphSplitError); the trainer adds what to do."""
    from trainers import knowledge_evolution

    def unsplittable(cfg):
        raise GraphSplitError("cannot derive a split from the graph: op 'fft_fft2' is not supported")

    monkeypatch.setattr(knowledge_evolution, "has_slim", unsplittable)
    cfg = Config().parse(["--data", str(datasets / "datasets"), "--log-dir",
                          str(datasets / "ckpt"), "--name", "unsplittable", "--arch",
                          "Split_mobilenet_v2", "--epochs", "1", *TINY])
    with pytest.raises(UserError) as info:
        knowledge_evolution.run(cfg)
    assert str(info.value) == ("cannot derive a split from the graph: op 'fft_fft2' is not "
                               "supported; pick another --arch")
    assert not (datasets / "ckpt" / "unsplittable").exists()
