"""--ema: an exponential moving average of a model's weights and its buffers (BatchNorm's
running statistics, averaged like the weights, so the average needs no pass to recompute them),
torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn. Every step:
average <- decay x average + (1 - decay) x weights; the first step copies the weights.

One average per generation, made anew at its start; the forgetting method acts on the raw
weights. At the generation's end it is written to `gen_<g>/ema.pth` and tested: the "ema" rows.
"""
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA_FILE = "ema.pth"


def averaged(model: nn.Module, decay: float) -> AveragedModel:
    """A moving average of `model` (a copy of it, on its device) to update after every step
    with `average.update_parameters(model)`."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
