"""Figures, tables and a self-contained HTML report of one suite, read back from MLflow.

``privbench report --suite NAME`` calls :func:`write_report`. Everything comes from the
tracking store through ``MlflowClient`` (never from the process that ran the suite), so a
report can be made on another machine, later, from a shared server.

What drives the report is metric *names*, never a list of attacks or defenses
(DESIGN.md's families):

* utility: ``utility/test_accuracy``, ``utility/site/<hospital>/accuracy``,
  ``utility/worst_site_accuracy``, ``utility/site_accuracy_gap`` (per-round history with
  ``step = round``);
* membership attacks: any ``attack/<name>/auc`` (and ``.../tpr_at_fpr_0.01``); their
  ``attacks/<name>/scores.npz`` artifacts (arrays ``ids``, ``scores``, ``is_member``);
* inversion attacks: any ``attack/<name>/psnr`` (images) or ``attack/<name>/feature_accuracy``
  with ``.../baseline_feature_accuracy`` (tabular); PNGs under ``attacks/<name>/``;
* privacy: ``privacy/epsilon`` and the audited ``audit/epsilon_lower_bound``.

A *defense setting* is the set of FINISHED cells whose configs differ only in the seed;
every number shown is the mean over its seeds with the standard deviation as error bar.
A figure whose data is absent is skipped with a note; it is never drawn empty.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from bench.types import ConfigError

log = logging.getLogger(__name__)

UTILITY = "utility/test_accuracy"
WORST_SITE = "utility/worst_site_accuracy"
SITE_GAP = "utility/site_accuracy_gap"
EPSILON = "privacy/epsilon"
AUDIT_LB = "audit/epsilon_lower_bound"
AUDIT_EPS = "audit/accountant_epsilon"  # the accountant's ε at the audit's δ (older runs: privacy/epsilon)
SITE_METRIC = re.compile(r"^utility/site/(?P<site>[^/]+)/accuracy$")
ATTACK_METRIC = re.compile(r"^attack/(?P<attack>[^/]+)/(?P<metric>[^/]+)$")
SEED_SUFFIX = re.compile(r" · seed -?\d+$")
# params that differ between the seeds of one setting without being part of its config
PER_SEED_PARAMS = ("seed",)
PER_SEED_PARAM_PREFIXES = ("data.site_size.",)
MANIFEST = ".report-files.json"


# --------------------------------------------------------------------------- reading MLflow


@dataclass(frozen=True)
class CellRun:
    """One cell's run as read back from MLflow (final metric values, params, tags)."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: Mapping[str, str]
    tags: Mapping[str, str]
    metrics: Mapping[str, float]

    @property
    def seed(self) -> str:
        return self.params.get("seed", self.tags.get("seed", "?"))

    @property
    def dataset(self) -> str:
        return self.tags.get("dataset") or self.params.get("data.name", "?")

    @property
    def run_key(self) -> str:
        return self.tags.get("run_key", self.run_id)

    @cached_property
    def head(self) -> Mapping[str, float]:
        """The metrics plus the strongest attack of each family (see :func:`headline`)."""
        return headline(self.metrics)


@dataclass(frozen=True)
class SuiteRuns:
    """The cells of a suite: the latest FINISHED run per ``run_key``, and the failures left out."""

    suite: str
    uri: str
    experiment_id: str
    parent_run_id: Optional[str]
    cells: tuple[CellRun, ...]
    failed: tuple[CellRun, ...]


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _cell_run(run) -> CellRun:
    return CellRun(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get("mlflow.runName", run.info.run_id),
        status=run.info.status,
        start_time=int(run.info.start_time or 0),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
    )


def latest_per_key(runs: Iterable[CellRun]) -> tuple[tuple[CellRun, ...], tuple[CellRun, ...]]:
    """Split runs into (the latest FINISHED run per run_key, failures with no FINISHED run).

    A cell that failed once and finished on a later invocation (resume) counts as finished;
    a cell run twice (``--no-resume``) counts once, with its latest numbers. A failure is also
    superseded by a later FINISHED run of the same name and attacks: when the code changed a
    config default in between, the run_key changes but it is the same cell of the suite.
    """
    finished: dict[str, CellRun] = {}
    failed: dict[str, CellRun] = {}
    for r in sorted(runs, key=lambda r: r.start_time):
        if r.status == "FINISHED":
            finished[r.run_key] = r
        elif r.status in ("FAILED", "KILLED"):
            failed[r.run_key] = r
    def superseded(r: CellRun) -> bool:
        return any(f.name == r.name and f.tags.get("attacks") == r.tags.get("attacks") and f.start_time > r.start_time for f in finished.values())

    left_out = tuple(r for k, r in failed.items() if k not in finished and not superseded(r))
    return tuple(sorted(finished.values(), key=lambda r: r.start_time)), left_out


def load_suite_runs(client, suite: str, uri: str) -> SuiteRuns:
    """Read a suite's cells back from the tracking store.

    Raises:
        ConfigError: the store holds no experiments, or none named ``suite``, or it has no cells.
    """
    exp = client.get_experiment_by_name(suite)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        if not names:
            raise ConfigError(f"--suite {suite!r}: the tracking store {uri} is empty; run a suite first, e.g. privbench run experiments/quick.yaml")
        raise ConfigError(f"--suite {suite!r}: no such suite in {uri}; suites there: {', '.join(names)}")
    runs = [_cell_run(r) for r in _all_runs(client, exp.experiment_id, "tags.role = 'cell'")]
    if not runs:
        raise ConfigError(f"--suite {suite!r}: the suite has no cell runs in {uri}; run it first with privbench run")
    cells, failed = latest_per_key(runs)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'suite'", order_by=["attributes.start_time DESC"], max_results=1)
    return SuiteRuns(suite, uri, exp.experiment_id, parents[0].info.run_id if parents else None, cells, failed)


# --------------------------------------------------------------------------- settings


def setting_key(cell: CellRun) -> str:
    """The cell's config minus its seed (and per-seed data facts such as hospital sizes)."""
    cfg = {k: v for k, v in cell.params.items() if k not in PER_SEED_PARAMS and not k.startswith(PER_SEED_PARAM_PREFIXES)}
    return json.dumps(cfg, sort_keys=True)


@dataclass(frozen=True)
class Setting:
    """A defense setting: the cells of one config across seeds."""

    key: str
    label: str
    dataset: str
    cells: tuple[CellRun, ...]

    @property
    def short(self) -> str:
        """The label without its dataset (panels are per dataset already)."""
        prefix = f"{self.dataset} · "
        return self.label[len(prefix) :] if self.label.startswith(prefix) else self.label

    @property
    def is_dp(self) -> bool:
        return any(EPSILON in c.metrics for c in self.cells)

    def values(self, metric: str) -> np.ndarray:
        vals = [c.head.get(metric) for c in self.cells]
        return np.asarray([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)

    def stat(self, metric: str) -> Optional[tuple[float, float, int]]:
        """(mean, std, n) over seeds; std is the sample std (0 for a single seed); None if absent."""
        v = self.values(metric)
        if v.size == 0:
            return None
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)

    def has(self, metric: str) -> bool:
        return self.values(metric).size > 0


def group_settings(cells: Sequence[CellRun]) -> list[Setting]:
    """Group cells by config minus seed; labels are the run names without `` · seed N``.

    Two settings with the same readable label (e.g. the same defense with different attacks)
    get the config keys in which they differ appended, so every label is unique.
    """
    groups: dict[str, list[CellRun]] = {}
    for c in cells:
        groups.setdefault(setting_key(c), []).append(c)
    base = {k: SEED_SUFFIX.sub("", cs[0].name) for k, cs in groups.items()}
    labels = dict(base)
    for label in set(base.values()):
        same = [k for k, b in base.items() if b == label]
        if len(same) < 2:
            continue
        cfgs = {k: json.loads(k) for k in same}
        keys = sorted({p for c in cfgs.values() for p in c})
        differ = [p for p in keys if len({cfgs[k].get(p) for k in same}) > 1]
        # the shallowest keys that differ (``attacks``, ``model.name``) say it best; nested
        # ones (``attacks.lira.num_references``) usually follow from them
        depth = min(p.count(".") for p in differ) if differ else 0
        differ = [p for p in differ if p.count(".") == depth][:2]
        for k in same:
            labels[k] = f"{label} [{', '.join(f'{p}={cfgs[k].get(p)}' for p in differ)}]"
    out = [
        Setting(key=k, label=labels[k], dataset=cs[0].dataset, cells=tuple(sorted(cs, key=lambda c: c.seed)))
        for k, cs in groups.items()
    ]
    return sorted(out, key=lambda s: (s.dataset, min(c.start_time for c in s.cells)))


# --------------------------------------------------------------------------- metric families


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
    """``metrics`` plus the strongest attack per axis (``strongest/...``): the worst case a defense faces."""
    out = dict(metrics)
    for ax in ATTACK_AXES:
        vals = [v for n in attack_names([metrics], ax.metric) if math.isfinite(v := metrics[f"attack/{n}/{ax.metric}"])]
        if vals:
            out[ax.key] = max(vals)
    return out


def pareto_mask(risk: Sequence[float], utility: Sequence[float]) -> np.ndarray:
    """True where no other point has lower-or-equal risk and higher-or-equal utility (one strictly)."""
    x, y = np.asarray(risk, float), np.asarray(utility, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated.any()
    return keep


# --------------------------------------------------------------------------- figures


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
    """What the figure functions read: settings, and artifact/history access to the store."""

    suite: SuiteRuns
    settings: list[Setting]
    fetch: Callable[[str, str], Optional[bytes]]
    list_files: Callable[[str, str], list[str]]
    history: Callable[[str, str], list[tuple[int, float]]]
    out: Path
    colors: dict[str, tuple] = field(default_factory=dict)

    def color(self, s: Setting):
        return self.colors[s.key]

    def datasets(self) -> list[str]:
        return sorted({s.dataset for s in self.settings})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^vP*Xh<>p"


def _save(fig, ctx: ReportContext, file: str) -> None:
    plt = _plt()
    try:
        fig.savefig(ctx.out / file, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


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


def fig_frontier(ctx: ReportContext) -> Figure | Skipped:
    title = "Privacy–utility frontier"
    axes = [ax for ax in ATTACK_AXES if any(s.has(ax.key) and s.has(UTILITY) for s in ctx.settings)]
    if not axes:
        return Skipped(title, "no cell logged both utility/test_accuracy and an attack-success metric (attack/<name>/auc, tpr_at_fpr_0.01, psnr or feature_accuracy)")
    plt = _plt()
    # one panel per (dataset, attack family) that has data: utilities of different datasets
    # are not comparable, and an empty panel says nothing
    panels = []
    for d in ctx.datasets():
        for ax_def in axes:
            pts = [(s, s.stat(ax_def.key), s.stat(UTILITY)) for s in ctx.settings if s.dataset == d]
            pts = [(s, x, y) for s, x, y in pts if x is not None and y is not None]
            if pts:
                panels.append((d, ax_def, pts))
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(7.6 * ncols, 3.9 * nrows), squeeze=False, layout="constrained")
    for ax in grid.flat[len(panels) :]:
        ax.set_axis_off()
    front_names: list[str] = []
    for ax, (d, ax_def, pts) in zip(grid.flat, panels):
        for s, x, y in pts:
            ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt=MARKERS[ctx.settings.index(s) % len(MARKERS)], color=ctx.color(s),
                        ms=7, capsize=3, label=_wrap(f"{s.short} (n={min(x[2], y[2])})", 34))
        mask = pareto_mask([x[0] for _, x, _ in pts], [y[0] for _, _, y in pts])
        front = sorted((x[0], y[0]) for (_, x, y), k in zip(pts, mask) if k)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", ls="--", c="black", lw=1, alpha=0.7, label="Pareto front")
        if ax_def is axes[0]:
            front_names += [s.label for (s, _, _), k in zip(pts, mask) if k]
        if ax_def.metric == "auc":
            ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(ax_def.label)
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(f"{d}: {ax_def.title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="setting (n = seeds)", title_fontsize=7)
    fig.suptitle(f"Suite {ctx.suite.suite}: privacy–utility trade-off (mean ± std over seeds; up and left is better)", fontsize=11)
    _save(fig, ctx, "frontier.png")
    reading = (
        "Each marker is one defense setting (error bars: standard deviation over seeds). The vertical axis is the "
        "global model's test accuracy; the horizontal axis is what the strongest attack achieved against it "
        "(for each cell, the best of all attacks of that family). Up and to the left is better: more accurate and "
        "harder to attack. The dashed line joins the Pareto-optimal settings: for each of them no other setting is "
        "both more accurate and less attackable. "
        + (f"Pareto-optimal on the first axis ({axes[0].title}): {'; '.join(front_names)}." if front_names else "")
    )
    return Figure("frontier.png", title, reading)


def fig_membership(ctx: ReportContext) -> Figure | Skipped:
    title = "Membership attacks under each defense"
    names = attack_names([c.metrics for s in ctx.settings for c in s.cells], "auc")
    if not names:
        return Skipped(title, "no membership attack metric (attack/<name>/auc) in this suite")
    plt = _plt()
    metrics = [("auc", "AUC (0.5 = chance)", 0.5), ("tpr_at_fpr_0.01", "TPR at 1% FPR (fraction; chance = 0.01)", 0.01)]
    settings = [s for s in ctx.settings if any(s.has(f"attack/{n}/auc") for n in names)]
    fig, axs = plt.subplots(1, 2, figsize=(12, 1.6 + 0.32 * len(settings) * max(2, len(names))), sharey=True, layout="constrained")
    height = 0.8 / len(names)
    ys = np.arange(len(settings))
    for ax, (m, xlabel, chance) in zip(axs, metrics):
        for j, n in enumerate(names):
            st = [s.stat(f"attack/{n}/{m}") for s in settings]
            ax.barh(ys + (j - (len(names) - 1) / 2) * height, [v[0] if v else np.nan for v in st], height,
                    xerr=[v[1] if v else 0 for v in st], capsize=2, label=n)
        ax.axvline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_yticks(ys, [_wrap(s.label, 40) for s in settings], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(f"membership attacks: {m}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axs[0].invert_yaxis()
    axs[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="attack", title_fontsize=7)
    fig.suptitle("Membership inference success per attack and defense setting (mean ± std over seeds)", fontsize=11)
    _save(fig, ctx, "membership_attacks.png")
    worst = max(((s, n, s.stat(f"attack/{n}/tpr_at_fpr_0.01")) for s in settings for n in names), key=lambda t: t[2][0] if t[2] else -1)
    reading = (
        "Bars compare every membership attack (colours) under every defense setting. AUC summarises the whole ROC curve; "
        "TPR at 1% FPR asks how many training patients the attacker can name while wrongly accusing only 1 in 100 "
        "non-members, the number that matters for a privacy review (Carlini et al. 2022). Bars at the dotted chance "
        "line mean the attack learned nothing. "
        + (f"Highest TPR at 1% FPR: {worst[1]} against {worst[0].label} ({_fmt(worst[2][0])})." if worst[2] else "")
    )
    return Figure("membership_attacks.png", title, reading)


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
        fig.suptitle(f"{n}: membership ROC per defense setting (log–log; one curve per seed)", fontsize=11)
        file = f"roc_{n}.png"
        _save(fig, ctx, file)
        out.append(Figure(file, title, (
            f"One panel per defense setting, one curve per seed, for the {n} attack. Both axes are logarithmic so that "
            "the low false-positive corner, where an attack is actually dangerous, is visible. A curve on the dashed "
            "diagonal is guessing; a curve far above it at the left edge means some patients are identified with "
            "near certainty even if the AUC looks modest."
        )))
    return out


def fig_epsilon(ctx: ReportContext) -> Figure | Skipped:
    title = "Accountant ε against the audited ε lower bound"
    pts = [(s, s.stat(AUDIT_EPS) or s.stat(EPSILON), s.stat(AUDIT_LB)) for s in ctx.settings]
    pts = [(s, e, a) for s, e, a in pts if e is not None and a is not None]
    if not pts:
        dp = [s for s in ctx.settings if s.is_dp]
        why = "no DP cell (privacy/epsilon) in this suite" if not dp else "the DP cells have no audit (audit/epsilon_lower_bound: add a canary_audit attack)"
        return Skipped(title, why)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 5.0), layout="constrained")
    hi = max(max(e[0] + e[1], a[0] + a[1]) for _, e, a in pts) * 1.1 or 1.0
    ax.plot([0, hi], [0, hi], ls="--", c="grey", lw=1, label="y = x (bound = claimed ε)")
    for s, e, a in pts:
        ax.errorbar(e[0], a[0], xerr=e[1], yerr=a[1], fmt=MARKERS[ctx.settings.index(s) % len(MARKERS)], color=ctx.color(s), ms=7, capsize=3, label=_wrap(f"{s.label} (n={min(e[2], a[2])})", 40))
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("ε claimed by the accountant at the audit's δ (audit/accountant_epsilon)")
    ax.set_ylabel("audited ε lower bound (audit/epsilon_lower_bound)")
    ax.set_title("DP cells: claimed ε vs. one-run audit lower bound (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, ctx, "epsilon_audit.png")
    bad = [s.label for s in ctx.settings for c in s.cells if c.metrics.get(AUDIT_LB, -1) > c.metrics.get(AUDIT_EPS, c.metrics.get(EPSILON, math.inf)) + 1e-9]
    verdict = (
        f"AUDIT VIOLATION in {', '.join(sorted(set(bad)))}: an empirical lower bound above the claimed ε means a bug in the accountant, the mechanism or the audit."
        if bad else "Every audited bound lies below the y = x line, as it must for a correct accountant."
    )
    return Figure("epsilon_audit.png", title, (
        "For each DP setting, the ε its accountant claims (horizontal) against the ε lower bound a one-run canary audit "
        "proved empirically (vertical, Steinke et al. 2023). Points must lie on or below y = x; the gap shows how "
        "loose the claim might be (or how weak the audit is). " + verdict
    ))


IMAGE_METRICS = ("psnr",)


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
        fig.suptitle(f"{n}: what the server rebuilt, per defense setting (each panel as logged by the attack)", fontsize=11)
        file = f"gallery_{n}.png"
        _save(fig, ctx, file)
        out.append(Figure(file, title, (
            f"The image artifacts the {n} attack logged for one seed of each defense setting, side by side "
            "(the attack's own layout: typically the true records above their reconstructions). A defense works "
            "when the reconstructions stop resembling the originals; PSNR in the panel title where logged."
        )))
    if not out:
        return [Skipped("Reconstruction galleries", "no inversion attack left PNG artifacts under attacks/<name>/")]
    return out


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
            st = [s.stat(f"attack/{n}/{m}") for s in settings]
            ax.bar(xs + (k - (2 * len(names) - 1) / 2) * width, [v[0] if v else np.nan for v in st], width,
                   yerr=[v[1] if v else 0 for v in st], capsize=2, hatch=hatch, alpha=0.9 if hatch is None else 0.5, label=lab)
            k += 1
    ax.set_xticks(xs, [_wrap(s.label) for s in settings], fontsize=8)
    ax.set_ylabel("per-feature accuracy (fraction of features recovered)")
    ax.set_ylim(0, 1)
    ax.set_title("Tabular inversion: reconstruction vs. prior baseline (mean ± std over seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, ctx, "tabular_inversion.png")
    return Figure("tabular_inversion.png", title, (
        "Solid bars: the fraction of features the server recovered from hospitals' updates (categorical exact, "
        "continuous within 0.319 standard deviations, as in TabLeak). Hatched bars: what an attacker gets by "
        "guessing from the population's marginals alone. Only the gap between the two is leakage caused by "
        "federated training; a defense works when the solid bar falls to the hatched one."
    ))


def fig_sites(ctx: ReportContext) -> Figure | Skipped:
    title = "Per-hospital utility"
    settings = [s for s in ctx.settings if any(SITE_METRIC.match(k) for c in s.cells for k in c.metrics)]
    if not settings:
        return Skipped(title, "no per-hospital metric (utility/site/<name>/accuracy)")
    plt = _plt()
    datasets = [d for d in ctx.datasets() if any(s.dataset == d for s in settings)]
    fig, axs = plt.subplots(len(datasets), 1, figsize=(max(8, 1.5 * max(sum(s.dataset == d for s in settings) for d in datasets) + 3), 4.4 * len(datasets)), squeeze=False, layout="constrained")
    lines = []
    for ax, d in zip(axs[:, 0], datasets):
        group = [s for s in settings if s.dataset == d]
        sites = sorted({m["site"] for s in group for c in s.cells for k in c.metrics if (m := SITE_METRIC.match(k))})
        xs = np.arange(len(group))
        width = 0.8 / len(sites)
        cmap = plt.get_cmap("tab10")
        for j, site in enumerate(sites):
            sizes = [float(c.params[f"data.site_size.{site}"]) for s in group for c in s.cells if f"data.site_size.{site}" in c.params]
            n = f", n≈{np.mean(sizes):.0f} train" if sizes else ""
            st = [s.stat(f"utility/site/{site}/accuracy") for s in group]
            ax.bar(xs + (j - (len(sites) - 1) / 2) * width, [v[0] if v else np.nan for v in st], width, yerr=[v[1] if v else 0 for v in st],
                   capsize=2, color=cmap(j % 10), label=f"{site}{n}")
        for x, s in zip(xs, group):
            w, g = s.stat(WORST_SITE), s.stat(SITE_GAP)
            if w is not None:
                ax.hlines(w[0], x - 0.45, x + 0.45, colors="black", lw=1.5, label="worst hospital" if x == 0 else None)
                ax.text(x, 1.01, f"gap {_fmt(g[0] if g else None, 2)}", ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform())
                lines.append((s, w[0], g[0] if g else None))
        ax.set_xticks(xs, [_wrap(s.short) for s in group], fontsize=8)
        ax.set_ylabel("test accuracy at the hospital (fraction)")
        ax.set_ylim(0, 1.0)
        ax.set_title(f"{d}: accuracy per hospital under each defense\n(black line: worst hospital; gap = best − worst)", fontsize=10, pad=14)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="hospital", title_fontsize=7)
    _save(fig, ctx, "sites.png")
    base = {d: next((s for s in ctx.settings if s.dataset == d and s.short == "no defense"), None) for d in datasets}
    notes = []
    for s, w, g in lines:
        b = base.get(s.dataset)
        bw = b.stat(WORST_SITE) if b is not None and b is not s else None
        if bw is not None:
            notes.append(f"{s.label}: worst hospital {w:.3f} ({w - bw[0]:+.3f} vs. no defense), gap {_fmt(g)}")
    return Figure("sites.png", title, (
        "Each group of bars is a defense setting; each bar one hospital's test accuracy (legend: its number of "
        "training records). The black line marks the worst hospital and 'gap' is best minus worst. If a defense "
        "lowers the small hospitals' bars much more than the large ones', it shifts the cost of privacy onto the "
        "hospitals with the fewest patients. " + ("; ".join(notes) + "." if notes else "")
    ))


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
            steps, mean, std = _align_histories(hs)
            ax.plot(steps, mean, marker=".", color=ctx.color(s), label=_wrap(f"{s.short} (n={len(hs)})", 40))
            ax.fill_between(steps, mean - std, mean + std, color=ctx.color(s), alpha=0.2)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(f"{d}: global model test accuracy per round (mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="setting (n = seeds)", title_fontsize=7)
    if attack_series:
        for ax, d in zip(axs[:, 1], datasets):
            for n, s, hs in attack_series:
                if s.dataset != d:
                    continue
                steps, mean, std = _align_histories(hs)
                ax.plot(steps, mean, marker=".", label=f"{n} · {s.short}")
                ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("round")
            ax.set_ylabel("membership attack AUC")
            ax.set_title(f"{d}: attack success per round", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, ctx, "rounds.png")
    note = "" if attack_series else " Attack success is measured once per cell, after the last round, so it has no per-round curve here."
    return Figure("rounds.png", title, (
        "Test accuracy of the global model after each FedAvg round (line: mean over seeds; band: ± one standard "
        "deviation). A defense that converges slower or plateaus lower costs utility; a wide band means the result "
        "depends on the seed." + note
    ))


def _align_histories(hs: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std per step over the seeds that have that step."""
    steps = sorted({st for h in hs for st, _ in h})
    by = [dict(h) for h in hs]
    vals = [[b[st] for b in by if st in b] for st in steps]
    mean = np.asarray([np.mean(v) for v in vals])
    std = np.asarray([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
    return np.asarray(steps), mean, std


def fig_cost(ctx: ReportContext) -> Figure | Skipped:
    title = "Cost per defense setting"
    metrics = [("cost/seconds", "wall time per cell (s)"), ("cost/bytes_per_client", "bytes sent per hospital per round")]
    metrics = [(m, lab) for m, lab in metrics if any(s.has(m) for s in ctx.settings)]
    if not metrics:
        return Skipped(title, "no cost/seconds or cost/bytes_per_client metric")
    plt = _plt()
    fig, axs = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics) + 2, 1.6 + 0.45 * len(ctx.settings)), squeeze=False, sharey=True, layout="constrained")
    ys = np.arange(len(ctx.settings))
    for ax, (m, lab) in zip(axs[0], metrics):
        st = [s.stat(m) for s in ctx.settings]
        ax.barh(ys, [v[0] if v else np.nan for v in st], xerr=[v[1] if v else 0 for v in st], capsize=2, color=[ctx.color(s) for s in ctx.settings])
        ax.set_yticks(ys, [_wrap(s.label, 40) for s in ctx.settings], fontsize=8)
        ax.set_xlabel(lab)
        ax.set_title(m, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axs[0][0].invert_yaxis()
    fig.suptitle("What each defense setting costs (mean ± std over seeds)", fontsize=11)
    _save(fig, ctx, "cost.png")
    return Figure("cost.png", title, (
        "Wall time of a whole cell (training, accounting and all attacks) and the bytes each hospital sends per "
        "round. Secure aggregation and reference-model attacks show up here; times are measured on a shared machine "
        "and are only comparable within one suite run (the first cell of a process also pays for start-up)."
    ))


FIGURES: tuple[Callable[[ReportContext], Figure | Skipped | list], ...] = (
    fig_frontier, fig_membership, figs_roc, fig_epsilon, figs_gallery, fig_tabular, fig_sites, fig_rounds, fig_cost,
)


# --------------------------------------------------------------------------- summary table


FIXED_COLUMNS = (
    UTILITY, "utility/test_auroc", WORST_SITE, SITE_GAP, EPSILON, "privacy/delta", AUDIT_LB, AUDIT_EPS, "audit/delta",
    *(ax.key for ax in ATTACK_AXES),
)
# per-attack columns: these suffixes of attack/<name>/... (whatever attacks a suite has)
# (``oracle_*`` numbers pick by the truth: upper bounds, left to the MLflow run, never a headline)
ATTACK_COLUMNS = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "accuracy", "lift", "psnr", "ssim", "label_accuracy",
                  "feature_accuracy", "baseline_feature_accuracy", "feature_accuracy_gain", "record_exact_match",
                  "baseline_record_exact_match", "epsilon_lower_bound")
TAIL_COLUMNS = ("cost/seconds", "cost/bytes_per_client")


def summary_columns(settings: Sequence[Setting]) -> list[str]:
    """Metric columns present in at least one setting, in a fixed readable order."""
    present = {k for s in settings for c in s.cells for k in c.head}
    cols = [m for m in FIXED_COLUMNS if m in present]
    all_metrics = [c.metrics for s in settings for c in s.cells]
    for suffix in ATTACK_COLUMNS:
        cols += [f"attack/{n}/{suffix}" for n in attack_names(all_metrics, suffix)]
    return cols + [m for m in TAIL_COLUMNS if m in present]


def summary_rows(settings: Sequence[Setting]) -> tuple[list[str], list[dict]]:
    cols = summary_columns(settings)
    rows = []
    for s in settings:
        row = {"setting": s.label, "dataset": s.dataset, "defenses": s.cells[0].tags.get("defenses", ""),
               "seeds": ",".join(c.seed for c in s.cells), "n": len(s.cells)}
        for m in cols:
            row[m] = s.stat(m)
        rows.append(row)
    return cols, rows


def write_summary(settings: Sequence[Setting], out: Path) -> tuple[list[str], str]:
    """Write summary.csv (mean and std columns), summary.md and summary.html; return files and the HTML table."""
    cols, rows = summary_rows(settings)
    head = ["setting", "dataset", "defenses", "seeds", "n"]
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head + [x for m in cols for x in (f"{m} mean", f"{m} std")])
        for r in rows:
            w.writerow([r[h] for h in head] + [x for m in cols for x in ((repr(r[m][0]), repr(r[m][1])) if r[m] else ("", ""))])

    def num(x: float) -> str:  # δ-sized values (1e-5) would read 0.000 with three decimals
        return f"{x:.2g}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"

    def pm(v) -> str:
        return "–" if v is None else (f"{num(v[0])} ± {num(v[1])}" if v[2] > 1 else num(v[0]))

    md = ["| " + " | ".join(head[:2] + ["seeds"] + cols) + " |", "|" + "---|" * (3 + len(cols))]
    md += ["| " + " | ".join([r["setting"], r["dataset"], str(r["n"])] + [pm(r[m]) for m in cols]) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head[:2] + ["seeds"] + cols)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [r["setting"], r["dataset"], r["n"]] + [pm(r[m]) for m in cols]) + "</tr>"
        for r in rows
    )
    table = f'<table class="summary"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'
    (out / "summary.html").write_text(f"<!doctype html><meta charset='utf-8'><title>summary</title>{_CSS}{table}\n", encoding="utf-8")
    return ["summary.csv", "summary.md", "summary.html"], table


# --------------------------------------------------------------------------- HTML


_CSS = """<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
img{max-width:100%;border:1px solid #eee}p.reading{max-width:60em}
.note{color:#7a5b00;background:#fff8e1;padding:.4em .8em;border-left:3px solid #f0c000}
table.summary{border-collapse:collapse;font-size:.8em;display:block;overflow-x:auto}
table.summary td,table.summary th{border:1px solid #ccc;padding:.25em .5em;white-space:nowrap}
table.summary th{background:#f4f4f4}
</style>"""


def render_html(runs: SuiteRuns, settings: Sequence[Setting], items: Sequence[Figure | Skipped], table: str, out: Path) -> str:
    """A self-contained page: every figure embedded as base64 PNG, with its reading and the notes."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>privbench report: {html.escape(runs.suite)}</title>{_CSS}</head><body>",
        f"<h1>privbench report: suite <code>{html.escape(runs.suite)}</code></h1>",
        f"<p>{len(runs.cells)} finished cells in {len(settings)} defense settings, read from <code>{html.escape(runs.uri)}</code> "
        f"(experiment {html.escape(runs.experiment_id)}, latest suite run {html.escape(runs.parent_run_id or 'none')}), "
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Every number is a mean over seeds (± standard deviation).</p>",
    ]
    if runs.failed:
        lis = "".join(f"<li>{html.escape(c.name)}: {html.escape(c.tags.get('error', c.status))}</li>" for c in runs.failed)
        parts.append(f"<div class='note'><b>{len(runs.failed)} cell(s) FAILED and are left out of this report</b> (rerun the suite to retry them):<ul>{lis}</ul></div>")
    for it in items:
        parts.append(f"<h2>{html.escape(it.title)}</h2>")
        if isinstance(it, Skipped):
            parts.append(f"<p class='note'>Not drawn: {html.escape(it.reason)}.</p>")
            continue
        data = base64.b64encode((out / it.file).read_bytes()).decode()
        parts.append(f"<p class='reading'>{html.escape(it.reading)}</p><img alt='{html.escape(it.title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Summary table</h2><p class='reading'>One row per defense setting; mean ± standard deviation over seeds "
                 "(a single number where there was one seed). <code>strongest/...</code> columns take, in each cell, the best "
                 "attack of that family. The same table is in summary.csv (mean and std columns) and summary.md.</p>")
    parts.append(table)
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` produced."""

    out_dir: Path
    files: tuple[str, ...]
    figures: tuple[Figure, ...]
    skipped: tuple[Skipped, ...]
    failed_cells: tuple[CellRun, ...]
    parent_run_id: Optional[str]
    settings: int


def _store_access(client):
    cache: dict[tuple[str, str], Optional[bytes]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="privbench-report-")

    def fetch(run_id: str, path: str) -> Optional[bytes]:
        if (run_id, path) not in cache:
            try:
                local = client.download_artifacts(run_id, path, tmp.name)
                cache[(run_id, path)] = Path(local).read_bytes()
            except Exception as exc:  # an artifact that is not there is absent data, not a crash
                log.debug("artifact %s of run %s: %s", path, run_id, exc)
                cache[(run_id, path)] = None
        return cache[(run_id, path)]

    def list_files(run_id: str, path: str) -> list[str]:
        out, todo = [], [path]
        while todo:
            try:
                infos = client.list_artifacts(run_id, todo.pop())
            except Exception as exc:
                log.debug("listing %s of run %s: %s", path, run_id, exc)
                continue
            for f in infos:
                (todo if f.is_dir else out).append(f.path)
        return sorted(out)

    def history(run_id: str, metric: str) -> list[tuple[int, float]]:
        by_step: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, metric):
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, float(m.value))
        return sorted((st, v) for st, (_, v) in by_step.items())

    return fetch, list_files, history, tmp


def _clear_previous(out: Path) -> None:
    """Remove the files of an earlier report in ``out`` (its manifest lists them), nothing else."""
    man = out / MANIFEST
    if not man.is_file():
        return
    try:
        names = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for name in names:
        p = out / Path(name).name
        if p.is_file():
            p.unlink()


def write_report(suite: str, tracking_uri: Optional[str] = None, out_dir: Optional[str] = None, attach: bool = True) -> ReportResult:
    """Read ``suite`` back from MLflow, write figures, tables and report.html, attach them to the parent run.

    Args:
        suite: the suite name (the MLflow experiment name).
        tracking_uri: MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``results/mlflow.db``.
        out_dir: where to write; default ``results/<suite>/``.
        attach: also log the files as artifacts (``report/...``) of the suite's latest parent run.

    Raises:
        ConfigError: unknown suite or empty store (one line naming the store and the suites in it).
    """
    from mlflow.tracking import MlflowClient

    from bench.tracking import _local_sqlite_path, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    db = _local_sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"--tracking-uri {uri}: no such store (file {db} does not exist); run a suite first or pass the right --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    runs = load_suite_runs(client, suite, uri)
    for c in runs.failed:
        log.warning("cell %s %s (%s): left out of the report", c.name, c.status, c.tags.get("error", "no error tag"))
    out = Path(out_dir) if out_dir else Path("results") / suite
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    settings = group_settings(runs.cells)
    fetch, list_files, history, tmp = _store_access(client)
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    ctx = ReportContext(runs, settings, fetch, list_files, history, out, {s.key: cmap(i % cmap.N) for i, s in enumerate(settings)})
    items: list[Figure | Skipped] = []
    try:
        for make in FIGURES:
            try:
                got = make(ctx) if settings else Skipped(make.__name__, "no FINISHED cell")
            except Exception as exc:  # one broken figure must not cost the review board the others
                log.error("figure %s failed: %s: %s", make.__name__, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                plt.close("all")
                got = Skipped(make.__name__, f"drawing failed: {type(exc).__name__}: {exc}")
            items += got if isinstance(got, list) else [got]
    finally:
        tmp.cleanup()
    figures = tuple(i for i in items if isinstance(i, Figure))
    skipped = tuple(i for i in items if isinstance(i, Skipped))
    files, table = write_summary(settings, out)
    (out / "report.html").write_text(render_html(runs, settings, items, table, out), encoding="utf-8")
    files = [f.file for f in figures] + files + ["report.html"]
    (out / MANIFEST).write_text(json.dumps(files), encoding="utf-8")
    if attach and runs.parent_run_id:
        for f in files:
            client.log_artifact(runs.parent_run_id, str(out / f), "report")
    elif attach:
        log.warning("suite %s has no parent run; the report was not attached to MLflow", suite)
    return ReportResult(out, tuple(files), figures, skipped, runs.failed, runs.parent_run_id if attach else None, len(settings))
