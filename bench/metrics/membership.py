"""Membership-inference metrics: ROC, AUC, TPR at low FPR with Clopper–Pearson intervals,
advantage, and a heuristic ε from a ROC.

* :func:`epsilon_lower_bound_from_roc` — the hypothesis-testing bound used in DP auditing
  (Kairouz et al. 2015; Jagielski, Ullman, Oprea 2020; Nasr et al. 2021): an (ε, δ)-DP
  mechanism forces ``FPR + e^ε·FNR ≥ 1 − δ`` and ``FNR + e^ε·FPR ≥ 1 − δ`` for every test.
  FPR and FNR are replaced by their Clopper–Pearson upper bounds. The maximum over
  thresholds picks the threshold on the same scores, so it is an optimistic (heuristic)
  bound for the MIA. Certified bounds come from the one-run audits, whose statistics live in
  :mod:`bench.metrics.audit` (scored by :mod:`bench.auditing`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve


FPR_LEVELS = (0.01, 0.001)
CONFIDENCE_ALPHA = 0.05  # 95% two-sided Clopper–Pearson intervals
ROC_AUDIT_DELTA = 1e-5  # δ at which the ROC's ε lower bound is stated (see module docstring)


# --------------------------------------------------------------------------- intervals


def clopper_pearson(k: int, n: int, alpha: float = CONFIDENCE_ALPHA) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided ``1 − alpha`` interval for a binomial proportion k/n.

    Same as ``scipy.stats.binomtest(k, n).proportion_ci(1 - alpha, method="exact")``.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: need 0 <= k <= n and n > 0; got k={k}, n={n}")
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def _upper_cp(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Vectorised one-sided ``1 − alpha/2`` Clopper–Pearson upper bounds of k/n."""
    k = np.asarray(k, np.float64)
    out = np.ones_like(k)
    ok = k < n
    out[ok] = stats.beta.ppf(1 - alpha / 2, k[ok] + 1, n - k[ok])
    return out


# --------------------------------------------------------------------------- ROC


def _clean(scores: np.ndarray) -> np.ndarray:
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    scores = np.where(np.isneginf(scores), np.finfo(np.float64).min, scores)
    return np.where(np.isposinf(scores), np.finfo(np.float64).max, scores)


def roc_counts(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """True- and false-positive *counts* at every distinct threshold ("score ≥ t" = member).

    Returns ``(tp, fp, n_members, n_nonmembers)``; the first point is (0, 0), the last
    (n_members, n_nonmembers).
    """
    is_member = np.asarray(is_member, bool)
    s = _clean(scores)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], is_member[order]
    # a threshold sits after the last record of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.r_[0, np.cumsum(m)[last]]
    fp = np.r_[0, np.cumsum(~m)[last]]
    return tp, fp, int(m.sum()), int((~m).sum())


def tpr_at_fpr_ci(
    scores: np.ndarray, is_member: np.ndarray, level: float, alpha: float = CONFIDENCE_ALPHA
) -> tuple[float, float, float]:
    """TPR at the largest threshold set with empirical FPR ≤ ``level``, with its
    Clopper–Pearson ``1 − alpha`` interval (over the members).

    With few non-members a level below 1/n_nonmembers means "no false positive at all".
    """
    tp, fp, n_pos, n_neg = roc_counts(scores, is_member)
    ok = fp <= level * n_neg + 1e-9
    k = int(tp[ok].max())
    low, high = clopper_pearson(k, n_pos, alpha)
    return k / n_pos, low, high


def epsilon_lower_bound_from_roc(
    scores: np.ndarray, is_member: np.ndarray, delta: float = ROC_AUDIT_DELTA, alpha: float = CONFIDENCE_ALPHA
) -> float:
    """ε lower bound from a membership ROC with Clopper–Pearson upper bounds on FPR and FNR.

    For each threshold, ``ε ≥ max(log((1−δ−FPR⁺)/FNR⁺), log((1−δ−FNR⁺)/FPR⁺))`` where ⁺
    marks one-sided ``1 − alpha/2`` upper bounds; returns the maximum over thresholds (≥ 0).
    """
    tp, fp, n_pos, n_neg = roc_counts(scores, is_member)
    fpr_hi = _upper_cp(fp, n_neg, alpha)
    fnr_hi = _upper_cp(n_pos - tp, n_pos, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log((1 - delta - fpr_hi) / fnr_hi)
        b = np.log((1 - delta - fnr_hi) / fpr_hi)
    both = np.concatenate([a, b])
    both = both[np.isfinite(both)]
    return float(max(0.0, both.max())) if both.size else 0.0


def membership_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC, TPR at low FPR (with 95% Clopper–Pearson intervals), best balanced accuracy,
    membership advantage (max TPR − FPR; like the balanced accuracy, at the best threshold)
    and ``roc_epsilon_heuristic``, the ROC's ε "lower bound" at δ = 1e-5 (optimistic)."""
    is_member = np.asarray(is_member, bool)
    if is_member.all() or (~is_member).all():
        raise ValueError("membership metrics need both members and non-members")
    scores = _clean(scores)
    fpr, tpr, _ = roc_curve(is_member, scores)
    out = {"auc": float(roc_auc_score(is_member, scores))}
    for level in FPR_LEVELS:
        t, low, high = tpr_at_fpr_ci(scores, is_member, level)
        out[f"tpr_at_fpr_{level:g}"] = t
        out[f"tpr_at_fpr_{level:g}_ci_low"] = low
        out[f"tpr_at_fpr_{level:g}_ci_high"] = high
    adv = float(np.max(tpr - fpr))
    out["advantage"] = adv
    out["balanced_accuracy"] = 0.5 + adv / 2
    # not a certified bound: the threshold is chosen on these same scores, and members and
    # non-members are different records, not neighbouring datasets (the canary audit is the
    # bound with a clean confidence level); the name says so
    out["roc_epsilon_heuristic"] = epsilon_lower_bound_from_roc(scores, is_member)
    return out


def roc_points(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(is_member, bool), _clean(scores))
    return fpr, tpr

