"""DenseNet-BC, GoogLeNet and VGG-bn: layout, masks of concatenated inputs, slim invariant."""
import pytest
import torch
import torch.nn as nn
import torchvision

from configs.base_config import Config
from models import evolution, factory

# unsplit layers make a valid run only with later-layer forgetting; the flag changes no layer
PLAIN = ["--conv_type", "DenseConv", "--bn_type", "NormalBatchNorm", "--linear_type", "DenseLinear",
         "--reset_layer_name", "fc"]

TORCHVISION = {
    "Split_densenet121": ("densenet121", {}),
    "Split_densenet161": ("densenet161", {}),
    "Split_densenet169": ("densenet169", {}),
    "Split_densenet201": ("densenet201", {}),
    "Split_googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}),
    "Split_vgg11_bn": ("vgg11_bn", {}),
    "Split_vgg16_bn": ("vgg16_bn", {}),
}


def config(arch, split_rate=0.5, *extra):
    return Config().parse(["--arch", arch, "--split_rate", str(split_rate), *extra])


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def ranges(*spans):
    """Sorted indices of the half-open ranges (start, stop)."""
    return [i for start, stop in spans for i in range(start, stop)]


def fit_indices(layer):
    rows, columns = layer.fit_rows_and_columns()
    return rows.tolist(), columns.tolist()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP barriers between two threads make these
    many-small-layer networks up to tens of times slower when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- layout

@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_plain_layout_matches_torchvision(arch):
    """Plain layer types give torchvision's parameter count, names and shapes (102 classes)."""
    name, kwargs = TORCHVISION[arch]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ref = getattr(torchvision.models, name)(weights=None, num_classes=102, **kwargs)
        ours = factory.get_model(config(arch, 0.5, *PLAIN))
    assert n_params(ours) == n_params(ref)
    assert ({n: p.shape for n, p in ours.named_parameters()}
            == {n: p.shape for n, p in ref.named_parameters()})
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert not evolution.split_layers(ours)


@pytest.mark.parametrize("arch", ["Split_densenet121", "Split_googlenet",
                                  pytest.param("Split_vgg11_bn", marks=pytest.mark.slow)])
def test_plain_model_computes_what_torchvision_computes(arch):
    """Same weights, same function: strides, paddings, pools and BN eps match torchvision's."""
    torch.manual_seed(0)
    name, kwargs = TORCHVISION[arch]
    ref = getattr(torchvision.models, name)(weights=None, num_classes=102, **kwargs)
    ours = factory.get_model(config(arch, 0.5, *PLAIN))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert got.shape == (2, 102)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_googlenet_batchnorm_eps_matches_torchvision():
    with torch.device("meta"):
        model = factory.get_model(config("Split_googlenet"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)


def test_densenet121_reference_figure():
    cfg = config("Split_densenet121", 0.5)
    dense = factory.get_model(cfg)
    with torch.device("meta"):
        slim = factory.get_model(cfg, slim=True)
    assert cfg.num_cls == 102
    assert n_params(dense) == 7_058_406
    assert evolution.count_fit_weights(dense) == 1_772_128
    assert n_params(slim) == 1_814_054


# --------------------------------------------------------------------------- masks
# s = 0.3 makes the chunk-wise rule differ from the whole-width one; hand-computed values:
# ceil(.3*32)=10, ceil(.3*64)=20, ceil(.3*96)=29, ceil(.3*128)=39, ceil(.3*192)=58,
# ceil(.3*384)=116, ceil(.3*512)=154, ceil(.3*4096)=1229.

def test_densenet_transition_masks_are_chunkwise():
    model = factory.get_model(config("Split_densenet121", 0.3))
    trans = model.features.transition1
    # Block 1 output: the 64-channel stem, then six 32-channel dense layers -> 256 channels.
    assert trans.conv.weight.shape == (128, 256, 1, 1)
    expected_columns = ranges((0, 20), (64, 74), (96, 106), (128, 138), (160, 170),
                              (192, 202), (224, 234))
    rows, columns = fit_indices(trans.conv)
    assert rows == list(range(39))
    assert columns == expected_columns
    # The whole-width rule would have kept the first ceil(.3*256)=77 columns instead.
    assert columns != list(range(77))
    assert trans.norm.mask.nonzero().flatten().tolist() == expected_columns
    # Block 2's third dense layer reads [transition1 (128), 32, 32].
    layer = model.features.denseblock2.denselayer3
    assert layer.conv1.weight.shape == (128, 192, 1, 1)
    assert fit_indices(layer.conv1) == (list(range(39)), ranges((0, 39), (128, 138), (160, 170)))
    assert layer.norm1.mask.nonzero().flatten().tolist() == ranges((0, 39), (128, 138), (160, 170))
    # The classifier reads block 4: [transition3 (512), 16 x 32]; all 102 rows are fit.
    expected = ranges((0, 154), *[(512 + 32 * k, 522 + 32 * k) for k in range(16)])
    assert fit_indices(model.classifier) == (list(range(102)), expected)
    assert model.features.norm5.mask.nonzero().flatten().tolist() == expected
    # The stem keeps all three image channels.
    assert fit_indices(model.features.conv0) == (list(range(20)), [0, 1, 2])


def test_inception_module_masks_are_chunkwise():
    model = factory.get_model(config("Split_googlenet", 0.3))
    # inception4a reads inception3b's branches (through a max-pool): [128, 192, 96, 64] = 480.
    module = model.inception4a
    expected_columns = ranges((0, 39), (128, 186), (320, 349), (416, 436))
    first_convs = {"branch1": (module.branch1.conv, 192), "branch2": (module.branch2[0].conv, 96),
                   "branch3": (module.branch3[0].conv, 16), "branch4": (module.branch4[1].conv, 64)}
    for name, (conv, width) in first_convs.items():
        assert conv.weight.shape[:2] == (width, 480), name
        rows, columns = fit_indices(conv)
        assert columns == expected_columns, name
        # whole-width rule would have given the first ceil(.3*480)=144 columns
        assert columns != list(range(144)), name
    assert fit_indices(module.branch1.conv)[0] == list(range(58))   # ceil(.3*192)
    assert fit_indices(module.branch2[0].conv)[0] == list(range(29))  # ceil(.3*96)
    assert fit_indices(module.branch3[0].conv)[0] == list(range(5))   # ceil(.3*16)
    # The second conv of a branch reads a single chunk (its reduction).
    assert fit_indices(module.branch2[1].conv) == (list(range(63)), list(range(29)))  # 208, 96
    # inception3a reads conv3's 192 channels: one chunk.
    assert fit_indices(model.inception3a.branch1.conv)[1] == list(range(58))
    # The classifier reads inception5b's branches [384, 384, 128, 128].
    assert fit_indices(model.fc) == (list(range(102)),
                                     ranges((0, 116), (384, 500), (768, 807), (896, 935)))


def test_vgg_classifier_masks():
    model = factory.get_model(config("Split_vgg11_bn", 0.3))
    first, hidden, last = model.classifier[0], model.classifier[3], model.classifier[6]
    # 154 fit channels of 512, 49 features each: whole channels only (0.3*25088 = 7526.4).
    assert fit_indices(first) == (list(range(1229)), list(range(154 * 49)))
    assert fit_indices(hidden) == (list(range(1229)), list(range(1229)))
    assert fit_indices(last) == (list(range(102)), list(range(1229)))
    assert last.mask[:, :1229].all() and not last.mask[:, 1229:].any() and last.bias_all_fit
    assert fit_indices(model.features[0]) == (list(range(20)), [0, 1, 2])


# --------------------------------------------------------------------------- slim invariant

# Every architecture at three rates; 0.3 makes ceil matter everywhere (0.3*w is rarely whole).
# The lighter models run at 64 px so their last stage keeps a spatial extent > 1.
# every rate for DenseNet-121 and GoogLeNet; VGG (the slowest at 64 px) and the deeper variants,
# which repeat the same blocks, at 0.5 in the default suite and at every rate in `make test-slow`
INVARIANT_CASES = [
    pytest.param(arch, split_rate, size,
                 marks=[pytest.mark.slow] if deeper and split_rate != 0.5 else [])
    for arch, size, deeper in [("Split_densenet121", 64, False), ("Split_googlenet", 64, False),
                               ("Split_vgg11_bn", 64, True), ("Split_densenet161", 32, True),
                               ("Split_densenet169", 32, True), ("Split_densenet201", 32, True),
                               ("Split_vgg16_bn", 32, True)]
    for split_rate in (0.3, 0.5, 0.8)
]


def recalibrate_batchnorm(model, size, batches=1):
    """Re-estimate every BatchNorm's running statistics on random data (no weight changes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, 3, size, size))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum


@pytest.mark.parametrize("arch,split_rate,size", INVARIANT_CASES)
def test_slim_invariant(arch, split_rate, size):
    """slim(x) == dense0(x) in eval mode after extract_slim (dense0: reset hypothesis zeroed)."""
    torch.manual_seed(0)
    cfg = config(arch, split_rate, "--evolve_mode", "zero")
    dense = factory.get_model(cfg)
    evolution.split_reinitialize(cfg, dense)
    # Channel-dependent BatchNorm: random affine parameters, running statistics measured on the
    # zeroed network (so the fit signal keeps its scale through every layer).
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    recalibrate_batchnorm(dense, size)
    slim = evolution.extract_slim(factory.get_model(cfg, slim=True), dense)
    dense.eval()
    slim.eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected, got = dense(x), slim(x)
    scale = expected.abs().max().item()
    assert torch.isfinite(expected).all() and scale > 0
    # The logits depend on the input (the comparison is not dominated by the classifier bias).
    assert (expected[0] - expected[1]).abs().max() > 0.05 * scale
    assert (got - expected).abs().max().item() <= 1e-4 * scale
    assert n_params(slim) < n_params(dense)


@pytest.mark.parametrize("arch", ["Split_densenet121", "Split_googlenet",
                                  pytest.param("Split_vgg11_bn", marks=pytest.mark.slow)])
def test_one_training_step_reaches_every_parameter(arch):
    torch.manual_seed(0)
    cfg = config(arch, 0.3)
    model = factory.get_model(cfg)
    model.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, cfg.num_cls, (2,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Masks are buffers, never trained.
    assert all("mask" not in name for name, _ in model.named_parameters())
    assert all(b.dtype == torch.bool for name, b in model.named_buffers() if name.endswith("mask"))
