"""Per-epoch learning-rate schedules (--lr_policy), built from torch.optim.lr_scheduler.

The scheduler is stepped once per epoch, after the epoch. With E = --epochs, W = --warmup_length
and lr = --lr, the LR in force during epoch e (0-based) is:

  cosine_lr     lr*(e+1)/W while e < W, then 0.5*(1 + cos(pi*(e-W)/(E-W)))*lr
  constant_lr   lr*(e+1)/W while e < W, then lr
  step_lr       lr, then lr/10 from epoch 0.5*E, then lr/100 from epoch 0.75*E (no warm-up)
  multistep_lr  lr * gamma**(e // adjust)   (--multistep-lr-gamma, --multistep-lr-adjust)
  long_cosine_lr  cosine_lr over all G x E epochs of the run (G = --num_generations), e counted
                from the run's first epoch: one warm-up and one decay, no restart

Every policy but long_cosine_lr restarts at each generation. A long_cosine_lr generation after the
first continues the previous generation's scheduler and optimizer (its momentum too) from their
state after its last epoch (`continues_across_generations`), so the run is one long training
that is tested every E epochs.

W = 0 means no warm-up; with cosine_lr and W >= E every epoch is a warm-up epoch.
The optimizer already holds the epoch-0 LR when `build_scheduler` returns. A param group with an
`lr_scale` (utils/optim.py) follows the same schedule at lr_scale x lr.

Some of these schedulers compute each LR from the optimizer's current one, so a resumed run must
load the optimizer's state_dict as well as the scheduler's (a KE checkpoint holds both).
"""
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
    StepLR,
)

from utils import LR_POLICIES


def _warmup(optimizer: Optimizer, warmup_length: int) -> LinearLR:
    """Factor (e+1)/W at epoch e < W, then 1 (LinearLR holds its end factor afterwards)."""
    # With W = 1 the factor is 1 from the start; total_iters must stay >= 1 all the same.
    return LinearLR(optimizer, start_factor=1.0 / warmup_length, end_factor=1.0,
                    total_iters=max(warmup_length - 1, 1))


def _constant(optimizer: Optimizer) -> LRScheduler:
    return LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)


def continues_across_generations(policy: str) -> bool:
    """Whether a generation takes over the previous one's schedule and optimizer state."""
    return policy == "long_cosine_lr"


def build_scheduler(optimizer: Optimizer, cfg) -> LRScheduler:
    """The scheduler of `cfg.lr_policy` for `optimizer`, whose param groups start at cfg.lr."""
    policy = cfg.lr_policy
    epochs, warmup = int(cfg.epochs), int(cfg.warmup_length)
    if policy == "long_cosine_lr":
        policy, epochs = "cosine_lr", epochs * int(cfg.num_generations)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if warmup < 0:
        raise ValueError(f"warmup_length must be >= 0, got {warmup}")
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)   # the proxies' 100 x (--task retrieval)
        group.pop("initial_lr", None)  # a fresh schedule starts from cfg.lr

    if policy == "cosine_lr":
        if warmup == 0:
            return CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)
        if warmup >= epochs:
            return _warmup(optimizer, warmup)
        return SequentialLR(optimizer, [_warmup(optimizer, warmup),
                                        CosineAnnealingLR(optimizer, T_max=epochs - warmup,
                                                          eta_min=0.0)],
                            milestones=[warmup])
    if policy == "constant_lr":
        return _warmup(optimizer, warmup) if warmup > 0 else _constant(optimizer)
    if policy == "step_lr":
        # For an integer epoch e, e >= 0.5*E exactly when e >= ceil(0.5*E).
        return MultiStepLR(optimizer, milestones=[math.ceil(0.5 * epochs),
                                                  math.ceil(0.75 * epochs)], gamma=0.1)
    if policy == "multistep_lr":
        return StepLR(optimizer, step_size=int(cfg.multistep_lr_adjust),
                      gamma=cfg.multistep_lr_gamma)
    raise ValueError(f"unknown lr_policy {policy!r}; choose from {', '.join(LR_POLICIES)}")
