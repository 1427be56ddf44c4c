"""Issue 22, item 7: a broken store is refused in one line before any run is created, and the
next command on the repaired store leaves nothing RUNNING.

The faults are real where a test can make them real as root too (an artifact folder that is a
file cannot be written by anyone); a full disk is the one that is simulated (``disk_usage``).
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

from bench import store
from bench.cli import main
from conftest import tiny_raw


def _suite(tmp_path: Path) -> Path:
    base = tiny_raw(train__rounds=2)
    base.pop("seed")
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump({"suite": "faults", "base": base, "seeds": [0]}))
    return path


def _store(tmp_path: Path) -> tuple[Path, str]:
    from mlflow.tracking import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # an existing, empty store
    return db, f"sqlite:///{db}"


def _statuses(uri: str) -> collections.Counter:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("faults")
    if exp is None:
        return collections.Counter()
    return collections.Counter(r.info.status for r in client.search_runs([exp.experiment_id]))


def _one_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert out == "", out
    return lines[0]


def test_an_unwritable_artifact_folder_is_refused_before_any_run_then_repaired(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRIVBENCH_EARLY_CELL", "0")
    db, uri = _store(tmp_path)
    capsys.readouterr()  # MLflow's own lines while the test made the store
    blocker = db.parent / "artifacts"
    blocker.write_text("not a folder")  # nobody, root included, can write artifacts under a file
    suite = _suite(tmp_path)
    assert main(["run", str(suite), "-q", "--tracking-uri", uri]) == 2
    line = _one_line(capsys)
    assert "cannot write artifacts to" in line and "artifacts" in line
    assert _statuses(uri) == collections.Counter()  # no parent run, no cell run
    blocker.unlink()  # repaired
    assert main(["run", str(suite), "-q", "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert _statuses(uri) == collections.Counter({"FINISHED": 2})  # parent + cell; nothing RUNNING


def test_a_full_disk_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    db, uri = _store(tmp_path)
    capsys.readouterr()
    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: Usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    suite = _suite(tmp_path)
    for _ in range(2):  # still full: refused again, still nothing created
        assert main(["run", str(suite), "-q", "--tracking-uri", uri]) == 2
        line = _one_line(capsys)
        assert "1 MB free" in line and "PRIVBENCH_MIN_FREE_MB" in line
    assert _statuses(uri) == collections.Counter()
    # a new store on a full disk: refused too, and not created
    fresh = tmp_path / "fresh" / "mlflow.db"
    assert main(["run", str(suite), "-q", "--tracking-uri", f"sqlite:///{fresh}"]) == 2
    _one_line(capsys)
    monkeypatch.setenv("PRIVBENCH_MIN_FREE_MB", "0")  # the user's own, lower threshold
    store.check_tracking_uri(uri)


def test_report_on_an_unwritable_output_folder_is_one_line(tmp_path, capsys):
    """`report --out` pointing at a file: one line, exit 2 (no traceback)."""
    db, uri = _store(tmp_path)
    capsys.readouterr()
    out = tmp_path / "report_here"
    out.write_text("a file, not a folder")
    code = main(["report", "--suite", "faults", "--tracking-uri", uri, "--out", str(out)])
    assert code == 2
    _one_line(capsys)
