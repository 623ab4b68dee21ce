"""What a generation forgets of the previous generation's weights before it trains (--forget).

One class per method, registered under its name in FORGETTING where it is defined. Each takes
generation g's own fresh draw of the model (GenerationTrainer.fresh_model, seeded by the run's
seed + g) and the previous generation's last weights, and returns the model generation g starts
from. A method that keeps a fit hypothesis has a slim network; the others say why not
(`slim_reason`).
"""
import logging
from typing import Optional

import torch
import torch.nn as nn

from models.evolution import reset_layers, split_reinitialize

log = logging.getLogger("ke")

FORGETTING = {}


def registered(name: str):
    def register(cls):
        cls.name = name
        FORGETTING[name] = cls
        return cls
    return register


def forgetting_method(cfg) -> "Forgetting":
    return FORGETTING[cfg.forget]()


class Forgetting:
    name = None
    slim_reason: Optional[str] = None     # None: the fit hypothesis is kept, a slim network exists

    def start_from(self, cfg, fresh: nn.Module, previous: dict, generation: int) -> nn.Module:
        """The model generation `generation` (>= 1) starts from: `fresh` is its own draw,
        `previous` the previous generation's last state_dict."""
        raise NotImplementedError

    def forget_pretrained(self, cfg, model: nn.Module, generation: int):
        """Generation 0 started from --pretrained (without --keep_pretrained_reset): what it
        forgets of the file. Only the methods with a part to re-draw forget anything."""


@registered("ke")
class ResetHypothesis(Forgetting):
    """Knowledge Evolution: the fit hypothesis is kept, the reset hypothesis re-drawn
    (--evolve_mode rand) or zeroed (zero); WELS masks re-drawn with --reset_hypothesis."""

    def start_from(self, cfg, fresh, previous, generation):
        fresh.load_state_dict(previous)
        split_reinitialize(cfg, fresh)
        return fresh

    def forget_pretrained(self, cfg, model, generation):
        split_reinitialize(cfg, model)


@registered("llf")
class LaterLayers(Forgetting):
    """Later-layer forgetting: every layer under --reset_layer_name is re-initialised wholly
    (its BatchNorm too with --reset_bn), the rest kept."""
    slim_reason = "--forget llf re-initialises whole layers, so there is no fit hypothesis"

    def start_from(self, cfg, fresh, previous, generation):
        fresh.load_state_dict(previous)
        self.forget_pretrained(cfg, fresh, generation)
        return fresh

    def forget_pretrained(self, cfg, model, generation):
        reset = reset_layers(model, cfg.reset_layer_name, cfg.reset_bn)
        log.info(f"generation {generation}: re-initialised {len(reset)} layers under "
                 f"{cfg.reset_layer_name}")


@registered("shrink_perturb")
class ShrinkPerturb(Forgetting):
    """Shrink-and-perturb (Ash & Adams, NeurIPS 2020): every conv and linear weight and bias
    becomes shrink * w + perturb * w0, w0 the same tensor of the generation's fresh draw (the
    run's --init, seeded by the generation). BatchNorm and the split masks are kept."""
    slim_reason = "--forget shrink_perturb changes every weight, so there is no fit hypothesis"

    def start_from(self, cfg, fresh, previous, generation):
        draws = {name: p.detach().clone() for name, p in shrunk_parameters(fresh)}
        fresh.load_state_dict(previous)
        with torch.no_grad():
            for name, p in shrunk_parameters(fresh):
                p.copy_(cfg.shrink * p + cfg.perturb * draws[name])
        log.info(f"generation {generation}: {len(draws)} conv/linear tensors shrunk by "
                 f"{cfg.shrink} and perturbed by {cfg.perturb} x a fresh draw")
        return fresh


def shrunk_parameters(model: nn.Module):
    """(name, tensor) of every conv and linear weight and bias (what shrink-and-perturb changes)."""
    for layer_name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            for kind in ("weight", "bias"):
                p = getattr(layer, kind)
                if p is not None:
                    yield f"{layer_name}.{kind}", p


@registered("reinit")
class Reinitialise(Forgetting):
    """Everything is forgotten: the generation starts from its own fresh draw, as a new run
    seeded with seed + generation would (the control "train again from scratch"; --pretrained
    weights are generation 0's only)."""
    slim_reason = "--forget reinit re-initialises every weight, so there is no fit hypothesis"

    def start_from(self, cfg, fresh, previous, generation):
        return fresh


@registered("none")
class KeepEverything(Forgetting):
    """Nothing is forgotten: every weight (and buffer) is kept; only the schedule restarts
    (warm restarts), or, with --lr_policy long_cosine_lr, carries on."""
    slim_reason = "--forget none keeps every weight, so there is no fit hypothesis"

    def start_from(self, cfg, fresh, previous, generation):
        fresh.load_state_dict(previous)
        return fresh
