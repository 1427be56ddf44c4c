"""Metric names and families: what the report recognises by name, never by a list of attacks.

Higher is better for utility; higher means the adversary learned more for every attack metric.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

UTILITY = "utility/test_accuracy"
WORST_SITE = "utility/worst_site_accuracy"
SITE_GAP = "utility/site_accuracy_gap"
EPSILON = "privacy/epsilon"
AUDIT_LB = "audit/epsilon_lower_bound"
AUDIT_EPS = "audit/accountant_epsilon"  # the accountant's ε at the audit's δ (older runs: privacy/epsilon)
SITE_METRIC = re.compile(r"^utility/site/(?P<site>[^/]+)/accuracy$")
ATTACK_METRIC = re.compile(r"^attack/(?P<attack>[^/]+)/(?P<metric>[^/]+)$")
AUDIT_METRIC = re.compile(r"^audit/(?P<audit>[^/]+)/(?P<metric>[^/]+)$")
# attribute inference's member/non-member signal per attribute (bench.metrics.attribute)
SIGNAL_METRIC = re.compile(r"^attack/(?P<attack>[^/]+)/(?P<attribute>[^/]+)/signal$")
DELTA = "privacy/delta"
AUDIT_DELTA = "audit/delta"
SEED_SUFFIX = re.compile(r" · seed -?\d+$")
# params that differ between the seeds of one setting without being part of its config
PER_SEED_PARAMS = ("seed",)
PER_SEED_PARAM_PREFIXES = ("data.site_size.",)


def attack_names(metrics_list: Iterable[Mapping[str, float]], metric: str) -> list[str]:
    """Attacks that logged ``attack/<name>/<metric>`` in any of the given metric maps."""
    names = set()
    for metrics in metrics_list:
        for k in metrics:
            m = ATTACK_METRIC.match(k)
            if m and m["metric"] == metric:
                names.add(m["attack"])
    return sorted(names)


@dataclass(frozen=True)
class Axis:
    """An attack-success axis of the frontier: the strongest attack's ``metric`` (max over attacks)."""

    metric: str
    key: str
    title: str
    label: str


# Higher = the adversary learned more, for every one of these.
ATTACK_AXES = (
    Axis("auc", "strongest/membership_auc", "membership: AUC", "strongest membership attack AUC (0.5 = chance)"),
    Axis("tpr_at_fpr_0.01", "strongest/membership_tpr_at_fpr_0.01", "membership: TPR at 1% FPR", "strongest membership attack TPR at 1% FPR (fraction)"),
    Axis("psnr", "strongest/inversion_psnr", "image inversion: PSNR", "strongest inversion PSNR (dB)"),
    Axis("feature_accuracy", "strongest/inversion_feature_accuracy", "tabular inversion: feature accuracy", "strongest tabular inversion feature accuracy (fraction)"),
)


def headline(metrics: Mapping[str, float]) -> Mapping[str, float]:
    """``metrics`` plus the strongest attack per axis (``strongest/...``): the worst case a defense faces.

    The maximum over attacks is biased upward as an estimate of any one attack's success; it is
    a worst case to plot, never a ranking (rankings come from paired verdicts). The strongest
    attack's own interval, where it logged one, comes along as ``strongest/..._ci_low/_ci_high``.
    """
    out = dict(metrics)
    for ax in ATTACK_AXES:
        vals = [(v, n) for n in attack_names([metrics], ax.metric) if math.isfinite(v := metrics[f"attack/{n}/{ax.metric}"])]
        if vals:
            v, n = max(vals)
            out[ax.key] = v
            for end in ("_ci_low", "_ci_high"):
                if f"attack/{n}/{ax.metric}{end}" in metrics:
                    out[f"{ax.key}{end}"] = metrics[f"attack/{n}/{ax.metric}{end}"]
    return out



# What a defense is compared on with no defense (paired by seed): utility, the headline
# membership metrics, the reconstruction headlines, source inference's lift over its baseline and
# attribute inference's signal per attribute.
COMPARED_UTILITY = (UTILITY, WORST_SITE)
COMPARED_ATTACK = ("auc", "tpr_at_fpr_0.01", "psnr", "feature_accuracy", "lift_over_nonmembers")


def compared_metrics(keys: Iterable[str]) -> list[str]:
    """The metrics among ``keys`` that a paired comparison covers, in a fixed readable order."""
    keys = set(keys)
    out = [m for m in COMPARED_UTILITY if m in keys]
    for suffix in COMPARED_ATTACK:
        out += sorted(k for k in keys if (m := ATTACK_METRIC.match(k)) and m["metric"] == suffix)
    out += sorted(k for k in keys if SIGNAL_METRIC.match(k))
    return out


def within_cell_interval(metrics: Mapping[str, float], metric: str) -> Optional[tuple[float, float]]:
    """The cell's own 95 % interval of ``metric`` (``<metric>_ci_low``/``_ci_high``), if it logged one."""
    lo, hi = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return float(lo), float(hi)
