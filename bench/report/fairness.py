"""Who pays for privacy: the report's fairness figures and table, from ``fairness/...`` metrics.

Every change a defense causes is paired with no defense on the same seeds and splits, with
the paired interval and verdict of :func:`bench.report.stats.paired_difference` (the same
machinery as :mod:`bench.report.compare`; with one seed, the cells' own bootstrap intervals
combined by MOVER). Which metrics are compared:

* each subgroup's and each hospital's accuracy, ``fairness/<attribute>/<group>/accuracy`` and
  ``fairness/site/<hospital>/accuracy`` (hospital × subgroup cells are in MLflow, not compared:
  too few records per seed);
* the gaps, ``fairness/<attribute or site>/{accuracy_gap,worst_group_accuracy,equalized_odds_difference,demographic_parity_difference}``;
* each subgroup's and hospital's membership exposure, ``fairness/exposure/<attack>/<...>/{auc,tpr_at_fpr_0.01}``;
* each subgroup's and hospital's reconstruction exposure (tabular inversion attacks),
  ``fairness/exposure/<attack>/<...>/{feature_accuracy,feature_accuracy_vs_rest}`` (not the gains: on one seed the prior
  baseline depends on the records only, so a gain changes exactly as its accuracy does).

The reconstruction table also states, per setting, whether a group is more or less exposed than
the other groups' records of the same cell (``feature_accuracy_vs_rest``, and the same for the gain
over the prior, ``feature_accuracy_gain_vs_rest``: mean over seeds with a t interval, or the cell's
bootstrap interval with one seed) — disparate exposure, with or without a defense.

The comparisons are logged like the others (``compare/<setting>/fairness/...``) by
:func:`bench.report.write_report`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench.report.compare import Comparison, baseline_groups, comparable, compare_with_baselines
from bench.report.families import within_cell_interval
from bench.report.figures import Figure, ReportContext, Skipped, _figure, _plt, _save, _wrap, fmt_diff
from bench.report.load import Setting
from bench.report.stats import HIGHER, LOWER, Difference, paired_difference

GROUP_ACC = re.compile(r"^fairness/(?P<attr>(?!exposure/|exposed/)[^/]+)/(?P<group>[^/]+)/accuracy$")
GAP = re.compile(r"^fairness/(?P<attr>(?!exposure/|exposed/)[^/]+)/(?P<gap>accuracy_gap|worst_group_accuracy|equalized_odds_difference|demographic_parity_difference)$")
EXPOSURE = re.compile(r"^fairness/exposure/(?P<attack>[^/]+)/(?P<attr>[^/]+)/(?P<group>[^/]+)/(?P<metric>auc|tpr_at_fpr_0\.01)$")
RECON = re.compile(r"^fairness/exposure/(?P<attack>[^/]+)/(?P<attr>[^/]+)/(?P<group>[^/]+)/(?P<metric>feature_accuracy|feature_accuracy_vs_rest)$")


def fairness_compared(keys) -> list[str]:
    """The ``fairness/...`` metrics among ``keys`` that are compared with no defense, in a readable order."""
    keys = set(keys)
    acc = sorted(k for k in keys if GROUP_ACC.match(k))
    gaps = sorted(k for k in keys if GAP.match(k))
    exp = sorted(k for k in keys if EXPOSURE.match(k))
    rec = sorted(k for k in keys if RECON.match(k))
    return acc + gaps + exp + rec


def _exposure_params(cell, metric: str) -> dict:
    m = EXPOSURE.match(metric) or RECON.match(metric)
    return {} if m is None else {k: v for k, v in cell.params.items() if k.startswith(f"attacks.{m['attack']}.")}


def _pairs(a: Setting, b: Setting, metric: str):
    """(defense cell, no-defense cell) on the same seed, both holding ``metric`` measured the same way."""
    by_seed = {c.seed: c for c in b.cells}
    return [(x, by_seed[x.seed]) for x in a.cells if x.seed in by_seed and comparable(x, by_seed[x.seed], metric)
            and _exposure_params(x, metric) == _exposure_params(by_seed[x.seed], metric)]


def _cis(x, y, metric: str):
    cx, cy = within_cell_interval(x.metrics, metric), within_cell_interval(y.metrics, metric)
    return (cx, cy) if cx is not None and cy is not None else None


def fairness_comparisons(settings: Sequence[Setting]) -> tuple[Comparison, ...]:
    """Every defense setting's change of each fairness metric against no defense, paired by seed."""
    return compare_with_baselines(settings, fairness_compared, _pairs, _cis)


def smaller_group_differences(settings: Sequence[Setting]) -> list[tuple[str, str, str, str, Difference]]:
    """Does the smaller group lose more (Bagdasaryan et al. 2019)? Per attribute (and ``site``) and
    defense: (Δ accuracy of the smallest group) − (Δ accuracy of the largest), Δ = defense − no
    defense on the same seed, with a paired-t interval over seeds. Negative: the smaller group loses more.

    Returns:
        ``(setting, attribute, smaller group, larger group, difference)`` tuples.
    """
    out = []
    for group in baseline_groups(settings).values():
        bases = [s for s in group if s.is_baseline]
        if not bases:
            continue
        b = bases[0]
        sizes: dict[str, dict[str, float]] = {}
        for attr, g in _groups([b]):
            v = b.values(f"fairness/{attr}/{g}/count")
            if v.size and b.has(f"fairness/{attr}/{g}/accuracy"):
                sizes.setdefault(attr, {})[g] = float(v.mean())
        for s in group:
            if s.is_baseline:
                continue
            for attr, by in sizes.items():
                if len(by) < 2:
                    continue
                small, large = min(by, key=by.get), max(by, key=by.get)
                ms, ml = f"fairness/{attr}/{small}/accuracy", f"fairness/{attr}/{large}/accuracy"
                base = {c.seed: c for c in b.cells}
                pairs = [(x.metrics[ms] - base[x.seed].metrics[ms], x.metrics[ml] - base[x.seed].metrics[ml]) for x in s.cells
                         if x.seed in base and all(m in x.metrics and m in base[x.seed].metrics for m in (ms, ml))]
                d = paired_difference(pairs) if pairs else None
                if d is not None:
                    out.append((s.label, attr, small, large, d))
    return out


# --------------------------------------------------------------------------- table


def _groups(settings: Sequence[Setting]) -> list[tuple[str, str]]:
    """(attribute or ``site``, group) pairs with an accuracy in any cell: subgroups first, then hospitals."""
    found = {(m["attr"], m["group"]) for s in settings for c in s.cells for k in c.metrics if (m := GROUP_ACC.match(k))}
    return sorted(found, key=lambda t: (t[0] == "site", t[0], t[1]))


def _attack(settings: Sequence[Setting]) -> Optional[str]:
    """The membership attack whose exposure the report shows: LiRA when it ran, else the first found."""
    names = sorted({m["attack"] for s in settings for c in s.cells for k in c.metrics if (m := EXPOSURE.match(k))})
    return "lira" if "lira" in names else (names[0] if names else None)


def _est(s: Setting, metric: str) -> str:
    e = s.estimate(metric)
    if e is None:
        return "–"
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]" if e.has_interval else f"{e.mean:.3f}"


def _count(s: Setting, metric: str) -> str:
    v = s.values(metric)
    return "–" if v.size == 0 else f"{v.mean():.0f}"


def _diff(comps: dict, setting: str, metric: str) -> str:
    c = comps.get((setting, metric))
    return "" if c is None else f"{fmt_diff(c.diff)} {c.diff.verdict}"


FAIRNESS_HEAD = ["dataset", "attribute", "group", "setting", "test records (mean)", "accuracy [95 %]", "accuracy − no defense [95 %], verdict",
                 "exposure AUC [95 %]", "exposure AUC − no defense [95 %], verdict"]


def fairness_rows(settings: Sequence[Setting], comparisons: Sequence[Comparison]) -> list[list[str]]:
    """One row per (subgroup or hospital, setting); then one per (gap, setting)."""
    comps = {(c.setting, c.metric): c for c in comparisons}
    attack = _attack(settings)
    rows = []
    for attr, g in _groups(settings):
        acc = f"fairness/{attr}/{g}/accuracy"
        auc = f"fairness/exposure/{attack}/{attr}/{g}/auc" if attack else ""
        for s in settings:
            if not any(f"fairness/{attr}/{g}/count" in c.metrics for c in s.cells):
                continue
            shown = _est(s, acc) if s.has(acc) else f"too few (n={_count(s, f'fairness/{attr}/{g}/count')})"
            rows.append([s.dataset, attr, g, s.short, _count(s, f"fairness/{attr}/{g}/count"), shown, _diff(comps, s.label, acc),
                         _est(s, auc) if attack else "–", _diff(comps, s.label, auc) if attack else ""])
    for setting, attr, small, large, d in smaller_group_differences(settings):
        rows.append([settings[0].dataset, attr, f"change of {small} − change of {large}", setting.split(" · ", 1)[-1], "",
                     "", f"{fmt_diff(d)} {d.verdict}", "", ""])
    gaps = sorted({k for s in settings for c in s.cells for k in c.metrics if GAP.match(k)})
    for k in gaps:
        m = GAP.match(k)
        for s in settings:
            if s.has(k):
                rows.append([s.dataset, m["attr"], m["gap"], s.short, "", _est(s, k), _diff(comps, s.label, k), "", ""])
    return rows


EXPOSED_HEAD = ["dataset", "setting", "group", "share of the top-scored members [95 %]", "share of all members [95 %]"]


def exposed_rows(settings: Sequence[Setting]) -> list[list[str]]:
    """Who the most exposed members are (``fairness/exposed/<attack>/...``): per group, their share among
    the top-scored members against the group's share of all members; then outliers (mean over seeds)."""
    attack = _attack(settings)
    if attack is None:
        return []
    pat = re.compile(rf"^fairness/exposed/{re.escape(attack)}/(?P<attr>[^/]+)/(?P<group>[^/]+)/share$")
    rows = []
    for s in settings:
        keys = sorted({k for c in s.cells for k in c.metrics if pat.match(k)}, key=lambda k: (pat.match(k)["attr"] == "site", k))
        for k in keys:
            m = pat.match(k)
            rows.append([s.dataset, s.short, f"{m['attr']}={m['group']}", _est(s, k), _est(s, k.replace("/share", "/member_share"))])
        base = f"fairness/exposed/{attack}"
        if s.has(f"{base}/outlier_share"):
            rows.append([s.dataset, s.short, "outliers (kNN distance > 90th percentile)", _est(s, f"{base}/outlier_share"), _est(s, f"{base}/outlier_base_share")])
    return rows


RECON_HEAD = ["dataset", "attack", "attribute", "group", "setting", "records (mean)", "feature accuracy [95 %]",
              "feature accuracy − no defense [95 %], verdict", "gain over prior [95 %]", "group − other groups [95 %], verdict",
              "(group − others) − no defense's [95 %], verdict", "gain: group − other groups [95 %], verdict"]


def _recon_keys(settings: Sequence[Setting]) -> list[tuple[str, str, str]]:
    """(attack, attribute or ``site``, group) with a reconstruction count in any cell: subgroups first, then hospitals."""
    pat = re.compile(r"^fairness/exposure/(?P<attack>[^/]+)/(?P<attr>[^/]+)/(?P<group>[^/]+)/records$")
    found = {(m["attack"], m["attr"], m["group"]) for s in settings for c in s.cells for k in c.metrics if (m := pat.match(k))}
    return sorted(found, key=lambda t: (t[0], t[1] == "site", t[1], t[2]))


def _est_verdict(s: Setting, metric: str) -> str:
    """Mean [interval] and whether the interval excludes 0 (a within-cell difference, over seeds)."""
    from bench.report.stats import verdict

    e = s.estimate(metric)
    if e is None:
        return ""
    return f"{fmt_diff(e)} {verdict(e.low, e.high)}"


def reconstruction_rows(settings: Sequence[Setting], comparisons: Sequence[Comparison]) -> list[list[str]]:
    """One row per (tabular inversion attack, subgroup or hospital, setting): the reconstruction exposure."""
    comps = {(c.setting, c.metric): c for c in comparisons}
    rows = []
    for attack, attr, g in _recon_keys(settings):
        base = f"fairness/exposure/{attack}/{attr}/{g}"
        for s in settings:
            if not s.has(f"{base}/records"):
                continue
            acc = f"{base}/feature_accuracy"
            if not s.has(acc):
                rows.append([s.dataset, attack, attr, g, s.short, _count(s, f"{base}/records"), f"too few (n={_count(s, f'{base}/records')})",
                             "", "", "", "", ""])
                continue
            vs = f"{base}/feature_accuracy_vs_rest"
            rows.append([s.dataset, attack, attr, g, s.short, _count(s, f"{base}/records"), _est(s, acc), _diff(comps, s.label, acc),
                         _est(s, f"{base}/feature_accuracy_gain"), _est_verdict(s, vs), _diff(comps, s.label, vs),
                         _est_verdict(s, f"{base}/feature_accuracy_gain_vs_rest")])
    return rows


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_fairness_table(settings: Sequence[Setting], comparisons: Sequence[Comparison], out: Path) -> tuple[list[str], list[list[str]]]:
    """fairness.csv and fairness.md (with the most exposed members' and the reconstruction exposure's
    tables below; the latter also in fairness_reconstruction.csv); returns the files and the rows."""
    rows = fairness_rows(settings, comparisons)
    if not rows:
        return [], rows
    exposed = exposed_rows(settings)
    recon = reconstruction_rows(settings, comparisons)
    with open(out / "fairness.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FAIRNESS_HEAD)
        w.writerows(rows)
    files = ["fairness.csv", "fairness.md"]
    md = _md(FAIRNESS_HEAD, rows)
    if exposed:
        md += ["", f"Most exposed members ({_attack(settings)}: the highest-scored members of each cell; shares, mean over seeds):", ""]
        md += _md(EXPOSED_HEAD, exposed)
    if recon:
        md += ["", RECON_CAPTION, ""] + _md(RECON_HEAD, recon)
        with open(out / "fairness_reconstruction.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(RECON_HEAD)
            w.writerows(recon)
        files.append("fairness_reconstruction.csv")
    (out / "fairness.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return files, rows


RECON_CAPTION = ("Reconstruction exposure (tabular gradient inversion): each attacked record's fraction of features recovered, "
                 "grouped by the true record's subgroup and hospital; mean over seeds [95 % interval]. Changes against no defense "
                 "are paired by seed; 'group − other groups' compares the group with the other groups' records of the same cells.")


# --------------------------------------------------------------------------- figures


def fig_who_pays(ctx: ReportContext, comparisons: Sequence[Comparison]) -> Figure | Skipped:
    """Per subgroup and hospital: accuracy change (y) against the drop of its membership AUC (x), per defense."""
    title = "Who pays for privacy: per-group accuracy change vs privacy gain"
    attack = _attack(ctx.settings)
    comps = {(c.setting, c.metric): c for c in comparisons}
    defended = sorted({c.setting for c in comparisons if GROUP_ACC.match(c.metric)})
    if not defended:
        return Skipped(title, "no defense setting with fairness/<attribute>/<group>/accuracy paired with no defense")
    plt = _plt()
    groups = _groups(ctx.settings)
    fig, axs = plt.subplots(1, len(defended), figsize=(5.2 * len(defended) + 2, 4.8), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for ax, setting in zip(axs[0], defended):
        for j, (attr, g) in enumerate(groups):
            ca = comps.get((setting, f"fairness/{attr}/{g}/accuracy"))
            ce = comps.get((setting, f"fairness/exposure/{attack}/{attr}/{g}/auc")) if attack else None
            if ca is None:
                continue
            x = -ce.diff.mean if ce is not None else 0.0
            xerr = None if ce is None or not ce.diff.has_interval else [[ce.diff.high - ce.diff.mean], [ce.diff.mean - ce.diff.low]]
            yerr = None if not ca.diff.has_interval else [[ca.diff.mean - ca.diff.low], [ca.diff.high - ca.diff.mean]]
            marker = "s" if attr == "site" else "o"
            ax.errorbar([x], [ca.diff.mean], xerr=xerr, yerr=yerr, fmt=marker, color=cmap(j % 10), capsize=3, ms=7,
                        mfc="none" if ca.diff.verdict not in (LOWER, HIGHER) else cmap(j % 10), label=f"{attr}={g}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(_wrap(setting, 50), fontsize=9)
        ax.set_xlabel(f"privacy gain: no-defense − defense {attack or 'membership'} AUC of the group" if attack else "privacy gain (no exposure metric)")
        ax.set_ylabel("accuracy change of the group (defense − no defense)")
        ax.grid(alpha=0.3)
    axs[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group (○ subgroup, □ hospital)", title_fontsize=7)
    _save(fig, ctx, "fairness_who_pays.png", title)
    losers = [f"{c.setting}: {c.metric.split('/')[1]}={c.metric.split('/')[2]} accuracy {c.diff.verdict} ({fmt_diff(c.diff)})"
              for c in comparisons if GROUP_ACC.match(c.metric) and c.diff.verdict in (LOWER, HIGHER)]
    return _figure(ctx, "fairness_who_pays.png", title, (
        "One panel per defense; one point per patient subgroup (circles) or hospital (squares). Up/down: the group's test "
        "accuracy under the defense minus with no defense, on the same seeds; right: how much the defense lowered the "
        "membership attack's AUC on that group's records. Bars are 95 % paired intervals; filled points are detectable "
        "changes. Groups far below the others pay more of the privacy's cost. "
        + ("Detectable: " + "; ".join(losers) + "." if losers else "No group's accuracy change is detectable at this number of seeds.")
    ))


def _recon_attacks(settings: Sequence[Setting]) -> list[str]:
    return sorted({m["attack"] for s in settings for c in s.cells for k in c.metrics if (m := RECON.match(k)) and m["metric"] == "feature_accuracy"})


def _bars(ax, ctx: ReportContext, keys, metric_of, chance: Optional[float], chance_label: str, ylabel: str,
          baseline_of=None) -> None:
    """One bar per (group, setting) of ``metric_of(attr, group)``: mean over seeds with its 95 % interval."""
    settings = [s for s in ctx.settings if any(s.has(metric_of(a, g)) for a, g in keys)]
    xs = np.arange(len(keys))
    width = 0.8 / max(1, len(settings))
    for i, s in enumerate(settings):
        ests = [s.estimate(metric_of(a, g)) for a, g in keys]
        means = [e.mean if e else np.nan for e in ests]
        err = np.array([e.err() if e else (0.0, 0.0) for e in ests]).T.reshape(2, len(keys))
        ax.bar(xs + (i - (len(settings) - 1) / 2) * width, means, width, yerr=err, capsize=2, color=ctx.color(s), label=_wrap(s.short, 40))
    if chance is not None:
        ax.axhline(chance, color="black", lw=0.8, ls="--", label=chance_label)
    if baseline_of is not None:  # a per-group reference level (the prior baseline: what anyone could guess)
        lv = [np.mean([v for s in settings for v in s.values(baseline_of(a, g))] or [np.nan]) for a, g in keys]
        ax.hlines(lv, xs - 0.42, xs + 0.42, color="black", lw=1.5, zorder=3, label=chance_label)
    ax.set_xticks(xs, [f"{a}=\n{g}" for a, g in keys], fontsize=8)
    lo = min([0.4] + [v for s in settings for a, g in keys for v in s.values(metric_of(a, g))])
    ax.set_ylim(max(0.0, lo - 0.05), None)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def fig_exposure(ctx: ReportContext) -> Figure | Skipped:
    """Exposure per subgroup and hospital, for each setting (mean over seeds, 95 % interval): the membership
    attack's AUC, and each tabular inversion attack's feature accuracy (one panel each)."""
    title = "Disparate exposure per subgroup and hospital"
    attack = _attack(ctx.settings)
    recon = _recon_attacks(ctx.settings)
    if attack is None and not recon:
        return Skipped(title, "no fairness/exposure/<attack>/... metric (run a membership or tabular inversion attack with fairness set)")
    panels = []
    if attack is not None:
        keys = sorted({(m["attr"], m["group"]) for s in ctx.settings for c in s.cells for k in c.metrics
                       if (m := EXPOSURE.match(k)) and m["attack"] == attack and m["metric"] == "auc"}, key=lambda t: (t[0] == "site", t))
        panels.append((keys, lambda a, g, n=attack: f"fairness/exposure/{n}/{a}/{g}/auc", 0.5, "chance (0.5)",
                       f"{attack} membership AUC on the group's records", None))
    for n in recon:
        keys = sorted({(m["attr"], m["group"]) for s in ctx.settings for c in s.cells for k in c.metrics
                       if (m := RECON.match(k)) and m["attack"] == n and m["metric"] == "feature_accuracy"}, key=lambda t: (t[0] == "site", t))
        panels.append((keys, lambda a, g, n=n: f"fairness/exposure/{n}/{a}/{g}/feature_accuracy", None, "prior baseline",
                       f"{n} feature accuracy of the group's records",
                       lambda a, g, n=n: f"fairness/exposure/{n}/{a}/{g}/baseline_feature_accuracy"))
    plt = _plt()
    width = max(8, 0.9 * max(len(p[0]) for p in panels) * max(1, len(ctx.settings)) / 2 + 3)
    fig, axs = plt.subplots(len(panels), 1, figsize=(width, 4.6 * len(panels)), squeeze=False, layout="constrained")
    for ax, (keys, metric_of, chance, chance_label, ylabel, baseline_of) in zip(axs[:, 0], panels):
        _bars(ax, ctx, keys, metric_of, chance, chance_label, ylabel, baseline_of)
    _save(fig, ctx, "fairness_exposure.png", title)
    reading = []
    if attack is not None:
        reading.append(
            f"The {attack} attack's AUC computed on each subgroup's and each hospital's candidate records only (members vs "
            "non-members of that group), mean over seeds with a 95 % interval; 0.5 is chance. A group whose bar stands above "
            "the others' is more exposed by the same released model (disparate vulnerability). Groups with fewer than the "
            "configured minimum of members or non-members are left out.")
    if recon:
        reading.append(
            f"{' and '.join(recon)}: the fraction of each attacked record's features recovered from the update, grouped by the "
            "true record's subgroup and hospital (mean over seeds, 95 % interval); the black dash is the prior baseline "
            "(records drawn from the population's marginals, matched the same way). Groups with fewer reconstructed records "
            "than the configured minimum are left out.")
    return _figure(ctx, "fairness_exposure.png", title, " ".join(reading))


@dataclass(frozen=True)
class FairnessSection:
    """The fairness part of the report: figures (or notes), files written, the HTML table, the comparisons."""

    items: tuple
    files: tuple[str, ...]
    html: str
    comparisons: tuple[Comparison, ...]


def fairness_report(ctx: ReportContext) -> FairnessSection:
    """Figures, fairness.csv/.md and an HTML table; empty when no cell logged ``fairness/...``."""
    from bench.report.html import _table

    if not any(k.startswith("fairness/") for s in ctx.settings for c in s.cells for k in c.metrics):
        return FairnessSection((), (), "", ())
    comps = fairness_comparisons(ctx.settings)
    items = []
    for make in (lambda: fig_who_pays(ctx, comps), lambda: fig_exposure(ctx)):
        try:
            items.append(make())
        except Exception as exc:  # one broken figure must not cost the others
            _plt().close("all")
            items.append(Skipped("fairness figure", f"drawing failed: {type(exc).__name__}: {exc}"))
    files, rows = write_fairness_table(ctx.settings, comps, ctx.out)
    html = _table(FAIRNESS_HEAD, rows) if rows else ""
    recon = reconstruction_rows(ctx.settings, comps) if rows else []
    if recon:
        html += f"<p class='reading'>{RECON_CAPTION} Also in fairness_reconstruction.csv.</p>" + _table(RECON_HEAD, recon)
    figs = tuple(i.file for i in items if isinstance(i, Figure))
    return FairnessSection(tuple(items), figs + tuple(files), html, comps)


__all__ = ["FAIRNESS_HEAD", "RECON_HEAD", "FairnessSection", "reconstruction_rows", "smaller_group_differences", "fairness_comparisons", "fairness_compared", "fairness_report", "fairness_rows",
           "fig_exposure", "fig_who_pays", "write_fairness_table"]
