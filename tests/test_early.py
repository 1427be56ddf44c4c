"""bench.early: the first cell starts in a forked child while the CLI opens the store.

What must hold: the same numbers, rounds and artifacts as a cell run in-process; nothing in
the store that the parent did not claim; no child left behind on any path (finished before,
store error, cell failure, child killed).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

import bench.early as early
from bench.cli import main
from conftest import tiny_raw

pytestmark = pytest.mark.skipif(not early.enabled(), reason="early cells need Linux and 2 CPUs")


def _suite(tmp_path: Path, seeds=(0,), name: str = "early", **over) -> str:
    raw = {"suite": name, "base": tiny_raw(train__rounds=3, **over), "seeds": list(seeds)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _runs(uri: str, suite: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    return client, client.search_runs([exp.experiment_id], "tags.role = 'cell'", max_results=100)


def _cell(client, run) -> dict:
    """Everything a cell logged except wall-clock timings: params, tags that are the cell's,
    every metric's history, the artifact names."""
    metrics = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
               for k in run.data.metrics if not (k.startswith("cost/") and "seconds" in k)}
    arts = sorted(a.path for a in client.list_artifacts(run.info.run_id)) + sorted(
        a.path for a in client.list_artifacts(run.info.run_id, "attacks/loss_threshold"))
    own = {k: v for k, v in run.data.tags.items() if k in ("run_key", "setting", "dataset", "defenses", "attacks", "data_fingerprint")}
    return {"params": run.data.params, "tags": own, "metrics": metrics, "artifacts": arts, "status": run.info.status}


@pytest.fixture
def spy(monkeypatch):
    """Record every EarlyCell started (and keep the real behaviour)."""
    started = []
    real = early.start

    def start(cell):
        e = real(cell)
        started.append(e)
        return e

    monkeypatch.setattr(early, "start", start)
    return started


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_an_early_cell_logs_what_an_in_process_cell_logs(tmp_path, monkeypatch, spy):
    suite = _suite(tmp_path, seeds=(0, 1))
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert main(["run", suite, "--tracking-uri", a, "-q"]) == 0
    assert len(spy) == 1 and spy[0] is not None and _gone(spy[0].pid)  # it ran the first cell, and was reaped
    monkeypatch.setenv("PRIVBENCH_EARLY_CELL", "0")
    assert main(["run", suite, "--tracking-uri", b, "-q"]) == 0
    assert spy[1] is None  # off: both cells in-process
    ca, ra = _runs(a, "early")
    cb, rb = _runs(b, "early")
    got = {r.data.tags["run_key"]: _cell(ca, r) for r in ra}
    want = {r.data.tags["run_key"]: _cell(cb, r) for r in rb}
    assert len(got) == 2 and got == want
    for cell in got.values():
        assert [s for s, _ in cell["metrics"]["utility/test_accuracy"]] == [1, 2, 3]  # every round once
        assert cell["status"] == "FINISHED" and "config.yaml" in cell["artifacts"]


def test_a_finished_first_cell_is_not_run_again_and_the_child_is_gone(tmp_path, spy):
    suite = _suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'f.db'}"
    assert main(["run", suite, "--tracking-uri", uri, "-q"]) == 0
    assert main(["run", suite, "--tracking-uri", uri, "-q"]) == 0
    assert len(spy) == 2 and _gone(spy[1].pid)  # started speculatively, then killed and reaped
    _, runs = _runs(uri, "early")
    assert len(runs) == 1  # nothing logged by the cancelled child


def test_a_bad_store_leaves_no_child_and_no_store(tmp_path, spy, capsys):
    suite = _suite(tmp_path)
    bad = tmp_path / "not-a-db.db"
    bad.write_text("this is not SQLite")
    assert main(["run", suite, "--tracking-uri", f"sqlite:///{bad}", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "privbench: error:" in err[0]
    assert len(spy) == 1 and _gone(spy[0].pid)
    assert bad.read_text() == "this is not SQLite"


def test_a_failing_early_cell_ends_failed_with_its_error(tmp_path, spy, monkeypatch):
    import bench.runner

    def boom(*a, **k):
        raise ValueError("the cell broke")

    monkeypatch.setattr(bench.runner, "run_cell", boom)  # the forked child inherits it
    suite = _suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    assert main(["run", suite, "--tracking-uri", uri, "-q"]) == 1
    _, runs = _runs(uri, "early")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"] == "ValueError: the cell broke"
    assert _gone(spy[0].pid)


def test_a_killed_child_fails_its_cell_with_one_clear_reason(tmp_path, spy, monkeypatch):
    import bench.runner

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would

    monkeypatch.setattr(bench.runner, "run_cell", die)
    suite = _suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'k.db'}"
    assert main(["run", suite, "--tracking-uri", uri, "-q"]) == 1
    _, runs = _runs(uri, "early")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "ended without finishing the cell (exit status -9)" in runs[0].data.tags["error"]
