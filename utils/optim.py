"""The optimizer of a generation (--optimizer, --lr, --momentum, --weight_decay, --no-bn-decay)."""

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from utils import OPTIMIZERS


def parameter_groups(model: nn.Module, no_bn_decay: bool, weight_decay: float) -> list[dict]:
    """Trainable parameters of `model` as optimizer param groups.

    Without `no_bn_decay`: one group. With it: the decayed group, then a group with
    weight_decay 0 holding every BatchNorm parameter and every bias. Empty groups are left out.
    Masks are buffers, so they never appear here.
    """
    if not no_bn_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _BatchNorm) or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg, groups=None) -> torch.optim.Optimizer:
    """sgd (momentum, no Nesterov), adam, adamw or rmsprop (alpha 0.9, momentum) with cfg.lr and
    cfg.weight_decay, over `model`'s parameter groups or the given `groups`; a group's
    `lr_scale` (kept by utils.schedulers) makes its learning rate lr_scale x cfg.lr."""
    name = cfg.optimizer
    if groups is None:
        groups = parameter_groups(model, cfg.no_bn_decay, cfg.weight_decay)
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = cfg.lr * group["lr_scale"]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=False, **common)
    if name == "adam":
        return torch.optim.Adam(groups, **common)
    if name == "adamw":
        return torch.optim.AdamW(groups, **common)
    if name == "rmsprop":
        # as the reference: alpha 0.9 and momentum 0.9 (here --momentum, default 0.9), not
        # PyTorch's 0.99 and 0; eps stays PyTorch's 1e-8, which the reference does not change
        return torch.optim.RMSprop(groups, alpha=0.9, momentum=cfg.momentum, **common)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
