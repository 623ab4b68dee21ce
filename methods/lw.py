"""Layerwise re-initialisation (Alabdulmohsin et al., "The Impact of Reinitialization on
Generalization in Convolutional Neural Networks", 2021, arXiv 2109.00267), as the control of
LLF (Zhou et al., ICLR 2022).

The network's S stages in forward order (models.evolution.network_stages). At generation g of N
the stem and the first floor(g * S / N) stages keep the previous generation's weights; every
later stage and the classifier take this generation's fresh draw, their BatchNorm affine
parameters and running statistics included. Split masks are kept.
"""
import logging

from methods import Method, register
from utils import counting

log = logging.getLogger("ke")


def kept_stage_count(generation: int, stages: int, generations: int) -> int:
    return generation * stages // generations


@register("lw")
class Layerwise(Method):
    summary = "the stages after the first floor(g*S/N) and the classifier, from a fresh draw"
    paper = "Alabdulmohsin et al., 2021 (arXiv 2109.00267)"
    slim_reason = "--forget lw re-initialises whole stages, so there is no fit hypothesis"

    @classmethod
    def check_model(cls, cfg, model):
        from models.evolution import network_stages
        try:
            network_stages(model)
        except ValueError as error:
            raise ValueError(f"--forget lw: {cfg.arch} has no stages to re-initialise layer by "
                             f"layer ({error}); pick another --arch or --forget") from None

    def forget(self, ctx):
        from models.evolution import network_stages
        stages = network_stages(ctx.fresh)
        kept = kept_stage_count(ctx.generation, len(stages.stages), ctx.num_generations)
        redrawn = [name for stage in stages.stages[kept:] for name in stage] + stages.head
        fresh = ctx.fresh.state_dict()
        start = ctx.previous.state_dict()
        for key in start:
            if not key.endswith("mask") and any(key.startswith(prefix + ".") for prefix in redrawn):
                start[key] = fresh[key]
        ctx.fresh.load_state_dict(start)
        log.info(f"{counting.generation(ctx.generation, ctx.num_generations)}: kept the stem and "
                 f"{kept} of {len(stages.stages)} stages; re-drew {', '.join(redrawn)}")
        return ctx.fresh
