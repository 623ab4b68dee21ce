"""95% confidence intervals over seeds (Student's t), and their text in the report tables."""
import math
from collections.abc import Sequence
from typing import NamedTuple

from scipy import stats

LEVEL = 0.95


class Interval(NamedTuple):
    mean: float
    half: float | None       # half-width of the 95% interval; None for a single value
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def interval(values: Sequence[float]) -> Interval:
    """Mean of `values` and the half-width t(0.975, n - 1) x s / sqrt(n) of its 95% interval,
    s the sample standard deviation (n - 1 in the denominator)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n), n)


def cell(found: Interval | None, signed: bool = False, unit: str = "n") -> str:
    """`mean ± half (n=k)`; a single value has no interval: `mean (n=1)`; "-" for none."""
    if found is None:
        return "-"
    mean = f"{found.mean:+.2f}" if signed else f"{found.mean:.2f}"
    spread = "" if found.half is None else f" ± {found.half:.2f}"
    return f"{mean}{spread} ({unit}={found.n})"
