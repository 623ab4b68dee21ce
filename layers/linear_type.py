"""Linear layers: the plain one and the split one Knowledge Evolution trains."""
from collections.abc import Sequence

import torch
import torch.nn as nn

from layers import split_base
from layers.registry import register
from layers.split_base import SplitMixin

LINEAR_LAYERS = {}  # --linear_type name -> class
DenseLinear = register(LINEAR_LAYERS, "DenseLinear")(nn.Linear)


@register(LINEAR_LAYERS)
class SplitLinear(SplitMixin, nn.Linear):
    """A Linear whose weight is split into a fit and a reset hypothesis by a `mask` buffer.

    The classifier (`last_layer=True`) keeps every output row and its whole bias; a hidden linear
    keeps the first ceil(s*out) rows. Input columns: the first ceil(s*c) of every input chunk c.
    `features_per_channel` > 1 says the input is a flattened C x H x W map (H*W features per
    channel): then the fit columns are exactly those that come from fit channels. `out_fit` /
    `in_fit` (boolean vectors over the rows and the input features) replace those rules.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 split_rate: float = 1.0, split_mode: str = "kels",
                 bias_split_rate: float | None = None, last_layer: bool = False,
                 in_chunks: Sequence[int] | None = None, features_per_channel: int = 1,
                 out_fit: torch.Tensor | None = None, in_fit: torch.Tensor | None = None,
                 **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        if in_features % features_per_channel:
            raise ValueError(f"{in_features} input features are not a whole number of channels "
                             f"of {features_per_channel} features")
        if out_fit is None:
            out_fit = split_base.fit_channels(out_features, split_rate, all_fit=last_layer)
        if in_fit is None:
            channel_fit = split_base.fit_channels(in_features // features_per_channel, split_rate,
                                                  in_chunks)
            in_fit = channel_fit.repeat_interleave(features_per_channel)
        self._init_split(split_rate, split_mode, bias_split_rate, out_fit, in_fit,
                         bias_all_fit=last_layer)
