"""privbench's Python API: run a suite and read its results as a pandas DataFrame.

    import privbench

    privbench.run("experiments/quick.yaml", tracking_uri="sqlite:///results/mlflow.db")
    df = privbench.results("quick", tracking_uri="sqlite:///results/mlflow.db")

Both are the CLI's own code paths (``privbench run``, ``privbench report``'s loader and
decision table), so a notebook sees the same cells, numbers and intervals as the command line.
Importing this package imports no heavy library; :func:`run` and :func:`results` import what
they need.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from bench import __version__  # noqa: F401
from bench.types import ConfigError

__all__ = ["run", "results", "ConfigError", "RunFailed", "HEADLINE_COLUMNS"]

#: the columns of :func:`results` besides the cell's identity (each number with its interval)
HEADLINE_COLUMNS = (
    "test_accuracy", "test_accuracy_low", "test_accuracy_high",
    "epsilon", "epsilon_low", "epsilon_high", "delta", "privacy_unit", "neighbouring",
    "membership_attack", "membership_metric", "membership", "membership_low", "membership_high", "membership_verdict",
    "reconstruction_attack", "reconstruction_metric", "reconstruction", "reconstruction_low", "reconstruction_high",
    "audit_epsilon_lower_bound", "audit_verdict",
)


class RunFailed(RuntimeError):
    """``privbench.run`` ended with failed cells or was interrupted (``exit_code`` says which, as the CLI's)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _suite_file(suite: Union[str, os.PathLike, Mapping[str, Any]], folder: Path) -> str:
    """A path to the suite's YAML: the file itself, or a mapping written as YAML into ``folder``."""
    if isinstance(suite, Mapping):
        import yaml

        path = folder / f"{suite.get('suite', 'suite')}.yaml"
        path.write_text(yaml.safe_dump(dict(suite), sort_keys=False))
        return str(path)
    if isinstance(suite, (str, os.PathLike)):
        return os.fspath(suite)
    raise ConfigError(f"privbench.run: got {type(suite).__name__}; expected a suite file's path or a mapping like the YAML")


def run(
    suite: Union[str, os.PathLike, Mapping[str, Any]],
    tracking_uri: Optional[str] = None,
    *,
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    workers: Optional[int] = None,
    resume: bool = True,
    quiet: bool = True,
) -> "pandas.DataFrame":  # noqa: F821
    """Run a suite as ``privbench run`` does and return :func:`results` of it.

    Args:
        suite: a suite file's path, or a mapping with the YAML's keys (``suite``, ``base``,
            ``variants``, ``grid``, ``seeds``).
        tracking_uri: the MLflow store (default: ``$MLFLOW_TRACKING_URI``, else
            ``results/mlflow.db`` under the working directory, as the CLI).
        overrides: ``key.path=value`` strings, as ``--set``.
        only: run-name substrings, as ``--only``.
        workers: parallel local workers, as ``--workers``.
        resume: skip cells already FINISHED in the store (``False``: ``--no-resume``).
        quiet: no progress bar.

    Returns:
        The suite's results, one row per cell (see :func:`results`).

    Raises:
        ConfigError: the suite, a component or the store is invalid (nothing is run).
        RunFailed: some cells failed or the run was interrupted; the finished ones are logged.
    """
    from bench.cli import main
    from bench.suite import load_suite

    with tempfile.TemporaryDirectory(prefix="privbench-api-") as tmp:
        path = _suite_file(suite, Path(tmp))
        name = load_suite(path, list(overrides)).name  # every validation error raised here, as ConfigError
        argv = ["run", path]
        for o in overrides:
            argv += ["--set", o]
        for o in only:
            argv += ["--only", o]
        if tracking_uri is not None:
            argv += ["--tracking-uri", tracking_uri]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if not resume:
            argv.append("--no-resume")
        if quiet:
            argv.insert(1, "-q")
        code = main(argv)
    if code != 0:
        raise RunFailed(f"privbench run {name!r} ended with exit code {code} (the CLI's meaning; the messages above say why)", code)
    return results(name, tracking_uri=tracking_uri)


def _suite_name(suite: Any) -> str:
    if isinstance(suite, Mapping):
        return str(suite.get("suite"))
    text = os.fspath(suite) if isinstance(suite, os.PathLike) else suite
    if isinstance(text, str) and (text.endswith((".yaml", ".yml")) or os.path.sep in text) and Path(text).is_file():
        from bench.suite import load_suite

        return load_suite(text).name
    if not isinstance(text, str):
        raise ConfigError(f"privbench.results: got {type(suite).__name__}; expected a suite name, file or mapping")
    return text


def _attack_metric(detail: str) -> tuple[str, str]:
    """``("lira", "tpr_at_fpr_0.001")`` from a decision-table entry's detail (``attack/lira/tpr_at_fpr_0.001 (...)``)."""
    import re

    m = re.search(r"attack/([^/\s]+)/(\S+)", detail)
    return (m.group(1), m.group(2)) if m else ("", "")


def results(suite: Union[str, os.PathLike, Mapping[str, Any]], tracking_uri: Optional[str] = None) -> "pandas.DataFrame":  # noqa: F821
    """A suite's results read back from the tracking store: one row per cell (its latest
    FINISHED run), with the headline numbers and their 95 % intervals.

    Columns: ``run_key``, ``name``, ``setting``, ``dataset``, ``seed``, ``defenses``, ``run_id``,
    then :data:`HEADLINE_COLUMNS`: test accuracy (with its Clopper–Pearson interval where the
    cell logged one), ε (with δ, privacy unit and neighbouring relation; NaN without DP), the
    strongest membership attack's TPR at FPR 0.001 (or its AUC where that FPR is unsupported)
    with interval and verdict, the strongest reconstruction, and the audit's certified ε lower
    bound and verdict — the numbers of ``privbench report``'s decision table, per cell.

    Args:
        suite: the suite's name (its MLflow experiment), its YAML file or its mapping.
        tracking_uri: the MLflow store (default as :func:`run`).

    Raises:
        ConfigError: no such store or suite, or the suite has no cells.
    """
    import math

    import pandas as pd

    from bench.report.decision import audit_entry, epsilon_entry, membership_entry, reconstruction_entry
    from bench.report.load import Setting, load_suite_runs
    from bench.tracking import MlflowTracker

    name = _suite_name(suite)
    tracker = MlflowTracker(tracking_uri, create=False)
    runs = load_suite_runs(tracker.client, name, tracker.uri)
    rows = []
    for cell in runs.cells:
        one = Setting(key=cell.run_key, label=cell.name, dataset=cell.dataset, cells=(cell,))
        acc = one.estimate("utility/test_accuracy")
        eps, mia, rec, audit = epsilon_entry(one), membership_entry((), one), reconstruction_entry((), one), audit_entry(one)
        nan = math.nan
        num = lambda v: nan if v is None else float(v)  # noqa: E731
        mia_attack, mia_metric = _attack_metric(mia.detail) if mia.mean is not None else ("", "")
        rec_attack, rec_metric = _attack_metric(rec.detail) if rec.mean is not None else ("", "")
        rows.append({
            "run_key": cell.run_key, "name": cell.name, "setting": cell.tags.get("setting", ""), "dataset": cell.dataset,
            "seed": int(cell.seed) if str(cell.seed).isdigit() else cell.seed,
            "defenses": cell.params.get("defenses", cell.tags.get("defenses", "")), "run_id": cell.run_id,
            "test_accuracy": num(acc.mean if acc else None), "test_accuracy_low": num(acc.low if acc else None),
            "test_accuracy_high": num(acc.high if acc else None),
            "epsilon": num(eps.mean), "epsilon_low": num(eps.low), "epsilon_high": num(eps.high),
            "delta": num(cell.metrics.get("privacy/delta")), "privacy_unit": cell.tags.get("privacy_unit", "") if eps.mean is not None else "",
            "neighbouring": cell.tags.get("neighbouring", "") if eps.mean is not None else "",
            "membership_attack": mia_attack, "membership_metric": mia_metric,
            "membership": num(mia.mean), "membership_low": num(mia.low), "membership_high": num(mia.high), "membership_verdict": mia.verdict,
            "reconstruction_attack": rec_attack, "reconstruction_metric": rec_metric,
            "reconstruction": num(rec.mean), "reconstruction_low": num(rec.low), "reconstruction_high": num(rec.high),
            "audit_epsilon_lower_bound": num(audit.mean), "audit_verdict": audit.verdict,
        })
    return pd.DataFrame(rows, columns=["run_key", "name", "setting", "dataset", "seed", "defenses", "run_id", *HEADLINE_COLUMNS])
