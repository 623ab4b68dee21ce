"""argparse value types shared by the flags of configs/ and of the forgetting methods (methods/):
numbers within bounds, refused in argparse's one-line error otherwise."""
import argparse
import math


def number(kind, low=None, high=None, low_open=False, high_open=False, what=""):
    """argparse type: a `kind` number within [low, high]; `low_open` / `high_open` exclude the
    bound."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):  # nan compares False with every bound, so it would pass
            raise argparse.ArgumentTypeError(f"expected {what or 'a finite number'}, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


RATE = number(float, 0.0, 1.0, low_open=True, what="a rate in (0, 1]")
OPEN_UNIT = number(float, 0.0, 1.0, low_open=True, high_open=True, what="a number in (0, 1)")
POSITIVE_INT = number(int, 1, what="an integer >= 1")
NON_NEGATIVE_INT = number(int, 0, what="an integer >= 0")
POSITIVE_FLOAT = number(float, 0.0, low_open=True, what="a number > 0")
NON_NEGATIVE_FLOAT = number(float, 0.0, what="a number >= 0")
SMOOTHING = number(float, 0.0, 0.999, what="a label smoothing in [0, 1)")
UNIT = number(float, 0.0, 1.0, what="a number in [0, 1]")


# What a setting is to a comparison of runs. The report (utils.report) groups runs by their
# method and recipe settings; run settings never split a group. The rule, flag by flag:
# - METHOD: what decides what a generation keeps of the previous one: --forget and every flag of
#   a method or of an option that combines with every method (methods/: born-again distillation),
#   and the split that KE forgets by (--split_rate, --bias_split_rate, --split_mode,
#   --evolve_mode, --reset_hypothesis, the Split/Dense layer types, --scale-fan,
#   --keep_pretrained_reset).
# - RECIPE: what every method of a fair comparison shares: the data (--set, --image_size,
#   --skip_bad_images), the network and its initialisation (--arch, --init, --pretrained), the
#   schedule (--num_generations, --epochs, --lr, --lr_policy, warm-up), the optimiser, the loss
#   and its regularisers (--label_smoothing, --cs_kd), the retrieval task's settings, and the
#   settings that change the numbers computed (--amp, --sync_bn). The long baseline is a recipe:
#   --forget none with --lr_policy long_cosine_lr.
# - RUN: particular to one run and free to differ within a group: --seed, names and paths, the
#   device and threads, logging and checkpoint cadence, and the performance knobs that leave the
#   results as they are (the image cache, the batched crops, --channels_last, --compile,
#   --eval_batch_size).
METHOD, RECIPE, RUN = "method", "recipe", "run"
ROLES = (METHOD, RECIPE, RUN)


class RoleContainer:
    """Mixin for argparse containers: `add_argument(..., role=ROLE)` records the role on the
    returned action (`action.role`), where the flag is defined."""

    def add_argument(self, *args, role=None, **kwargs):
        if role is not None and role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        action = super().add_argument(*args, **kwargs)
        action.role = role
        return action

    def add_argument_group(self, *args, **kwargs):
        group = RoleGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


class RoleGroup(RoleContainer, argparse._ArgumentGroup):
    """An argument group whose add_argument takes `role=` (see RoleContainer)."""


def roles_of(parser: argparse.ArgumentParser) -> dict:
    """{dest: role} of every flag of `parser` (None where a flag declared none)."""
    return {a.dest: getattr(a, "role", None) for a in parser._actions
            if a.dest != "help" and a.option_strings}


# settings.json records the roles of the run's own flags under this key, so that the report
# (utils.report, below configs in the layers) groups runs by the roles of the version that ran them
ROLES_KEY = "setting_roles"


def roles_record(parser: argparse.ArgumentParser) -> dict:
    """{role: sorted flag destinations}: the form settings.json keeps under ROLES_KEY."""
    roles = roles_of(parser)
    return {role: sorted(dest for dest, r in roles.items() if r == role) for role in ROLES}
