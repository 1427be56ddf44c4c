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
    }


def _summary_table(rows: list[tuple[str, str, Optional[float], Optional[float], Optional[float], float]]) -> str:
    head = ("cell", "status", "test_acc", "epsilon", "best MIA AUC", "seconds")
    lines = [head]
    for name, status, acc, eps, auc, secs in rows:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append((name, status, f(acc), f(eps), f(auc), f"{secs:.1f}"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines)


def cmd_validate(args) -> int:
    from bench.suite import filter_cells, load_suite

    suite = filter_cells(load_suite(args.suite, args.set), args.only)
    print(f"{args.suite}: suite {suite.name!r} is valid: {len(suite.cells)} cells")
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


def cmd_run(args) -> int:
    from tqdm import tqdm

    from bench.runner import run_cell
    from bench.suite import filter_cells, load_suite
    from bench.tracking import MlflowTracker

    suite = filter_cells(load_suite(args.suite, args.set), args.only)  # all validation happens here
    tracker = MlflowTracker(args.tracking_uri)
    done = set() if args.no_resume else tracker.finished_keys(suite)
    todo = [c for c in suite.cells if c.run_key not in done]
    print(f"suite {suite.name!r}: {len(suite.cells)} cells, {len(suite.cells) - len(todo)} already finished, {len(todo)} to run")
    print(f"tracking: {tracker.uri}")
    if not todo:
        print("nothing to do (delete the runs or pass --no-resume to run again)")
        return 0
    tracker.begin_suite(suite)
    rows, failed = [], 0
    bar = tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr, disable=args.quiet)
    status = "FINISHED"
    try:
        for cell in todo:
            rounds = tqdm(total=cell.config.train.rounds, desc="  rounds", leave=False, file=sys.stderr, disable=args.quiet)
            bar.set_postfix_str(cell.name[:60])
            try:
                with tracker.cell(cell.name, _cell_tags(suite, cell)) as out:
                    result = run_cell(cell.config, out, on_round=lambda r: rounds.update(1))
                m = result.metrics
                aucs = [v for k, v in m.items() if k.startswith("attack/") and k.endswith("/auc")]
                rows.append((cell.name, "FINISHED", m.get("utility/test_accuracy"), m.get("privacy/epsilon"), max(aucs) if aucs else None, m.get("cost/seconds", 0.0)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except ConfigError as exc:
                failed += 1
                rows.append((cell.name, "FAILED", None, None, None, 0.0))
                log.error("cell %s failed: %s", cell.name, exc)
            except Exception as exc:  # a crashing cell ends FAILED and the suite goes on
                failed += 1
                rows.append((cell.name, "FAILED", None, None, None, 0.0))
                log.error("cell %s failed: %s: %s", cell.name, type(exc).__name__, exc, exc_info=args.verbose)
            finally:
                rounds.close()
            bar.update(1)
    except KeyboardInterrupt:
        status = "KILLED"
        bar.close()
        tracker.end_suite("KILLED")
        print("interrupted: the running cell ended FAILED and will run again next time", file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    status = "FAILED" if failed else "FINISHED"
    tracker.end_suite(status)
    print(_summary_table(rows))
    if failed:
        print(f"{failed} cell(s) FAILED (see the 'error' tag of each run); run the same command again to retry them", file=sys.stderr)
        return EXIT_FAILED_CELLS
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
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a suite file and list its cells; runs nothing")
    suite_args(v)
    v.set_defaults(func=cmd_validate)

    li = sub.add_parser("list", help="list datasets, models, defenses and attacks")
    li.set_defaults(func=cmd_list)

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
