"""The model of a configuration: `get_model(cfg)` builds the dense network with its split
layers and fresh weights, `get_model(cfg, slim=True)` the slim network it can be cut down to."""
import torch.nn as nn

from models.builder import get_builder
from models.registry import ARCHITECTURES


def get_model(cfg, slim: bool = False) -> nn.Module:
    """The dense model of `cfg` (fresh init), or with `slim=True` its slim network."""
    builder = get_builder(cfg, slim=slim)
    slim_factor = cfg.split_rate if slim else 1.0
    return ARCHITECTURES[cfg.arch](builder, cfg.num_cls, slim_factor=slim_factor)
