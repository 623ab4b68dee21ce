"""Born-again distillation (Furlanello et al., ICML 2018), with any method: from generation 1 the
loss adds weight x T^2 x KL(previous generation's softened predictions || this one's); the loss
itself is utils/distill.py. Born-again networks match the teacher's plain softmax, so T = 1, with
the term weighted like the cross-entropy."""
from argtypes import NON_NEGATIVE_FLOAT, POSITIVE_FLOAT
from methods import Option, register_option


@register_option("born_again")
class BornAgain(Option):
    summary = "born-again distillation: with any --forget method"
    flags = {
        "--distill_previous": dict(default=False, action="store_true",
                                   help="from generation 1 the loss adds weight x T^2 x "
                                        "KL(previous generation's softened predictions || this "
                                        "one's) (default: off)"),
        "--distill_weight": dict(default=1.0, type=NON_NEGATIVE_FLOAT,
                                 help="weight of the distillation term"),
        "--distill_temperature": dict(default=1.0, type=POSITIVE_FLOAT,
                                      help="softmax temperature T"),
    }

    @classmethod
    def enabled(cls, cfg) -> bool:
        return bool(cfg.distill_previous)

    @classmethod
    def check(cls, cfg, fail):
        for flag in ("distill_weight", "distill_temperature"):
            if getattr(cfg, flag) is not None and not cfg.distill_previous:
                fail(f"argument --{flag}: only --distill_previous uses it; drop it or add "
                     f"--distill_previous")
        if not cfg.distill_previous:
            return
        if cfg.num_generations < 2:
            fail("argument --distill_previous: the teacher is the previous generation, and a "
                 "single generation has none; use --num_generations 2 or more")
        if getattr(cfg, "task", "classification") == "retrieval":
            fail("argument --distill_previous: born-again distillation matches class "
                 "predictions; --task retrieval trains an embedding, drop --distill_previous")

    @classmethod
    def name_part(cls, cfg) -> str:
        return "_distill"
