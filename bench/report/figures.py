"""The report's figures: one function per figure, each returning a Figure or a Skipped note.

Every number drawn carries its 95 % interval (across seeds; with one seed the cell's own
interval where it logged one, else none and the figure says the suite is indicative only).
Comparisons between settings ("lower", "best", the Pareto front) come from the paired
verdicts of :mod:`bench.report.compare`, never from raw means.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from bench.report.compare import Comparison, attack_difference, setting_difference
from bench.report.families import (
    ATTACK_AXES, ATTACK_METRIC, AUDIT_EPS, AUDIT_LB, AUDIT_METRIC, EPSILON, SITE_GAP, SITE_METRIC, UTILITY, WORST_SITE,
    attack_names,
)
from bench.report.load import Setting, SuiteRuns
from bench.report.stats import HIGHER, LOWER, SAME, UNKNOWN, Estimate, pareto_by_verdicts, pareto_mask, t_interval


@dataclass(frozen=True)
class Figure:
    """A figure written to ``<file>`` with a plain-language reading."""

    file: str
    title: str
    reading: str


@dataclass(frozen=True)
class Skipped:
    """A figure not drawn because its data is absent (or its drawing failed)."""

    title: str
    reason: str


@dataclass
class ReportContext:
    """What the figure functions read: settings, paired comparisons, and artifact/history access to the store."""

    suite: SuiteRuns
    settings: list[Setting]
    fetch: Callable[[str, str], Optional[bytes]]
    list_files: Callable[[str, str], list[str]]
    history: Callable[[str, str], list[tuple[int, float]]]
    out: Path
    colors: dict[str, tuple] = field(default_factory=dict)
    comparisons: tuple[Comparison, ...] = ()

    def color(self, s: Setting):
        return self.colors[s.key]

    def datasets(self) -> list[str]:
        return sorted({s.dataset for s in self.settings})

    @property
    def banner(self) -> str:
        """"" when every setting has ≥ 2 seeds; else the indicative-only warning every figure carries."""
        return indicative_banner(self.settings)


def indicative_banner(settings: Sequence[Setting]) -> str:
    """The warning shown on every page and figure when settings have a single seed."""
    one = [s for s in settings if len(s.cells) < 2]
    if not one:
        return ""
    if len(one) == len(settings):
        return ("INDICATIVE ONLY: one seed per setting, so no interval across seeds; error bars are the cells' own "
                "intervals where logged, and differences without one are 'not enough seeds'")
    return f"INDICATIVE ONLY for {len(one)} of {len(settings)} settings: they have one seed (n=1) and no interval across seeds"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^vP*Xh<>p"
ATTACKS_PART = re.compile(r" · attacks=[^·]*")  # the attack list, in a label that also names the metric's attack
VERDICT_COLORS = {LOWER: "tab:blue", HIGHER: "tab:red", SAME: "grey", UNKNOWN: "lightgrey"}


def _save(fig, ctx: ReportContext, file: str, title: str) -> None:
    plt = _plt()
    if ctx.banner:
        title = f"{title}\n{_wrap(ctx.banner, 130)}"
    fig.suptitle(title, fontsize=10, color="black" if not ctx.banner else "#8a4b00")
    try:
        fig.savefig(ctx.out / file, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def _figure(ctx: ReportContext, file: str, title: str, reading: str) -> Figure:
    return Figure(file, title, (f"{ctx.banner}. " if ctx.banner else "") + reading)


def _wrap(text: str, width: int = 26) -> str:
    """Break a label into lines of about ``width`` characters, after spaces, ``+`` or commas only."""
    lines, line = [], ""
    for tok in re.split(r"(?<=[ +,])", text):
        if line and len(line) + len(tok.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += tok
    return "\n".join(lines + [line.rstrip()])


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt_diff(d) -> str:
    """``-0.052 [-0.081, -0.023]`` (or the bare number without an interval)."""
    if d.has_interval:
        return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    return f"{d.mean:+.3f} (no interval)"


def _err(ests: Sequence[Optional[Estimate]]) -> tuple[list[float], np.ndarray]:
    """Means and the 2×n asymmetric error array of matplotlib (NaN mean for a missing estimate)."""
    means = [e.mean if e else np.nan for e in ests]
    err = np.asarray([e.err() if e and e.has_interval else (np.nan, np.nan) for e in ests], dtype=float).T.reshape(2, len(ests))
    return means, err


def _legend_label(s: Setting, n: int, width: int = 34) -> str:
    eps = s.epsilon_label()
    return _wrap(f"{s.short}{' · ' + eps if eps else ''} (n={n})", width)


def _xerr(e: Estimate) -> Optional[np.ndarray]:
    """One point's error-bar array, or None (no bar, not a zero-width one) without an interval."""
    return np.asarray(e.err())[:, None] if e is not None and e.has_interval else None


# axis floor and the narrowest span shown, per attack family: no auto-zoom onto noise
AXIS_SPAN = {"auc": (0.5, 0.1), "tpr_at_fpr_0.01": (0.0, 0.05), "psnr": (0.0, 5.0), "feature_accuracy": (0.0, 0.2)}


def _min_span(ax, axis: str, span: float, lo: Optional[float] = None) -> None:
    """Keep an axis at least ``span`` wide (and starting at ``lo`` if given): no auto-zoom on noise."""
    get, set_ = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    a, b = get()
    if lo is not None:
        a = min(lo, a)
    if b - a < span:
        mid = (a + b) / 2
        a, b = (a, a + span) if lo is not None else (mid - span / 2, mid + span / 2)
    set_(a, b)


def verdict_phrase(d) -> str:
    """"lower than with no defense (-0.05 [-0.08, -0.02])", or why there is no verdict."""
    if d.verdict in (LOWER, HIGHER):
        return f"{d.verdict} than with no defense ({fmt_diff(d)})"
    if d.verdict == SAME:
        return f"no detectable difference from no defense ({fmt_diff(d)})"
    return f"{d.mean:+.3f} vs no defense, not enough seeds for a verdict"


def verdict_lines(comparisons: Sequence[Comparison], metrics: Callable[[str], bool], good: str = LOWER) -> list[str]:
    """One sentence per defense setting from its paired verdicts on the selected metrics.

    Detectable differences are named with their interval; the rest are counted as "no detectable
    difference" (or "not enough seeds"), never ranked.
    """
    by: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if metrics(c.metric):
            by.setdefault(c.setting, []).append(c)
    out = []
    for setting, cs in by.items():
        found = [f"{c.metric} {c.diff.verdict} ({fmt_diff(c.diff)})" for c in cs if c.diff.verdict in (LOWER, HIGHER)]
        rest = [c for c in cs if c.diff.verdict not in (LOWER, HIGHER)]
        unknown = sum(c.diff.verdict == UNKNOWN for c in rest)
        tail = []
        if len(rest) - unknown:
            tail.append(f"{len(rest) - unknown} metric(s) with no detectable difference")
        if unknown:
            tail.append(f"{unknown} with not enough seeds for an interval")
        out.append(f"{setting} vs {cs[0].baseline}: " + "; ".join(found + tail))
    return out


# --------------------------------------------------------------------------- frontier


def fig_frontier(ctx: ReportContext) -> Figure | Skipped:
    title = "Privacy–utility frontier"
    axes = [ax for ax in ATTACK_AXES if any(s.has(ax.key) and s.has(UTILITY) for s in ctx.settings)]
    if not axes:
        return Skipped(title, "no cell logged both utility/test_accuracy and an attack-success metric (attack/<name>/auc, tpr_at_fpr_0.01, psnr or feature_accuracy)")
    plt = _plt()
    panels = []  # one per (dataset, attack family): utilities of different datasets are not comparable
    for d in ctx.datasets():
        for ax_def in axes:
            pts = [(s, s.estimate(ax_def.key), s.estimate(UTILITY)) for s in ctx.settings if s.dataset == d]
            pts = [(s, x, y) for s, x, y in pts if x is not None and y is not None]
            if pts:
                panels.append((d, ax_def, pts))
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(7.6 * ncols, 3.9 * nrows), squeeze=False, layout="constrained")
    for ax in grid.flat[len(panels) :]:
        ax.set_axis_off()
    front_names: list[str] = []
    kept_by_noise: list[str] = []
    dropped: list[str] = []
    for ax, (d, ax_def, pts) in zip(grid.flat, panels):
        settings = [s for s, _, _ in pts]
        rv = [[_verdict(a, b, ax_def.key) for b in settings] for a in settings]
        uv = [[_verdict(a, b, UTILITY) for b in settings] for a in settings]
        front = pareto_by_verdicts(rv, uv)
        raw = pareto_mask([x.mean for _, x, _ in pts], [y.mean for _, _, y in pts])
        for (s, x, y), on in zip(pts, front):
            ax.errorbar(x.mean, y.mean, xerr=_xerr(x), yerr=_xerr(y),
                        fmt=MARKERS[ctx.settings.index(s) % len(MARKERS)], color=ctx.color(s), ms=7, capsize=3,
                        label=_legend_label(s, min(x.n, y.n)))
            if on:
                ax.plot(x.mean, y.mean, "o", ms=15, mfc="none", mec="black", lw=1)
        ax.plot([], [], "o", ms=10, mfc="none", mec="black", label="on the front (no setting\ndetectably better)")
        if ax_def is axes[0]:
            front_names += [s.label for s, on in zip(settings, front) if on]
        kept_by_noise += [f"{s.label} ({ax_def.title})" for s, on, r in zip(settings, front, raw) if on and not r]
        dropped += [f"{s.label} ({ax_def.title})" for s, on, r in zip(settings, front, raw) if r and not on]
        if ax_def.metric == "auc":
            ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        lo, span = AXIS_SPAN.get(ax_def.metric, (None, 0.0))
        _min_span(ax, "x", span, lo=lo)
        _min_span(ax, "y", 0.1)
        ax.set_xlabel(ax_def.label + "\n(per cell: max over attacks, an upward-biased worst case)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(f"{d}: {ax_def.title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="setting (n = seeds)", title_fontsize=7)
    _save(fig, ctx, "frontier.png", f"Suite {ctx.suite.suite}: privacy–utility trade-off (mean, 95 % interval; up and left is better)")
    reading = (
        "Each marker is one defense setting (error bars: 95 % interval). The vertical axis is the global model's test "
        "accuracy; the horizontal axis is what the strongest attack of each family achieved against it (in each cell, "
        "the best of its attacks: a worst case, biased upward as any maximum is). Up and to the left is better. A ring "
        "marks the Pareto front counted on detectable differences only: a setting leaves the front only when another is "
        "detectably better on one axis (its paired 95 % interval excludes 0) and not detectably worse on the other. "
        "Being on the front is not a finding that a setting is better; it means nothing beat it beyond the noise. "
        + (f"Pareto-optimal on the first axis ({axes[0].title}): {'; '.join(front_names)}. " if front_names else "")
        + (f"On the front only because no difference from the settings whose raw means beat them is detectable (inside "
           f"the noise, or no interval): {'; '.join(kept_by_noise)}. " if kept_by_noise else "")
        + (f"Off the front although their raw means were not dominated (detectably beaten): {'; '.join(dropped)}. " if dropped else "")
    )
    return _figure(ctx, "frontier.png", title, reading)


def _verdict(a: Setting, b: Setting, metric: str) -> str:
    if a is b:
        return SAME
    d = setting_difference(a, b, metric)
    return d.verdict if d is not None else UNKNOWN


# --------------------------------------------------------------------------- membership


def strongest_attacks(s: Setting, names: Sequence[str], suffix: str) -> list[str]:
    """The attacks not detectably weaker than the one with the highest mean (paired by cell)."""
    present = [n for n in names if s.has(f"attack/{n}/{suffix}")]
    if len(present) < 2:  # one attack is no contest
        return []
    top = max(present, key=lambda n: s.estimate(f"attack/{n}/{suffix}").mean)
    out = [top]
    for n in present:
        if n == top:
            continue
        d = attack_difference(s, n, top, suffix)
        if d is None or d.verdict != LOWER:
            out.append(n)
    return out


def fig_membership(ctx: ReportContext) -> Figure | Skipped:
    title = "Membership attacks under each defense"
    names = attack_names([c.metrics for s in ctx.settings for c in s.cells], "auc")
    if not names:
        return Skipped(title, "no membership attack metric (attack/<name>/auc) in this suite")
    plt = _plt()
    metrics = [("auc", "AUC (0.5 = chance; bars start at chance)", 0.5), ("tpr_at_fpr_0.01", "TPR at 1% FPR (fraction; chance = 0.01)", 0.0)]
    settings = [s for s in ctx.settings if any(s.has(f"attack/{n}/auc") for n in names)]
    fig, axs = plt.subplots(1, 2, figsize=(12, 1.9 + 0.32 * len(settings) * max(2, len(names))), sharey=True, layout="constrained")
    height = 0.8 / len(names)
    ys = np.arange(len(settings))
    for ax, (m, xlabel, base) in zip(axs, metrics):
        for j, n in enumerate(names):
            means, err = _err([s.estimate(f"attack/{n}/{m}") for s in settings])
            ax.barh(ys + (j - (len(names) - 1) / 2) * height, np.asarray(means) - base, height, left=base, xerr=err, capsize=2, label=n)
        ax.axvline(0.5 if m == "auc" else 0.01, color="grey", ls=":", lw=1, label="chance")
        if m == "auc":
            _min_span(ax, "x", 0.1, lo=0.5)
        ax.set_yticks(ys, [_wrap(s.label + (f" · {s.epsilon_label()}" if s.epsilon_label() else ""), 40) for s in settings], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(f"membership attacks: {m} (95 % interval)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axs[0].invert_yaxis()
    axs[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="attack", title_fontsize=7)
    _save(fig, ctx, "membership_attacks.png", "Membership inference success per attack and defense setting (mean, 95 % interval)")
    strongest = []
    for s in settings:
        top = strongest_attacks(s, names, "tpr_at_fpr_0.01")
        if len(top) == 1:
            strongest.append(f"{s.label}: {top[0]} is detectably the strongest at 1% FPR")
        elif top:
            strongest.append(f"{s.label}: no attack is detectably strongest at 1% FPR ({', '.join(top)} are within the noise of the top one)")
    defended = verdict_lines(ctx.comparisons, lambda k: bool((m := ATTACK_METRIC.match(k)) and m["metric"] in ("auc", "tpr_at_fpr_0.01")))
    reading = (
        "Bars compare every membership attack (colours) under every defense setting, with 95 % intervals (across seeds; "
        "with one seed the cell's Clopper–Pearson interval for the TPR and its bootstrap interval for the AUC where logged). "
        "AUC summarises the whole ROC curve; TPR at 1% FPR asks how many training patients the attacker can name while "
        "wrongly accusing only 1 in 100 non-members (Carlini et al. 2022). "
        + (" Strongest attack (paired by cell, not a raw maximum): " + "; ".join(strongest) + "." if strongest else "")
        + (" Paired with no defense on the same seeds: " + "; ".join(defended) + "." if defended else "")
    )
    return _figure(ctx, "membership_attacks.png", title, reading)


# --------------------------------------------------------------------------- paired differences


def fig_paired(ctx: ReportContext) -> Figure | Skipped:
    title = "Paired differences against no defense"
    if not ctx.comparisons:
        return Skipped(title, "no defense setting has a no-defense setting of the same config and seeds to be compared with")
    plt = _plt()
    kinds: dict[str, list[Comparison]] = {}
    for c in ctx.comparisons:
        m = ATTACK_METRIC.match(c.metric)
        kinds.setdefault(m["metric"] if m else c.metric, []).append(c)
    fig, axs = plt.subplots(len(kinds), 1, figsize=(10, sum(1.2 + 0.36 * len(v) for v in kinds.values())), squeeze=False,
                            gridspec_kw={"height_ratios": [1 + 0.36 * len(v) for v in kinds.values()]}, layout="constrained")
    for ax, (kind, cs) in zip(axs[:, 0], kinds.items()):
        ys = np.arange(len(cs))
        for y, c in zip(ys, cs):
            d = c.diff
            col = VERDICT_COLORS[d.verdict]
            ax.errorbar(d.mean, y, xerr=_xerr(d), fmt="o", color=col, capsize=3, ms=5)
            if not d.has_interval:
                ax.plot(d.mean, y, "x", color="black", ms=6)
        ax.axvline(0, color="black", lw=0.8)
        lab = [_wrap(f"{ATTACKS_PART.sub('', c.setting)} · {c.metric.removeprefix('attack/')} (n={c.diff.n})", 70) for c in cs]
        ax.set_yticks(ys, lab, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{kind}: defense − no defense", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for v, col in VERDICT_COLORS.items():
        axs[0, 0].plot([], [], "o", color=col, label=v)
    axs[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="verdict", title_fontsize=7)
    _save(fig, ctx, "paired_differences.png", "Each defense minus no defense on the same seeds and splits (95 % interval)")
    counts = {v: sum(c.diff.verdict == v for c in ctx.comparisons) for v in VERDICT_COLORS}
    return _figure(ctx, "paired_differences.png", title, (
        "For every defense setting and every compared metric (test accuracy, worst-hospital accuracy, membership AUC and "
        "TPR at 1% FPR, reconstruction quality), the difference from no defense on the same seeds and splits, with its 95 % "
        "interval (paired t over seeds; with one seed, the two cells' own intervals combined, which leaves out seed-to-seed "
        "variation). The verdict is 'lower' or 'higher' only when the interval excludes 0. "
        f"Verdicts here: {counts[LOWER]} lower, {counts[HIGHER]} higher, {counts[SAME]} no detectable difference, "
        f"{counts[UNKNOWN]} not enough seeds (an x marks a difference without an interval)."
    ))


# --------------------------------------------------------------------------- ROC and galleries


def figs_roc(ctx: ReportContext) -> list[Figure | Skipped]:
    from bench.artifacts import loglog_roc_axes
    from bench.metrics.membership import roc_points

    names = attack_names([c.metrics for s in ctx.settings for c in s.cells], "auc")
    if not names:
        return [Skipped("Log–log ROC curves", "no membership attack in this suite")]
    plt = _plt()
    out: list[Figure | Skipped] = []
    for n in names:
        title = f"Log–log ROC curves: {n}"
        panels = []
        for s in ctx.settings:
            curves = []
            for c in s.cells:
                raw = ctx.fetch(c.run_id, f"attacks/{n}/scores.npz") if f"attack/{n}/auc" in c.metrics else None
                if raw is None:
                    continue
                z = np.load(io.BytesIO(raw))
                if "is_member" not in z or "scores" not in z:
                    continue
                is_member = np.asarray(z["is_member"], bool)
                if is_member.all() or not is_member.any():
                    continue
                curves.append((c.seed, z["scores"], is_member, c.metrics.get(f"attack/{n}/auc")))
            if curves:
                panels.append((s, curves))
        if not panels:
            out.append(Skipped(title, f"no attacks/{n}/scores.npz artifact with members and non-members"))
            continue
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axs = plt.subplots(rows, cols, figsize=(3.7 * cols, 3.6 * rows), squeeze=False, layout="constrained")
        for ax in axs.flat[len(panels) :]:
            ax.set_axis_off()
        for ax, (s, curves) in zip(axs.flat, panels):
            floor = 1.0 / max(int(max((~m).sum() for _, _, m, _ in curves)), 1)
            for seed, scores, is_member, auc in curves:
                fpr, tpr = roc_points(scores, is_member)
                ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), lw=1.3, label=f"seed {seed} (AUC {_fmt(auc)})")
            loglog_roc_axes(ax, floor)
            ax.set_title(_wrap(s.label, 48), fontsize=8)
            ax.grid(alpha=0.3, which="both", lw=0.4)
            ax.legend(fontsize=6, loc="lower right")
        file = f"roc_{n}.png"
        _save(fig, ctx, file, f"{n}: membership ROC per defense setting (log–log; one curve per seed)")
        out.append(_figure(ctx, file, title, (
            f"One panel per defense setting, one curve per seed, for the {n} attack. Both axes are logarithmic so that "
            "the low false-positive corner, where an attack is actually dangerous, is visible. A curve on the dashed "
            "diagonal is guessing; a curve far above it at the left edge means some patients are identified with "
            "near certainty even if the AUC looks modest."
        )))
    return out




def figs_gallery(ctx: ReportContext) -> list[Figure | Skipped]:
    # inversion attacks are the ones that are not membership attacks and left images behind
    all_metrics = [c.metrics for s in ctx.settings for c in s.cells]
    membership = set(attack_names(all_metrics, "auc"))
    names = sorted({m["attack"] for ms in all_metrics for k in ms if (m := ATTACK_METRIC.match(k))} - membership)
    out: list[Figure | Skipped] = []
    plt = _plt()
    for n in names:
        panels = []
        for s in ctx.settings:
            cell = next((c for c in s.cells if any(k.startswith(f"attack/{n}/") for k in c.metrics)), None)
            if cell is None:
                continue
            pngs = sorted(p for p in ctx.list_files(cell.run_id, f"attacks/{n}") if p.lower().endswith(".png"))
            if pngs:
                panels.append((s, cell, pngs[0], len(pngs)))
        if not panels:
            continue
        title = f"Reconstruction gallery: {n}"
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axs = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.6 * rows), squeeze=False, layout="constrained")
        for ax in axs.flat:
            ax.set_axis_off()
        for ax, (s, cell, path, count) in zip(axs.flat, panels):
            raw = ctx.fetch(cell.run_id, path)
            if raw is None:
                continue
            ax.imshow(plt.imread(io.BytesIO(raw), format="png"))
            psnr = cell.metrics.get(f"attack/{n}/psnr")
            extra = f", PSNR {psnr:.1f} dB" if psnr is not None else ""
            ax.set_title(f"{s.label}\nseed {cell.seed}{extra}; {Path(path).name}" + (f" (1 of {count})" if count > 1 else ""), fontsize=8)
        file = f"gallery_{n}.png"
        _save(fig, ctx, file, f"{n}: what the server rebuilt, per defense setting (each panel as logged by the attack)")
        out.append(_figure(ctx, file, title, (
            f"The image artifacts the {n} attack logged for one seed of each defense setting, side by side "
            "(the attack's own layout: typically the true records above their reconstructions). A defense works "
            "when the reconstructions stop resembling the originals; PSNR in the panel title where logged."
        )))
    if not out:
        return [Skipped("Reconstruction galleries", "no inversion attack left PNG artifacts under attacks/<name>/")]
    return out



# --------------------------------------------------------------------------- audits


def audit_points(s: Setting) -> list[tuple[str, dict[str, Optional[Estimate]], float, list[str]]]:
    """Per audit of a setting: (name, estimates of bound/estimate/max certifiable/accountant ε, its δ, tags).

    Reads ``audit/<name>/...``; runs from before per-audit metrics fall back to the cell-level
    ``audit/epsilon_lower_bound`` and ``audit/accountant_epsilon`` (or ``privacy/epsilon``).
    """
    names = sorted({m["audit"] for c in s.cells for k in c.metrics if (m := AUDIT_METRIC.match(k)) and m["metric"] == "epsilon_lower_bound"})
    out = []
    for n in names or [None]:
        key = (lambda m: f"audit/{n}/{m}") if n else (lambda m: f"audit/{m}")
        def est(m: str, fallback: Optional[str] = None) -> Optional[Estimate]:
            vals = [c.metrics.get(key(m), c.metrics.get(fallback) if fallback else None) for c in s.cells]
            return t_interval([v for v in vals if v is not None])
        e = {"bound": est("epsilon_lower_bound"), "estimate": est("epsilon_estimate"),
             "max_certifiable": est("max_certifiable_epsilon"),
             "accountant": est("accountant_epsilon", AUDIT_EPS if n else EPSILON) or (s.estimate(EPSILON) if not n else None)}
        if e["bound"] is None or e["accountant"] is None:
            continue
        deltas = [c.metrics.get(key("delta"), c.metrics.get("audit/delta")) for c in s.cells]
        deltas = [d for d in deltas if d is not None]
        powers = [c.metrics.get(key("detectable_factor")) for c in s.cells]
        powers = [math.inf if p >= 1e300 else p for p in powers if p is not None and not math.isnan(p)]  # MLflow: inf -> max float
        e["power"] = max(powers) if powers else None  # the weakest seed's power: what every seed would catch
        tags = [c.tags.get("audit_verdict", "") for c in s.cells]
        out.append((n or "audit", e, float(np.mean(deltas)) if deltas else math.nan, tags))
    return out


def fig_epsilon(ctx: ReportContext) -> Figure | Skipped:
    title = "Accountant ε against the audited ε lower bound"
    pts = [(s, *p) for s in ctx.settings for p in audit_points(s)]
    if not pts:
        dp = [s for s in ctx.settings if s.is_dp]
        why = "no DP cell (privacy/epsilon) in this suite" if not dp else "the DP cells have no audit (audit/epsilon_lower_bound: add a canary_audit attack)"
        return Skipped(title, why)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.4, 5.4), layout="constrained")
    tops = [v.high if v.has_interval else v.mean for _, _, e, _, _ in pts for v in e.values() if isinstance(v, Estimate)]
    hi = max(max(tops) * 1.1, 1.0)
    ax.plot([0, hi], [0, hi], ls="--", c="grey", lw=1, label="y = x (bound = accountant's ε)")
    cannot_fail, violations, suspects, powered = [], [], [], []
    for i, (s, name, e, delta, tags) in enumerate(pts):
        col, x, mk = ctx.color(s), e["accountant"], MARKERS[i % len(MARKERS)]
        k = e["power"]
        power = "" if k is None else ", vacuous" if math.isinf(k) else f", catches σ/{k:g}"
        ax.errorbar(x.mean, e["bound"].mean, xerr=_xerr(x), yerr=_xerr(e["bound"]), fmt=mk, color=col, ms=7, capsize=3,
                    label=_wrap(f"{s.short} · {name} (δ {delta:.1g}, n={e['bound'].n}{power})", 44))
        if k is not None and math.isfinite(k):
            powered.append(f"{s.label} ({name}): ≥ {k:g}×")
        if "suspect" in tags:
            suspects.append(f"{s.label} ({name})")
        if e["estimate"] is not None:
            ax.errorbar(x.mean, e["estimate"].mean, yerr=_xerr(e["estimate"]), fmt=mk, mfc="none", color=col, ms=7, capsize=2)
        if e["max_certifiable"] is not None:
            ax.plot(x.mean, e["max_certifiable"].mean, "_", color=col, ms=22, mew=2)
            if e["max_certifiable"].mean < x.mean or "vacuous" in tags or (k is not None and math.isinf(k)):
                cannot_fail.append(f"{s.label} ({name}: max certifiable {e['max_certifiable'].mean:.2f} < ε {x.mean:.2f} at δ {delta:.1g})")
                ax.annotate("could not have failed:\nmax certifiable < ε", (x.mean, e["max_certifiable"].mean), textcoords="offset points",
                            xytext=(-8, 8), ha="right", fontsize=7, color=col)
        if any(c.tags.get("audit_violation") == "true" for c in s.cells) or e["bound"].mean > x.mean + 1e-9:
            violations.append(f"{s.label} ({name})")
    ax.plot([], [], "o", color="black", label="filled: certified lower bound")
    ax.plot([], [], "o", mfc="none", color="black", label="hollow: estimate (not a bound)")
    ax.plot([], [], "_", color="black", ms=14, mew=2, label="bar: max certifiable ε")
    ax.set_xlim(0, hi)
    ax.set_ylim(-0.03 * hi, hi)
    ax.set_xlabel("accountant's ε at the audit's δ (audit/<name>/accountant_epsilon)")
    ax.set_ylabel("audited ε (filled: certified lower bound; hollow: estimate)")
    ax.set_title("DP cells: accountant ε vs. audit (mean, 95 % interval over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, ctx, "epsilon_audit.png", f"Suite {ctx.suite.suite}: privacy audits against the accountant")
    verdict_text = (
        f"AUDIT VIOLATION in {', '.join(sorted(set(violations)))}: a certified lower bound above the accountant's ε means a bug "
        "in the accountant, the mechanism or the audit. " if violations
        else "No certified bound lies above y = x, as it must for a correct accountant. "
    ) + (
        f"SUSPECT (uncertified: an estimate's lower 95 % end above the accountant's ε) in {', '.join(sorted(set(suspects)))}. "
        if suspects else ""
    ) + (
        "Power — the smallest weakening of the claimed noise (σ/k) each audit would flag as a certified violation in ≥ 80 % "
        "of idealized runs (audit/<name>/detectable_factor; weakest seed): " + "; ".join(powered) + ". " if powered else ""
    )
    return _figure(ctx, "epsilon_audit.png", title, (
        "For each DP setting and audit, the accountant's ε at the audit's δ (horizontal) against what the audit found "
        "(vertical): the certified lower bound (filled marker, 95 % confidence; Steinke et al. 2023), the estimate (hollow "
        "marker; a point estimate, not a bound) and the largest ε the audit could have certified at all (bar). A certified "
        "bound above y = x is a violation. " + verdict_text
        + ("These audits are vacuous — they could not have failed, so their 'no violation' says nothing: "
           + "; ".join(cannot_fail) + "." if cannot_fail else "Every audit could have certified more than the accountant's ε.")
    ))


# --------------------------------------------------------------------------- tabular, sites, rounds, cost


def fig_tabular(ctx: ReportContext) -> Figure | Skipped:
    title = "Tabular reconstruction accuracy against the baseline"
    all_metrics = [c.metrics for s in ctx.settings for c in s.cells]
    names = [n for n in attack_names(all_metrics, "feature_accuracy") if n in attack_names(all_metrics, "baseline_feature_accuracy")]
    if not names:
        return Skipped(title, "no tabular inversion metrics (attack/<name>/feature_accuracy with .../baseline_feature_accuracy)")
    plt = _plt()
    settings = [s for s in ctx.settings if any(s.has(f"attack/{n}/feature_accuracy") for n in names)]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(settings) * len(names) + 3), 5.0), layout="constrained")
    xs = np.arange(len(settings))
    width = 0.8 / (2 * len(names))
    k = 0
    for n in names:
        for m, hatch, lab in (("feature_accuracy", None, f"{n}: reconstruction"), ("baseline_feature_accuracy", "//", f"{n}: prior baseline")):
            means, err = _err([s.estimate(f"attack/{n}/{m}") for s in settings])
            ax.bar(xs + (k - (2 * len(names) - 1) / 2) * width, means, width, yerr=err, capsize=2, hatch=hatch,
                   alpha=0.9 if hatch is None else 0.5, label=lab)
            k += 1
    ax.set_xticks(xs, [_wrap(s.label) for s in settings], fontsize=8)
    ax.set_ylabel("per-feature accuracy (fraction of features recovered)")
    ax.set_ylim(0, 1)
    ax.set_title("Tabular inversion: reconstruction vs. prior baseline (mean, 95 % interval)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, ctx, "tabular_inversion.png", "What the server rebuilt from tabular updates")
    lines = verdict_lines(ctx.comparisons, lambda k: k.endswith("/feature_accuracy"))
    return _figure(ctx, "tabular_inversion.png", title, (
        "Solid bars: the fraction of features the server recovered from hospitals' updates (categorical exact, "
        "continuous within 0.319 standard deviations, as in TabLeak). Hatched bars: what an attacker gets by "
        "guessing from the population's marginals alone. Only the gap between the two is leakage caused by "
        "federated training; a defense works when the solid bar falls to the hatched one. "
        + ("Paired with no defense: " + "; ".join(lines) + "." if lines else "")
    ))


def fig_sites(ctx: ReportContext) -> Figure | Skipped:
    title = "Per-hospital utility"
    settings = [s for s in ctx.settings if any(SITE_METRIC.match(k) for c in s.cells for k in c.metrics)]
    if not settings:
        return Skipped(title, "no per-hospital metric (utility/site/<name>/accuracy)")
    plt = _plt()
    datasets = [d for d in ctx.datasets() if any(s.dataset == d for s in settings)]
    fig, axs = plt.subplots(len(datasets), 1, figsize=(max(8, 1.5 * max(sum(s.dataset == d for s in settings) for d in datasets) + 3), 4.4 * len(datasets)), squeeze=False, layout="constrained")
    for ax, d in zip(axs[:, 0], datasets):
        group = [s for s in settings if s.dataset == d]
        # site codes 2, 11 sort as numbers (natural order), not as text
        sites = sorted({m["site"] for s in group for c in s.cells for k in c.metrics if (m := SITE_METRIC.match(k))},
                       key=lambda x: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", x)])
        xs = np.arange(len(group))
        width = 0.8 / len(sites)
        cmap = plt.get_cmap("tab10")
        for j, site in enumerate(sites):
            sizes = [float(c.params[f"data.site_size.{site}"]) for s in group for c in s.cells if f"data.site_size.{site}" in c.params]
            tests = [c.metrics[f"utility/site/{site}/count"] for s in group for c in s.cells if f"utility/site/{site}/count" in c.metrics]
            n = (f", n≈{np.mean(sizes):.0f} train" if sizes else "") + (f", {np.mean(tests):.0f} test" if tests else "")
            means, err = _err([s.estimate(f"utility/site/{site}/accuracy") for s in group])
            ax.bar(xs + (j - (len(sites) - 1) / 2) * width, means, width, yerr=err, capsize=2, color=cmap(j % 10), label=f"{site}{n}")
        for x, s in zip(xs, group):
            w, g = s.stat(WORST_SITE), s.stat(SITE_GAP)
            if w is not None:
                ax.hlines(w[0], x - 0.45, x + 0.45, colors="black", lw=1.5, label="worst hospital" if x == 0 else None)
                ax.text(x, 1.01, f"gap {_fmt(g[0] if g else None, 2)}", ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
        ax.set_xticks(xs, [_wrap(s.short) for s in group], fontsize=8)
        ax.set_ylabel("test accuracy at the hospital (fraction)")
        ax.set_ylim(0, 1.0)
        ax.set_title(f"{d}: accuracy per hospital under each defense (95 % interval)\n(black line: worst hospital; gap = best − worst)", fontsize=10, pad=14)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="hospital", title_fontsize=7)
    _save(fig, ctx, "sites.png", "Who pays for privacy: accuracy per hospital")
    notes = [f"{c.setting}: worst-hospital accuracy {verdict_phrase(c.diff)}" for c in ctx.comparisons if c.metric == WORST_SITE]
    return _figure(ctx, "sites.png", title, (
        "Each group of bars is a defense setting; each bar one hospital's test accuracy (legend: its number of "
        "training records). The black line marks the worst hospital and 'gap' is best minus worst. If a defense "
        "lowers the small hospitals' bars much more than the large ones', it shifts the cost of privacy onto the "
        "hospitals with the fewest patients. Error bars: 95 % t interval over seeds, or with one seed the hospital's "
        "Clopper–Pearson interval. A hospital with fewer test records than fairness.min_count has no bar (its count only) "
        "and is not the worst hospital. " + ("Paired with no defense on the same seeds: " + "; ".join(notes) + "." if notes else "")
    ))


def _align_histories(hs: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95 % t-interval per step over the seeds that have that step (the mean itself at one seed)."""
    steps = sorted({st for h in hs for st, _ in h})
    by = [dict(h) for h in hs]
    ests = [t_interval([b[st] for b in by if st in b]) for st in steps]
    mean = np.asarray([e.mean for e in ests])
    low = np.asarray([e.low if e.has_interval else e.mean for e in ests])
    high = np.asarray([e.high if e.has_interval else e.mean for e in ests])
    return np.asarray(steps), mean, low, high


def fig_rounds(ctx: ReportContext) -> Figure | Skipped:
    title = "Per-round curves"
    series: dict[str, list[tuple[Setting, list[list[tuple[int, float]]]]]] = {}
    for s in ctx.settings:
        hs = [h for c in s.cells if UTILITY in c.metrics and len(h := ctx.history(c.run_id, UTILITY)) > 1]
        if hs:
            series.setdefault(s.dataset, []).append((s, hs))
    attack_series = []
    for n in attack_names([c.metrics for s in ctx.settings for c in s.cells], "auc"):
        for s in ctx.settings:
            hs = [h for c in s.cells if f"attack/{n}/auc" in c.metrics and len(h := ctx.history(c.run_id, f"attack/{n}/auc")) > 1]
            if hs:
                attack_series.append((n, s, hs))
    if not series:
        return Skipped(title, f"no per-round history of {UTILITY}")
    plt = _plt()
    datasets = sorted(series)
    ncols = 2 if attack_series else 1
    from matplotlib.ticker import MaxNLocator

    fig, axs = plt.subplots(len(datasets), ncols, figsize=(8.5 * ncols, 4.2 * len(datasets)), squeeze=False, layout="constrained")
    for ax, d in zip(axs[:, 0], datasets):
        for s, hs in series[d]:
            steps, mean, low, high = _align_histories(hs)
            ax.plot(steps, mean, marker=".", color=ctx.color(s), label=_legend_label(s, len(hs), 40))
            ax.fill_between(steps, low, high, color=ctx.color(s), alpha=0.2)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(f"{d}: global model test accuracy per round (mean, 95 % band over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="setting (n = seeds)", title_fontsize=7)
    if attack_series:
        for ax, d in zip(axs[:, 1], datasets):
            for n, s, hs in attack_series:
                if s.dataset != d:
                    continue
                steps, mean, low, high = _align_histories(hs)
                ax.plot(steps, mean, marker=".", label=f"{n} · {s.short}")
                ax.fill_between(steps, low, high, alpha=0.2)
            ax.set_xlabel("round")
            ax.set_ylabel("membership attack AUC")
            ax.set_title(f"{d}: attack success per round", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, ctx, "rounds.png", "Convergence per defense setting")
    note = "" if attack_series else " Attack success is measured once per cell, after the last round, so it has no per-round curve here."
    return _figure(ctx, "rounds.png", title, (
        "Test accuracy of the global model after each FedAvg round (line: mean over seeds; band: 95 % t-interval over "
        "seeds, absent with one seed). A defense that converges slower or plateaus lower costs utility; a wide band means "
        "the result depends on the seed." + note
    ))


def fig_cost(ctx: ReportContext) -> Figure | Skipped:
    title = "Cost per defense setting"
    metrics = [("cost/seconds", "wall time per cell (s)"), ("cost/bytes_per_client", "bytes sent per hospital per round")]
    metrics = [(m, lab) for m, lab in metrics if any(s.has(m) for s in ctx.settings)]
    if not metrics:
        return Skipped(title, "no cost/seconds or cost/bytes_per_client metric")
    plt = _plt()
    fig, axs = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics) + 2, 1.9 + 0.45 * len(ctx.settings)), squeeze=False, sharey=True, layout="constrained")
    ys = np.arange(len(ctx.settings))
    for ax, (m, lab) in zip(axs[0], metrics):
        means, err = _err([s.estimate(m) for s in ctx.settings])
        ax.barh(ys, means, xerr=err, capsize=2, color=[ctx.color(s) for s in ctx.settings])
        ax.set_yticks(ys, [_wrap(s.label, 40) for s in ctx.settings], fontsize=8)
        ax.set_xlabel(lab)
        ax.set_title(m, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axs[0][0].invert_yaxis()
    _save(fig, ctx, "cost.png", "What each defense setting costs (mean, 95 % interval)")
    return _figure(ctx, "cost.png", title, (
        "Wall time of a whole cell (training, accounting and all attacks) and the bytes each hospital sends per "
        "round. Secure aggregation and reference-model attacks show up here; times are measured on a shared machine "
        "and are only comparable within one suite run (the first cell of a process also pays for start-up)."
    ))


FIGURES: tuple[Callable[[ReportContext], Figure | Skipped | list], ...] = (
    fig_frontier, fig_paired, fig_membership, figs_roc, fig_epsilon, figs_gallery, fig_tabular, fig_sites, fig_rounds, fig_cost,
)
