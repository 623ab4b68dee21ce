"""Shrink-and-perturb (Ash & Adams, NeurIPS 2020): every conv and linear weight and bias becomes
shrink * w + perturb * w0, w0 the same tensor of the generation's fresh draw (the run's --init,
seeded by the generation). BatchNorm and the split masks are kept.

The defaults are the example command of the README of Ash & Adams' code (--shrink 0.4
--perturb 0.1)."""
import logging

from argtypes import UNIT
from methods import Method, register
from utils import counting

log = logging.getLogger("ke")


@register("shrink_perturb")
class ShrinkPerturb(Method):
    summary = "every conv/linear weight becomes shrink*w + perturb*w0, w0 a fresh draw"
    paper = "Ash & Adams, NeurIPS 2020"
    flags = {
        "--shrink": dict(default=0.4, type=UNIT,
                         help="factor on the previous weights, in [0, 1]"),
        "--perturb": dict(default=0.1, type=UNIT,
                          help="factor on the fresh draw, in [0, 1]"),
    }
    slim_reason = "--forget shrink_perturb changes every weight, so there is no fit hypothesis"

    def forget(self, ctx):
        import torch

        from models.evolution import conv_linear_parameters
        cfg, fresh = ctx.cfg, ctx.fresh
        draws = {name: p.detach().clone() for name, p in conv_linear_parameters(fresh)}
        fresh.load_state_dict(ctx.previous.state_dict())
        with torch.no_grad():
            for name, p in conv_linear_parameters(fresh):
                p.copy_(cfg.shrink * p + cfg.perturb * draws[name])
        log.info(f"{counting.generation(ctx.generation, ctx.num_generations)}: {len(draws)} "
                 f"conv/linear tensors shrunk by {cfg.shrink} and perturbed by {cfg.perturb} x a "
                 "fresh draw")
        return fresh
