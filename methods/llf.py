"""Later-layer forgetting (Zhou et al., "Fortuitous Forgetting in Connectionist Networks",
ICLR 2022): every layer under --reset_layer_name is re-initialised wholly, the rest kept."""
import logging

from methods import Method, register
from utils import counting

log = logging.getLogger("ke")


@register("llf")
class LaterLayers(Method):
    summary = "every layer under --reset_layer_name, wholly"
    paper = "Zhou et al., ICLR 2022"
    flags = {
        "--reset_layer_name": dict(default=None, metavar="PREFIX",
                                   help="the layers to forget each generation: every layer whose "
                                        "name is PREFIX or starts with 'PREFIX.' (e.g. layer4, "
                                        "fc); required by llf, and given alone it means "
                                        "--forget llf"),
        "--reset_bn": dict(default=False, action="store_true",
                           help="also reset those layers' BatchNorm (affine and running "
                                "statistics; default: off)"),
    }
    chosen_by = ("reset_layer_name",)
    slim_reason = "--forget llf re-initialises whole layers, so there is no fit hypothesis"

    @classmethod
    def check(cls, cfg, fail):
        if cfg.reset_layer_name is None:
            fail("argument --forget llf: needs --reset_layer_name PREFIX (the layers to forget)")
        if not cfg.reset_layer_name.strip():
            fail(f"argument --reset_layer_name: {cfg.reset_layer_name!r} names no layer; give a "
                 f"layer-name prefix such as layer4, or drop the flag for plain KE")
        if getattr(cfg, "task", "classification") == "retrieval":
            fail("argument --reset_layer_name: not available with --task retrieval (the "
                 "embedding layer is split like the classifier)")

    @classmethod
    def check_model(cls, cfg, model):
        from models.evolution import reset_layers
        try:
            reset_layers(model, cfg.reset_layer_name, cfg.reset_bn)
        except ValueError as error:
            raise ValueError(f"--reset_layer_name {cfg.reset_layer_name}: {error}") from None

    def forget(self, ctx):
        ctx.fresh.load_state_dict(ctx.previous.state_dict())
        self.forget_pretrained(ctx.cfg, ctx.fresh, ctx.generation)
        return ctx.fresh

    def forget_pretrained(self, cfg, model, generation):
        from models.evolution import reset_layers
        reset = reset_layers(model, cfg.reset_layer_name, cfg.reset_bn)
        log.info(f"{counting.generation(generation, cfg.num_generations)}: re-initialised "
                 f"{len(reset)} layers under {cfg.reset_layer_name}")
