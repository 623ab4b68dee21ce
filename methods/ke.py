"""Knowledge Evolution (Taha et al., CVPR 2021): the fit hypothesis is kept, the reset hypothesis
re-drawn (--evolve_mode rand) or zeroed (zero); WELS masks are drawn anew with --reset_hypothesis."""
from methods import Method, register


@register("ke")
class KnowledgeEvolution(Method):
    summary = "the reset hypothesis of every split layer (the default)"
    paper = "Taha et al., CVPR 2021"
    uses = ("evolve_mode", "reset_hypothesis")

    @classmethod
    def check(cls, cfg, fail):
        if (cfg.conv_type, cfg.linear_type) == ("DenseConv", "DenseLinear"):
            fail("argument --conv_type DenseConv with --linear_type DenseLinear: no layer is "
                 "split, so there is no reset hypothesis to re-initialise; keep one split type, "
                 "or re-initialise whole layers with --reset_layer_name PREFIX")

    @classmethod
    def name_part(cls, cfg) -> str:
        return ""

    def forget(self, ctx):
        from models.evolution import split_reinitialize
        ctx.fresh.load_state_dict(ctx.previous.state_dict())
        split_reinitialize(ctx.cfg, ctx.fresh)
        return ctx.fresh

    def forget_pretrained(self, cfg, model, generation):
        from models.evolution import split_reinitialize
        split_reinitialize(cfg, model)
