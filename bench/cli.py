"""``privbench``: run / validate / list / ui (and report).

Bad input ends with one line on stderr that names the problem and the fix, exit code 2,
and nothing logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from typing import Optional, Sequence

from bench.types import ConfigError

EXIT_BAD_INPUT = 2
EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130

log = logging.getLogger("privbench")


def _cell_tags(suite, cell) -> dict[str, str]:
    from bench.components import component_class

    cfg = cell.config
    tms = sorted({component_class("attack", a.name).threat_model for a in cfg.attacks})
    return {
        "suite": suite.name,
        "run_key": cell.run_key,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "defenses": "+".join(d.name for d in cfg.defenses) or "none",
        "attacks": "+".join(a.name for a in cfg.attacks) or "none",
        "threat_models": "+".join(tms) or "none",
        "seed": str(cfg.seed),
        # the seeds of one defense setting share this tag: "Group by" it in the MLflow UI to see
        # mean and spread over seeds (the hash keeps apart settings whose readable labels match)
        "setting": f"{cell.setting} · {cfg.setting_key[:6]}",
    }


def _summary_table(rows: list[tuple[str, str, Optional[float], Optional[float], Optional[float], Optional[float], float]]) -> str:
    head = ("cell", "status", "test_acc", "epsilon", "best MIA AUC", "best PSNR dB", "seconds")
    lines = [head]
    for name, status, acc, eps, auc, psnr, secs in rows:
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append((name, status, f(acc), f(eps), f(auc), f(psnr, 1), f"{secs:.1f}"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines)


def cmd_validate(args) -> int:
    from bench.suite import filter_cells, load_suite

    suite = filter_cells(load_suite(args.suite, args.set), args.only)
    if args.data:
        from bench.data import check_data

        check_data(c.config for c in suite.cells)
    print(f"{args.suite}: suite {suite.name!r} is valid{' (data loaded and split)' if args.data else ''}: {len(suite.cells)} cells")
    for cell in suite.cells:
        print(f"  {cell.run_key}  {cell.name}")
    return 0


def cmd_list(args) -> int:
    from bench.components import registry

    for kind, title in (("dataset", "datasets"), ("model", "models"), ("defense", "defenses"), ("attack", "attacks")):
        print(f"{title}:")
        for name, cls in registry(kind).items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            extra = ""
            if kind == "attack":
                extra = f" [threat model: {cls.threat_model}]"
            if kind == "defense":
                extra = " [DP: has ε]" if cls.is_dp else " [not DP]"
            print(f"  {name:<20} {doc}{extra}")
    return 0


def _finished_row(name: str, m) -> tuple:
    from bench.report import headline  # the strongest attack of each family, as the report has it

    h = headline(m)
    return (name, "FINISHED", m.get("utility/test_accuracy"), m.get("privacy/epsilon"),
            h.get("strongest/membership_auc"), h.get("strongest/inversion_psnr"), m.get("cost/seconds", 0.0))


def _log_cell_error(name: str, exc: BaseException, verbose: bool) -> None:
    if isinstance(exc, ConfigError):
        log.error("cell %s failed: %s", name, exc)
    else:
        log.error("cell %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=verbose)


def _run_here(args, suite, todo, tracker, bar, rows: dict) -> int:
    """Cells one after another in this process, streaming metrics round by round."""
    from tqdm import tqdm

    from bench.runner import run_cell

    failed = 0
    for cell in todo:
        rounds = tqdm(total=cell.config.train.rounds, desc="  rounds", leave=False, file=sys.stderr, disable=args.quiet)
        bar.set_postfix_str(cell.name[:60])
        try:
            with tracker.cell(cell.name, _cell_tags(suite, cell)) as out:
                result = run_cell(cell.config, out, on_round=lambda r: rounds.update(1))
            rows[cell.index] = _finished_row(cell.name, result.metrics)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a crashing cell ends FAILED and the suite goes on
            failed += 1
            rows[cell.index] = (cell.name, "FAILED", None, None, None, None, 0.0)
            _log_cell_error(cell.name, exc, args.verbose)
        finally:
            rounds.close()
        bar.update(1)
    return failed


def _run_elsewhere(args, suite, todo, tracker, bar, rows: dict, executor) -> int:
    """Cells on ``executor`` (worker processes or Ray); this process alone writes the runs."""
    from bench.executors import CellTask, record_outcome

    tasks = [CellTask(c.index, c.name, c.run_key, c.config, _cell_tags(suite, c)) for c in todo]
    failed = 0
    for outcome in executor.run(tasks):
        name = outcome.task.name
        try:
            record_outcome(tracker, outcome)
            rows[outcome.task.index] = _finished_row(name, outcome.metrics)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the cell's own error (run ended FAILED) or a failed write
            failed += 1
            rows[outcome.task.index] = (name, "FAILED", None, None, None, None, outcome.seconds)
            _log_cell_error(name, exc, args.verbose)
        bar.set_postfix_str(name[:60])
        bar.update(1)
    return failed


def cmd_run(args) -> int:
    import torch
    from tqdm import tqdm

    from bench.executors import CELL_THREADS, make_executor
    from bench.suite import filter_cells, load_suite
    from bench.tracking import MlflowTracker

    suite = filter_cells(load_suite(args.suite, args.set), args.only)  # all validation happens here
    if args.executor == "local":  # (Ray nodes hold their own copy of the data; this machine may not)
        from bench.data import check_data

        check_data(c.config for c in suite.cells)  # missing or broken data fails here, before anything is logged
    executor = None
    if args.executor != "local" or args.workers not in (None, 1) or args.address:
        executor = make_executor(args.executor, args.workers, args.address)  # bad options fail before logging
        executor.warm()
    tracker = MlflowTracker(args.tracking_uri)
    done = set() if args.no_resume else tracker.finished_keys(suite)
    todo = [c for c in suite.cells if c.run_key not in done]
    print(f"suite {suite.name!r}: {len(suite.cells)} cells, {len(suite.cells) - len(todo)} already finished, {len(todo)} to run")
    print(f"tracking: {tracker.uri}")
    if not todo:
        print("nothing to do (delete the runs or pass --no-resume to run again)")
        return 0
    if executor is not None:
        print(f"executor: {executor.describe()}")
    tracker.begin_suite(suite)
    rows: dict[int, tuple] = {}
    bar = tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr, disable=args.quiet)
    threads = torch.get_num_threads()
    # same per-cell thread count as the workers: results do not depend on --workers
    torch.set_num_threads(CELL_THREADS)
    try:
        if executor is None:
            failed = _run_here(args, suite, todo, tracker, bar, rows)
        else:
            failed = _run_elsewhere(args, suite, todo, tracker, bar, rows, executor)
    except KeyboardInterrupt:
        if executor is not None:
            executor.close(cancel=True)
        bar.close()
        tracker.end_suite("KILLED")
        if executor is None:
            print("interrupted: the running cell ended FAILED and will run again next time", file=sys.stderr)
        else:
            print("interrupted: finished cells are logged; unfinished ones were not and will run next time", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)
    bar.close()
    tracker.end_suite("FAILED" if failed else "FINISHED")
    print(_summary_table([rows[i] for i in sorted(rows)]))
    where = "" if args.tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ else f" --tracking-uri {tracker.uri}"
    print(f"next: `privbench ui{where}` to compare the runs, `privbench report --suite {suite.name}{where}` for the figures")
    if failed:
        print(f"{failed} cell(s) FAILED (see the 'error' tag of each run); run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


def cmd_report(args) -> int:
    from bench.report import write_report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress bar per artifact otherwise
    res = write_report(args.suite, args.tracking_uri, args.out, attach=not args.no_attach)
    print(f"suite {args.suite!r}: {res.settings} defense settings; wrote {len(res.files)} files to {res.out_dir}/ ({len(res.figures)} figures)")
    for f in res.figures:
        print(f"  {f.file:<28} {f.title}")
    for s in res.skipped:
        print(f"  skipped: {s.title}: {s.reason}")
    print(f"open {res.out_dir / 'report.html'}")
    if res.parent_run_id:
        print(f"attached as artifacts report/* of the suite run {res.parent_run_id}")
    if res.failed_cells:
        names = ", ".join(c.name for c in res.failed_cells)
        print(f"{len(res.failed_cells)} cell(s) FAILED and are left out of the report: {names}; rerun the suite to retry them", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from bench.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(exe):
        raise ConfigError("the mlflow command is not installed; pip install mlflow")
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C to stop")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(EXIT_BAD_INPUT, f"privbench: error: {message}; see `privbench {self.prog.split()[-1]} --help`\n" if " " in self.prog else f"privbench: error: {message}; see `privbench --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="privbench", description="Privacy attack-and-defense benchmark for federated learning.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def suite_args(sp):
        sp.add_argument("suite", help="suite YAML file, e.g. experiments/quick.yaml")
        sp.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value in every cell")
        sp.add_argument("--only", metavar="TEXT", help="only cells whose name contains TEXT")

    r = sub.add_parser("run", help="run a suite (skips cells already FINISHED)")
    suite_args(r)
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    r.add_argument("--no-resume", action="store_true", help="run every cell even if a FINISHED run exists")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--workers", type=int, metavar="N", help="run N cells at once (local: N processes, default 1; ray: at most N in flight)")
    r.add_argument("--executor", choices=("local", "ray"), default="local", help="where cells run: local processes, or Ray tasks (pip install 'privbench[ray]')")
    r.add_argument("--address", metavar="ADDR", help="Ray cluster address (with --executor ray), e.g. ray://head:10001; default $RAY_ADDRESS or a local Ray")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a suite file and list its cells; runs nothing")
    suite_args(v)
    v.add_argument("--data", action="store_true", help="also load and split every cell's data (as `run` does before it starts)")
    v.set_defaults(func=cmd_validate)

    li = sub.add_parser("list", help="list datasets, models, defenses and attacks")
    li.set_defaults(func=cmd_list)

    rp = sub.add_parser("report", help="figures, summary table and report.html of a suite, read back from MLflow")
    rp.add_argument("--suite", required=True, metavar="NAME", help="suite name (the `suite:` key of its YAML, e.g. quick)")
    rp.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    rp.add_argument("--out", metavar="DIR", help="output folder (default: results/<suite>/)")
    rp.add_argument("--no-attach", action="store_true", help="do not log the files as artifacts of the suite's latest run")
    rp.set_defaults(func=cmd_report)

    u = sub.add_parser("ui", help="open the MLflow UI on the results store")
    u.add_argument("--tracking-uri")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        args.verbose = False
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "opacus"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"privbench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
