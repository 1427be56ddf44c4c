"""Membership-inference metrics: ROC, AUC, TPR at low FPR with Clopper–Pearson intervals,
advantage, ε lower bounds from a ROC and from a one-run canary audit.

Two kinds of ε lower bound live here:

* :func:`epsilon_lower_bound_from_roc` — the hypothesis-testing bound used in DP auditing
  (Kairouz et al. 2015; Jagielski, Ullman, Oprea 2020; Nasr et al. 2021): an (ε, δ)-DP
  mechanism forces ``FPR + e^ε·FNR ≥ 1 − δ`` and ``FNR + e^ε·FPR ≥ 1 − δ`` for every test.
  FPR and FNR are replaced by their Clopper–Pearson upper bounds. The maximum over
  thresholds picks the threshold on the same scores, so it is an optimistic (heuristic)
  bound for the MIA; the canary audit below is the one with a clean confidence level.
* :func:`one_run_epsilon_lower_bound` — Steinke, Nasr, Jagielski (NeurIPS 2023), "Privacy
  Auditing with One (1) Training Run", Theorem 3.1 / Proposition 5.7: with m canaries each
  included with probability ½, an auditor who makes r guesses of which v are right rejects
  (ε, δ)-DP at level p when ``P[Bin(r, e^ε/(1+e^ε)) ≥ v] + 2mδ·max_i P[v > Bin ≥ v−i]/i < p``.
"""

from __future__ import annotations

import logging
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


# --------------------------------------------------------------------------- one-run audit


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ≥ v correct guesses out of r under the null "(ε, δ)-DP" (Steinke et al. 2023).

    ``q = e^ε/(1+e^ε)`` is the accuracy of ε-DP randomized response; the δ term is
    ``2·m·δ·max_{1≤i≤v} P[v > Bin(r, q) ≥ v − i] / i`` (their Proposition 5.7).
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"one-run audit: need 0 <= v <= r <= m; got m={m}, r={r}, v={v}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if v == 0 or delta == 0:
        return min(beta, 1.0)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # pmf(v-1), pmf(v-2), ..., pmf(0)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + 2 * m * delta * alpha, 1.0)


def one_run_epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = 0.05) -> float:
    """Largest ε such that (ε, δ)-DP is rejected at level ``p`` by r guesses with v correct.

    Binary search on the monotone p-value; 0 when even ε = 0 cannot be rejected.
    """
    if one_run_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < p:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return float(lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return float(lo)


def one_run_guesses(scores: np.ndarray, k_pos: int, k_neg: int) -> np.ndarray:
    """The auditor's guesses: +1 for the ``k_pos`` highest scores, −1 for the ``k_neg``
    lowest, 0 (abstain) otherwise. Ties are broken by position (stable sort)."""
    n = len(scores)
    if k_pos + k_neg > n:
        raise ValueError(f"one-run audit: k_pos + k_neg = {k_pos + k_neg} guesses exceed {n} canaries")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    guess = np.zeros(n, np.int64)
    guess[order[:k_pos]] = 1
    if k_neg:
        guess[order[n - k_neg :]] = -1
    return guess


def one_run_audit(
    scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int, delta: float, p: float = 0.05
) -> dict[str, float]:
    """Score a one-run canary audit: counts and the ε lower bound at ``delta``, level ``p``."""
    included = np.asarray(included, bool)
    guess = one_run_guesses(scores, k_pos, k_neg)
    r = int((guess != 0).sum())
    v = int(((guess == 1) & included).sum() + ((guess == -1) & ~included).sum())
    m = len(included)
    return {
        "canaries": float(m),
        "guesses": float(r),
        "correct": float(v),
        "epsilon_lower_bound": one_run_epsilon_lower_bound(m, r, v, delta, p),
    }


def canary_audit_metrics(output, truth, delta: float) -> dict[str, float]:
    """Score a :class:`bench.types.CanaryScores` against the canaries' true inclusion.

    Only here does the inclusion of each canary (``GroundTruth.canary_included``) meet the
    auditor's scores. The bound is stated at ``delta`` (the accountant's δ when DP).
    """
    if truth.canary_ids is None or truth.canary_included is None:
        raise ValueError("canary audit: the ground truth holds no canaries (did the audit's prepare step run?)")
    pos = {int(i): k for k, i in enumerate(truth.canary_ids)}
    idx = np.asarray([pos[int(i)] for i in output.ids], dtype=np.int64)
    out = one_run_audit(output.scores, truth.canary_included[idx], output.k_pos, output.k_neg, delta, output.p_value)
    out["delta"] = float(delta)
    return out


def audit_verdict(metrics: dict, audit_names: list) -> tuple[dict[str, float], dict[str, str]]:
    """``audit/epsilon_lower_bound`` (max over audit attacks) beside the accountant's ε at the
    audit's δ (``audit/accountant_epsilon``, else ``privacy/epsilon``).

    If the empirical lower bound exceeds the accountant's ε, something is wrong (the
    accountant, the mechanism or the audit): tag ``audit_violation=true`` and log an error.
    """
    bounds = [metrics[f"attack/{n}/epsilon_lower_bound"] for n in audit_names if f"attack/{n}/epsilon_lower_bound" in metrics]
    if not bounds:
        return {}, {}
    lb = float(max(bounds))
    out = {"audit/epsilon_lower_bound": lb}
    eps = metrics.get("audit/accountant_epsilon", metrics.get("privacy/epsilon"))
    tags = {}
    if eps is not None and math.isfinite(eps):
        violated = lb > eps + 1e-9
        tags["audit_violation"] = str(violated).lower()
        if violated:
            logging.getLogger(__name__).error(
                "AUDIT VIOLATION: the one-run audit's epsilon lower bound %.3f exceeds the accountant's epsilon %.3f; "
                "the accountant, the DP mechanism or the audit has a bug", lb, eps,
            )
    return out, tags
