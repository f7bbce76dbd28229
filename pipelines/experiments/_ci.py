"""Confidence intervals over seeds, and when a claim counts as shown.

A run's number is one draw from the distribution over seeds (init and data order); with a
handful of seeds the 95% interval of the mean is mean +- t(0.975, n-1) * sd / sqrt(n). A
claim "A is lower than B" is shown only when the two intervals do not overlap: stricter than
a paired test, but readable from the table and the plot alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats

SHOWN, NOT_SHOWN = "shown", "not shown at this scale"


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # nan with one value: no spread to measure
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def as_dict(self) -> dict:
        """JSON-ready: an unmeasured width (one value) is None, not NaN (which strict JSON lacks)."""
        d = {**asdict(self), "low": self.low, "high": self.high}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def t_interval(values: list[float], confidence: float = 0.95) -> Interval:
    """Mean and the t-distribution half-width of its ``confidence`` interval (sample sd, n-1 dof)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n), n)


def lower_is_shown(better: Interval, worse: Interval) -> str:
    """SHOWN when ``better``'s whole interval lies below ``worse``'s (lower is better: bpb); a single
    run (nan width) never shows anything."""
    if math.isnan(better.half_width) or math.isnan(worse.half_width):
        return NOT_SHOWN
    return SHOWN if better.high < worse.low else NOT_SHOWN
