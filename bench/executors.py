"""Running suite cells elsewhere than in the CLI's own process: a local process pool or Ray.

Design: *workers compute, one process writes*. A worker runs :func:`bench.runner.run_cell`
against a :class:`RecordingCellLog` (params, metrics with their steps, tags and artifacts as
bytes, in call order) and sends it back; the parent process replays each finished cell into
the cell's run (:func:`record_outcome`), logging everything and ending it FINISHED — or FAILED
with an ``error`` tag when the cell raised. So:

* there is exactly one writer per ``privbench`` process, hence no SQLite lock contention
  between workers and no half-written metrics from a worker that died or was interrupted;
* a cell that never finished ends KILLED or FAILED (its claim, below) and runs again on resume;
* Ray workers need no access to the MLflow server (only the driver talks to it).

The price: a cell's metrics appear in MLflow when the cell ends, not round by round
(``--workers 1`` keeps live streaming, see ``bench.cli``).

Cells are handed out lazily: an executor keeps at most its number of workers in flight and
calls ``claim(task)`` (:meth:`bench.tracking.MlflowTracker.claim`) right before it submits a
cell, so a cell is claimed in the store only when it starts, and another ``privbench`` process
on the same store takes the cells this one has not started. Signals: workers ignore SIGINT and
SIGTERM (the parent decides: it kills them, ``close(cancel=True)``), and on Linux each worker
dies with its fork server, which dies with the parent, so a ``privbench`` killed with SIGKILL
leaves no worker behind.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from bench.memlog import CellLog
from bench.types import ConfigError

log = logging.getLogger(__name__)

# Threads torch may use inside one cell. Cells are small (tabular MLPs, a small CNN), so one
# thread per cell and one cell per core is faster than N cells fighting over cores with N
# thread pools each; it also makes results independent of the worker count (a matmul's
# reduction order can depend on the number of threads).
CELL_THREADS = 1

# Imported once in the fork server, before any worker is forked, so that every worker shares
# them copy-on-write instead of importing its own copy: the pipeline, torch's lazily imported
# compiler stack (the first optimizer pulls it in, ~1 s), matplotlib's pyplot (every cell with
# an attack renders its ROC figure: ~20 MB and 0.3 s per worker otherwise) and Opacus.
WORKER_PRELOAD = ("bench.runner", "torch._dynamo", "matplotlib.pyplot", "opacus")

# What one local worker holds of its own at its peak (USS: pages no other process shares) and
# what their fork server holds, in MB: measured on experiments/membership.yaml (tabular MLPs,
# 16 reference federations; docs/bench-scale.md, "Memory with workers") and rounded up. A floor,
# not an estimate: image models and larger data need more, so ``--workers N`` is refused only
# when even this cannot fit in the memory available (:func:`check_workers_memory`).
WORKER_MEMORY_MB = 100
FORK_SERVER_MEMORY_MB = 350


# --------------------------------------------------------------------------- recording


class RecordingCellLog(CellLog):
    """A :class:`~bench.tracking.CellLog` that keeps every call, in order, in memory.

    Picklable, so a worker process can send it back; :meth:`replay` writes the same calls,
    in the same order, into another CellLog (e.g. an MLflow child run).
    """

    def __init__(self, events: Any = None) -> None:
        # anything with append(): a list here, a pipe to the parent for bench.early's child
        self.events = [] if events is None else events

    def params(self, params: Mapping[str, Any]) -> None:
        self.events.append(("params", dict(params)))

    def metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.events.append(("metrics", {k: float(v) for k, v in metrics.items() if v is not None}, step))

    def tags(self, tags: Mapping[str, str]) -> None:
        self.events.append(("tags", {k: str(v) for k, v in tags.items()}))

    def text(self, text: str, path: str) -> None:
        self.events.append(("text", text, path))

    def bytes(self, data: bytes, path: str) -> None:
        self.events.append(("bytes", bytes(data), path))

    def replay(self, out: CellLog) -> None:
        """Make the same calls on ``out``, in the order they were made here."""
        for event in self.events:
            self.apply(event, out)

    @staticmethod
    def apply(event: tuple, out: CellLog) -> None:
        """Make one recorded call on ``out``."""
        kind, *payload = event
        getattr(out, kind)(*payload)

    def metric_history(self) -> dict[str, list[tuple[Optional[int], float]]]:
        """``{metric: [(step, value), ...]}`` in logging order."""
        hist: dict[str, list[tuple[Optional[int], float]]] = {}
        for event in self.events:
            if event[0] == "metrics":
                for k, v in event[1].items():
                    hist.setdefault(k, []).append((event[2], v))
        return hist


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class CellTask:
    """One cell to run: what a worker needs (all picklable)."""

    index: int
    name: str
    run_key: str
    config: Any  # bench.config.ExperimentConfig
    tags: Mapping[str, str] = field(default_factory=dict)
    run_id: Optional[str] = None  # the run claimed for it in the store (bench.tracking.Claim), once claimed


@dataclass(frozen=True)
class CellOutcome:
    """What came back from a worker: the recorded log, the final metrics, or the error."""

    task: CellTask
    log: RecordingCellLog
    metrics: Mapping[str, float]
    error: Optional[BaseException]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to cross a process boundary), else a RuntimeError copy."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # some exception types take constructor arguments pickle cannot restore
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def execute(task: CellTask) -> CellOutcome:
    """Run one cell against a :class:`RecordingCellLog` (in whichever process calls it).

    Exceptions from the cell are caught and returned in the outcome (with whatever was
    logged before the failure), so the parent can end the run FAILED with an ``error`` tag.
    """
    import torch

    from bench.runner import run_cell

    torch.set_num_threads(CELL_THREADS)
    rec = RecordingCellLog()
    t0 = time.perf_counter()
    try:
        result = run_cell(task.config, rec)
    except Exception as exc:  # a crashing cell ends FAILED and the suite goes on
        log.debug("cell %s failed", task.name, exc_info=True)
        outcome = CellOutcome(task, rec, {}, _portable(exc), time.perf_counter() - t0)
    else:
        outcome = CellOutcome(task, rec, dict(result.metrics), None, time.perf_counter() - t0)
        del result  # the training record, views and references: nothing the parent needs
    release_memory()
    return outcome


def release_memory() -> None:
    """Free a finished cell's leftovers and hand the freed heap back to the system.

    glibc keeps freed memory in its arenas for reuse, so a worker would otherwise hold its
    largest cell's footprint until it exits; ``malloc_trim(0)`` returns it (where there is
    no glibc, only the collection runs). Numbers are unaffected: nothing live is touched.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


# --------------------------------------------------------------------------- writing


# the signal guards live in a leaf (bench.tracking needs them too, and must not import this module)
from bench.signals import HELD_SIGNALS, _signals_ignored, hold_signals, hold_sigint  # noqa: E402,F401


def _claim_all(task: CellTask) -> Optional[CellTask]:
    return task


def record_outcome(tracker, outcome: CellOutcome) -> None:
    """Write one finished cell as a child run of ``tracker``'s suite run (parent process only).

    The run (the one claimed for the task, else a new one) ends FINISHED, or FAILED with an
    ``error`` tag, in which case the cell's original exception is raised again here (like a
    cell that ran in this process).
    """
    with hold_signals():
        with tracker.cell(outcome.task.name, outcome.task.tags, run_id=outcome.task.run_id) as out:
            outcome.log.replay(out)
            if outcome.error is not None:
                raise outcome.error


# --------------------------------------------------------------------------- executors


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent (the fork server) exits."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: a killed parent may leave this worker to finish its cell
        pass


def _init_worker(threads: int) -> None:
    # What the fork server imported is shared copy-on-write with every worker until a page is
    # written, and a full garbage collection writes to every object it visits: without this,
    # each worker's first cell copied ~70 MB of the server's pages (docs/bench-scale.md, Memory
    # with workers). Frozen, the inherited objects are out of the collector's reach (they live
    # as long as the process anyway). First thing, before the worker allocates much.
    gc.freeze()
    # Ctrl-C and SIGTERM reach the whole process group; only the parent decides what happens
    # then (it kills the workers), so a worker never dies half-way through on its own. If the
    # parent itself is killed (SIGKILL), its fork server exits and takes the workers with it.
    for s in HELD_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)


def _mp_context():
    # fork after torch is imported is fragile (thread pools, locks); a forkserver that has
    # pre-imported the pipeline forks clean, warm workers; spawn where there is none (Windows)
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))  # once in the server instead of once per worker
        return ctx
    return multiprocessing.get_context("spawn")


def available_memory_mb() -> Optional[float]:
    """Memory this process may still take, in MB, or None where unknown (not Linux).

    ``MemAvailable`` of ``/proc/meminfo``, lowered to the headroom of a cgroup v2 memory limit
    (a container's ``memory.max`` minus ``memory.current``) where there is one.
    """
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) / 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read().strip())
        if limit != "max":
            avail = min(avail, (int(limit) - current) / 2**20)
    except (OSError, ValueError):  # no cgroup v2 limit: the machine's memory is the bound
        pass
    return avail


def check_workers_memory(workers: int, available_mb: Optional[float] = None) -> None:
    """Refuse ``--workers N`` when N workers and their fork server cannot fit in memory.

    Uses the measured floor per worker (:data:`WORKER_MEMORY_MB`) and for the fork server
    (:data:`FORK_SERVER_MEMORY_MB`): refused here means the suite would surely run out of memory
    (cells killed half-way); passing does not promise that larger models fit.

    Args:
        workers: the number of worker processes asked for.
        available_mb: memory available in MB; None reads it (:func:`available_memory_mb`), and
            where that is unknown nothing is checked.

    Raises:
        ConfigError: one line with the memory needed and available and the largest
            ``--workers`` that fits.
    """
    avail = available_memory_mb() if available_mb is None else available_mb
    if avail is None:
        return
    need = workers * WORKER_MEMORY_MB + FORK_SERVER_MEMORY_MB
    if need <= avail:
        return
    fit = int((avail - FORK_SERVER_MEMORY_MB) // WORKER_MEMORY_MB)
    fix = f"use --workers {fit} or fewer" if fit >= 2 else "run without --workers (cells in this process) or free memory"
    raise ConfigError(f"--workers {workers}: {workers} worker processes and their fork server need at least {need / 1024:.1f} GB "
                      f"({WORKER_MEMORY_MB} MB each of their own and {FORK_SERVER_MEMORY_MB} MB shared, measured on small tabular "
                      f"models; bigger ones need more) but {avail / 1024:.1f} GB of memory is available; {fix}")


class LocalExecutor:
    """Cells in ``workers`` processes on this machine (``privbench run --workers N``).

    Workers are forked from a fork server that has imported the pipeline (:data:`WORKER_PRELOAD`),
    and share its memory copy-on-write; ``--workers N`` is refused up front when N of them cannot
    fit in the memory available (:func:`check_workers_memory`).

    Args:
        workers: number of worker processes (>= 1).
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"--workers: got {workers}; expected a positive number of processes, e.g. --workers 2")
        check_workers_memory(workers)
        self.workers = workers
        self._pool: Optional[ProcessPoolExecutor] = None

    def describe(self) -> str:
        return f"{self.workers} local worker process(es)"

    def warm(self) -> None:
        """Start the fork server now, so its imports overlap the parent's own start-up.

        It starts with SIGINT and SIGTERM ignored (an exec keeps ignored signals ignored): a
        Ctrl-C or SIGTERM to the process group while it imports torch would otherwise kill it
        and the parent's next submit() with it; the parent alone decides (it ends the pool).
        """
        ctx = _mp_context()
        if ctx.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            with _signals_ignored():
                forkserver.ensure_running()

    def run(self, tasks: Sequence[CellTask], claim: Callable[[CellTask], Optional[CellTask]] = _claim_all) -> Iterator[CellOutcome]:
        """Yield each task's outcome as soon as it is finished (in completion order).

        At most ``workers`` cells are in flight; ``claim(task)`` is called right before a task is
        submitted and returns the task to run (with its claimed run) or ``None`` to skip it.
        """
        if not tasks:
            return
        self.warm()  # (already running when the CLI warmed it)
        self._pool = ProcessPoolExecutor(
            max_workers=min(self.workers, len(tasks)),
            mp_context=_mp_context(),
            initializer=_init_worker,
            initargs=(CELL_THREADS,),
        )
        queue = list(tasks)
        futures: dict[Future, CellTask] = {}
        while queue or futures:
            broken: list[CellOutcome] = []
            while queue and len(futures) < self.workers:
                # an interrupt inside submit() could leave a worker starting that close() does not know
                with hold_signals():
                    task = claim(queue.pop(0))
                    if task is not None:
                        try:
                            futures[self._pool.submit(execute, task)] = task
                        except (BrokenProcessPool, EOFError, OSError) as exc:  # the fork server or the pool died
                            broken.append(CellOutcome(task, RecordingCellLog(), {}, RuntimeError(f"worker pool broken: {type(exc).__name__}: {exc}"), 0.0))
            yield from broken
            if not futures:
                break
            done, _ = wait(set(futures), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: futures[f].index):
                task = futures.pop(fut)
                exc = fut.exception()
                if exc is not None:  # the worker process itself died (e.g. killed for memory)
                    yield CellOutcome(task, RecordingCellLog(), {}, _portable(exc), 0.0)
                else:
                    yield fut.result()
        self.close()

    def close(self, cancel: bool = False) -> None:
        """Stop the pool; with ``cancel`` (Ctrl-C, SIGTERM) also kill the running cells at once."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            procs = list(getattr(pool, "_processes", {}).values())  # no public API stops a running task
            for p in procs:  # they ignore SIGINT and SIGTERM (see _init_worker)
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join(timeout=5)
            pool.shutdown(wait=False, cancel_futures=True)
        else:
            pool.shutdown(wait=True)


RAY_LOCAL_ENV = "PRIVBENCH_RAY_LOCAL"  # "1": the user accepts a local Ray's all-interface sockets


class RayExecutor:
    """Each cell a Ray task on a Ray cluster (``privbench run --executor ray``).

    Results come back to the driver (the ``privbench`` process), which alone writes to the
    tracking store named by ``--tracking-uri``: the cluster's workers need privbench and its
    dependencies, but no access to the MLflow server or its credentials.

    Args:
        address: Ray cluster address (``ray://host:10001`` or ``host:6379``); ``None``
            connects to the cluster in ``RAY_ADDRESS`` or starts a local Ray instance.
        max_in_flight: at most this many cells submitted at once (``--workers``); ``None``
            lets the cluster's free CPUs decide.
        ship_code: upload this checkout's ``bench``/``defenses``/``attacks`` packages with
            the job (a ``runtime_env``), so cluster nodes run exactly this code.
    """

    def __init__(self, address: Optional[str] = None, max_in_flight: Optional[int] = None, ship_code: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray: Ray is not installed; pip install 'privbench[ray]'") from None
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigError(f"--workers: got {max_in_flight}; expected a positive number of cells in flight")
        if (address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
                and os.environ.get(RAY_LOCAL_ENV, "").lower() not in ("1", "true", "yes")):
            # a local Ray gets its node address and driver on loopback and no dashboard, but Ray's own
            # gRPC servers (GCS, raylet, object manager, workers) bind every interface whatever they
            # are told: refused before anything is logged unless the user accepts that
            raise ConfigError(f"--executor ray without --address: a local Ray's gRPC servers listen on every network interface "
                              f"(Ray cannot bind them to 127.0.0.1 only); use --workers N for cells in parallel on this machine, "
                              f"--address HEAD:6379 for a cluster, or set {RAY_LOCAL_ENV}=1 to start a local Ray anyway")
        self.address = address
        self.max_in_flight = max_in_flight
        self.ship_code = ship_code
        self._started = False
        self._refs: list = []

    def warm(self) -> None:
        """Nothing to start ahead of time (connecting happens in :meth:`run`)."""

    def describe(self) -> str:
        return f"Ray at {self.address or os.environ.get('RAY_ADDRESS') or 'a local instance'}"

    def _connect(self):
        import ray

        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.ship_code:
            import attacks
            import bench
            import defenses

            kwargs["runtime_env"] = {"py_modules": [bench, attacks, defenses]}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(_node_ip_address="127.0.0.1", include_dashboard=False)  # a local Ray: loopback, no dashboard
        try:
            ray.init(address=self.address, **kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"--address {self.address!r}: cannot reach a Ray cluster there ({exc}); check the address and that `ray start --head` runs") from None
        self._started = True
        return ray

    def run(self, tasks: Sequence[CellTask], claim: Callable[[CellTask], Optional[CellTask]] = _claim_all) -> Iterator[CellOutcome]:
        """Like :meth:`LocalExecutor.run`; without ``max_in_flight``, as many cells as the cluster has CPUs."""
        if not tasks:
            return
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        queue = list(tasks)
        limit = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
        by_ref: dict = {}
        while queue or by_ref:
            while queue and len(by_ref) < limit:
                task = claim(queue.pop(0))
                if task is not None:
                    by_ref[remote.remote(task)] = task
            if not by_ref:
                break
            self._refs = list(by_ref)
            done, _ = ray.wait(list(by_ref), num_returns=1)
            for ref in done:
                task = by_ref.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the task's worker died (node lost, OOM kill)
                    yield CellOutcome(task, RecordingCellLog(), {}, _portable(exc), 0.0)
        self._refs = []
        self.close()

    def close(self, cancel: bool = False) -> None:
        import ray

        if cancel and ray.is_initialized():
            for ref in self._refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone: nothing left to stop
                    pass
        self._refs = []
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False


def _local(workers: Optional[int], address: Optional[str]) -> LocalExecutor:
    if address:
        raise ConfigError(f"--address {address!r}: only used with --executor ray; add --executor ray or drop --address")
    return LocalExecutor(1 if workers is None else workers)


def _ray(workers: Optional[int], address: Optional[str]) -> RayExecutor:
    # with a remote cluster, ship this checkout's code so every node runs the same pipeline
    return RayExecutor(address=address, max_in_flight=workers, ship_code=bool(address))


EXECUTORS = {"local": _local, "ray": _ray}


def make_executor(kind: str, workers: Optional[int] = None, address: Optional[str] = None):
    """The executor for ``--executor kind`` (a key of :data:`EXECUTORS`)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor: got {kind!r}; expected one of {', '.join(EXECUTORS)}")
    return EXECUTORS[kind](workers, address)
