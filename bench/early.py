"""The suite's first cell starts in a forked child while this process opens the store.

Start-up of a one-cell ``privbench run`` is mostly imports: torch, then MLflow and its
SQLAlchemy store (~1.8 s of CPU), then the cell's own pipeline (scikit-learn and the rest of
``bench.runner``, ~0.9 s) and its training. Done one after the other they cost about twice a
bare PyTorch loop of the same work (docs/bench-scale.md). Here, once the suite is validated
and its data checked (torch is imported by then), :func:`start` forks a child that imports the
pipeline and runs the first cell, while the parent imports MLflow, opens the store, reaps stale
runs and claims the cell: the two halves overlap on two cores.

Nothing reaches the store from the child. It runs :func:`bench.runner.run_cell` against a log
that sends every call (params, metrics, tags, artifacts), each finished round and each phase
through a pipe; the parent replays them into the run it claimed, as they arrive — metrics still
stream round by round and the progress bars move as for a cell run in-process. If the cell is
not the parent's to run (already FINISHED in the store, claimed by another ``privbench``, a
store error, an interrupt), the parent kills the child and what it computed is dropped, never
logged. The child ignores SIGINT/SIGTERM (the parent decides, as for the worker processes) and
dies with the parent (``PR_SET_PDEATHSIG``).

Numbers are the same as in-process: the child runs the same ``run_cell`` on the same config
with the same thread count (``CELL_THREADS``). Only on Linux with at least two CPUs, for the
local in-process executor (``--workers 1``), and not when ``PRIVBENCH_EARLY_CELL=0``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from bench.memlog import CellLog

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether to start the first cell early on this machine."""
    if os.environ.get("PRIVBENCH_EARLY_CELL", "1").strip() in ("0", "false", "no", "off"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return False
    return sys.platform.startswith("linux") and cpus >= 2


class _ToParent:
    """The child's RecordingCellLog keeps no events: each one goes through the pipe, in order."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def append(self, event: tuple) -> None:
        self.conn.send(("log", event))


@dataclass(frozen=True)
class StreamedResult:
    """What the CLI reads from a finished cell (``bench.runner.CellResult``'s summary part)."""

    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)


def _child(cfg: Any, conn) -> None:
    from bench.executors import CELL_THREADS, RecordingCellLog, _portable

    import torch

    torch.set_num_threads(CELL_THREADS)
    from bench.runner import run_cell

    try:
        result = run_cell(cfg, RecordingCellLog(events=_ToParent(conn)), on_round=lambda r: conn.send(("round",)),
                          on_phase=lambda name: conn.send(("phase", name)))
    except Exception as exc:  # the cell's own failure: the parent ends the run FAILED with it
        log.debug("early cell failed", exc_info=True)
        conn.send(("error", _portable(exc)))
        return
    conn.send(("done", dict(result.metrics), dict(result.tags)))


class EarlyCell:
    """A cell running in a forked child (see the module docstring). Use :func:`start`."""

    def __init__(self, pid: int, conn, run_key: str) -> None:
        self.pid = pid
        self.conn = conn
        self.run_key = run_key
        self._open = True

    def stream_into(self, out: CellLog, on_round: Callable[[], None], on_phase: Callable[[str], None]) -> StreamedResult:
        """Replay the child's log into ``out`` as it arrives; return at the cell's end, or raise
        the cell's own exception (or a RuntimeError when the child died without a word)."""
        from bench.executors import RecordingCellLog, hold_signals

        try:
            while True:
                try:
                    msg = self.conn.recv()
                except EOFError:
                    code = self._reap()
                    raise RuntimeError(f"the cell's process ended without finishing the cell (exit status {code}); "
                                       "killed, e.g. for memory?") from None
                kind = msg[0]
                if kind == "log":
                    # the child computes faster than the store writes, so this process spends
                    # its time inside writes: an interrupt waits for the write to end (as in
                    # bench.executors.record_outcome), never leaving a transaction half done
                    with hold_signals():
                        RecordingCellLog.apply(msg[1], out)
                elif kind == "round":
                    on_round()
                elif kind == "phase":
                    on_phase(msg[1])
                elif kind == "done":
                    self._reap()
                    return StreamedResult(msg[1], msg[2])
                elif kind == "error":
                    self._reap()
                    raise msg[1]
        except BaseException:
            self.cancel()
            raise

    def _reap(self) -> Optional[int]:
        self._open = False
        try:
            self.conn.close()
        finally:
            try:
                _, status = os.waitpid(self.pid, 0)
                return os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                return None

    def cancel(self) -> None:
        """Kill the child (if still running) and drop what it computed."""
        if not self._open:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()


def start(cell: Any) -> Optional[EarlyCell]:
    """Fork a child that runs ``cell`` (a ``bench.suite`` cell: ``config``, ``run_key``) and
    streams it back; None where early cells are off (:func:`enabled`) or the fork failed."""
    if not enabled():
        return None
    import multiprocessing

    from bench.executors import HELD_SIGNALS, _die_with_parent

    recv, send = multiprocessing.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        log.debug("no early cell: fork failed: %s", exc)
        recv.close()
        send.close()
        return None
    if pid == 0:  # the child: never returns into the CLI
        code = 0
        try:
            recv.close()
            for s in HELD_SIGNALS:
                signal.signal(s, signal.SIG_IGN)
            _die_with_parent()
            _child(cell.config, send)
        except BaseException:  # e.g. the parent went away (broken pipe): nothing to report to
            code = 1
        finally:
            try:
                send.close()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    send.close()
    return EarlyCell(pid, recv, cell.run_key)
