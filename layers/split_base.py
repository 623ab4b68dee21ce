"""Masks and the operations Knowledge Evolution performs on split layers.

A split layer's `mask` buffer has its weight's shape: 1 marks the fit hypothesis (kept across
generations), 0 the reset hypothesis (re-drawn every generation). The forward pass never reads
the mask; only re-initialisation and slim extraction do.
"""
import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from layers import EVOLVE_MODES, SPLIT_MODES


def fit_channels(width: int, rate: float, chunks: Sequence[int] | None = None,
                 all_fit: bool = False) -> torch.Tensor:
    """THE fit rule: a boolean vector (on the CPU) over `width` channels saying which are fit.

    The first ceil(rate*c) channels of every chunk c are fit (the paper's ceil rule, applied per
    chunk). `chunks` lists, in order, the sizes of the tensors concatenated to form the input;
    without it the whole width is one chunk. `all_fit` marks channels that are fit whatever the
    rate: the image's channels, the classifier's rows, a graph output the logits read.

    Every mask is made from this function's vectors (split conv, linear and BatchNorm layers,
    hand-written and graph-derived models alike); the slim network's widths and `extract_slim`
    read those masks, so this is the one place that decides which channels are fit. Callers look
    it up as `split_base.fit_channels` at call time.
    """
    chunks = [width] if chunks is None else list(chunks)
    if sum(chunks) != width:
        raise ValueError(f"chunk sizes {chunks} add up to {sum(chunks)}, not to the width {width}")
    if all_fit:
        return torch.ones(width, dtype=torch.bool, device="cpu")
    fit = torch.zeros(width, dtype=torch.bool, device="cpu")
    start = 0
    for size in chunks:
        fit[start:start + math.ceil(rate * size)] = True
        start += size
    return fit


def place_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`mask` on the device of `like`, except that a layer built on the meta device keeps its
    mask's values on the CPU: its fit rows and columns, and so its slim layer's shape, stay known
    without allocating its weights."""
    return mask if like.device.type == "meta" else mask.to(like.device)


def kels_mask(weight_shape: torch.Size, out_fit: torch.Tensor, in_fit: torch.Tensor,
              groups: int = 1) -> torch.Tensor:
    """Kernel-level mask: fit where both the output row and the input column are fit.

    `in_fit` covers all input channels; with `groups` > 1 an output row reads only its group's
    slice of them (the weight holds in_channels / groups columns).
    """
    extra = (1,) * (len(weight_shape) - 2)
    rows_per_group = weight_shape[0] // groups
    columns = in_fit.view(groups, -1).repeat_interleave(rows_per_group, 0)
    mask = out_fit.view(-1, 1, *extra) & columns.view(weight_shape[0], -1, *extra)
    return mask.expand(weight_shape).clone()


def wels_mask(weight_shape: torch.Size, rate: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Weight-level mask: each weight is fit independently with probability `rate`."""
    return torch.rand(weight_shape, generator=generator) < rate


class SplitMixin:
    """Mask bookkeeping shared by SplitConv and SplitLinear.

    Subclasses call `_init_split` at the end of `__init__`, once `weight` exists.
    """

    def _init_split(self, split_rate: float, split_mode: str, bias_split_rate: float | None,
                    out_fit: torch.Tensor, in_fit: torch.Tensor, bias_all_fit: bool = False,
                    groups: int = 1):
        if not 0.0 < split_rate <= 1.0:
            raise ValueError(f"split_rate must be in (0, 1], got {split_rate}")
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {split_mode!r}")
        self.split_rate = split_rate
        self.split_mode = split_mode
        self.bias_split_rate = split_rate if bias_split_rate is None else bias_split_rate
        self.bias_all_fit = bias_all_fit
        if split_mode == "kels":
            mask = kels_mask(self.weight.shape, out_fit, in_fit, groups)
        else:
            mask = wels_mask(self.weight.shape, split_rate)
        self.register_buffer("mask", place_mask(mask, self.weight))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, split_rate={self.split_rate}, split_mode={self.split_mode}"

    def redraw_mask(self, generator: torch.Generator | None = None):
        """WELS only: draw a fresh fit/reset partition (`--reset_hypothesis`)."""
        if self.split_mode != "wels":
            raise ValueError("a new mask can only be drawn for layers split with split_mode='wels'")
        self.mask.copy_(wels_mask(self.weight.shape, self.split_rate, generator).to(self.mask.device))

    def _bias_fit(self) -> torch.Tensor:
        if self.split_mode == "kels" and self.bias_split_rate == self.split_rate \
                and not self.bias_all_fit:
            return self.mask.flatten(1).any(1)  # the fit rows, wherever they are
        fit = fit_channels(self.bias.shape[0], self.bias_split_rate, all_fit=self.bias_all_fit)
        return fit.to(self.bias.device)

    @torch.no_grad()
    def reinitialize(self, evolve_mode: str, generator: torch.Generator | None = None):
        """Re-draw the reset hypothesis: W <- mask*W + (1-mask)*R; the fit part is untouched.

        `rand` draws R like PyTorch's default conv/linear init (kaiming_uniform, a=sqrt(5));
        `zero` sets R = 0. Biases follow `bias_split_rate` (default init bound 1/sqrt(fan_in)).
        """
        if evolve_mode not in EVOLVE_MODES:
            raise ValueError(f"evolve_mode must be one of {EVOLVE_MODES}, got {evolve_mode!r}")
        fresh = torch.zeros_like(self.weight)
        if evolve_mode == "rand":
            nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        self.weight.copy_(torch.where(self.mask, self.weight, fresh))
        if self.bias is None:
            return
        fresh_bias = torch.zeros_like(self.bias)
        if evolve_mode == "rand":
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            fresh_bias.uniform_(-bound, bound, generator=generator)
        self.bias.copy_(torch.where(self._bias_fit(), self.bias, fresh_bias))

    def fit_rows_and_columns(self):
        """Indices of the output rows and input columns that hold fit weights (KELS)."""
        if self.split_mode != "kels":
            raise ValueError("a slim network exists only for KELS masks; this layer was split with "
                             f"split_mode={self.split_mode!r}")
        rows = self.mask.flatten(1).any(1).nonzero().flatten()
        columns = self.mask.transpose(0, 1).flatten(1).any(1).nonzero().flatten()
        return rows, columns

    @torch.no_grad()
    def copy_fit_into(self, slim: nn.Module):
        """Copy the fit weights into `slim`, the matching plain layer of the slim network."""
        rows, columns = self.fit_rows_and_columns()
        weight = self.weight[rows][:, columns]
        if weight.shape != slim.weight.shape:
            raise ValueError(f"fit part of shape {tuple(weight.shape)} does not fit a slim layer "
                             f"of shape {tuple(slim.weight.shape)}")
        slim.weight.copy_(weight)
        if self.bias is not None and slim.bias is not None:
            slim.bias.copy_(self.bias[rows])
