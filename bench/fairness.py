"""Who pays for privacy: utility and membership exposure per patient subgroup and per hospital.

Pure functions of predictions, attack scores and ground truth; the runner calls
:func:`fairness_metrics` once per cell, after training and the attacks. Everything logged is
a ``fairness/...`` metric (MLflow-safe names, ``=`` written as ``/``):

* utility per subgroup, ``fairness/<attribute>/<group>/<metric>`` (e.g. ``fairness/sex/female/accuracy``),
  per hospital ``fairness/site/<hospital>/<metric>``, and per hospital × subgroup
  ``fairness/site/<hospital>/<attribute>/<group>/<metric>``; metrics ``accuracy``,
  ``balanced_accuracy``, ``tpr``, ``fpr``, ``auroc``, ``ece`` (expected calibration error, 10
  equal-width bins of the predicted class's probability) and always ``count`` and ``positives``.
  A cell with fewer than ``min_count`` test records logs only its counts (and ``too_few = 1``):
  a number from six patients is not a number; likewise a TPR needs ``min_count`` positives, an
  FPR ``min_count`` negatives, balanced accuracy and AUROC both;
* gaps over the subgroups that have enough records, ``fairness/<attribute>/<gap>`` and
  ``fairness/site/<gap>``: ``accuracy_gap`` (best − worst), ``worst_group_accuracy``,
  ``equalized_odds_difference`` (max of the TPR and FPR gaps) and
  ``demographic_parity_difference`` (gap in the rate of predicting disease). Computed with
  fairlearn's ``MetricFrame`` and gap functions (the ecosystem's standard);
* within-cell 95 % bootstrap intervals (``_ci_low``/``_ci_high``) of the headline numbers (each
  subgroup's and hospital's accuracy, and the gaps): records resampled within each subgroup
  (its count fixed), from a fixed seed so the same predictions give the same interval. They
  cover the test-set sampling only; the report's intervals over seeds cover training too. The
  bootstrap of a max − min gap is biased upward when the true gap is small: read a gap by its
  paired change against no defense (the report), not by whether its interval excludes 0;
* membership exposure per subgroup and hospital for every membership attack,
  ``fairness/exposure/<attack>/<attribute>/<group>/{auc,tpr_at_fpr_0.01,...}`` and
  ``fairness/exposure/<attack>/site/<hospital>/...``, scored by :func:`bench.metrics.membership.membership_metrics`
  (bootstrap AUC interval, Clopper–Pearson TPR interval, TPR at 1 % FPR only with ≥ 100 non-members);
* the most exposed members (highest scores among members, ``top_exposed`` of them):
  ``fairness/exposed/<attack>/<attribute>/<group>/share`` against ``.../member_share`` (their
  share among all members), the same per hospital, ``outlier_share`` (fraction whose distance to
  the population is above the 90th percentile of all candidates') and
  ``score_distance_spearman`` among members. Only aggregates: no record, id or feature is logged;
* reconstruction exposure per subgroup and hospital for every tabular inversion attack (TabLeak
  and the others that return :class:`~bench.types.Reconstructions` of table rows),
  ``fairness/exposure/<attack>/<attribute>/<group>/<key>`` and ``fairness/exposure/<attack>/site/<hospital>/<key>``
  (:func:`reconstruction_exposure`). Each reconstruction is matched to the records its target
  really held exactly as the headline score does (:func:`bench.metrics.reconstruction.matched_table_hits`:
  Hungarian, fewest wrong features) — scoring, not a choice of reconstruction — and each matched
  *true* record is grouped by its own ground-truth subgroup and hospital (never by the
  reconstruction's values). Keys: ``records`` (matched true records in the group; always),
  ``feature_accuracy`` (mean fraction of a record's features recovered, TabLeak's rule),
  ``record_exact_match``, ``baseline_feature_accuracy`` (the prior baseline's per-record accuracy,
  the headline's draws), ``feature_accuracy_gain`` (accuracy − baseline, per record) and
  ``feature_accuracy_vs_rest`` (the group's accuracy − that of the other groups' records in the
  same cell: is this group more exposed than the others?) and ``feature_accuracy_gain_vs_rest``
  (the same for the gain: more exposed beyond what its records' typicality explains; a group of
  near-constant records is easy to "reconstruct" from the prior alone). All but the baseline carry 95 %
  bootstrap intervals over records (``fairness.bootstrap`` resamples, fixed seed; the two sides
  of ``vs_rest`` resampled independently). A group with fewer than ``min_count`` matched
  records logs only ``records`` and ``too_few`` (``vs_rest`` needs ``min_count`` on both
  sides). A record attacked in several rounds counts once per round.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

RECONSTRUCTION_KEYS = ("records", "too_few", "feature_accuracy", "record_exact_match", "baseline_feature_accuracy",
                       "feature_accuracy_gain", "feature_accuracy_vs_rest", "feature_accuracy_gain_vs_rest")  # per group, with _ci_low/_ci_high where intervals apply
UTILITY_METRICS = ("accuracy", "balanced_accuracy", "tpr", "fpr", "auroc", "ece")
GAPS = ("accuracy_gap", "worst_group_accuracy", "equalized_odds_difference", "demographic_parity_difference")
EXPOSURE_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "tpr_at_fpr_0.01", "tpr_at_fpr_0.01_ci_low", "tpr_at_fpr_0.01_ci_high",
                 "tpr_at_fpr_0.01_unsupported", "members", "nonmembers")
BOOTSTRAP_SEED = 0  # scoring is a pure function of its inputs: the same predictions give the same interval
ECE_BINS = 10
OUTLIER_QUANTILE = 0.9
NEIGHBOURS = 5


# --------------------------------------------------------------------------- per-record metrics


def expected_calibration_error(y: np.ndarray, p1: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of a binary classifier: Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)|.

    The confidence is the probability of the predicted class (max(p, 1 − p)), binned into
    ``bins`` equal-width bins of [0.5, 1] (the right edge is in the last bin).
    """
    y, p1 = np.asarray(y), np.asarray(p1, np.float64)
    if y.size == 0:
        return float("nan")
    pred = (p1 > 0.5).astype(int)
    conf = np.where(pred == 1, p1, 1.0 - p1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    correct = (pred == y).astype(np.float64)
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.sum() / y.size * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def _auroc(y_true, y_pred, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, scores)) if len(np.unique(y_true)) == 2 else float("nan")


def _ece(y_true, y_pred, scores) -> float:
    return expected_calibration_error(np.asarray(y_true), np.asarray(scores))


def _count(y_true, y_pred) -> float:
    return float(len(y_true))


def _positives(y_true, y_pred) -> float:
    return float(np.sum(y_true))


def metric_frame(y: np.ndarray, p1: np.ndarray, groups: np.ndarray):
    """fairlearn ``MetricFrame`` of the utility metrics (and counts) by ``groups`` (labels per record).

    The prediction is ``p1 > 0.5`` (the argmax of a binary classifier, as ``utility/...`` uses).
    """
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    pred = (np.asarray(p1) > 0.5).astype(int)
    metrics = {
        "count": _count, "positives": _positives, "accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score,
        "tpr": lambda yt, yp: true_positive_rate(yt, yp, pos_label=1), "fpr": lambda yt, yp: false_positive_rate(yt, yp, pos_label=1),
        "auroc": _auroc, "ece": _ece,
    }
    with warnings.catch_warnings():  # a one-class group: sklearn warns, the rate's own count rule decides (subgroup_utility)
        warnings.simplefilter("ignore", UserWarning)
        return MetricFrame(
            metrics=metrics, y_true=np.asarray(y), y_pred=pred, sensitive_features=np.asarray(groups, dtype=object),
            sample_params={"auroc": {"scores": np.asarray(p1)}, "ece": {"scores": np.asarray(p1)}},
        )


def gap_metrics(y: np.ndarray, p1: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The gaps between ``groups`` (use only groups with enough records): fairlearn's
    equalized-odds and demographic-parity differences, the accuracy gap and the worst group's accuracy."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
    from sklearn.metrics import accuracy_score

    pred = (np.asarray(p1) > 0.5).astype(int)
    groups = np.asarray(groups, dtype=object)
    acc = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=groups)
    return {
        "accuracy_gap": float(acc.difference(method="between_groups")),
        "worst_group_accuracy": float(acc.group_min()),
        "equalized_odds_difference": float(equalized_odds_difference(y, pred, sensitive_features=groups)),
        "demographic_parity_difference": float(demographic_parity_difference(y, pred, sensitive_features=groups)),
    }


# --------------------------------------------------------------------------- bootstrap


def _rates(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Accuracy, TPR, FPR and selection rate of each resample (rows of ``idx``)."""
    yy, pp = y[idx], pred[idx]
    pos, neg = yy.sum(1), (1 - yy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (yy == pp).mean(1)
        tpr = np.where(pos > 0, (pp * yy).sum(1) / pos, np.nan)
        fpr = np.where(neg > 0, (pp * (1 - yy)).sum(1) / neg, np.nan)
    return acc, tpr, fpr, pp.mean(1)


def bootstrap_intervals(y: np.ndarray, p1: np.ndarray, groups: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each group's accuracy and of the gaps, resampling within each group.

    Returns:
        ``{"<group>/accuracy": (low, high), "<gap>": (low, high), ...}``; empty when ``resamples`` is 0.
    """
    if resamples <= 0:
        return {}
    y = np.asarray(y, np.int64)
    pred = (np.asarray(p1) > 0.5).astype(np.int64)
    rng = np.random.default_rng(seed)
    names = sorted(set(groups.tolist()))
    per = {}
    for g in names:
        members = np.flatnonzero(groups == g)
        idx = members[rng.integers(0, members.size, size=(resamples, members.size))]
        per[g] = _rates(y, pred, idx)
    acc = np.stack([per[g][0] for g in names])
    tpr = np.stack([per[g][1] for g in names])
    fpr = np.stack([per[g][2] for g in names])
    sel = np.stack([per[g][3] for g in names])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(v: np.ndarray) -> tuple[float, float]:
        v = v[np.isfinite(v)]
        return (float("nan"), float("nan")) if v.size == 0 else tuple(float(x) for x in np.percentile(v, q))

    out = {f"{g}/accuracy": interval(acc[i]) for i, g in enumerate(names)}
    if len(names) >= 2:
        with np.errstate(invalid="ignore"):
            eo = np.fmax(np.nanmax(tpr, 0) - np.nanmin(tpr, 0), np.nanmax(fpr, 0) - np.nanmin(fpr, 0))
        out["accuracy_gap"] = interval(acc.max(0) - acc.min(0))
        out["worst_group_accuracy"] = interval(acc.min(0))
        out["equalized_odds_difference"] = interval(eo)
        out["demographic_parity_difference"] = interval(sel.max(0) - sel.min(0))
    return out


# --------------------------------------------------------------------------- subgroup utility


def subgroup_utility(y: np.ndarray, p1: np.ndarray, groups: np.ndarray, prefix: str, min_count: int,
                     resamples: int = 0, gaps: bool = True) -> dict[str, float]:
    """``<prefix>/<group>/<metric>`` for every group (counts always; metrics only from ``min_count``
    records on) and ``<prefix>/<gap>`` over the groups that have enough records.

    Args:
        y: true labels (0/1), one per evaluated record.
        p1: predicted probability of class 1, one per record.
        groups: a group label per record; ``""`` marks a record without one (left out).
        prefix: the metric-name prefix, e.g. ``fairness/sex``.
        min_count: the smallest group reported with numbers.
        resamples: within-cell bootstrap resamples for the headline intervals (0: none).
        gaps: also compute the gaps between groups (needs ≥ 2 groups with enough records).
    """
    y, p1, groups = np.asarray(y, np.int64), np.asarray(p1, np.float64), np.asarray(groups, dtype=object)
    known = groups != ""
    y, p1, groups = y[known], p1[known], groups[known]
    out: dict[str, float] = {}
    if y.size == 0:
        return out
    frame = metric_frame(y, p1, groups).by_group
    enough = []
    for g, row in frame.iterrows():
        out[f"{prefix}/{g}/count"] = float(row["count"])
        out[f"{prefix}/{g}/positives"] = float(row["positives"])
        if row["count"] < min_count:
            out[f"{prefix}/{g}/too_few"] = 1.0
            continue
        enough.append(g)
        pos, neg = row["positives"], row["count"] - row["positives"]
        for m in UTILITY_METRICS:
            # a rate needs its own denominator: TPR from min_count positives, FPR from min_count negatives
            need = {"tpr": pos, "fpr": neg, "balanced_accuracy": min(pos, neg), "auroc": min(pos, neg)}.get(m, row["count"])
            if need >= min_count:
                out[f"{prefix}/{g}/{m}"] = float(row[m])
    keep = np.isin(groups, enough)
    cis = bootstrap_intervals(y[keep], p1[keep], groups[keep], resamples) if enough else {}
    if gaps and len(enough) >= 2:
        out.update({f"{prefix}/{k}": v for k, v in gap_metrics(y[keep], p1[keep], groups[keep]).items()})
    for k, (lo, hi) in cis.items():
        if f"{prefix}/{k}" in out and math.isfinite(lo):
            out[f"{prefix}/{k}_ci_low"], out[f"{prefix}/{k}_ci_high"] = lo, hi
    return out


def group_labels(codes: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Group label per record from subgroup indices (``-1`` -> ``""``, left out)."""
    lab = np.asarray(list(labels) + [""], dtype=object)
    return lab[np.where(codes < 0, len(labels), codes)]


@dataclass(frozen=True)
class Evaluated:
    """Records evaluated for fairness: labels, predicted P(class 1), hospital and subgroups of each.

    Attributes:
        y: true labels.
        p1: predicted probability of class 1.
        site: hospital name of each record.
        groups: attribute name -> subgroup label per record (``""``: missing).
    """

    y: np.ndarray
    p1: np.ndarray
    site: np.ndarray
    groups: Mapping[str, np.ndarray]


def utility_fairness(ev: Evaluated, min_count: int, resamples: int) -> dict[str, float]:
    """All ``fairness/...`` utility metrics: per subgroup, per hospital, per hospital × subgroup."""
    out: dict[str, float] = {}
    for name, g in ev.groups.items():
        out.update(subgroup_utility(ev.y, ev.p1, g, f"fairness/{name}", min_count, resamples))
    out.update(subgroup_utility(ev.y, ev.p1, ev.site, "fairness/site", min_count, resamples))
    for s in sorted(set(ev.site.tolist())):
        at = ev.site == s
        for name, g in ev.groups.items():
            out.update(subgroup_utility(ev.y[at], ev.p1[at], g[at], f"fairness/site/{s}/{name}", min_count, 0, gaps=False))
    return out


# --------------------------------------------------------------------------- exposure


def exposure_metrics(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray, prefix: str, min_count: int) -> dict[str, float]:
    """Membership AUC and TPR at 1 % FPR (with intervals) per group; a group with fewer than
    ``min_count`` members or non-members logs only its counts."""
    from bench.metrics.membership import membership_metrics

    out: dict[str, float] = {}
    for g in sorted(set(groups.tolist()) - {""}):
        at = groups == g
        m, n = int(is_member[at].sum()), int((~is_member[at]).sum())
        if m < min_count or n < min_count:
            out.update({f"{prefix}/{g}/members": float(m), f"{prefix}/{g}/nonmembers": float(n), f"{prefix}/{g}/too_few": 1.0})
            continue
        got = membership_metrics(scores[at], is_member[at])
        out.update({f"{prefix}/{g}/{k}": float(v) for k, v in got.items() if k in EXPOSURE_KEYS})
    return out


def knn_distance(x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Mean Euclidean distance of each row to its ``k`` nearest other rows: how far a record
    lies from the population (large = outlier)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x) - 1)
    if k < 1:
        return np.zeros(len(x))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, 1:].mean(1)  # column 0 is the record itself


def most_exposed(scores: np.ndarray, is_member: np.ndarray, site: np.ndarray, groups: Mapping[str, np.ndarray],
                 distance: np.ndarray, top: int, prefix: str) -> dict[str, float]:
    """Who the ``top`` highest-scored members are, as shares (never the records themselves).

    For each attribute's group and each hospital: ``share`` among the top members and
    ``member_share`` among all members (a group over-represented among the most exposed has
    share > member_share); ``outlier_share`` (distance to the population above the
    :data:`OUTLIER_QUANTILE` of all candidates'), ``outlier_base_share`` (the same among all
    members), and the Spearman correlation of score and distance among members.
    """
    from scipy.stats import spearmanr

    mem = np.flatnonzero(is_member)
    if mem.size == 0:
        return {}
    s = np.nan_to_num(np.asarray(scores, np.float64)[mem], nan=-np.inf)
    top_idx = mem[np.argsort(-s, kind="stable")[: min(top, mem.size)]]
    cut = np.quantile(distance, OUTLIER_QUANTILE)
    out = {f"{prefix}/top": float(top_idx.size), f"{prefix}/outlier_share": float((distance[top_idx] > cut).mean()),
           f"{prefix}/outlier_base_share": float((distance[mem] > cut).mean())}
    if mem.size > 2 and np.ptp(s[np.isfinite(s)]) > 0:
        rho = spearmanr(np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1), distance[mem]).statistic
        out[f"{prefix}/score_distance_spearman"] = float(rho)
    for name, lab in {**groups, "site": site}.items():
        for g in sorted(set(lab[mem].tolist()) - {""}):
            out[f"{prefix}/{name}/{g}/share"] = float((lab[top_idx] == g).mean())
            out[f"{prefix}/{name}/{g}/member_share"] = float((lab[mem] == g).mean())
    return out


# --------------------------------------------------------------------------- reconstruction exposure


@dataclass(frozen=True)
class RecordReconstruction:
    """How well each *true* record was reconstructed (scoring only; never logged as such).

    One entry per (target, true record matched to a reconstruction).

    Attributes:
        ids: the true record's id (to look up its ground-truth subgroup).
        site: the hospital that held it.
        accuracy: fraction of its features the matched reconstruction got right (TabLeak's rule).
        exact: whether every feature was right.
        baseline: the prior baseline's accuracy on this record (mean over the draws in which a
            prior record was matched to it; NaN if never).
    """

    ids: np.ndarray
    site: np.ndarray
    accuracy: np.ndarray
    exact: np.ndarray
    baseline: np.ndarray


def reconstruction_per_record(output, truth) -> Optional[RecordReconstruction]:
    """Per-true-record scores of a tabular :class:`~bench.types.Reconstructions` (None for images).

    The matching is the headline score's (:func:`bench.metrics.reconstruction.matched_table_hits`), so
    the mean of ``accuracy`` over one target's records is that target's ``feature_accuracy``; the
    prior baseline replays the headline's draws (same seed, same order), so with as many
    reconstructions as true records the mean of ``baseline`` is the headline baseline.
    """
    from bench.metrics.reconstruction import (
        BASELINE_DRAWS, BASELINE_SEED as PRIOR_SEED, decode_table, matched_table_hits, prior_sample, true_records,
    )
    from bench.types import Records

    info = truth.info
    if info is None or info.modality != "tabular" or not info.features or not output.items:
        return None
    population = truth.population if truth.population is not None else Records.concat(list(truth.site_train.values()))
    pop = decode_table(population.x.numpy(), info)
    parts = []
    for item in output.items:
        true = true_records(item, truth)
        sites = item.sites or (item.target,)
        site = np.concatenate([np.full(len(truth.site_train[s]), s, dtype=object) for s in sites])
        t = decode_table(true.x.numpy(), info)
        r = decode_table(item.x.detach().numpy(), info)
        hits, _, cols = matched_table_hits(r, t, info)
        rng = np.random.default_rng(PRIOR_SEED)  # the headline's stream (tabular_metrics): the same prior records
        b_sum, b_n = np.zeros(len(t)), np.zeros(len(t))
        for _ in range(BASELINE_DRAWS):
            bh, _, bc = matched_table_hits(prior_sample(pop, len(r), rng), t, info)
            b_sum[bc] += bh.mean(axis=1)
            b_n[bc] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            base = np.where(b_n > 0, b_sum / np.maximum(b_n, 1), np.nan)
        parts.append((true.ids[cols], site[cols], hits.mean(axis=1), hits.all(axis=1), base[cols]))
    return RecordReconstruction(*(np.concatenate([p[k] for p in parts]) for k in range(5)))


def _mean_ci(v: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED) -> Optional[tuple[float, float]]:
    from bench.metrics.membership import bootstrap_counts, percentile_interval

    if resamples <= 0 or v.size == 0:
        return None
    c = bootstrap_counts(v.size, resamples, seed)
    return percentile_interval(c @ v / v.size)


def reconstruction_exposure(rec: RecordReconstruction, groups: np.ndarray, prefix: str, min_count: int,
                            resamples: int) -> dict[str, float]:
    """``<prefix>/<group>/<key>`` for the :data:`RECONSTRUCTION_KEYS` (module docstring) of every group.

    Args:
        rec: per-true-record reconstruction scores.
        groups: the ground-truth group label of each entry of ``rec`` (``""``: missing, left out).
        prefix: e.g. ``fairness/exposure/tableak/sex``.
        min_count: fewer matched records than this: ``records`` and ``too_few`` only.
        resamples: bootstrap resamples of the intervals (0: none).
    """
    groups = np.asarray(groups, dtype=object)
    acc, exact = np.asarray(rec.accuracy, np.float64), np.asarray(rec.exact, np.float64)
    base = np.asarray(rec.baseline, np.float64)
    known = groups != ""
    out: dict[str, float] = {}

    def put(name: str, v: np.ndarray) -> None:  # a mean over records, with its bootstrap interval
        out[name] = float(v.mean())
        got = _mean_ci(v, resamples)
        if got is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = got

    for g in sorted(set(groups[known].tolist())):
        at = groups == g
        n = int(at.sum())
        out[f"{prefix}/{g}/records"] = float(n)
        if n < min_count:
            out[f"{prefix}/{g}/too_few"] = 1.0
            continue
        put(f"{prefix}/{g}/feature_accuracy", acc[at])
        put(f"{prefix}/{g}/record_exact_match", exact[at])
        b = base[at]
        if np.isfinite(b).all():
            out[f"{prefix}/{g}/baseline_feature_accuracy"] = float(b.mean())
            put(f"{prefix}/{g}/feature_accuracy_gain", acc[at] - b)
        rest = known & ~at
        if rest.sum() >= min_count:
            out.update(_vs_rest(f"{prefix}/{g}/feature_accuracy_vs_rest", acc[at], acc[rest], resamples))
            gain = acc - base
            if np.isfinite(gain[at | rest]).all():
                out.update(_vs_rest(f"{prefix}/{g}/feature_accuracy_gain_vs_rest", gain[at], gain[rest], resamples))
    return out


def _vs_rest(key: str, a: np.ndarray, r: np.ndarray, resamples: int) -> dict[str, float]:
    """``mean(a) − mean(r)`` with a bootstrap interval; the two sides are independent samples of
    records, so each is resampled on its own (different streams)."""
    from bench.metrics.membership import bootstrap_counts, percentile_interval

    out = {key: float(a.mean() - r.mean())}
    if resamples > 0:
        ba = bootstrap_counts(a.size, resamples, BOOTSTRAP_SEED) @ a / a.size
        br = bootstrap_counts(r.size, resamples, BOOTSTRAP_SEED + 1) @ r / r.size
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_interval(ba - br)
    return out


def reconstruction_fairness(name: str, output, truth, min_count: int, resamples: int) -> dict[str, float]:
    """Reconstruction exposure of one attack's output per subgroup and per hospital (empty for images)."""
    rec = reconstruction_per_record(output, truth)
    if rec is None or rec.ids.size == 0:
        return {}
    base = f"fairness/exposure/{name}"
    out: dict[str, float] = {}
    for a in truth.sensitive:  # the true record's subgroup, from the ground truth
        out.update(reconstruction_exposure(rec, group_labels(a.of_any(rec.ids), a.groups), f"{base}/{a.name}", min_count, resamples))
    out.update(reconstruction_exposure(rec, rec.site, f"{base}/site", min_count, resamples))
    return out


# --------------------------------------------------------------------------- the runner's one call


def evaluated_test_set(fed, truth, params: torch.Tensor, model: torch.nn.Module) -> Evaluated:
    """The global test set's labels, the released model's P(class 1), hospitals and subgroups."""
    from bench.metrics import predict_proba
    from bench.models import load_flat

    load_flat(model, params)
    p1 = predict_proba(model, fed.test.x)[:, 1]
    site = np.concatenate([np.full(len(s.test), s.name, dtype=object) for s in fed.sites])
    groups = {a.name: group_labels(a.of(fed.test.ids), a.groups) for a in truth.sensitive}
    return Evaluated(y=fed.test.y.numpy(), p1=p1, site=site, groups=groups)


def fairness_metrics(cfg, fed, truth, model: torch.nn.Module, params: torch.Tensor,
                     outputs: Mapping[str, object]) -> dict[str, float]:
    """Every ``fairness/...`` metric of one cell (empty when ``cfg`` is None).

    Args:
        cfg: the cell's :class:`bench.config.FairnessConfig` or None.
        fed: the federation (its test set is evaluated; candidates' features give distances).
        truth: the ground truth: membership, hospitals and the sensitive attributes' subgroups.
        model: a fresh model of the cell's architecture (its weights are overwritten).
        params: the released model's flat parameters.
        outputs: attack name -> output; membership scores and tabular reconstructions are
            profiled, others ignored.
    """
    from bench.metrics import align
    from bench.types import MembershipScores, Reconstructions

    if cfg is None:
        return {}
    out = utility_fairness(evaluated_test_set(fed, truth, params, model), cfg.min_count, cfg.bootstrap)
    for name, o in outputs.items():
        if isinstance(o, Reconstructions):
            out.update(reconstruction_fairness(name, o, truth, cfg.min_count, cfg.bootstrap))
    scored = {n: o for n, o in outputs.items() if isinstance(o, MembershipScores)}
    if not scored:
        return out
    # candidates' distance to the population, in the model's input space (held-out attributes are not in it)
    cand_pos = {int(i): k for k, i in enumerate(fed.candidates.ids)}
    dist_all = knn_distance(fed.candidates.x.reshape(len(fed.candidates), -1).numpy().astype(np.float64))
    for name, o in scored.items():
        idx = align(o.ids, truth)
        is_member = truth.candidate_is_member[idx].astype(bool)
        site = np.asarray(truth.site_names, dtype=object)[truth.candidate_site[idx]]
        ids = truth.candidate_ids[idx]
        groups = {a.name: group_labels(a.of(ids), a.groups) for a in truth.sensitive}
        sc = np.asarray(o.scores, np.float64)
        base = f"fairness/exposure/{name}"
        for attr, g in groups.items():
            out.update(exposure_metrics(sc, is_member, g, f"{base}/{attr}", cfg.min_count))
        out.update(exposure_metrics(sc, is_member, site, f"{base}/site", cfg.min_count))
        dist = np.asarray([dist_all[cand_pos[int(i)]] if int(i) in cand_pos else np.nan for i in ids])
        ok = np.isfinite(dist)
        out.update(most_exposed(sc[ok], is_member[ok], site[ok], {a: g[ok] for a, g in groups.items()}, dist[ok],
                                cfg.top_exposed, f"fairness/exposed/{name}"))
    return out


def unsafe_metric_names(names: Sequence[str]) -> list[str]:
    """Names MLflow would refuse (``^[/\\w.\\- ]*$``); for tests and a last check."""
    import re

    ok = re.compile(r"^[/\w.\- ]*$")
    return [n for n in names if not ok.match(n)]


__all__ = [
    "Evaluated", "GAPS", "RECONSTRUCTION_KEYS", "RecordReconstruction", "UTILITY_METRICS", "bootstrap_intervals", "evaluated_test_set", "expected_calibration_error",
    "exposure_metrics", "fairness_metrics", "gap_metrics", "group_labels", "knn_distance", "metric_frame", "most_exposed",
    "reconstruction_exposure", "reconstruction_fairness", "reconstruction_per_record", "subgroup_utility", "unsafe_metric_names", "utility_fairness",
]
