"""Paired comparisons: every defense setting against no defense on the same seeds and splits.

Two cells are *paired* when they have the same seed and their configs differ only in
``defenses`` — and in the attacks that do not touch training (an attack changes training
only through ``prepare``, e.g. an audit's canaries): same seed and data config means the same
hospitals, members and test split, so the per-seed difference removes the seed's luck. An
attack metric is compared only where both cells ran that attack with the same parameters
(LiRA with 16 references is not compared with LiRA with 8).

:func:`paired_comparisons` computes them from run records (pure); :func:`log_comparisons`
writes them to the suite's parent run and to each defense cell:

* parent: ``compare/<setting>/<metric>/diff``, ``.../diff_low``, ``.../diff_high``, ``.../n``
  and tag ``compare/<setting>/<metric>/verdict``;
* defense cell: ``compare/<metric>/diff`` (and ``_low``/``_high``), ``compare/<metric>/seed_diff``
  (this seed's own difference) and tags ``compare/<metric>/verdict``, ``compare/baseline``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from bench.report.families import ATTACK_METRIC, SIGNAL_METRIC, compared_metrics, within_cell_interval
from bench.report.load import CellRun, Setting, group_settings, setting_key
from bench.report.stats import SAME, UNKNOWN, Difference, mover_difference, paired_difference, verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """One metric of one defense setting against no defense, paired by seed.

    Attributes:
        setting: the defense setting's label.
        baseline: the no-defense setting's label.
        dataset: the dataset both ran on.
        metric: the compared metric, e.g. ``attack/lira/auc``.
        diff: defense − no defense, with its interval, method and verdict.
        per_seed: ``(seed, run_id of the defense cell, its difference)`` for every paired seed.
    """

    setting: str
    baseline: str
    dataset: str
    metric: str
    diff: Difference
    per_seed: tuple[tuple[str, str, float], ...]


@functools.lru_cache(maxsize=None)
def changes_training(attack: str) -> bool:
    """Whether an attack changes the training data (declares ``prepare``); unknown names count as yes."""
    try:
        from bench.components import component_class

        cls = component_class("attack", attack)
    except Exception:  # an attack this checkout does not know: do not assume it is harmless
        return True
    return callable(getattr(cls, "prepare", None))


def pairing_key(cell: CellRun) -> str:
    """The cell's config minus its seed, its defenses and the attacks that leave training alone."""
    attacks = {a for a in cell.params.get("attacks", "").split("+") if a and a != "none"}
    attacks |= {k.split(".")[1] for k in cell.params if k.startswith("attacks.")}
    drop = {a for a in attacks if not changes_training(a)}
    cfg = json.loads(setting_key(cell))
    keep = {
        k: v for k, v in cfg.items()
        if k != "defenses" and not k.startswith("defenses.") and k != "attacks"
        and not (k.startswith("attacks.") and k.split(".")[1] in drop)
    }
    keep["attacks (that change training)"] = sorted(attacks - drop)
    return json.dumps(keep, sort_keys=True)


def _attack_params(cell: CellRun, attack: str) -> dict:
    return {k: v for k, v in cell.params.items() if k.startswith(f"attacks.{attack}.")}


def comparable(a: CellRun, b: CellRun, metric: str) -> bool:
    """Whether ``metric`` of two paired cells measures the same thing (same attack, same parameters)."""
    if metric not in a.head or metric not in b.head:
        return False
    m = ATTACK_METRIC.match(metric) or SIGNAL_METRIC.match(metric)
    return m is None or _attack_params(a, m["attack"]) == _attack_params(b, m["attack"])


def _pairs(a: Setting, b: Setting, metric: str) -> list[tuple[CellRun, CellRun]]:
    by_seed = {c.seed: c for c in b.cells}
    return [(x, by_seed[x.seed]) for x in a.cells if x.seed in by_seed and comparable(x, by_seed[x.seed], metric)]


def setting_difference(a: Setting, b: Setting, metric: str) -> Optional[Difference]:
    """``metric`` of setting ``a`` minus setting ``b``: paired by seed where the two can be paired.

    Settings that cannot be paired (other model, other data) are compared unpaired: a Welch
    interval with ≥ 2 seeds each, MOVER over within-cell intervals with one seed each. None when
    either lacks the metric.
    """
    if pairing_key(a.cells[0]) == pairing_key(b.cells[0]):
        pairs = _pairs(a, b, metric)
        if pairs:
            return paired_difference(
                [(x.head[metric], y.head[metric]) for x, y in pairs],
                [_both_intervals(x, y, metric) for x, y in pairs],
            )
    return unpaired_difference(a, b, metric)


def _both_intervals(x: CellRun, y: CellRun, metric: str):
    cx, cy = within_cell_interval(x.head, metric), within_cell_interval(y.head, metric)
    return (cx, cy) if cx is not None and cy is not None else None


def unpaired_difference(a: Setting, b: Setting, metric: str) -> Optional[Difference]:
    """Difference of means of two settings that share no seeds and splits (Welch, or MOVER at one seed)."""
    va, vb = a.values(metric), b.values(metric)
    if va.size == 0 or vb.size == 0:
        return None
    d = float(va.mean() - vb.mean())
    if va.size >= 2 and vb.size >= 2:
        from scipy.stats import t

        sa, sb = va.var(ddof=1) / va.size, vb.var(ddof=1) / vb.size
        se = math.sqrt(sa + sb)
        df = (sa + sb) ** 2 / (sa**2 / (va.size - 1) + sb**2 / (vb.size - 1)) if se > 0 else va.size + vb.size - 2
        half = float(t.ppf(0.975, df)) * se
        return Difference(d, d - half, d + half, int(min(va.size, vb.size)), "unpaired (Welch)", verdict(d - half, d + half))
    if va.size == 1 and vb.size == 1:
        ca = within_cell_interval(next(c for c in a.cells if metric in c.head).head, metric)
        cb = within_cell_interval(next(c for c in b.cells if metric in c.head).head, metric)
        if ca is not None and cb is not None:
            lo, hi = mover_difference(float(va[0]), ca, float(vb[0]), cb)
            return Difference(d, lo, hi, 1, "unpaired, within-cell intervals, 1 seed", verdict(lo, hi))
    return Difference(d, None, None, int(min(va.size, vb.size)), "too few seeds for an interval", UNKNOWN)


def attack_difference(s: Setting, attack_a: str, attack_b: str, suffix: str) -> Optional[Difference]:
    """``attack/<a>/<suffix>`` minus ``attack/<b>/<suffix>`` on the same cells of one setting (paired by cell)."""
    ka, kb = f"attack/{attack_a}/{suffix}", f"attack/{attack_b}/{suffix}"
    cells = [c for c in s.cells if ka in c.metrics and kb in c.metrics]
    if not cells:
        return None
    ci = [_pair_ci(c, ka, kb) for c in cells]
    return paired_difference([(c.metrics[ka], c.metrics[kb]) for c in cells], ci)


def _pair_ci(c: CellRun, ka: str, kb: str):
    a, b = within_cell_interval(c.metrics, ka), within_cell_interval(c.metrics, kb)
    return (a, b) if a is not None and b is not None else None


def baseline_groups(settings: Sequence[Setting]) -> dict[str, list[Setting]]:
    """Settings grouped by :func:`pairing_key`: each group shares seeds, splits and training-changing attacks."""
    groups: dict[str, list[Setting]] = {}
    for s in settings:
        groups.setdefault(pairing_key(s.cells[0]), []).append(s)
    return groups


def unpaired_settings(settings: Sequence[Setting]) -> list[str]:
    """Labels of defense settings with no no-defense setting of the same config to compare with."""
    out = []
    for group in baseline_groups(settings).values():
        if not any(s.is_baseline for s in group):
            out += [s.label for s in group if not s.is_baseline]
    return out


def paired_comparisons(cells: Sequence[CellRun]) -> tuple[Comparison, ...]:
    """Every defense setting against no defense, metric by metric, paired by seed.

    Args:
        cells: FINISHED cell runs of one suite (any order; several seeds per setting).

    Returns:
        One :class:`Comparison` per (defense setting, compared metric) that has at least one seed
        in common with a no-defense setting of the same config; seeds present on one side only
        are ignored. Settings with no such partner are absent (see :func:`unpaired_settings`).
    """
    return compare_with_baselines(group_settings(cells), compared_metrics, _pairs, _both_intervals)


def compare_with_baselines(settings, metrics_of, pairs_of, intervals_of) -> tuple[Comparison, ...]:
    """The paired comparison of every defense setting with its no-defense settings.

    Args:
        settings: the suite's settings.
        metrics_of: metric names (an iterable) -> the ones to compare.
        pairs_of: ``(setting, baseline, metric)`` -> (defense cell, no-defense cell) pairs of one seed.
        intervals_of: ``(defense cell, no-defense cell, metric)`` -> their within-cell intervals or None.
    """
    out: list[Comparison] = []
    for group in baseline_groups(settings).values():
        baselines = [s for s in group if s.is_baseline]
        for s in group:
            if s.is_baseline or not baselines:
                continue
            for metric in metrics_of(k for c in s.cells for k in c.metrics):
                # the no-defense setting that ran this metric's attack the same way (several can exist
                # when they differ only in attacks that leave training alone)
                best = max(baselines, key=lambda b: len(pairs_of(s, b, metric)))
                pairs = pairs_of(s, best, metric)
                if not pairs:
                    continue
                diff = paired_difference(
                    [(x.metrics[metric], y.metrics[metric]) for x, y in pairs],
                    [intervals_of(x, y, metric) for x, y in pairs],
                )
                if diff is None:
                    continue
                per_seed = tuple((x.seed, x.run_id, x.metrics[metric] - y.metrics[metric]) for x, y in pairs)
                out.append(Comparison(s.label, best.label, s.dataset, metric, diff, per_seed))
    return tuple(out)


# --------------------------------------------------------------------------- MLflow


_UNSAFE = re.compile(r"[^\w.\- ]+")
_ATTACKS_PART = re.compile(r" · attacks=[^·]*")


def _slug(label: str) -> str:
    """``breast_cancer · dp_sgd(eps=4,C=1)+secure_aggregation`` -> ``breast_cancer dp_sgd eps4 C1 and secure_aggregation``."""
    s = label.replace(" · ", " ").replace("(", " ").replace(")", "").replace(",", " ").replace("=", "").replace("+", " and ")
    return re.sub(r" +", " ", _UNSAFE.sub("_", s)).strip()


def setting_slugs(comparisons: Sequence[Comparison]) -> dict[str, str]:
    """A unique MLflow-safe name per compared setting; the attack list only where it tells two apart."""
    labels = sorted({c.setting for c in comparisons})
    short = {lab: _slug(_ATTACKS_PART.sub("", lab)) for lab in labels}
    slugs = {lab: short[lab] if list(short.values()).count(short[lab]) == 1 else _slug(lab) for lab in labels}
    seen: dict[str, int] = {}
    for lab in labels:
        seen[slugs[lab]] = seen.get(slugs[lab], 0) + 1
        if seen[slugs[lab]] > 1:
            slugs[lab] = f"{slugs[lab]} {seen[slugs[lab]]}"
    return slugs


def comparison_records(comparisons: Sequence[Comparison]) -> tuple[dict[str, float], dict[str, str], dict[str, tuple[dict, dict]]]:
    """What :func:`log_comparisons` writes: (parent metrics, parent tags, {run_id: (metrics, tags)})."""
    slugs = setting_slugs(comparisons)
    pm: dict[str, float] = {}
    pt: dict[str, str] = {}
    child: dict[str, tuple[dict, dict]] = {}
    for c in comparisons:
        d = c.diff
        base = f"compare/{slugs[c.setting]}/{c.metric}"
        vals = {"diff": d.mean, "diff_low": d.low, "diff_high": d.high, "n": float(d.n)}
        pm.update({f"{base}/{k}": v for k, v in vals.items() if v is not None})
        pt[f"{base}/verdict"] = d.verdict
        for seed, run_id, own in c.per_seed:
            m, t = child.setdefault(run_id, ({}, {}))
            m.update({f"compare/{c.metric}/{k}": v for k, v in vals.items() if v is not None and k != "n"})
            m[f"compare/{c.metric}/seed_diff"] = own
            t[f"compare/{c.metric}/verdict"] = d.verdict
            t["compare/baseline"] = c.baseline
    return pm, pt, child


def _log(client, run_id: str, metrics: dict, tags: dict) -> None:
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    # a resumed suite logs its comparisons again: append only values that changed, so that a
    # cell's history holds one entry per distinct comparison, not one per invocation
    latest = client.get_run(run_id).data.metrics
    ms = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v) and latest.get(k) != float(v)]
    ts = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(ms), 500):
        client.log_batch(run_id, metrics=ms[i : i + 500])
    for i in range(0, len(ts), 100):
        client.log_batch(run_id, tags=ts[i : i + 100])


def write_comparisons_to(client, parent_run_id: Optional[str], comparisons: Sequence[Comparison]) -> None:
    """Log already computed comparisons: to the parent run (if any) and to each defense cell."""
    pm, pt, child = comparison_records(comparisons)
    if parent_run_id:
        _log(client, parent_run_id, pm, pt)
    for run_id, (m, t) in child.items():
        _log(client, run_id, m, t)


def log_comparisons(client_or_tracker, suite_name: str) -> tuple[Comparison, ...]:
    """Compute the suite's paired comparisons from the store and log them (parent run and defense cells).

    Args:
        client_or_tracker: an ``MlflowClient`` or a ``bench.tracking.MlflowTracker``.
        suite_name: the suite (MLflow experiment) name.

    Returns:
        The comparisons logged. The parent run is the suite's latest one; cells of earlier
        invocations (resume) are compared and logged too.

    Raises:
        ConfigError: the suite is not in the store or has no cells.
    """
    from bench.report.load import load_suite_runs

    client = getattr(client_or_tracker, "client", client_or_tracker)
    uri = getattr(client_or_tracker, "uri", None) or getattr(client, "tracking_uri", "") or ""
    runs = load_suite_runs(client, suite_name, str(uri))
    comps = paired_comparisons(runs.cells)
    write_comparisons_to(client, runs.parent_run_id, comps)
    counts = {v: sum(c.diff.verdict == v for c in comps) for v in ("lower", "higher", SAME, UNKNOWN)}
    log.info("suite %s: %d paired comparisons logged (%s)", suite_name, len(comps), ", ".join(f"{k}: {n}" for k, n in counts.items()))
    return comps

