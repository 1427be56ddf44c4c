"""Where results go: the MLflow tracker (default) and an in-memory tracker for tests.

MLflow layout (DESIGN.md): one experiment per suite, one parent run per invocation, one
child run per cell with the flattened config as params, tags ``suite``, ``run_key``,
``dataset``, ``defenses``, ``attacks``, ``threat_models``, ``git_sha``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("results") / "mlflow.db"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file under ``./results/``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _local_sqlite_path(uri: str) -> Optional[Path]:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


class CellLog:
    """What a running cell writes: params, metrics (with step), tags and artifacts."""

    def params(self, params: Mapping[str, Any]) -> None: ...
    def metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...
    def tags(self, tags: Mapping[str, str]) -> None: ...
    def text(self, text: str, path: str) -> None: ...
    def bytes(self, data: bytes, path: str) -> None: ...
    def figure(self, fig: Any, path: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        self.bytes(buf.getvalue(), path)


# --------------------------------------------------------------------------- in memory


class MemoryCellLog(CellLog):
    def __init__(self, name: str, tags: Mapping[str, str]) -> None:
        self.name = name
        self.status = "RUNNING"
        self.param_values: dict[str, Any] = {}
        self.metric_history: dict[str, list[tuple[Optional[int], float]]] = {}
        self.tag_values: dict[str, str] = dict(tags)
        self.artifacts: dict[str, bytes] = {}

    def params(self, params):
        self.param_values.update(params)

    def metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metric_history.setdefault(k, []).append((step, float(v)))

    def tags(self, tags):
        self.tag_values.update(tags)

    def text(self, text, path):
        self.artifacts[path] = text.encode()

    def bytes(self, data, path):
        self.artifacts[path] = data

    def final(self) -> dict[str, float]:
        return {k: v[-1][1] for k, v in self.metric_history.items()}


class MemoryTracker:
    """Keeps everything in memory (tests)."""

    def __init__(self) -> None:
        self.runs: list[MemoryCellLog] = []
        self.parent_status: Optional[str] = None

    def begin_suite(self, suite) -> None:
        self.parent_status = "RUNNING"

    def finished_keys(self, suite) -> set[str]:
        return {r.tag_values["run_key"] for r in self.runs if r.status == "FINISHED"}

    @contextmanager
    def cell(self, name: str, tags: Mapping[str, str]) -> Iterator[MemoryCellLog]:
        run = MemoryCellLog(name, tags)
        self.runs.append(run)
        try:
            yield run
        except BaseException as exc:
            run.status = "FAILED"
            run.tag_values["error"] = f"{type(exc).__name__}: {exc}"
            raise
        run.status = "FINISHED"

    def parent_log(self) -> Optional[CellLog]:
        return None

    def end_suite(self, status: str) -> None:
        self.parent_status = status


# --------------------------------------------------------------------------- MLflow


class MlflowCellLog(CellLog):
    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, metrics, step=None):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def tags(self, tags):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def text(self, text, path):
        self.client.log_text(self.run_id, text, path)

    def bytes(self, data, path):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            parent = str(Path(path).parent)
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)


class MlflowTracker:
    """Logs to an MLflow tracking store (local SQLite by default, or a server).

    Args:
        tracking_uri: MLflow tracking URI; default :func:`default_tracking_uri`.
    """

    def __init__(self, tracking_uri: Optional[str] = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        db = _local_sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.sha = git_sha()

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        db = _local_sqlite_path(self.uri)
        location = None
        if db is not None:  # keep artifacts beside the local store, not in the current directory
            location = (db.parent / "artifacts" / name).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def begin_suite(self, suite) -> None:
        self.experiment_id = self._experiment(suite.name)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{suite.name} · {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"suite": suite.name, "role": "suite", "git_sha": self.sha, "cells": str(len(suite.cells))},
        )
        self.parent_id = run.info.run_id
        import yaml

        self.client.log_text(self.parent_id, yaml.safe_dump(suite.source, sort_keys=False), "suite.yaml")

    def finished_keys(self, suite) -> set[str]:
        exp = self.client.get_experiment_by_name(suite.name)
        if exp is None:
            return set()
        keys: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs(
                [exp.experiment_id],
                filter_string="attributes.status = 'FINISHED' and tags.role = 'cell'",
                max_results=1000,
                page_token=token,
            )
            keys |= {r.data.tags.get("run_key") for r in page if r.data.tags.get("run_key")}
            token = page.token
            if not token:
                return keys

    @contextmanager
    def cell(self, name: str, tags: Mapping[str, str]) -> Iterator[MlflowCellLog]:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={**tags, "role": "cell", "git_sha": self.sha, "mlflow.parentRunId": self.parent_id},
        )
        rid = run.info.run_id
        try:
            yield MlflowCellLog(self.client, rid)
        except BaseException as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
            try:
                self.client.set_tag(rid, "error", msg)
            finally:
                self.client.set_terminated(rid, status="FAILED")
            raise
        self.client.set_terminated(rid, status="FINISHED")

    def parent_log(self) -> Optional[CellLog]:
        return MlflowCellLog(self.client, self.parent_id) if self.parent_id else None

    def end_suite(self, status: str) -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
