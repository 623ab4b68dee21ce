"""`Split_<name>` for torchvision CNNs: the split derived from the model's torch.fx graph.

The dense model is torchvision's own module (its forward, parameter names and counts) with every
conv / linear / BatchNorm swapped for a split layer whose mask comes from `graph_channels`, drawn
by the builder's --init. The slim model is cut from it by its masks, as for the hand-written
architectures (`models.evolution.slim_network`): the same module with every such layer shrunk to
its fit rows and columns.
"""
from collections.abc import Callable
from functools import cache

import torch
import torch.nn as nn

from layers.bn_type import SplitBatchNorm
from layers.conv_type import SplitConv
from layers.linear_type import SplitLinear
from models.builder import Builder
from models.graph_channels import ChannelGraph, LayerChannels, fit_vectors, read_channels
from models.names import GRAPH_DERIVED

PREFIX = "Split_"
# Construction arguments beyond num_classes: no auxiliary heads (as the hand-written GoogLeNet).
TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


def torchvision_name(arch: str) -> str:
    """`Split_mobilenet_v2` -> `mobilenet_v2`."""
    return arch[len(PREFIX):] if arch.startswith(PREFIX) else arch


def plain_model(name: str, num_classes: int, device=None) -> nn.Module:
    """torchvision's model `name` (no weights) on `device` (default: the current default)."""
    from torchvision.models import get_model  # imported by the runs that use it: ~1 s
    kwargs = dict(num_classes=num_classes, **TORCHVISION_KWARGS.get(name, {}))
    device = torch.get_default_device() if device is None else torch.device(device)
    try:
        with device:
            return get_model(name, **kwargs)
    except NotImplementedError:  # RegNet works out its widths with tensors, which meta cannot
        with torch.device("cpu"):
            return get_model(name, **kwargs).to(device)


@cache
def channel_graph(name: str, num_classes: int = 1000) -> ChannelGraph:
    """The channel analysis of torchvision's `name` (traced on the meta device, cached)."""
    return read_channels(plain_model(name, num_classes, "meta"))


def slim_blockers(arch: str) -> list[str]:
    """Why `arch` has no exact slim network (an op that mixes channels); empty when it has one."""
    if arch not in GRAPH_DERIVED:
        return []
    return list(channel_graph(torchvision_name(arch)).slim_blockers)


def slim_exists(arch: str) -> bool:
    """Whether `arch` has an exact slim network (every hand-written architecture has one)."""
    return not slim_blockers(arch)


def _skeleton(name: str, num_classes: int, graph: ChannelGraph) -> nn.Module:
    """torchvision's model, on meta when every tensor it holds belongs to a layer to be swapped."""
    model = plain_model(name, num_classes, "meta")
    for module_name, module in model.named_modules():
        if module_name not in graph.layers and next(module.parameters(False), None) is not None:
            return plain_model(name, num_classes)
    return model


def _swap(model: nn.Module, name: str, layer: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def _copy_norm_settings(old: nn.BatchNorm2d, new: nn.BatchNorm2d) -> nn.BatchNorm2d:
    new.eps, new.momentum = old.eps, old.momentum
    return new


def _split_layer(old: nn.Module, channels: LayerChannels, builder: Builder) -> nn.Module:
    """The layer of the dense model: split (mask from the graph) or plain, by the builder's types."""
    rate = builder.split_rate
    in_fit, out_fit = fit_vectors(channels, rate)
    classifier = all(space.root().all_fit for space in channels.outputs.spaces)
    if channels.kind == "norm":
        if issubclass(builder.bn_type, SplitBatchNorm):
            norm = builder.bn_type(old.num_features, split_rate=rate, fit=out_fit)
        else:
            norm = builder.bn_type(old.num_features)
        return _copy_norm_settings(old, norm)
    if channels.kind == "linear":
        if issubclass(builder.linear_type, SplitLinear):
            linear = builder.linear_type(old.in_features, old.out_features, old.bias is not None,
                                         last_layer=classifier, out_fit=out_fit, in_fit=in_fit,
                                         **builder.split)
        else:
            linear = builder.linear_type(old.in_features, old.out_features, old.bias is not None)
        builder.initialise(linear)
        return linear
    args = (old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
            old.dilation, old.groups, old.bias is not None)
    if issubclass(builder.conv_type, SplitConv):
        conv = builder.conv_type(*args, padding_mode=old.padding_mode, out_fit=out_fit,
                                 in_fit=in_fit, **builder.split)
        conv.bias_all_fit = classifier
    else:
        conv = builder.conv_type(*args, padding_mode=old.padding_mode)
    builder.initialise(conv)
    return conv


def split_model(name: str, builder: Builder, num_classes: int) -> nn.Module:
    """torchvision's `name` with split layers whose masks follow its graph (dense model)."""
    graph = channel_graph(name, num_classes)
    model = _skeleton(name, num_classes, graph)
    for layer_name, channels in graph.layers.items():
        _swap(model, layer_name, _split_layer(model.get_submodule(layer_name), channels, builder))
    return model


def architecture(arch: str) -> Callable[..., nn.Module]:
    """The registry entry of `arch` (`Split_<torchvision name>`): (builder, num_classes) -> the
    dense model."""
    name = torchvision_name(arch)

    def build(builder: Builder, num_classes: int) -> nn.Module:
        return split_model(name, builder, num_classes)

    build.__name__ = build.__qualname__ = arch
    return build
