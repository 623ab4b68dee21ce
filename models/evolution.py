"""Knowledge Evolution's operations on whole networks: re-drawing the reset hypothesis, cutting
out the slim network, later-layer forgetting, and counting the fit hypothesis."""
import math
import re
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from layers.bn_type import copy_channels
from layers.split_base import SplitMixin


def split_layers(model: nn.Module):
    """(name, layer) for every split conv / linear of `model`."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SplitMixin)]


def count_fit_weights(model: nn.Module) -> int:
    """Sum of all conv / linear masks: the number of fit-hypothesis weights."""
    return sum(int(m.mask.sum()) for _, m in split_layers(model))


@torch.no_grad()
def split_reinitialize(cfg, model: nn.Module, generator: torch.Generator | None = None):
    """Re-draw the reset hypothesis of every split layer (--evolve_mode); BatchNorm is kept.

    With --reset_hypothesis (WELS only) each layer first draws a new mask.
    """
    layers = split_layers(model)
    if not layers:
        raise ValueError("the model has no split layers to re-initialise; build it with SplitConv "
                         "/ SplitLinear layers")
    for _, layer in layers:
        if cfg.reset_hypothesis:
            layer.redraw_mask(generator)
        layer.reinitialize(cfg.evolve_mode, generator)


def _fit_channels_of(norm: _BatchNorm) -> torch.Tensor:
    """The fit channels of a BatchNorm: its mask's (a SplitBatchNorm, or its SyncBatchNorm
    conversion); a plain BatchNorm has no mask and counts as wholly fit."""
    mask = getattr(norm, "mask", None)
    return mask.nonzero().flatten() if mask is not None else torch.arange(norm.num_features)


def _copy_fit(dense: nn.Module, slim: nn.Module):
    """Copy the fit hypothesis of one dense layer into its slim counterpart (ValueError if the
    shapes disagree or `dense` has no mask)."""
    if isinstance(dense, _BatchNorm):
        channels = _fit_channels_of(dense)
        if channels.numel() != slim.num_features:
            raise ValueError(f"{channels.numel()} fit channels do not fit a slim BatchNorm "
                             f"of {slim.num_features} channels")
        copy_channels(dense, slim, channels)
    elif hasattr(dense, "copy_fit_into"):
        dense.copy_fit_into(slim)
    else:
        raise ValueError("it has no mask; build the dense model with split layers")


@torch.no_grad()
def extract_slim(slim_model: nn.Module, dense_model: nn.Module) -> nn.Module:
    """Copy the fit hypothesis of `dense_model` into `slim_model` (built with slim=True): the
    rows, columns and channels its masks mark fit."""
    dense_modules = dict(dense_model.named_modules())
    for name, slim in slim_model.named_modules():
        if not isinstance(slim, (nn.Conv2d, nn.Linear, _BatchNorm)):
            continue
        dense = dense_modules.get(name)
        if dense is None:
            raise ValueError(f"the slim model's layer {name!r} has no counterpart in the dense model")
        try:
            _copy_fit(dense, slim)
        except ValueError as error:
            raise ValueError(f"cannot extract layer {name!r}: {error}") from None
    return slim_model


def _device(layer: nn.Module) -> torch.device:
    tensor = layer.weight if getattr(layer, "weight", None) is not None else layer.running_mean
    return tensor.device


def slim_layer(dense: nn.Module) -> nn.Module:
    """The plain layer of the slim network that stands for the split layer `dense`: a conv or a
    linear of its fit rows and columns, a BatchNorm of its fit channels (all read from its mask,
    so from `layers.split_base.fit_channels`), holding `dense`'s fit weights, on its device.

    A grouped conv keeps the groups that hold a fit row (a depthwise conv: its fit channels)."""
    device = _device(dense)
    if isinstance(dense, _BatchNorm):
        slim = nn.utils.skip_init(nn.BatchNorm2d, len(_fit_channels_of(dense)), eps=dense.eps,
                                  momentum=dense.momentum, affine=dense.affine,
                                  track_running_stats=dense.track_running_stats, device=device)
    else:
        rows, columns = dense.fit_rows_and_columns()
        bias = dense.bias is not None
        if isinstance(dense, nn.Linear):
            slim = nn.utils.skip_init(nn.Linear, len(columns), len(rows), bias, device=device)
        else:
            rows_by_group = dense.mask.flatten(1).any(1).view(dense.groups, -1)
            groups = int(rows_by_group.any(1).sum())
            slim = nn.utils.skip_init(nn.Conv2d, len(columns) * groups, len(rows),
                                      dense.kernel_size, dense.stride, dense.padding,
                                      dense.dilation, groups, bias, dense.padding_mode,
                                      device=device)
    _copy_fit(dense, slim)
    return slim.train(dense.training)


def is_split(module: nn.Module) -> bool:
    """A split conv / linear, or a BatchNorm that knows its fit channels."""
    return isinstance(module, SplitMixin) or (isinstance(module, _BatchNorm)
                                              and hasattr(module, "mask"))


@torch.no_grad()
def slim_network(dense_model: nn.Module) -> nn.Module:
    """The slim network cut from `dense_model` (KELS masks): every split conv, linear and
    BatchNorm replaced, in place, by its `slim_layer`; every other module is kept. Returns the
    changed `dense_model`, which holds its fit hypothesis and computes what the dense one
    computes with its reset hypothesis zeroed."""
    for name, module in list(dense_model.named_modules()):
        if name and is_split(module):
            parent, _, child = name.rpartition(".")
            setattr(dense_model.get_submodule(parent), child, slim_layer(module))
    return dense_model


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """SyncBatchNorm in place of every BatchNorm (--sync_bn), keeping SplitBatchNorm channel masks."""
    masks = {name: m.mask for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and hasattr(m, "mask")}
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, module in model.named_modules():
        if name in masks:
            module.register_buffer("mask", masks[name])
    return model


def _under(name: str, prefix: str) -> bool:
    """Whether module `name` is `prefix` or inside it (`layer4` covers `layer4.0.conv1`, not
    `layer40`)."""
    return name == prefix or name.startswith(prefix + ".")


@torch.no_grad()
def reset_layers(model: nn.Module, prefix: str, reset_bn: bool = False,
                 generator: torch.Generator | None = None) -> list:
    """Later-layer forgetting (Zhou et al., "Fortuitous Forgetting in Connectionist Networks",
    ICLR 2022): wholly re-initialise every conv / linear layer under `prefix`.

    A module is under `prefix` when its qualified name is `prefix` or starts with `prefix.`
    (so `layer4` means all of ResNet's last stage, `layer4.1` one block of it, `fc` the
    classifier). Each such layer's weight is redrawn with PyTorch's default init
    (kaiming_uniform, a=sqrt(5)) and its bias uniformly in +-1/sqrt(fan_in): the fit and the reset
    hypothesis alike; split masks are left as they are. With `reset_bn` every BatchNorm under
    `prefix` is reset too (weight 1, bias 0, running mean 0, variance 1, batch count 0); without
    it BatchNorm is kept, as Knowledge Evolution does. Every other tensor is untouched.

    Returns the qualified names of the reset modules, in model order. A prefix that matches no
    conv / linear layer is a ValueError that names it and lists the model's top-level modules.
    """
    prefix = prefix.strip().rstrip(".")
    if not prefix:
        raise ValueError("an empty prefix would reset the whole model; name a submodule, "
                         "e.g. 'layer4'")
    modules = [(name, m) for name, m in model.named_modules() if name and _under(name, prefix)]
    weighted = [(name, m) for name, m in modules if isinstance(m, (_ConvNd, nn.Linear))]
    if not weighted:
        top = [name for name, _ in model.named_children()]
        raise ValueError(f"no conv or linear layer of the model is named {prefix!r} or lies "
                         f"under it; the model's top-level modules are: {', '.join(top)}")
    reset = []
    for name, m in modules:
        if isinstance(m, (_ConvNd, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                m.bias.uniform_(-bound, bound, generator=generator)
            reset.append(name)
        elif reset_bn and isinstance(m, _BatchNorm):
            m.reset_parameters()              # running stats + affine weight 1, bias 0
            reset.append(name)
    return reset


def conv_linear_parameters(model: nn.Module):
    """(name, tensor) of every conv and linear weight and bias (what shrink-and-perturb changes)."""
    for layer_name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            for kind in ("weight", "bias"):
                p = getattr(layer, kind)
                if p is not None:
                    yield f"{layer_name}.{kind}", p


class Stages(NamedTuple):
    """A network's stages in forward order, each a list of module names, and its classifier's
    module names; whatever holds parameters outside them is the stem."""
    stages: list[list[str]]
    head: list[str]


def _holds_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def network_stages(model: nn.Module) -> Stages:
    """ResNets: layer1-4; DenseNets: each dense block with its transition; GoogLeNet: the
    inception groups 3, 4 and 5; VGG-like `features`: the conv blocks between max-pools; any
    other network: its top-level children that hold parameters. The head is the last top-level
    child that holds parameters. Raises ValueError when fewer than one stage is found."""
    children = [name for name, child in model.named_children() if _holds_parameters(child)]
    modules = dict(model.named_modules())
    if not children:
        raise ValueError("the model holds no parameters")
    head = [children[-1]]
    if all(f"layer{i}" in modules for i in range(1, 5)):
        stages = [[f"layer{i}"] for i in range(1, 5)]
    elif "features.denseblock1" in modules:
        count = sum(1 for n in modules if re.fullmatch(r"features\.denseblock\d+", n))
        stages = [[f"features.denseblock{i}", f"features.transition{i}"] for i in range(1, count)]
        stages.append([f"features.denseblock{count}", "features.norm5"])
        stages = [[n for n in stage if n in modules] for stage in stages]
    elif any(name.startswith("inception") for name in children):
        groups = {}
        for name in children:
            if name.startswith("inception"):
                groups.setdefault(name[len("inception"):-1], []).append(name)
        stages = list(groups.values())
    elif isinstance(modules.get("features"), nn.Sequential) and any(
            isinstance(m, nn.MaxPool2d) for m in modules["features"]):
        stages, block = [], []
        for name, m in modules["features"].named_children():
            if isinstance(m, nn.MaxPool2d):
                if block:
                    stages.append(block)
                block = []
            elif _holds_parameters(m):
                block.append(f"features.{name}")
        if block:
            stages.append(block)
    else:
        stages = [[name] for name in children[:-1]]
    if not stages:
        raise ValueError(f"no stages found among its top-level modules "
                         f"({', '.join(name for name, _ in model.named_children())})")
    return Stages(stages, head)
