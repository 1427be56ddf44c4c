"""Reading a suite's cells back from MLflow and grouping them into defense settings."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from bench.types import ConfigError
from bench.report.families import DELTA, EPSILON, PER_SEED_PARAMS, PER_SEED_PARAM_PREFIXES, SEED_SUFFIX, headline, within_cell_interval
from bench.report.stats import Estimate, is_proportion, t_interval

log = logging.getLogger(__name__)


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
class LeftOut:
    """A cell of the suite that is not in the report, and why.

    Attributes:
        name: the cell's run name.
        run_key: its ``run_key``.
        status: ``FAILED``, ``KILLED`` (interrupted), ``RUNNING`` (still running somewhere) or
            ``missing`` (planned by an invocation of the suite, but no run in the store).
        reason: the run's ``error`` tag, who runs it, or why it is missing.
    """

    name: str
    run_key: str
    status: str
    reason: str


@dataclass(frozen=True)
class SuiteRuns:
    """The cells of a suite: the latest FINISHED run per ``run_key``, and the cells left out.

    ``failed`` holds FAILED/KILLED cells without a FINISHED run; ``running`` the RUNNING ones;
    ``missing`` the cells an invocation planned (its ``cells.json``) that have no run at all.
    """

    suite: str
    uri: str
    experiment_id: str
    parent_run_id: Optional[str]
    cells: tuple[CellRun, ...]
    failed: tuple[CellRun, ...]
    running: tuple[CellRun, ...] = ()
    missing: tuple[LeftOut, ...] = ()

    @property
    def left_out(self) -> tuple[LeftOut, ...]:
        """Every cell not in the report, with its status and the reason."""
        from bench.claims import owner_text

        out = [LeftOut(c.name, c.run_key, c.status, c.tags.get("error", "no error tag")) for c in self.failed]
        out += [LeftOut(c.name, c.run_key, "RUNNING", f"running in {owner_text(c.tags)}") for c in self.running]
        return tuple(out) + self.missing


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


def running_cells(runs: Iterable[CellRun], finished: Sequence[CellRun]) -> tuple[CellRun, ...]:
    """RUNNING runs of keys that have no FINISHED run (one per key, the latest)."""
    done = {c.run_key for c in finished}
    latest: dict[str, CellRun] = {}
    for r in sorted(runs, key=lambda r: r.start_time):
        if r.status == "RUNNING" and r.run_key not in done:
            latest[r.run_key] = r
    return tuple(latest.values())


# how many of the latest invocations' planned cells (``cells.json`` of their parent runs) count
PLANNED_FROM_INVOCATIONS = 20


def planned_cells(client, parents: Sequence) -> dict[str, str]:
    """``run_key -> name`` of the cells the given parent runs set out to run (their ``cells.json``)."""
    planned: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="privbench-cells-") as tmp:
        for i, p in enumerate(parents[:PLANNED_FROM_INVOCATIONS]):
            try:
                local = client.download_artifacts(p.info.run_id, "cells.json", str(Path(tmp) / str(i)))
                items = json.loads(Path(local).read_text(encoding="utf-8"))
            except Exception as exc:  # an invocation from before cells.json, or an unreadable artifact
                log.debug("cells.json of run %s: %s", p.info.run_id, exc)
                continue
            for item in items:
                if isinstance(item, dict) and item.get("run_key"):
                    planned.setdefault(str(item["run_key"]), str(item.get("name", item["run_key"])))
    return planned


def missing_cells(planned: Mapping[str, str], runs: Sequence[CellRun]) -> tuple[LeftOut, ...]:
    """Planned cells with no run at all (neither by ``run_key`` nor by name)."""
    keys = {r.run_key for r in runs}
    names = {r.name for r in runs}
    return tuple(
        LeftOut(name, key, "missing", "no run in the store: never started, or its process was stopped before it began")
        for key, name in planned.items()
        if key not in keys and name not in names
    )


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
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'suite'", order_by=["attributes.start_time DESC"],
                                 max_results=PLANNED_FROM_INVOCATIONS)
    missing = missing_cells(planned_cells(client, parents), runs)
    return SuiteRuns(suite, uri, exp.experiment_id, parents[0].info.run_id if parents else None, cells, failed,
                     running_cells(runs, cells), missing)



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

    @property
    def is_baseline(self) -> bool:
        """No defense: what every other setting is compared with."""
        return self.cells[0].params.get("defenses", self.cells[0].tags.get("defenses", "")) in ("none", "")

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(c.seed for c in self.cells)

    def values(self, metric: str) -> np.ndarray:
        vals = [c.head.get(metric) for c in self.cells]
        return np.asarray([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)

    def stat(self, metric: str) -> Optional[tuple[float, float, int]]:
        """(mean, std, n) over seeds; std is the sample std (0 for a single seed); None if absent."""
        v = self.values(metric)
        if v.size == 0:
            return None
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)

    def estimate(self, metric: str) -> Optional[Estimate]:
        """Mean over seeds with its 95 % t-interval; with one seed, the cell's own interval if it logged one."""
        est = t_interval(self.values(metric), (0.0, 1.0) if is_proportion(metric) else None)
        if est is not None and est.n == 1:
            cell = next(c for c in self.cells if metric in c.head)
            ci = within_cell_interval(cell.head, metric)
            if ci is not None:
                return Estimate(est.mean, ci[0], ci[1], 1, "within-cell interval, 1 seed")
        return est

    def epsilon_label(self) -> str:
        """``ε 4.0 (δ 1e-05)`` over seeds, or "" for a setting without ε; ε is never shown without its δ."""
        eps, delta = self.stat(EPSILON), self.stat(DELTA)
        if eps is None:
            return ""
        d = f"δ {delta[0]:.1g}" if delta is not None else "δ not logged"
        weak = "; weak guarantee" if any(c.tags.get("dp_weak_guarantee") == "true" for c in self.cells) else ""  # reason: tag dp_weak_guarantee_reason
        return f"ε {eps[0]:.3g} ({d}{weak})"

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

