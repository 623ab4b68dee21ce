"""Re-initialise everything: each generation starts from its own fresh draw, as a new run seeded
with seed + generation would (the control "train again from scratch"; --pretrained weights are
generation 0's only)."""
from methods import Method, register


@register("reinit")
class Reinitialise(Method):
    summary = "everything: train again from scratch"
    paper = "the control of every forgetting paper"
    slim_reason = "--forget reinit re-initialises every weight, so there is no fit hypothesis"

    def forget(self, ctx):
        return ctx.fresh
