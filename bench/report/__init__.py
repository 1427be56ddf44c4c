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
* privacy: ``privacy/epsilon`` with ``privacy/delta``, the audits' ``audit/<name>/...``.

A *defense setting* is the set of FINISHED cells whose configs differ only in the seed;
every number shown is the mean over its seeds with a 95 % interval, and every defense is
compared with no defense on the same seeds (:mod:`bench.report.compare`): only those paired
verdicts name anything "lower", "higher" or "on the front". One seed: the report says on every
page and figure that it is indicative only. A figure whose data is absent is skipped with a
note; it is never drawn empty.

The parts: :mod:`~bench.report.load` (reading MLflow, settings), :mod:`~bench.report.families`
(metric names), :mod:`~bench.report.stats` (intervals, verdicts, Pareto), :mod:`~bench.report.compare`
(paired comparisons and their MLflow logging), :mod:`~bench.report.figures`, :mod:`~bench.report.html`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.types import ConfigError
from bench.report.compare import Comparison, comparison_records, log_comparisons, paired_comparisons, pairing_key, write_comparisons_to
from bench.report.decision import DecisionTable, decision_html, decision_table, write_decision
from bench.report.fairness import fairness_report
from bench.report.families import ATTACK_AXES, attack_names, headline
from bench.report.figures import FIGURES, Figure, ReportContext, Skipped, _plt
from bench.report.html import render_html, write_comparisons, write_summary
from bench.report.load import CellRun, LeftOut, Setting, SuiteRuns, _store_access, group_settings, latest_per_key, load_suite_runs
from bench.report.stats import Difference, Estimate, paired_difference, pareto_by_verdicts, pareto_mask, t_interval, verdict

__all__ = [
    "ATTACK_AXES", "CellRun", "Comparison", "DecisionTable", "Difference", "Estimate", "Figure", "LeftOut", "ReportResult", "Setting", "Skipped",
    "SuiteRuns", "attack_names", "comparison_records", "decision_table", "group_settings", "headline", "latest_per_key", "load_suite_runs",
    "log_comparisons", "paired_comparisons", "paired_difference", "pairing_key", "pareto_by_verdicts", "pareto_mask",
    "t_interval", "verdict", "write_report",
]

log = logging.getLogger(__name__)

MANIFEST = ".report-files.json"


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
    comparisons: tuple[Comparison, ...] = ()
    left_out: tuple[LeftOut, ...] = ()  # every cell not in the report: FAILED, KILLED, RUNNING or missing, with why
    in_report: int = 0  # FINISHED cells the report is made of



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


def threat_section(settings, out: Path) -> list:
    """The threat matrix (bench.report.threats) as a figure, when the suite attacks as more than one adversary."""
    from bench.report.decision import adversaries_in
    from bench.report.threats import matrix_figure, threat_matrix, verdicts

    advs = adversaries_in(settings)
    if len(advs) < 2:
        return []
    try:
        m = threat_matrix([{"row": s.label, "seed": c.seed, "metrics": dict(c.metrics), "tags": dict(c.tags)} for s in settings for c in s.cells])
        matrix_figure(m, out / "threats.png")
    except Exception as exc:  # one broken figure must not cost the review board the others
        log.error("threat matrix failed: %s: %s", type(exc).__name__, exc)
        return [Skipped("Threat matrix", f"drawing failed: {type(exc).__name__}: {exc}")]
    said = verdicts(m)
    reading = ("Rows: defense settings; columns: the adversaries this suite attacks as (" + ", ".join(advs) + "). Each cell: the strongest "
               "attack against that adversary (highest lower 95 % end above a blind guess) and the ε that still holds against it. "
               + ("; ".join(said) + "." if said else "No attack beats a blind guess at its lower 95 % end."))
    return [Figure("threats.png", "Threat matrix: what each adversary learns, and the ε that holds against it", reading)]


def write_report(suite: str, tracking_uri: Optional[str] = None, out_dir: Optional[str] = None, attach: bool = True) -> ReportResult:
    """Read ``suite`` back from MLflow, write figures, tables and report.html, attach them to the parent run.

    Args:
        suite: the suite name (the MLflow experiment name).
        tracking_uri: MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``results/mlflow.db``.
        out_dir: where to write; default ``results/<suite>/``.
        attach: also log the files as artifacts (``report/...``) of the suite's latest parent run, and the
            paired comparisons as ``compare/...`` metrics and tags (see :func:`log_comparisons`).

    Raises:
        ConfigError: unknown suite or empty store (one line naming the store and the suites in it).
    """
    from mlflow.tracking import MlflowClient

    from bench.store import _local_sqlite_path, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    db = _local_sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"--tracking-uri {uri}: no such store (file {db} does not exist); run a suite first or pass the right --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    runs = load_suite_runs(client, suite, uri)
    for c in runs.left_out:
        log.info("cell %s %s (%s): left out of the report", c.name, c.status, c.reason)
    out = Path(out_dir) if out_dir else Path("results") / suite
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    settings = group_settings(runs.cells)
    fetch, list_files, history, tmp = _store_access(client)
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    comparisons = paired_comparisons(runs.cells)
    ctx = ReportContext(runs, settings, fetch, list_files, history, out, {s.key: cmap(i % cmap.N) for i, s in enumerate(settings)}, comparisons)
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
    fair = fairness_report(ctx)  # who pays: per-subgroup and per-hospital changes vs no defense (bench.report.fairness)
    items += list(fair.items)
    if settings:
        items += threat_section(settings, out)
    figures = tuple(i for i in items if isinstance(i, Figure))
    skipped = tuple(i for i in items if isinstance(i, Skipped))
    files, table = write_summary(settings, out)
    cfiles, ctable = write_comparisons(comparisons, out)
    decision = decision_table(settings, comparisons, fair.comparisons)  # the page opens with it (bench.report.decision)
    dfiles = write_decision(decision, out)
    (out / "report.html").write_text(render_html(runs, settings, items, table, out, comparisons, ctable, fair.html,
                                                 decision_html(decision)), encoding="utf-8")
    files = dfiles + [f.file for f in figures] + files + cfiles + [f for f in fair.files if not f.endswith(".png")] + ["report.html"]
    (out / MANIFEST).write_text(json.dumps(files), encoding="utf-8")
    if attach and runs.parent_run_id:
        write_comparisons_to(client, runs.parent_run_id, comparisons)  # the verdicts the report used, on the parent and each defense cell
        write_comparisons_to(client, runs.parent_run_id, fair.comparisons)
        for f in files:
            client.log_artifact(runs.parent_run_id, str(out / f), "report")
    elif attach:
        log.warning("suite %s has no parent run; the report was not attached to MLflow", suite)
    return ReportResult(out, tuple(files), figures, skipped, runs.failed, runs.parent_run_id if attach else None, len(settings), comparisons,
                        runs.left_out, len(runs.cells))
