"""BatchNorm layers. BatchNorm is never re-initialised by Knowledge Evolution."""
from collections.abc import Sequence

import torch
import torch.nn as nn

from layers import split_base
from layers.registry import register

BN_LAYERS = {}  # --bn_type name -> class
NormalBatchNorm = register(BN_LAYERS, "NormalBatchNorm")(nn.BatchNorm2d)


@register(BN_LAYERS)
class NonAffineBatchNorm(nn.BatchNorm2d):
    """BatchNorm without learnable scale and shift."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, affine=False, **kwargs)


@register(BN_LAYERS)
class SplitBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d that knows which of its channels are fit (`mask`, one flag per channel).

    The mask is chunk-wise when the input is a concatenation (`in_chunks`); `fit` (a boolean
    vector over the channels) replaces that rule. Slim extraction copies exactly the fit channels.
    """

    def __init__(self, num_features: int, *, split_rate: float = 1.0,
                 in_chunks: Sequence[int] | None = None, fit: torch.Tensor | None = None,
                 **kwargs):
        super().__init__(num_features, **kwargs)
        self.split_rate = split_rate
        if fit is None:
            fit = split_base.fit_channels(num_features, split_rate, in_chunks)
        # on the default device (where the layer's own tensors were made), CPU for meta
        self.register_buffer("mask", split_base.place_mask(fit.clone(), torch.empty(0)))


def copy_channels(dense: nn.BatchNorm2d, slim: nn.BatchNorm2d, channels: torch.Tensor):
    """Copy the given channels' affine parameters and running statistics into `slim`."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        source, target = getattr(dense, name), getattr(slim, name)
        if source is not None and target is not None:
            target.copy_(source[channels])
    if dense.num_batches_tracked is not None and slim.num_batches_tracked is not None:
        slim.num_batches_tracked.copy_(dense.num_batches_tracked)
