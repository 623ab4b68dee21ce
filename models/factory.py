"""The model of a configuration: `get_model(cfg)` builds the dense network with its split
layers and fresh weights, `get_model(cfg, slim=True)` the slim network it can be cut down to.
With --task retrieval both are embedding networks (models/embedding.py)."""
import torch
import torch.nn as nn

from models.builder import get_builder
from models.embedding import EmbeddingNet
from models.evolution import slim_network
from models.graph_split import slim_blockers
from models.registry import ARCHITECTURES


def is_retrieval(cfg) -> bool:
    return getattr(cfg, "task", "classification") == "retrieval"


def _network(cfg, builder) -> nn.Module:
    if is_retrieval(cfg):
        return EmbeddingNet(ARCHITECTURES[cfg.arch](builder, cfg.embedding_size),
                            cfg.embedding_size)
    return ARCHITECTURES[cfg.arch](builder, cfg.num_cls)


def get_model(cfg, slim: bool = False) -> nn.Module:
    """The dense model of `cfg` (fresh init), or with `slim=True` its slim network.

    The slim network of every architecture is cut from a dense draw with KELS masks at
    --split_rate (`models.evolution.slim_network`): its widths are the fit counts of those masks,
    and it holds that draw's fit hypothesis (overwritten by `extract_slim`). The draw leaves the
    CPU's random generator as it was."""
    if not slim:
        return _network(cfg, get_builder(cfg))
    blockers = slim_blockers(cfg.arch)
    if blockers:
        raise ValueError(f"{cfg.arch} has no exact slim network: {blockers[0]}")
    with torch.random.fork_rng(devices=[]):
        dense = _network(cfg, get_builder(cfg, slim=True))
    return slim_network(dense)
