"""Building models from a configuration, and the two KE operations on whole networks."""
from typing import Optional

import torch
import torch.nn as nn

from layers.bn_type import copy_channels
from layers.split_base import SplitMixin
from models import ARCHITECTURES
from models.builder import get_builder


def get_model(cfg, slim: bool = False) -> nn.Module:
    """The dense model of `cfg` (fresh init), or with `slim=True` its slim network."""
    builder = get_builder(cfg, slim=slim)
    slim_factor = cfg.split_rate if slim else 1.0
    return ARCHITECTURES[cfg.arch](builder, cfg.num_cls, slim_factor=slim_factor)


def split_layers(model: nn.Module):
    """(name, layer) for every split conv / linear of `model`."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SplitMixin)]


def count_fit_weights(model: nn.Module) -> int:
    """Sum of all conv / linear masks: the number of fit-hypothesis weights."""
    return sum(int(m.mask.sum()) for _, m in split_layers(model))


@torch.no_grad()
def split_reinitialize(cfg, model: nn.Module, generator: Optional[torch.Generator] = None):
    """Re-draw the reset hypothesis of every split layer (--evolve_mode); BatchNorm is kept.

    With --reset_hypothesis (WELS only) each layer first draws a new mask.
    """
    layers = split_layers(model)
    if not layers:
        raise ValueError("the model has no split layers to re-initialise; build it with "
                         "--conv_type SplitConv / --linear_type SplitLinear")
    for _, layer in layers:
        if cfg.reset_hypothesis:
            layer.redraw_mask(generator)
        layer.reinitialize(cfg.evolve_mode, generator)


@torch.no_grad()
def extract_slim(slim_model: nn.Module, dense_model: nn.Module) -> nn.Module:
    """Copy the fit hypothesis of `dense_model` into `slim_model` (built with slim=True)."""
    dense_modules = dict(dense_model.named_modules())
    for name, slim in slim_model.named_modules():
        if not isinstance(slim, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue
        dense = dense_modules.get(name)
        if dense is None:
            raise ValueError(f"the slim model's layer {name!r} has no counterpart in the dense model")
        try:
            if hasattr(dense, "copy_fit_into"):
                dense.copy_fit_into(slim)
            elif isinstance(dense, nn.BatchNorm2d):
                copy_channels(dense, slim, torch.arange(slim.num_features))
            else:
                raise ValueError("it has no mask; build the dense model with split layers")
        except ValueError as error:
            raise ValueError(f"cannot extract layer {name!r}: {error}") from None
    return slim_model
