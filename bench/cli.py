"""``privbench``: run / validate / list / ui (and report): the parser and the dispatch.

Each command lives in its own module of ``bench/commands/`` (``run``, ``validate`` with ``list``
and ``schema``, ``report``, ``ui``; the summary table in ``summary``, exit codes in ``common``);
every name this module had before the split is still importable from here. Bad input ends with
one line on stderr that names the problem and the fix, exit code 2, and nothing logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from bench.commands.common import EXIT_BAD_INPUT, EXIT_FAILED_CELLS, EXIT_INTERRUPTED, _reaped_line, log  # noqa: F401
from bench.commands.report import _LEFT_OUT_FIX, _left_out_lines, cmd_report  # noqa: F401
from bench.commands.run import (  # noqa: F401 - re-exported: bench.cli's names before the split
    _bars_keep_logs,
    _cell_tags,
    _claim,
    _cmd_run,
    _log_cell_error,
    _log_comparisons,
    _logged_tags,
    _Progress,
    _run_elsewhere,
    _run_here,
    _run_validated,
    _signals_ignored,
    _sigterm_as_interrupt,
    _source_tags,
    cmd_run,
)
from bench.commands.summary import (  # noqa: F401 - re-exported: bench.cli's names before the split
    _COLUMNS,
    _INDENT,
    _NOTES,
    SUMMARY_FPR,
    SUMMARY_WIDTH,
    SummaryRow,
    _attack_names,
    _finished_row,
    _fit,
    _header_line,
    _line,
    _num,
    _run_on,
    _strongest,
    _summary_table,
    at_or_below_majority,
    format_audit,
    format_membership,
    format_privacy,
    format_reconstruction,
    format_utility,
    is_attack_only,
    strongest_membership,
    summary_cells,
)
from bench.commands.ui import cmd_ui  # noqa: F401
from bench.commands.validate import _describe_data, _every_error, cmd_list, cmd_schema, cmd_validate  # noqa: F401
from bench.types import ConfigError


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
