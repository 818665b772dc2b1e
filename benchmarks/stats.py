"""Paired comparisons for the benchmarks: per-seed differences, a 95% interval, a verdict.

Every benchmark that compares a method with a baseline trains both on the same seeds (same
initialisation, same data order where it applies), so the per-seed differences are paired;
their mean and a Student-t 95% interval say whether the difference is resolved. One home for
this, used by the selection benchmark and the method benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from scipy import stats as _st

LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """Mean of the paired differences (method - baseline), its 95% interval, the seeds'
    differences and the verdict (`helps` / `hurts` / `not resolved`)."""

    mean: float
    lo: float
    hi: float
    n: int
    diffs: tuple[float, ...]
    verdict: str

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["diffs"] = list(self.diffs)
        return d

    def interval(self, digits: int = 4) -> str:
        """'-0.0812 [-0.1203, -0.0421]' (mean and 95% interval)."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def paired(method: Sequence[float], baseline: Sequence[float], lower_is_better: bool = True) -> Paired:
    """Compare per-seed results of a method with the baseline's on the same seeds.

    The interval is mean +- t(0.975, n-1) * sd / sqrt(n) of the differences (n >= 2; with one
    seed it is unbounded). The verdict is `helps` when the whole interval lies on the better
    side of zero, `hurts` when it lies on the worse side, `not resolved` otherwise."""
    if len(method) != len(baseline):
        raise ValueError(f"paired: {len(method)} method results vs {len(baseline)} baseline results")
    if not method:
        raise ValueError("paired: no results")
    diffs = [float(a) - float(b) for a, b in zip(method, baseline)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        lo, hi = -math.inf, math.inf
    else:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = float(_st.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    better_below = lower_is_better
    if (hi < 0) if better_below else (lo > 0):
        verdict = "helps"
    elif (lo > 0) if better_below else (hi < 0):
        verdict = "hurts"
    else:
        verdict = "not resolved"
    return Paired(mean, lo, hi, n, tuple(diffs), verdict)
