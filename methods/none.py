"""Forget nothing: every weight (and buffer) is kept; only the schedule restarts (warm
restarts), or, with --lr_policy long_cosine_lr, carries on (the compute-matched long baseline)."""
from methods import Method, register


@register("none")
class KeepEverything(Method):
    summary = "nothing; only the schedule restarts (or goes on with --lr_policy long_cosine_lr)"
    paper = "the long-training control"
    slim_reason = "--forget none keeps every weight, so there is no fit hypothesis"
    continues_schedule = True

    def forget(self, ctx):
        ctx.fresh.load_state_dict(ctx.previous.state_dict())
        return ctx.fresh
