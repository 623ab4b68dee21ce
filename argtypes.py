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
