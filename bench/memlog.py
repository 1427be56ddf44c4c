"""What a running cell writes (:class:`CellLog`), and the in-memory tracker that keeps it (tests).

:class:`CellLog` is the interface every cell log implements: params, metrics (with a step),
tags and artifacts. :class:`MemoryCellLog` and :class:`MemoryTracker` keep them in memory, with
the tracker interface of :class:`bench.tracking.MlflowTracker` (claims, cells, suite start and
end), for tests and for the executors' buffered logs.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

from bench.claims import Claim, Reaped

def _interrupt_text(exc: BaseException) -> str:
    sig = exc.args[0] if isinstance(exc, KeyboardInterrupt) and exc.args else ("SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
    return f"interrupted ({sig}); the cell runs again next time"


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

    def reap_gone(self, suite_name: str) -> list[Reaped]:
        return []

    def finished_keys(self, suite) -> set[str]:
        return {r.tag_values["run_key"] for r in self.runs if r.status == "FINISHED"}

    def claim(self, name: str, tags: Mapping[str, str], ignore_finished_before: Optional[float] = None) -> Claim:
        for r in self.runs:
            if r.tag_values.get("run_key") == tags.get("run_key") and r.status in ("FINISHED", "RUNNING"):
                return Claim(None, r.status)
        self.runs.append(MemoryCellLog(name, tags))
        return Claim(str(len(self.runs) - 1))

    @contextmanager
    def cell(self, name: str, tags: Mapping[str, str], run_id: Optional[str] = None) -> Iterator[MemoryCellLog]:
        if run_id is None:
            run = MemoryCellLog(name, tags)
            self.runs.append(run)
        else:
            run = self.runs[int(run_id)]
        try:
            yield run
        except (KeyboardInterrupt, SystemExit) as exc:
            run.status = "KILLED"
            run.tag_values["error"] = _interrupt_text(exc)
            raise
        except BaseException as exc:
            run.status = "FAILED"
            run.tag_values["error"] = f"{type(exc).__name__}: {exc}"
            raise
        run.status = "FINISHED"

    def parent_log(self) -> Optional[CellLog]:
        return None

    def log_dataset(self, run_id: str, cfg) -> None:
        """(MLflow's dataset inputs have no in-memory counterpart.)"""

    def save_view(self) -> None:
        """(No UI to save a view for.)"""

    def end_suite(self, status: str, reason: Optional[str] = None) -> None:
        for r in self.runs:
            if r.status == "RUNNING":
                r.status = "KILLED" if status == "KILLED" else "FAILED"
        self.parent_status = status
