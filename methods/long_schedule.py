"""The long schedule (--lr_policy long_cosine_lr, utils/schedulers.py): one warm-up and one
cosine decay over all generations, the optimizer carried across them. It is the compute-matched
long baseline, so only a method that keeps every weight (`continues_schedule`) takes it."""
from methods import METHODS, Option, register_option


@register_option("long_schedule")
class LongSchedule(Option):
    summary = "one schedule over all generations"

    @classmethod
    def check(cls, cfg, fail):
        if cfg.lr_policy == "long_cosine_lr" and not METHODS[cfg.forget].continues_schedule:
            fail(f"argument --lr_policy long_cosine_lr: one schedule over all generations is the "
                 f"long baseline, which keeps every weight; use it with --forget none, not "
                 f"--forget {cfg.forget}")
