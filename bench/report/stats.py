"""Numbers that carry their uncertainty: intervals over seeds, paired differences, verdicts, Pareto.

Everything here is pure and works on plain floats, so each rule has a known-answer test:

* :func:`t_interval` — the mean over seeds with a two-sided 95 % Student-t interval
  (none with one seed: one training run says nothing about the next).
* :func:`paired_difference` — the mean of per-seed differences (defense − baseline on the same
  seed and split) with a paired-t interval; with one pair, the within-cell intervals of the two
  numbers combined by MOVER (Zou & Donner 2008) when both carry one (Clopper–Pearson for a TPR,
  bootstrap for AUC): that interval covers the attack's sampling noise but not the seed's.
* :func:`verdict` — "lower" / "higher" when the interval excludes 0, else
  "no detectable difference"; "not enough seeds" when there is no interval at all.
* :func:`pareto_by_verdicts` — a point leaves the front only when another is *detectably*
  better on one axis and not detectably worse on the other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LEVEL = 0.95
LOWER, HIGHER, SAME, UNKNOWN = "lower", "higher", "no detectable difference", "not enough seeds"


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval (``low``/``high`` None when there is none).

    Attributes:
        mean: the mean over seeds (or the one value).
        low: lower end of the interval, or None.
        high: upper end of the interval, or None.
        n: number of seeds (or pairs) behind it.
        method: how the interval was made, for captions ("t over 3 seeds", "within-cell, 1 seed").
    """

    mean: float
    low: Optional[float]
    high: Optional[float]
    n: int
    method: str

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def err(self) -> tuple[float, float]:
        """Distances below and above the mean, for matplotlib error bars (0, 0 without an interval)."""
        if not self.has_interval:
            return 0.0, 0.0
        return max(self.mean - self.low, 0.0), max(self.high - self.mean, 0.0)


@dataclass(frozen=True)
class Difference(Estimate):
    """A paired difference (a − b) with its interval and verdict word."""

    verdict: str = UNKNOWN


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df))


_PROPORTION = re.compile(r"(^|/|_)(accuracy|auc|tpr|fpr|rate|tpr_at_fpr_[0-9.e-]+)$")


def is_proportion(metric: str) -> bool:
    """Whether ``metric`` is a proportion in [0, 1] (accuracies, AUCs, TPRs, rates): its interval is clipped there."""
    return bool(_PROPORTION.search(metric)) and not metric.endswith(("_gap", "_difference", "/signal"))


def t_interval(values: Sequence[float], bounds: Optional[tuple[float, float]] = None) -> Optional[Estimate]:
    """Mean of ``values`` with a 95 % Student-t interval (no interval for one value; None if empty).

    Non-finite values are dropped. ``bounds``: the range the quantity lives in (``(0, 1)`` for a
    proportion): the interval is clipped to it (a t-interval over 3 seeds of accuracies near 1
    otherwise reaches past 1).
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None
    m = float(v.mean())
    if v.size < 2:
        return Estimate(m, None, None, 1, "1 seed: no interval")
    half = _t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    low, high = m - half, m + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(m, low, high, int(v.size), f"t over {v.size} seeds")


def mover_difference(a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float]) -> tuple[float, float]:
    """Interval of ``a − b`` from the intervals of two independent estimates (MOVER, Zou & Donner 2008).

    ``low = d − sqrt((a − a_low)² + (b_high − b)²)``, ``high = d + sqrt((a_high − a)² + (b − b_low)²)``;
    with symmetric normal intervals this is the usual ``d ± z·sqrt(se_a² + se_b²)``.
    """
    d = a - b
    low = d - math.hypot(a - a_ci[0], b_ci[1] - b)
    high = d + math.hypot(a_ci[1] - a, b - b_ci[0])
    return low, high


def verdict(low: Optional[float], high: Optional[float]) -> str:
    """"lower" / "higher" when the interval excludes 0, "no detectable difference" when it holds it."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return UNKNOWN
    if high < 0:
        return LOWER
    if low > 0:
        return HIGHER
    return SAME


def paired_difference(
    pairs: Sequence[tuple[float, float]],
    intervals: Optional[Sequence[Optional[tuple[tuple[float, float], tuple[float, float]]]]] = None,
) -> Optional[Difference]:
    """Mean difference ``a − b`` over pairs (one pair per seed) with a 95 % interval and a verdict.

    Args:
        pairs: ``(a, b)`` per seed, e.g. (metric under the defense, metric with no defense).
        intervals: per pair, the within-cell intervals ``((a_low, a_high), (b_low, b_high))`` or None;
            used only when there is a single pair.

    Returns:
        None when there is no finite pair; else the difference. With ≥ 2 pairs: paired t. With one
        pair: MOVER over the within-cell intervals when both exist, else no interval and the verdict
        "not enough seeds".
    """
    keep = [(i, a, b) for i, (a, b) in enumerate(pairs) if math.isfinite(a) and math.isfinite(b)]
    if not keep:
        return None
    d = np.asarray([a - b for _, a, b in keep], dtype=np.float64)
    m = float(d.mean())
    if d.size >= 2:
        half = _t_quantile(d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
        lo, hi = m - half, m + half
        return Difference(m, lo, hi, int(d.size), f"paired t over {d.size} seeds", verdict(lo, hi))
    i, a, b = keep[0]
    ci = intervals[i] if intervals is not None and i < len(intervals) else None
    if ci is not None:
        lo, hi = mover_difference(a, ci[0], b, ci[1])
        return Difference(m, lo, hi, 1, "within-cell intervals, 1 seed (seed-to-seed variation not included)", verdict(lo, hi))
    return Difference(m, None, None, 1, "1 seed and no within-cell interval", UNKNOWN)


def pareto_mask(risk: Sequence[float], utility: Sequence[float]) -> np.ndarray:
    """True where no other point has lower-or-equal risk and higher-or-equal utility (one strictly).

    The raw rule on point estimates: kept to show which claims the noise-aware rule removes.
    """
    x, y = np.asarray(risk, float), np.asarray(utility, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated.any()
    return keep


def dominates(risk_verdict: str, utility_verdict: str) -> bool:
    """Whether point j dominates point i, given the verdicts of ``risk_j − risk_i`` and ``utility_j − utility_i``.

    j must be detectably better on at least one axis (lower risk or higher utility) and not
    detectably worse on the other. A difference inside the noise is a tie: it never dominates.
    """
    better = risk_verdict == LOWER or utility_verdict == HIGHER
    worse = risk_verdict == HIGHER or utility_verdict == LOWER
    return better and not worse


def pareto_by_verdicts(risk_verdicts: Sequence[Sequence[str]], utility_verdicts: Sequence[Sequence[str]]) -> np.ndarray:
    """Pareto front under detectable differences.

    Args:
        risk_verdicts: ``[j][i]`` = verdict of ``risk_j − risk_i`` (lower risk is better).
        utility_verdicts: ``[j][i]`` = verdict of ``utility_j − utility_i`` (higher is better).

    Returns:
        True where no other point dominates (see :func:`dominates`).
    """
    n = len(risk_verdicts)
    keep = np.ones(n, bool)
    for i in range(n):
        keep[i] = not any(j != i and dominates(risk_verdicts[j][i], utility_verdicts[j][i]) for j in range(n))
    return keep
