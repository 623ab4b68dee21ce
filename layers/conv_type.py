"""Convolution layers: the plain one and the split one Knowledge Evolution trains."""
from collections.abc import Sequence

import torch
import torch.nn as nn

from layers import split_base
from layers.registry import register
from layers.split_base import SplitMixin

CONV_LAYERS = {}  # --conv_type name -> class
DenseConv = register(CONV_LAYERS, "DenseConv")(nn.Conv2d)


@register(CONV_LAYERS)
class SplitConv(SplitMixin, nn.Conv2d):
    """A Conv2d whose weight is split into a fit and a reset hypothesis by a `mask` buffer.

    KELS keeps the first ceil(s*C_out) filters x the first ceil(s*c) input channels of every
    input chunk c (`in_chunks`, default one chunk); `image_input=True` marks the stem conv, which
    keeps every input channel of the image. `out_fit` / `in_fit` (boolean vectors over the output
    and input channels) replace those rules; a grouped or depthwise conv needs them, and each
    output row then reads only its group's input channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False, *, split_rate: float = 1.0,
                 split_mode: str = "kels", bias_split_rate: float | None = None,
                 in_chunks: Sequence[int] | None = None, image_input: bool = False,
                 out_fit: torch.Tensor | None = None, in_fit: torch.Tensor | None = None,
                 **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, **kwargs)
        if groups != 1 and (out_fit is None or in_fit is None):
            raise ValueError("a grouped SplitConv needs explicit out_fit and in_fit")
        if out_fit is None:
            out_fit = split_base.fit_channels(out_channels, split_rate)
        if in_fit is None:
            in_fit = split_base.fit_channels(in_channels, split_rate, in_chunks,
                                             all_fit=image_input)
        self._init_split(split_rate, split_mode, bias_split_rate, out_fit, in_fit, groups=groups)
