"""Parallel cells (``privbench run --workers N``): one writer, same numbers, resume, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.config import parse_experiment
from bench.executors import (
    FORK_SERVER_MEMORY_MB,
    WORKER_MEMORY_MB,
    CellTask,
    LocalExecutor,
    RecordingCellLog,
    available_memory_mb,
    check_workers_memory,
    execute,
    make_executor,
    record_outcome,
)
from bench.runner import run_cell
from bench.tracking import MemoryCellLog, MemoryTracker
from bench.types import ConfigError
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]


def _suite_file(tmp_path: Path, seeds=(0, 1), rounds: int = 3, name: str = "par", defenses=None) -> str:
    raw = {
        "suite": name,
        "base": tiny_raw(train__rounds=rounds),
        "grid": {"defenses": defenses or [[], [{"name": "clipping", "max_norm": 0.5}]]},
        "seeds": list(seeds),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _cell_runs(uri: str, suite: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'", max_results=1000)
    return client, runs


def _running(uri: str, suite: str) -> bool:
    try:
        return any(r.info.status == "RUNNING" for r in _cell_runs(uri, suite)[1])
    except Exception:  # the store or the experiment does not exist yet
        return False


def _histories(uri: str, suite: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run_key -> metric -> [(step, value)] of every FINISHED cell run, timings left out."""
    client, runs = _cell_runs(uri, suite)
    out = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        hist = {}
        for key in run.data.metrics:
            if key.startswith("cost/") and "seconds" in key:
                continue  # wall-clock timings differ between any two runs
            hist[key] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        out[run.data.tags["run_key"]] = hist
    return out


# --------------------------------------------------------------------------- fast unit tests


def test_recording_log_replays_the_same_calls_in_order():
    rec = RecordingCellLog()
    rec.params({"a": 1})
    rec.metrics({"m": 0.5}, step=1)
    rec.metrics({"m": 0.25, "n": 2}, step=2)
    rec.tags({"t": "x"})
    rec.text("hello", "c/config.yaml")
    rec.bytes(b"\x00\x01", "b.npz")
    out = MemoryCellLog("cell", {})
    rec.replay(out)
    assert out.param_values == {"a": 1}
    assert out.metric_history == {"m": [(1, 0.5), (2, 0.25)], "n": [(2, 2.0)]}
    assert out.tag_values == {"t": "x"}
    assert out.artifacts == {"c/config.yaml": b"hello", "b.npz": b"\x00\x01"}
    assert rec.metric_history() == out.metric_history


def test_worker_outcome_equals_an_in_process_run(tiny_cfg):
    direct = MemoryCellLog("d", {})
    run_cell(tiny_cfg, direct)
    outcome = execute(CellTask(0, "c", tiny_cfg.run_key, tiny_cfg, {"run_key": tiny_cfg.run_key}))
    assert outcome.ok
    replayed = MemoryCellLog("r", {})
    outcome.log.replay(replayed)
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    assert strip(replayed.metric_history) == strip(direct.metric_history)
    assert replayed.param_values == direct.param_values
    assert replayed.artifacts == direct.artifacts


def test_a_failing_cell_is_written_failed_with_its_error():
    cfg = parse_experiment({**tiny_raw(), "data": {"name": "heart_disease", "partition": "natural", "data_dir": "/nonexistent/heart"}})
    outcome = execute(CellTask(0, "bad", cfg.run_key, cfg, {"run_key": cfg.run_key}))
    assert not outcome.ok and isinstance(outcome.error, ConfigError)
    tracker = MemoryTracker()
    tracker.begin_suite(None)
    with pytest.raises(ConfigError):
        record_outcome(tracker, outcome)
    (run,) = tracker.runs
    assert run.status == "FAILED"
    assert run.tag_values["error"].startswith("ConfigError: data.data_dir")
    assert run.param_values  # what the cell logged before failing is kept
    assert tracker.finished_keys(None) == set()  # so resume runs it again


def test_bad_executor_options_are_one_line_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="--workers"):
        make_executor("local", 0, None)
    with pytest.raises(ConfigError, match="--executor ray"):
        make_executor("local", 2, "127.0.0.1:6379")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'privbench\[ray\]'"):
        make_executor("ray", None, None)


def test_cli_rejects_address_without_ray(tmp_path, tracking_uri, capsys):
    suite = _suite_file(tmp_path, seeds=(0,))
    assert main(["run", suite, "--address", "10.0.0.1:6379", "-q"]) == 2
    assert "--address" in capsys.readouterr().err


def test_workers_that_cannot_fit_in_memory_are_refused_in_one_line():
    # the boundary: N workers fit while N * per-worker + fork server <= available
    avail = 6 * WORKER_MEMORY_MB + FORK_SERVER_MEMORY_MB
    check_workers_memory(6, available_mb=avail)  # exactly fits: no error
    with pytest.raises(ConfigError) as err:
        check_workers_memory(7, available_mb=avail)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--workers 7:") and msg.endswith("use --workers 6 or fewer")
    with pytest.raises(ConfigError, match="run without --workers"):  # not even two fit
        check_workers_memory(2, available_mb=FORK_SERVER_MEMORY_MB + WORKER_MEMORY_MB)
    if sys.platform.startswith("linux"):
        assert available_memory_mb() > 0
        with pytest.raises(ConfigError, match="--workers"):  # the executor checks on construction
            LocalExecutor(10**9)


def test_cli_refuses_more_workers_than_memory_before_logging(tmp_path, capsys):
    if not sys.platform.startswith("linux"):
        pytest.skip("available memory is read from /proc/meminfo")
    suite = _suite_file(tmp_path, seeds=(0,))
    store = tmp_path / "never.db"
    assert main(["run", suite, "--tracking-uri", f"sqlite:///{store}", "-q", "--workers", str(10**9)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--workers {10**9}:" in err[0] and "Traceback" not in err[0]
    assert not store.exists()  # refused before the store was opened


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cells_in_local_workers_equal_cells_in_this_process():
    """Workers forked from the preloaded fork server (gc frozen, memory trimmed after each cell)
    give each cell exactly the log an in-process run gives, whichever worker runs it."""
    cfgs = [parse_experiment(tiny_raw(seed=s, defenses=d, train__rounds=2))
            for s in (0, 1) for d in ([], [{"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}])]
    tasks = [CellTask(i, f"c{i}", c.run_key, c) for i, c in enumerate(cfgs)]
    outcomes = {o.task.index: o for o in LocalExecutor(2).run(tasks)}
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    for i, cfg in enumerate(cfgs):
        direct = MemoryCellLog("d", {})
        run_cell(cfg, direct)
        assert outcomes[i].ok, outcomes[i].error
        replayed = MemoryCellLog("r", {})
        outcomes[i].log.replay(replayed)
        assert strip(replayed.metric_history) == strip(direct.metric_history), i
        assert replayed.param_values == direct.param_values
        assert replayed.artifacts == direct.artifacts


@pytest.mark.slow
def test_workers_2_gives_the_same_runs_as_workers_1_and_resume_skips_them(tmp_path):
    suite = _suite_file(tmp_path, seeds=(0, 1))
    uri1 = f"sqlite:///{tmp_path / 'one.db'}"
    uri2 = f"sqlite:///{tmp_path / 'two.db'}"
    assert main(["run", suite, "--tracking-uri", uri1, "-q"]) == 0
    # half the cells first, then the whole suite with 2 workers: only the rest may run
    assert main(["run", suite, "--tracking-uri", uri2, "-q", "--only", "seed 0"]) == 0
    assert main(["run", suite, "--tracking-uri", uri2, "-q", "--workers", "2"]) == 0
    h1, h2 = _histories(uri1, "par"), _histories(uri2, "par")
    assert len(h1) == 4 and set(h1) == set(h2)
    for key in h1:
        # the paired comparisons (compare/...) are suite-level: a resumed suite re-derives them as
        # seeds are added, so their history may differ; their final values may not
        cell1 = {k: v for k, v in h1[key].items() if not k.startswith("compare/")}
        cell2 = {k: v for k, v in h2[key].items() if not k.startswith("compare/")}
        assert cell1 == cell2, key
        # each round once: nothing lost, nothing doubled
        assert [s for s, _ in h2[key]["utility/test_accuracy"]] == [1, 2, 3]
    _, runs = _cell_runs(uri2, "par")
    _, runs1 = _cell_runs(uri1, "par")
    final = lambda rs: {r.data.tags["run_key"]: {k: v for k, v in r.data.metrics.items() if k.startswith("compare/")} for r in rs}  # noqa: E731
    assert final(runs1) == final(runs)  # the comparisons' latest values agree
    keys = [r.data.tags["run_key"] for r in runs]
    assert len(keys) == len(set(keys)) == 4  # no duplicate, no missing run
    # resume: nothing left to do, nothing new logged
    assert main(["run", suite, "--tracking-uri", uri2, "-q", "--workers", "2"]) == 0
    assert len(_cell_runs(uri2, "par")[1]) == 4


@pytest.mark.slow
def test_a_failing_cell_in_a_worker_ends_failed_and_the_others_finish(tmp_path):
    # fails mid-training, inside the worker: 2 of 3 hospitals drop out, below secure aggregation's t = 2
    suite = _suite_file(tmp_path, seeds=(0, 1), name="mixed", defenses=[[], [{"name": "secure_aggregation", "dropout_fraction": 0.67}]])
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["run", suite, "--tracking-uri", uri, "-q", "--workers", "2"]) == 1
    _, runs = _cell_runs(uri, "mixed")
    status = sorted((r.data.tags["defenses"], r.info.status) for r in runs)
    assert status == [("none", "FINISHED")] * 2 + [("secure_aggregation", "FAILED")] * 2
    assert all("secure aggregation aborted" in r.data.tags["error"] for r in runs if r.info.status == "FAILED")


@pytest.mark.slow
def test_ctrl_c_ends_claimed_cells_killed_and_resume_completes(tmp_path):
    suite = _suite_file(tmp_path, seeds=(0, 1, 2), rounds=40)
    uri = f"sqlite:///{tmp_path / 'c.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "bench", "run", suite, "-q", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline and not _running(uri, "par"):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(1)  # cells are running in the workers
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    client, runs = _cell_runs(uri, "par")
    # the cells in flight were claimed in the store (RUNNING) and end KILLED; nothing stays RUNNING
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all(r.data.tags["error"].startswith("interrupted (SIGINT)") for r in killed)
    parent = client.search_runs([client.get_experiment_by_name("par").experiment_id], "tags.role = 'suite'")
    assert [p.info.status for p in parent] == ["KILLED"]
    done_before = sum(r.info.status == "FINISHED" for r in runs)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{done_before} already finished, {6 - done_before} to run" in out.stdout
    _, runs = _cell_runs(uri, "par")
    keys = [r.data.tags["run_key"] for r in runs if r.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 6
    assert len(runs) == 6 + len(killed)  # the killed claims stay, as a record of the interruption


@pytest.mark.slow
def test_cells_are_claimed_only_when_a_worker_is_free():
    """The executor asks for the next claim only when a worker is free, and skips refused claims."""
    cfgs = [parse_experiment(tiny_raw(seed=s, train__rounds=1)) for s in range(3)]
    tasks = [CellTask(i, f"c{i}", c.run_key, c) for i, c in enumerate(cfgs)]
    events = []

    def claim(task):
        events.append(f"claim {task.index}")
        return None if task.index == 1 else task  # cell 1: another process has it

    executor = make_executor("local", 1, None)
    for outcome in executor.run(tasks, claim=claim):
        assert outcome.ok
        events.append(f"out {outcome.task.index}")
    assert events == ["claim 0", "out 0", "claim 1", "claim 2", "out 2"]
