"""Later-layer forgetting: utils.evolution.reset_layers."""
import pytest
import torch

from configs.base_config import Config
from models.evolution import reset_layers
from models.factory import get_model


def trained_looking_model(arch="Split_ResNet18"):
    """A model whose BatchNorms are not at their defaults (so a reset of them shows)."""
    cfg = Config().parse(["-a", arch, "--split_rate", "0.5"])
    cfg.num_cls = 4
    torch.manual_seed(0)
    model = get_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        model(torch.randn(2, 3, 32, 32))                 # running stats move
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def under(key, prefix):
    return key.startswith(prefix + ".")


@pytest.mark.parametrize("reset_bn", [False, True])
def test_reset_changes_exactly_the_layers_under_the_prefix(single_thread, reset_bn):
    model = trained_looking_model()
    before = snapshot(model)
    names = reset_layers(model, "layer4", reset_bn=reset_bn,
                         generator=torch.Generator().manual_seed(1))
    after = model.state_dict()
    convs = ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1",
             "layer4.1.conv2"]
    bns = ["layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"]
    assert sorted(names) == sorted(convs + (bns if reset_bn else []))
    for key, old in before.items():
        new = after[key]
        is_bn = any(key.startswith(b + ".") for b in bns)
        if under(key, "layer4") and key.endswith(".mask"):
            assert torch.equal(new, old), key              # masks are structure, kept
        elif under(key, "layer4") and (not is_bn or reset_bn):
            assert not torch.equal(new, old), key
        else:
            assert torch.equal(new, old), key              # bit-identical
    if reset_bn:
        bn = model.layer4[1].bn2
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
        assert bn.num_batches_tracked.item() == 0


def test_reset_draw_is_pytorchs_default_init(single_thread):
    model = trained_looking_model()
    reset_layers(model, "fc", generator=torch.Generator().manual_seed(5))
    fc = model.fc
    bound = 1 / fc.in_features ** 0.5                     # kaiming_uniform(a=sqrt(5)) bound
    assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound
    assert fc.bias.abs().max() <= bound
    again = trained_looking_model()
    reset_layers(again, "fc", generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.fc.weight, fc.weight)         # reproducible with a generator
    # a dotted prefix selects one block; it does not reach layer1.10 etc. (whole name parts)
    names = reset_layers(model, "layer1.1", generator=torch.Generator().manual_seed(0))
    assert names == ["layer1.1.conv1", "layer1.1.conv2"]


def test_unknown_prefix_names_it_and_lists_top_level_modules(single_thread):
    model = trained_looking_model()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        reset_layers(model, "layer5")
    msg = str(info.value)
    assert "'layer5'" in msg
    for name in ("conv1", "bn1", "layer1", "layer4", "fc"):
        assert name in msg
    with pytest.raises(ValueError):
        reset_layers(model, "lay")                         # not a whole module name
    with pytest.raises(ValueError, match="empty"):
        reset_layers(model, "")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
