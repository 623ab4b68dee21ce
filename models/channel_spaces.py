"""Channel spaces: which channels of a tensor are fit, as constraints between layers.

Every conv / linear output opens a `Space`; a tensor's channels (`Layout`) are a concatenation
of spaces. Ops that need two tensors to share one fit set unify their spaces (union-find); a
grouped conv asks its input space for a per-group prefix. Fit channels are read only once every
constraint is known.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from layers import split_base


class GraphSplitError(ValueError):
    """The torch.fx graph of a model holds an op (or a combination) the split analysis cannot
    handle; the message names it. Callers facing a user add what to do (another --arch)."""


@dataclass(eq=False)
class Space:
    """The channels one producer opens. `chunks`: per-group layout; `opaque`: made by mixing."""
    width: int
    chunks: list[int] | None = None
    all_fit: bool = False
    opaque: bool = False
    parent: Optional["Space"] = None

    def root(self) -> "Space":
        space = self
        while space.parent is not None:
            space = space.parent
        return space

    def fit(self, rate: float) -> torch.Tensor:
        root = self.root()
        return split_base.fit_channels(root.width, rate, root.chunks, all_fit=root.all_fit)


@dataclass(eq=False)
class Layout:
    """A tensor's channels: `spaces` concatenated along dimension `dim`, each channel spread over
    `per_channel` features (a flattened C x H x W map)."""
    spaces: tuple[Space, ...]
    dim: int = 1
    per_channel: int = 1

    def fit(self, rate: float) -> torch.Tensor:
        fit = torch.cat([space.fit(rate) for space in self.spaces])
        return fit.repeat_interleave(self.per_channel)



def unify(a: Space, b: Space, where: str):
    a, b = a.root(), b.root()
    if a is b:
        return
    if a.width != b.width:
        raise GraphSplitError(f"{where} combines {a.width} channels with {b.width}; this model "
                              "cannot be split from its graph")
    if a.chunks and b.chunks and a.chunks != b.chunks:
        raise GraphSplitError(f"{where} joins two differently grouped convs; this model cannot "
                              "be split from its graph")
    b.parent = a
    a.chunks = a.chunks or b.chunks
    a.all_fit = a.all_fit or b.all_fit
    a.opaque = a.opaque and b.opaque


def _structure(layout: Layout) -> tuple:
    return layout.dim, layout.per_channel, [space.root().width for space in layout.spaces]


def unify_layouts(a: Layout, b: Layout, where: str):
    if _structure(a) != _structure(b):
        raise GraphSplitError(f"{where} combines tensors whose channels are concatenated "
                              "differently; this model cannot be split from its graph")
    for x, y in zip(a.spaces, b.spaces, strict=True):
        unify(x, y, where)


def ask_groups(layout: Layout, groups: int, where: str):
    """A grouped conv reads a per-group prefix: its single input space gets `groups` chunks."""
    if len(layout.spaces) != 1:
        raise GraphSplitError(f"{where} is a grouped conv reading a concatenation; this model "
                              "cannot be split from its graph")
    space = layout.spaces[0].root()
    wanted = [space.width // groups] * groups
    if space.chunks not in (None, wanted):
        raise GraphSplitError(f"{where} asks for {groups} groups of a tensor already split in "
                              f"{len(space.chunks)}; this model cannot be split from its graph")
    space.chunks = wanted
