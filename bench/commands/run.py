"""``privbench run``: claim each cell in the store, run it here or on workers, print the summary.

A cell is claimed right before it runs (``bench.claims``), so that two processes on one store
never run it twice; cells run one after another in this process (streaming metrics round by
round) or on an executor (``--workers``, ``--executor ray``). Interrupts end the running cells
KILLED; a store that stops answering stops the suite (``bench.store.StoreError``).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Optional

from bench.commands.common import EXIT_FAILED_CELLS, EXIT_INTERRUPTED, _reaped_line, log
from bench.commands.summary import SummaryRow, _finished_row, _summary_table
from bench.types import ConfigError


def _cell_tags(suite, cell, source: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    from bench.components import component_class
    from bench.data import dataset_display_name

    cfg = cell.config
    tms = sorted({component_class("attack", a.name).threat_model for a in cfg.attacks})
    return {
        "suite": suite.name,
        "run_key": cell.run_key,
        "dataset": dataset_display_name(cfg.data),
        "model": cfg.model.name,
        "defenses": "+".join(d.name for d in cfg.defenses) or "none",
        "attacks": "+".join(a.name for a in cfg.attacks) or "none",
        "threat_models": "+".join(tms) or "none",
        "seed": str(cfg.seed),
        # what the data is (file digest / package version): part of run_key, so changed data reruns the cell
        "data_fingerprint": cfg.data_fingerprint or "unknown",
        # the seeds of one defense setting share this tag: "Group by" it in the MLflow UI to see
        # mean and spread over seeds; at most 40 characters and unique per setting in the suite
        # (bench.suite.short_label), the full label in full_name, the setting's hash in setting_key
        "setting": cell.short_setting,
        "full_name": f"{cell.setting} · seed {cfg.seed}",
        "setting_key": cfg.setting_key[:12],
        **(source or {}),
    }


def _logged_tags(events) -> dict[str, str]:
    """The tags a worker's recorded cell log holds (a :class:`~bench.executors.RecordingCellLog`'s events)."""
    out: dict[str, str] = {}
    for event in events:
        if event[0] == "tags":
            out.update(event[1])
    return out


def _log_cell_error(name: str, exc: BaseException, verbose: bool) -> None:
    if isinstance(exc, ConfigError):
        log.error("cell %s failed: %s", name, exc)
    else:
        log.error("cell %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=verbose)


@dataclass
class _Progress:
    """What one invocation did with its cells: rows of the summary, failures, cells left to others."""

    rows: dict = field(default_factory=dict)
    failed: int = 0
    elsewhere: list = field(default_factory=list)  # (cell name, why another process has it)
    started: float = 0.0  # time.time() at the start: --no-resume ignores FINISHED runs older than this


def _claim(args, tracker, progress: _Progress, name: str, tags: Mapping[str, str], bar, cfg=None) -> Optional[str]:
    """Claim the cell in the store right before it runs; None (and a note) when another process has it.
    A claimed run gets its data as an MLflow dataset input (the Dataset column: name and digest)."""
    got = tracker.claim(name, tags, ignore_finished_before=progress.started if args.no_resume else None)
    if got.run_id is None:
        progress.elsewhere.append((name, got.reason))
        bar.update(1)
    elif cfg is not None:
        tracker.log_dataset(got.run_id, cfg)
    return got.run_id


def _source_tags(args) -> dict[str, str]:
    """MLflow's own source tags (Source and Version columns): the suite file and the git commit."""
    from bench.mlflow_view import source_tags
    from bench.tracking import git_sha

    return source_tags(args.suite, git_sha())


def _run_here(args, suite, todo, tracker, bar, progress: _Progress, early=None) -> None:
    """Cells one after another in this process, streaming metrics round by round (the first
    one possibly from the child ``bench.early`` started before the store was open)."""
    from tqdm import tqdm

    from bench.store import StoreError

    source = _source_tags(args)
    for cell in todo:
        tags = _cell_tags(suite, cell, source)
        mine = early if early is not None and early.run_key == cell.run_key else None
        run_id = _claim(args, tracker, progress, cell.name, tags, bar, cell.config)
        if run_id is None:
            if mine is not None:
                mine.cancel()  # another process took it
            continue
        rounds = tqdm(total=cell.config.train.rounds, desc="  rounds", leave=False, file=sys.stderr, disable=args.quiet)
        bar.set_postfix_str(cell.name[:60])
        try:
            with tracker.cell(cell.name, tags, run_id=run_id) as out:
                if mine is not None:
                    result = mine.stream_into(out, on_round=lambda: rounds.update(1),
                                              on_phase=lambda name: rounds.set_description_str(f"  {name}"))
                else:
                    from bench.runner import run_cell

                    result = run_cell(cell.config, out, on_round=lambda r: rounds.update(1),
                                      on_phase=lambda name: rounds.set_description_str(f"  {name}"))
            progress.rows[cell.index] = _finished_row(cell.name, result.metrics, result.tags)
        except (KeyboardInterrupt, SystemExit, StoreError):
            raise
        except Exception as exc:  # a crashing cell ends FAILED and the suite goes on
            progress.failed += 1
            progress.rows[cell.index] = SummaryRow(cell.name, "FAILED")
            _log_cell_error(cell.name, exc, args.verbose)
        finally:
            rounds.close()
        bar.update(1)


def _run_elsewhere(args, suite, todo, tracker, bar, progress: _Progress, executor) -> None:
    """Cells on ``executor`` (worker processes or Ray); this process alone writes the runs."""
    from dataclasses import replace

    from bench.executors import CellTask, record_outcome
    from bench.store import StoreError

    def claim(task: CellTask) -> Optional[CellTask]:
        run_id = _claim(args, tracker, progress, task.name, task.tags, bar, task.config)
        return None if run_id is None else replace(task, run_id=run_id)

    source = _source_tags(args)
    tasks = [CellTask(c.index, c.name, c.run_key, c.config, _cell_tags(suite, c, source)) for c in todo]
    for outcome in executor.run(tasks, claim=claim):
        name = outcome.task.name
        try:
            record_outcome(tracker, outcome)
            progress.rows[outcome.task.index] = _finished_row(name, outcome.metrics, _logged_tags(outcome.log.events))
        except (KeyboardInterrupt, SystemExit, StoreError):
            raise
        except Exception as exc:  # the cell's own error (run ended FAILED) or a failed write
            progress.failed += 1
            progress.rows[outcome.task.index] = SummaryRow(name, "FAILED", seconds=outcome.seconds)
            _log_cell_error(name, exc, args.verbose)
        bar.set_postfix_str(name[:60])
        bar.update(1)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (``kill``, a scheduler, ``docker stop``) ends the suite like Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored():
    """No second Ctrl-C or SIGTERM while an interrupted suite ends its runs (bounded: the store's timeouts)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _log_comparisons(tracker, suite_name: str) -> str:
    """Log every defense's paired comparison with no defense (same seeds) to MLflow; one line."""
    from bench.report import log_comparisons

    try:
        comps = log_comparisons(tracker, suite_name)
    except ConfigError as exc:
        return f"paired comparisons: none ({exc})"
    if not comps:
        return "paired comparisons: none (no defense setting shares seeds and settings with a no-defense cell)"
    found = [c for c in comps if c.diff.verdict in ("lower", "higher")]
    names = "".join(f"\n  {c.setting}: {c.metric} {c.diff.verdict} ({c.diff.mean:+.3f} [{c.diff.low:+.3f}, {c.diff.high:+.3f}])"
                    for c in found)
    return (f"paired comparisons vs. no defense (same seeds): {len(comps)} logged to MLflow (compare/...), "
            f"{len(found)} with a detectable difference{':' if found else ''}{names}")


@contextmanager
def _bars_keep_logs():
    """Log lines and Python warnings are written above the progress bars, not into them."""
    import warnings

    from tqdm.contrib.logging import logging_redirect_tqdm

    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")  # a warning repeated every round is shown once per run
            with logging_redirect_tqdm(loggers=[logging.getLogger(), logging.getLogger("py.warnings")]):
                yield
    finally:
        logging.captureWarnings(False)


def cmd_run(args) -> int:
    with _sigterm_as_interrupt():
        return _cmd_run(args)


def _cmd_run(args) -> int:
    import time

    from bench.suite import filter_cells, load_suite

    started = time.time()
    suite = filter_cells(load_suite(args.suite, args.set), args.only)  # all validation happens here
    if args.executor == "local":  # (Ray nodes hold their own copy of the data; this machine may not)
        from bench.data import check_data

        check_data(c.config for c in suite.cells)  # missing or broken data fails here, before anything is logged
    early = None
    if args.executor == "local" and args.workers in (None, 1) and not args.address and suite.cells:
        from bench import early as early_cells

        early = early_cells.start(suite.cells[0])  # overlaps the store's set-up below (bench/early.py)
    try:
        return _run_validated(args, suite, started, early)
    finally:
        if early is not None:
            early.cancel()  # not consumed (already finished, another process's, an error): dropped


def _run_validated(args, suite, started: float, early) -> int:
    import torch
    from tqdm import tqdm

    from bench.executors import CELL_THREADS, make_executor
    from bench.store import StoreError
    from bench.tracking import MlflowTracker

    executor = None
    if args.executor != "local" or args.workers not in (None, 1) or args.address:
        executor = make_executor(args.executor, args.workers, args.address)  # bad options fail before logging
    tracker = MlflowTracker(args.tracking_uri)  # a bad or unreachable store fails here (one line, exit 2)
    if executor is not None:
        executor.warm()
    reaped = tracker.reap_gone(suite.name)
    if reaped:
        print(_reaped_line(reaped), file=sys.stderr)
    done = set() if args.no_resume else tracker.finished_keys(suite)
    todo = [c for c in suite.cells if c.run_key not in done]
    if early is not None and (not todo or todo[0].run_key != early.run_key):
        early.cancel()  # the first cell was finished before: the early start was wasted, not logged
    print(f"suite {suite.name!r}: {len(suite.cells)} cells, {len(suite.cells) - len(todo)} already finished, {len(todo)} to run")
    print(f"tracking: {tracker.uri}")
    if not todo:
        print("nothing to do (delete the runs or pass --no-resume to run again)")
        return 0
    if executor is not None:
        print(f"executor: {executor.describe()}")
    progress = _Progress(started=started)
    threads = torch.get_num_threads()
    bar = None
    try:
        tracker.begin_suite(suite)
        bar = tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr, disable=args.quiet)
        # same per-cell thread count as the workers: results do not depend on --workers
        torch.set_num_threads(CELL_THREADS)
        with _bars_keep_logs():
            if executor is None:
                _run_here(args, suite, todo, tracker, bar, progress, early)
            else:
                _run_elsewhere(args, suite, todo, tracker, bar, progress, executor)
    except KeyboardInterrupt as exc:
        how = exc.args[0] if exc.args else "SIGINT"
        with _signals_ignored():
            if executor is not None:
                executor.close(cancel=True)
            if bar is not None:
                bar.close()
            tracker.end_suite("KILLED", f"interrupted ({how}); the cell runs again next time")
        print(f"interrupted ({how}): finished cells are logged; the running ones ended KILLED and run again next time", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StoreError as exc:
        if executor is not None:
            executor.close(cancel=True)
        if bar is not None:
            bar.close()
        tracker.end_suite("FAILED")  # writes nothing: the store is gone
        kept = sum(r.status == "FINISHED" for r in progress.rows.values())
        print(f"privbench: error: {exc}; the suite stopped: {kept} cell(s) finished in this invocation are kept, the cell(s) it was "
              "running stay RUNNING until the next `privbench run` or `report` marks them FAILED; run the same command again when the "
              "store is back", file=sys.stderr)
        return EXIT_FAILED_CELLS
    finally:
        torch.set_num_threads(threads)
    bar.close()
    tracker.end_suite("FAILED" if progress.failed else "FINISHED")
    if progress.rows:
        print(_summary_table([progress.rows[i] for i in sorted(progress.rows)]))
    if progress.elsewhere:
        names = "; ".join(f"{n} ({why})" for n, why in progress.elsewhere)
        print(f"{len(progress.elsewhere)} cell(s) left to another privbench process on this store: {names}")
    print(_log_comparisons(tracker, suite.name))
    tracker.save_view()
    where = "" if args.tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ else f" --tracking-uri {tracker.uri}"
    print(f"next: `privbench ui{where}` to compare the runs, `privbench report --suite {suite.name}{where}` for the figures")
    if progress.failed:
        print(f"{progress.failed} cell(s) FAILED (see the 'error' tag of each run); run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0
