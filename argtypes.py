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


# What a setting is to a comparison of runs: part of the method, part of the recipe every method
# of a comparison shares, or particular to one run (seeds, names, paths, devices, logging). The
# report groups runs by their method and recipe settings; run settings never split a group.
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
