"""``privbench``: run / validate / list / ui (and report).

Bad input ends with one line on stderr that names the problem and the fix, exit code 2,
and nothing logged.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from bench.types import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130

log = logging.getLogger("privbench")


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


# --------------------------------------------------------------------------- summary table

SUMMARY_WIDTH = 120  # the table fits a 120-column terminal (tests/test_summary.py)
SUMMARY_FPR = 0.01  # the membership column: TPR at this FPR
_INDENT = "   "
# (header line 1, header line 2, width): a value longer than its width is cut with "…"; a
# first-line header may run on over the next column when that one's first line is empty
_COLUMNS = (
    ("ε (δ)", "! = weak δ", 14),
    ("strongest MIA (by lower CI end)", "TPR@1%FPR [95% CI]", 19),
    ("", "attack", 14),
    ("audit", "ε lower bound", 17),
    ("inversion", "best result", 14),
    ("utility", "test acc (maj)", 18),  # "0.623! (maj 0.632)" whole
    ("", "sec", 5),
)
_NOTES = {
    "mia": "strongest MIA: the attack whose 95% Clopper-Pearson interval of TPR at 1% FPR has the highest lower end"
    " (not max TPR)",
    "weak": "!: dp_weak_guarantee=true (δ ≥ 1/n for a party, or client DP over few hospitals): see dp_weak_guarantee_reason",
    "attack_only": "attack-only: a gradient-inversion cell (one round on a few records); its accuracy is not a utility result",
    "maj": "maj: test accuracy of always answering the majority class",
    "at_majority": "acc!: at or below the majority-class baseline: the model is no better than a constant guess",
    "auc_fallback": "AUC: too few non-members for TPR at 1% FPR in that cell, so the strongest attack's AUC [95% CI] is shown",
    "violation": "VIOLATION: an audit certified more ε than the accountant claims (a bug in the accountant, mechanism or audit)",
    "suspect": "SUSPECT: an audit's ε estimate (uncertified) lies above the accountant's ε at its lower 95% end",
    "vacuous": "vacuous: no audit in the cell could catch even a 16× weaker mechanism, so 'no violation' says nothing",
    "power": "k×: the audit's power: it would catch the noise understated by ≥ k× (audit/detectable_factor; tag audit_power)",
}


@dataclass(frozen=True)
class SummaryRow:
    """One cell of the CLI summary: what ``privbench run`` prints when the suite ends.

    Attributes:
        name: the cell's run name.
        status: ``FINISHED`` or ``FAILED``.
        metrics: the cell's final metrics (empty for a failed cell).
        tags: the cell's run tags as logged by the runner (``dp_weak_guarantee``, ``audit_violation``...).
        seconds: wall-clock seconds of the cell.
    """

    name: str
    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _attack_names(m: Mapping[str, float], metric: str) -> list[str]:
    """Attacks (``attack/<name>/<metric>``) that logged ``metric``, sorted by name."""
    return sorted(k[len("attack/") : -len(metric) - 1] for k in m if k.startswith("attack/") and k.endswith("/" + metric))


def _num(v: float, digits: int = 3, keep_zeros: bool = False) -> str:
    """``v`` with ``digits`` significant digits (trailing zeros kept with ``keep_zeros``)."""
    return f"{v:#.{digits}g}".rstrip(".") if keep_zeros else f"{v:.{digits}g}"


def format_privacy(m: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """``ε (δ)``, ``!`` appended under ``dp_weak_guarantee=true``; ``no DP`` without an ε.

    Args:
        m: a cell's metrics (``privacy/epsilon``, ``privacy/delta``).
        tags: its tags (``dp_weak_guarantee``).

    Returns:
        e.g. ``"3.99 (1e-05)"``, ``"12.1 (0.025)!"``, ``"no DP"``; ε is never shown without δ
        (``δ ?`` where none was logged).
    """
    eps = m.get("privacy/epsilon")
    if eps is None:
        return "no DP"
    delta = m.get("privacy/delta")
    text = f"{_num(eps, keep_zeros=True)} ({'δ ?' if delta is None else _num(delta, 2)})"
    return text + ("!" if tags.get("dp_weak_guarantee") == "true" else "")


def strongest_membership(m: Mapping[str, float], level: float = SUMMARY_FPR) -> Optional[tuple[str, float, float, float]]:
    """The membership attack with the highest lower end of its TPR interval at FPR ``level``.

    The highest *point* TPR over several attacks is biased upward (the maximum of noisy
    estimates); the highest lower interval end is the attack that is reliably strongest.
    Ties (e.g. every lower end 0) go to the higher point value, then to the name.

    Returns:
        ``(attack, tpr, ci_low, ci_high)``, or ``None`` when no attack logged that TPR.
    """
    key = f"tpr_at_fpr_{level:g}"
    cands = [
        (m[f"attack/{n}/{key}_ci_low"], m[f"attack/{n}/{key}"], n)
        for n in _attack_names(m, key)
        if f"attack/{n}/{key}_ci_low" in m and f"attack/{n}/{key}_ci_high" in m
    ]
    if not cands:
        return None
    low, tpr, name = max(cands, key=lambda c: (c[0], c[1]))  # first of equals: names are sorted
    return name, tpr, low, m[f"attack/{name}/{key}_ci_high"]


def format_membership(m: Mapping[str, float], level: float = SUMMARY_FPR) -> tuple[str, str]:
    """``("TPR [low,high]", attack)`` of :func:`strongest_membership`; why not, where unsupported.

    Returns:
        e.g. ``("0.031 [0.006,0.090]", "rmia")``; ``("n/a: 60 non-memb.", "")`` when every
        membership attack had too few non-members for this FPR; ``("-", "")`` without one.
    """
    best = strongest_membership(m, level)
    if best is not None:
        name, tpr, low, high = best
        return f"{tpr:.3f} [{low:.3f},{high:.3f}]", name
    short = [v for k, v in m.items() if k.startswith("attack/") and k.endswith(f"/tpr_at_fpr_{level:g}_unsupported")]
    if short:
        # too few non-members for this FPR: the AUC (with its bootstrap interval) is what is supported
        aucs = [(m.get(f"attack/{n}/auc_ci_low", m[f"attack/{n}/auc"]), n) for n in _attack_names(m, "auc")]
        if aucs:
            _, name = max(aucs)
            a, lo, hi = m[f"attack/{name}/auc"], m.get(f"attack/{name}/auc_ci_low"), m.get(f"attack/{name}/auc_ci_high")
            return (f"AUC {a:.3f}" + (f" [{lo:.2f},{hi:.2f}]" if lo is not None and hi is not None else "")), name
        return f"n/a: {int(min(short))} non-memb.", ""
    return "-", ""


def format_audit(m: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """``ε≥<bound>`` of the cell's audit with its verdict tier (``VIOLATION``, ``SUSPECT``,
    ``vacuous``) or, without one, its power (``k×``: catches σ understated by ≥ k×)."""
    bound = m.get("audit/epsilon_lower_bound")
    if bound is None:
        return "-"
    text = f"ε≥{bound:.2f}"
    verdict = tags.get("audit_verdict")
    if tags.get("audit_violation") == "true":
        return text + " VIOLATION!"
    if verdict == "suspect":
        return text + " SUSPECT"
    if verdict == "vacuous":
        return text + " vacuous"
    k = m.get("audit/detectable_factor")
    if k is not None and math.isfinite(k) and k < 1e300:  # (MLflow stores an infinite power as max float)
        return f"{text} {k:g}×"
    return text


def _strongest(m: Mapping[str, float], metric: str) -> Optional[float]:
    """The highest ``metric`` over attacks, ranked by the lower end of its interval where logged."""
    names = [n for n in _attack_names(m, metric) if math.isfinite(m[f"attack/{n}/{metric}"])]
    if not names:
        return None
    rank = lambda n: (m.get(f"attack/{n}/{metric}_ci_low", m[f"attack/{n}/{metric}"]), m[f"attack/{n}/{metric}"])  # noqa: E731
    return m[f"attack/{max(names, key=rank)}/{metric}"]


def format_reconstruction(m: Mapping[str, float]) -> str:
    """The strongest inversion: ``features <p>%`` (tables) or ``PSNR <x> dB`` (images); ``-`` without one."""
    acc = _strongest(m, "feature_accuracy")
    if acc is not None:
        return f"features {100 * acc:.0f}%"
    psnr = _strongest(m, "psnr")
    return "-" if psnr is None else f"PSNR {psnr:.1f} dB"


def is_attack_only(m: Mapping[str, float]) -> bool:
    """True for a cell whose attacks are all reconstructions (inversion cells: one round,
    one record per hospital; their test accuracy is not a utility result)."""
    recon = any(k.startswith("attack/") and k.endswith("/targets") for k in m)
    other = any(k.startswith("audit/") for k in m) or any(k.startswith("attack/") and k.endswith("/accuracy") for k in m)
    return recon and not other and not _attack_names(m, "auc")


def at_or_below_majority(m: Mapping[str, float]) -> Optional[tuple[float, float]]:
    """``(test accuracy, majority-class baseline)`` when the accuracy is at or below the baseline
    (no better than always answering the majority class), else None; None for an attack-only cell
    (its accuracy is not a utility result) and where either number was not logged."""
    acc, base = m.get("utility/test_accuracy"), m.get("utility/majority_baseline")
    if acc is None or base is None or is_attack_only(m) or acc > base:
        return None
    return acc, base


def format_utility(m: Mapping[str, float]) -> str:
    """``acc (maj <baseline>)``, ``!`` after ``acc`` where :func:`at_or_below_majority`, or
    ``attack-only`` (see :func:`is_attack_only`)."""
    if is_attack_only(m):
        return "attack-only"
    acc = m.get("utility/test_accuracy")
    if acc is None:
        return "-"
    base = m.get("utility/majority_baseline")
    flag = "!" if at_or_below_majority(m) else ""  # no better than always answering the majority class
    return f"{acc:.3f}{flag}" + ("" if base is None else f" (maj {base:.3f})")


def summary_cells(row: SummaryRow) -> tuple[str, ...]:
    """The values line of one finished cell, one string per column of :data:`_COLUMNS`."""
    m, t = row.metrics, row.tags
    tpr, attack = format_membership(m)
    return (format_privacy(m, t), tpr, attack, format_audit(m, t), format_reconstruction(m), format_utility(m),
            f"{row.seconds:.1f}")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _line(cells: Sequence[str]) -> str:
    return (_INDENT + "  ".join(_fit(c, w).ljust(w) for c, (_, _, w) in zip(cells, _COLUMNS))).rstrip()


def _header_line() -> str:
    """The first header line: a title may run on over following columns whose title is empty."""
    out, pos = _INDENT, len(_INDENT)
    for i, (title, _, w) in enumerate(_COLUMNS):
        if title:
            span = w + sum(2 + c[2] for c in _COLUMNS[i + 1 : i + 1 + _run_on(i)])
            out = out.ljust(pos) + _fit(title, span)
        pos += w + 2
    return out.rstrip()


def _run_on(i: int) -> int:
    """How many columns after column ``i`` have an empty first-line title."""
    n = 0
    while i + 1 + n < len(_COLUMNS) and not _COLUMNS[i + 1 + n][0]:
        n += 1
    return n


def _summary_table(rows: Sequence[SummaryRow]) -> str:
    """The end-of-run summary: per cell a name line, then its values under two header lines,
    then notes for the markers that occur. Every line is at most :data:`SUMMARY_WIDTH` wide."""
    lines = ["cell", _header_line(), _line([c[1] for c in _COLUMNS])]
    used: set[str] = set()
    for i, row in enumerate(rows, 1):
        lines.append(_fit(f"{i}. {row.name}", SUMMARY_WIDTH))
        if row.status != "FINISHED":
            lines.append(f"{_INDENT}{row.status} (see the run's 'error' tag)")
            continue
        cells = summary_cells(row)
        lines.append(_line(cells))
        used |= {k for k, hit in (("mia", cells[2] != ""), ("weak", cells[0].endswith("!")), ("attack_only", cells[5] == "attack-only"),
                                   ("maj", "maj" in cells[5]), ("at_majority", "! (maj" in cells[5]), ("auc_fallback", cells[1].startswith("AUC")), ("violation", "VIOLATION" in cells[3]),
                                   ("suspect", "SUSPECT" in cells[3]), ("vacuous", "vacuous" in cells[3]),
                                   ("power", cells[3].endswith("×"))) if hit}
    lines += [_fit(_NOTES[k], SUMMARY_WIDTH) for k in _NOTES if k in used]
    return "\n".join(lines)


def _every_error(path: str) -> list[str]:
    """All problems the suite schema finds in the file (empty when it cannot be read as YAML)."""
    from bench.catalog import schema_errors
    from bench.config import load_yaml

    try:
        return schema_errors(load_yaml(path))
    except (ConfigError, OSError):
        return []  # the loader names an unreadable file or broken YAML in its own one line


def _describe_data(suite) -> None:
    """How each distinct dataset of the suite was read (a CSV: per column and per hospital)."""
    from bench.components import registry

    shown = set()
    for cell in suite.cells:
        data = cell.config.data
        describe = getattr(registry("dataset").get(data.name), "describe", None)
        if describe is None or data in shown:
            continue
        shown.add(data)
        print(describe(data, seed=cell.config.seed))
        print()


def cmd_validate(args) -> int:
    from bench.suite import filter_cells, load_suite

    problems = _every_error(args.suite)
    if len(problems) > 1:  # one at a time would take as many runs as there are problems
        print(f"privbench: error: {args.suite}: {len(problems)} problems (`privbench list NAME` shows a component's keys):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    suite = filter_cells(load_suite(args.suite, args.set), args.only)
    if args.data:
        from bench.data import check_data

        check_data(c.config for c in suite.cells)
        _describe_data(suite)
        from bench.data import small_site_report

        for line in dict.fromkeys(small_site_report(c.config.data, c.config.seed) for c in suite.cells):
            if line:
                print(line)
    print(f"{args.suite}: suite {suite.name!r} is valid{' (data loaded and split)' if args.data else ''}: {len(suite.cells)} cells")
    for cell in suite.cells:
        print(f"  {cell.run_key}  {cell.name}")
    return 0


def cmd_list(args) -> int:
    from bench.catalog import describe, overview

    print(describe(args.name) if args.name else overview())
    return 0


def cmd_schema(args) -> int:
    import json

    from bench.catalog import suite_schema

    print(json.dumps(suite_schema(), indent=2, default=str))
    return 0


def _finished_row(name: str, m: Mapping[str, float], tags: Mapping[str, str]) -> SummaryRow:
    """The summary row of a cell that finished (here or on a worker); a warning where its test
    accuracy is at or below the majority-class baseline (the summary's ``!``)."""
    low = at_or_below_majority(m)
    if low is not None:
        log.warning("cell %s: test accuracy %.3f is at or below the majority-class baseline %.3f (always answering the "
                    "majority class): the model is no better than a constant guess; train longer (train.rounds), tune "
                    "train.lr, or check the label column", name, *low)
    return SummaryRow(name, "FINISHED", dict(m), dict(tags), m.get("cost/seconds", 0.0))


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


def _reaped_line(reaped) -> str:
    names = "; ".join(f"{r.name} ({r.owner})" for r in reaped[:5]) + (f"; and {len(reaped) - 5} more" if len(reaped) > 5 else "")
    return f"marked {len(reaped)} RUNNING run(s) FAILED whose process is gone (killed, or its machine lost): {names}"


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


def cmd_report(args) -> int:
    from bench.report import write_report
    from bench.tracking import MlflowTracker

    tracker = MlflowTracker(args.tracking_uri, create=False)  # a bad, missing or unreachable store: one line, exit 2
    try:
        reaped = tracker.reap_gone(args.suite)
    except Exception as exc:  # a read-only store can still be reported on
        log.warning("could not check for runs whose process is gone: %s", exc)
        reaped = []
    if reaped:
        print(_reaped_line(reaped), file=sys.stderr)
    res = write_report(args.suite, tracker.uri, args.out, attach=not args.no_attach)
    print(f"suite {args.suite!r}: {res.settings} defense settings; wrote {len(res.files)} files to {res.out_dir}/ ({len(res.figures)} figures)")
    for f in res.figures:
        print(f"  {f.file:<28} {f.title}")
    for s in res.skipped:
        print(f"  skipped: {s.title}: {s.reason}")
    print(f"open {res.out_dir / 'report.html'}")
    if res.parent_run_id:
        print(f"attached as artifacts report/* of the suite run {res.parent_run_id}")
    for line in _left_out_lines(res):
        print(line, file=sys.stderr)
    if not res.left_out:
        print(f"cells: all {res.in_report} in the report")
    return 0


_LEFT_OUT_FIX = {
    "FAILED": "rerun the suite to retry them",
    "KILLED": "rerun the suite to retry them",
    "RUNNING": "report again when they finish",
    "missing": "run the suite to add them",
}


def _left_out_lines(res) -> list[str]:
    """One line per kind of cell the report left out (FAILED, KILLED, RUNNING, missing): each cell and why."""
    if not res.left_out:
        return []
    lines = [f"cells: {res.in_report} in the report, {len(res.left_out)} left out"]
    for status in ("FAILED", "KILLED", "RUNNING", "missing"):
        group = [c for c in res.left_out if c.status == status]
        if group:
            names = "; ".join(f"{c.name} ({c.reason})" for c in group)
            lines.append(f"{len(group)} cell(s) {status} and are left out of the report: {names}; {_LEFT_OUT_FIX[status]}")
    return lines


def cmd_ui(args) -> int:
    """``privbench ui``; once it has started and stopped an MLflow server, the process ends at once
    (``os._exit`` after flushing): tearing down MLflow's modules at interpreter exit takes about a
    second, which would double the time from Ctrl-C to the prompt (issue 23: within 2 s)."""
    from bench.ui import cmd_ui as run_ui

    code = run_ui(args)
    if getattr(args, "started_server", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privbench")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"privbench: error: {message}; see `privbench {self.prog.split()[-1]} --help`\n" if " " in self.prog else f"privbench: error: {message}; see `privbench --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="privbench", description="Privacy attack-and-defense benchmark for federated learning.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"privbench {_version()}")
    # the global flags also work after the subcommand (`privbench run SUITE -v`): each subparser
    # has them too, with no default of its own, so the one given on either side decides
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging and tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def suite_args(sp):
        sp.add_argument("suite", help="suite YAML file, e.g. experiments/quick.yaml")
        sp.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value in every cell")
        sp.add_argument("--only", metavar="TEXT", help="only cells whose name contains TEXT")

    r = sub.add_parser("run", parents=[common], help="run a suite (skips cells already FINISHED)")
    suite_args(r)
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    r.add_argument("--no-resume", action="store_true", help="run every cell even if a FINISHED run exists")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--workers", type=int, metavar="N", help="run N cells at once (local: N processes, default 1; ray: at most N in flight)")
    r.add_argument("--executor", choices=("local", "ray"), default="local", help="where cells run: local processes, or Ray tasks (pip install 'privbench[ray]')")
    r.add_argument("--address", metavar="ADDR", help="Ray cluster address (with --executor ray), e.g. ray://head:10001; default $RAY_ADDRESS or a local Ray")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", parents=[common], help="check a suite file and list its cells; runs nothing")
    suite_args(v)
    v.add_argument("--data", action="store_true", help="also load and split every cell's data (as `run` does before it starts)")
    v.set_defaults(func=cmd_validate)

    li = sub.add_parser("list", parents=[common], help="list datasets, models, defenses and attacks; `list NAME` shows one's parameters")
    li.add_argument("name", nargs="?", metavar="NAME", help="a component, e.g. lira or dp_sgd: its parameters, defaults, ranges and paper")
    li.set_defaults(func=cmd_list)

    sc = sub.add_parser("schema", parents=[common], help="print the JSON Schema of suite files (for editors: privbench schema > suite.schema.json)")
    sc.set_defaults(func=cmd_schema)

    rp = sub.add_parser("report", parents=[common], help="figures, summary table and report.html of a suite, read back from MLflow")
    rp.add_argument("--suite", required=True, metavar="NAME", help="suite name (the `suite:` key of its YAML, e.g. quick)")
    rp.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    rp.add_argument("--out", metavar="DIR", help="output folder (default: results/<suite>/)")
    rp.add_argument("--no-attach", action="store_true", help="do not log the files as artifacts of the suite's latest run")
    rp.set_defaults(func=cmd_report)

    from bench.ui import add_ui_arguments

    u = sub.add_parser("ui", parents=[common], help="the MLflow UI on the results store; prints each suite's link (runs table, compare-defenses view)")
    add_ui_arguments(u)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench import redact

    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        args.verbose = False
    # MLflow configures its own loggers at import ("Creating initial MLflow database tables..."):
    # its chatter is shown only with -v
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if args.verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress bar per artifact read back otherwise
    # MLflow 3 sends usage telemetry to its maintainers unless told not to. privbench runs
    # offline next to clinical data: off unless the user set MLFLOW_DISABLE_TELEMETRY or DO_NOT_TRACK
    if "DO_NOT_TRACK" not in os.environ:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # credentials in the tracking URI (or MLFLOW_TRACKING_PASSWORD/TOKEN) are masked in every line
    # this command prints or logs, MLflow's own included (bench/redact.py)
    with redact.guard(getattr(args, "tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")):
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for noisy in ("mlflow", "alembic", "urllib3", "opacus"):
            logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
        return _dispatch(args)


def _dispatch(args) -> int:
    from bench.store import StoreError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"privbench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:  # the store failed outside a suite's cells (a suite in progress handles its own)
        print(f"privbench: error: {exc}; run the same command again when the store is back", file=sys.stderr)
        return EXIT_FAILED_CELLS
    except KeyboardInterrupt:  # before anything was logged (a suite in progress handles its own)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
