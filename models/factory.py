"""The model of a configuration: `get_model(cfg)` builds the dense network with its split
layers and fresh weights, `get_model(cfg, slim=True)` the slim network it can be cut down to.
With --task retrieval both are embedding networks (models/embedding.py)."""
import torch.nn as nn

from models.builder import get_builder
from models.embedding import EmbeddingNet
from models.registry import ARCHITECTURES


def is_retrieval(cfg) -> bool:
    return getattr(cfg, "task", "classification") == "retrieval"


def get_model(cfg, slim: bool = False) -> nn.Module:
    """The dense model of `cfg` (fresh init), or with `slim=True` its slim network."""
    builder = get_builder(cfg, slim=slim)
    slim_factor = cfg.split_rate if slim else 1.0
    if is_retrieval(cfg):
        network = ARCHITECTURES[cfg.arch](builder, cfg.embedding_size, slim_factor=slim_factor)
        return EmbeddingNet(network, cfg.embedding_size)
    return ARCHITECTURES[cfg.arch](builder, cfg.num_cls, slim_factor=slim_factor)
