"""Membership-inference metrics: ROC, AUC with a bootstrap interval, TPR at low FPR with
Clopper–Pearson intervals, advantage, and a heuristic ε from a ROC.

* ``auc_ci_low`` / ``auc_ci_high``: a 95 % percentile bootstrap interval of the AUC, resampling
  members and non-members separately (their counts stay fixed), :data:`BOOTSTRAP_RESAMPLES`
  resamples from the fixed seed :data:`BOOTSTRAP_SEED` (scoring has no generator of its own, and
  the same scores must give the same interval). Vectorised: O(resamples × records).
* ``tpr_at_fpr_<level>`` is logged only when there are at least ``1/level`` non-members
  (1,000 for 0.001, 100 for 0.01); with fewer, "FPR ≤ level" means "no false positive at all"
  and the number would be TPR at zero false positives under another name. Instead
  ``tpr_at_fpr_<level>_unsupported`` is logged, whose value is the number of non-members that
  were available (see :func:`supported_fpr_levels`). ``nonmembers`` and ``members`` count
  the scored records.

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
from typing import Iterator, Optional

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve


FPR_LEVELS = (0.01, 0.001)
CONFIDENCE_ALPHA = 0.05  # 95% two-sided Clopper–Pearson intervals
BOOTSTRAP_RESAMPLES = 400  # enough for the 2.5 % / 97.5 % percentiles to move by < 0.005 AUC
BOOTSTRAP_SEED = 0  # scoring is a pure function of its inputs: a fixed stream for every cell
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


def bootstrap_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``resamples`` bootstrap resamples.

    Returns:
        An integer array (resamples, n) whose rows sum to ``n``.
    """
    if n <= 0:
        raise ValueError(f"bootstrap_counts: need n > 0; got {n}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    # one bincount over row-offset indices is the vectorised "bincount per row"
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)


BOOTSTRAP_CHUNK_CELLS = 4_000_000  # resamples x items held at once (~32 MB an array): memory stays flat in n


def bootstrap_count_chunks(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                           step: Optional[int] = None) -> Iterator[np.ndarray]:
    """:func:`bootstrap_counts`' rows, a block of resamples at a time (the same numbers: one
    generator draws the blocks in order), so that 700,000 records x 1,000 resamples never sit
    in memory at once."""
    if n <= 0:
        raise ValueError(f"bootstrap_counts: need n > 0; got {n}")
    rng = np.random.default_rng(seed)
    step = step or max(1, min(resamples, BOOTSTRAP_CHUNK_CELLS // n))
    for start in range(0, resamples, step):
        r = min(step, resamples - start)
        draws = rng.integers(0, n, size=(r, n))
        flat = (draws + n * np.arange(r)[:, None]).ravel()
        yield np.bincount(flat, minlength=r * n).reshape(r, n)


def percentile_interval(values: np.ndarray, alpha: float = CONFIDENCE_ALPHA) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 − alpha/2`` percentiles of bootstrap replicates."""
    lo, hi = np.quantile(np.asarray(values, np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    values: np.ndarray, weights: np.ndarray | None = None, alpha: float = CONFIDENCE_ALPHA,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap ``1 − alpha`` interval of a (weighted) mean, resampling items.

    Args:
        values: one value per independent item (e.g. per reconstructed record).
        weights: the weight of each item in the mean (default equal); a resample's mean is
            ``Σ cᵢ wᵢ vᵢ / Σ cᵢ wᵢ`` with ``cᵢ`` the item's count in that resample.
        alpha: 1 − confidence level.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling stream.

    Returns:
        ``(low, high)``; both equal the value itself for a single item (nothing to resample).
    """
    v = np.asarray(values, np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64)
    if v.ndim != 1 or v.shape != w.shape or len(v) == 0:
        raise ValueError(f"bootstrap_mean_ci: need equal-length 1-d values and weights; got {v.shape} and {w.shape}")
    means = []
    for counts in bootstrap_count_chunks(len(v), resamples, seed):
        cw = counts * w[None, :]
        means.append((cw @ v) / cw.sum(axis=1))
    return percentile_interval(np.concatenate(means), alpha)


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


def bootstrap_auc_ci(
    scores: np.ndarray, is_member: np.ndarray, alpha: float = CONFIDENCE_ALPHA,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap ``1 − alpha`` interval of the ROC AUC.

    Members and non-members are resampled separately (a stratified bootstrap: both counts
    stay fixed, so no resample lacks a class). Each resample's AUC is the Mann–Whitney
    statistic ``Σ cᵢ·(#non-members below sᵢ + ½·#tied) / (n₊·n₋)`` with the non-members
    weighted by their resample counts, computed from one sort of the non-members' scores:
    O(resamples × records) time and memory, no per-resample sorting.

    Args:
        scores: membership scores, higher = member.
        is_member: the truth, one per score.
        alpha: 1 − confidence level.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling stream (members use ``seed``, non-members ``seed + 1``).

    Returns:
        ``(low, high)``.
    """
    is_member = np.asarray(is_member, bool)
    s = _clean(scores)
    pos, neg = s[is_member], s[~is_member]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("bootstrap_auc_ci needs both members and non-members")
    order = np.argsort(neg, kind="mergesort")
    neg_sorted = neg[order]
    left, right = np.searchsorted(neg_sorted, pos, "left"), np.searchsorted(neg_sorted, pos, "right")
    # blocks of resamples (the same draws as all at once): memory O(block x records), not O(resamples x records)
    step = max(1, min(resamples, BOOTSTRAP_CHUNK_CELLS // 2 // max(len(pos), len(neg))))
    aucs = []
    for c_pos, c_neg in zip(bootstrap_count_chunks(len(pos), resamples, seed, step),
                            bootstrap_count_chunks(len(neg), resamples, seed + 1, step)):
        cum = np.concatenate([np.zeros((len(c_neg), 1)), np.cumsum(c_neg[:, order], axis=1)], axis=1)
        below, upto = cum[:, left], cum[:, right]
        aucs.append((c_pos * (below + 0.5 * (upto - below))).sum(axis=1) / (len(pos) * len(neg)))
    return percentile_interval(np.concatenate(aucs), alpha)


def supported_fpr_levels(n_nonmembers: int, levels: tuple[float, ...] = FPR_LEVELS) -> tuple[float, ...]:
    """The FPR levels at which a TPR means what its name says: ``n_nonmembers ≥ 1/level``.

    Below that, the smallest non-zero FPR the scores can show (1/n_nonmembers) is above
    ``level``, so "TPR at FPR ≤ level" is the TPR at zero false positives.
    """
    return tuple(level for level in levels if n_nonmembers >= math.ceil(1.0 / level - 1e-9))


def membership_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """Membership-inference metrics of one attack's scores.

    Args:
        scores: one score per candidate record, higher = member (NaN counts as the lowest).
        is_member: the truth, one per score; both classes must be present.

    Returns:
        ``auc`` with its 95 % bootstrap interval (``auc_ci_low``/``auc_ci_high``); for each
        supported level of :data:`FPR_LEVELS` (:func:`supported_fpr_levels`)
        ``tpr_at_fpr_<level>`` with its 95 % Clopper–Pearson interval, and for each
        unsupported one only ``tpr_at_fpr_<level>_unsupported`` = the number of non-members;
        ``members`` and ``nonmembers`` (counts); the best balanced accuracy; the membership
        advantage (max TPR − FPR; like the balanced accuracy, at the best threshold); and
        ``roc_epsilon_heuristic``, the ROC's ε "lower bound" at δ = 1e-5 (optimistic).
    """
    is_member = np.asarray(is_member, bool)
    if is_member.all() or (~is_member).all():
        raise ValueError("membership metrics need both members and non-members")
    scores = _clean(scores)
    fpr, tpr, _ = roc_curve(is_member, scores)
    n_neg = int((~is_member).sum())
    out = {"auc": float(roc_auc_score(is_member, scores))}
    out["auc_ci_low"], out["auc_ci_high"] = bootstrap_auc_ci(scores, is_member)
    out["members"], out["nonmembers"] = float(is_member.sum()), float(n_neg)
    supported = supported_fpr_levels(n_neg)
    for level in FPR_LEVELS:
        if level not in supported:
            out[f"tpr_at_fpr_{level:g}_unsupported"] = float(n_neg)
            continue
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

