"""Reliability drills: signals, killed processes, concurrent writers, broken stores, bad input.

Each drill asserts what the store holds afterwards (docs/scale-out.md, "Reliability"):

* SIGTERM ends a suite like Ctrl-C: the running cell ends KILLED, the suite run KILLED, no run
  stays RUNNING, and no worker, fork server or resource tracker outlives ``privbench``;
* after SIGKILL, the next ``privbench run`` marks the dead process's RUNNING runs FAILED (with an
  ``error`` tag saying so), says so in one line, and runs those cells again;
* two ``privbench run`` on one fresh store: no crash, exactly one FINISHED run per cell;
* a bad or unreachable store, or any bad flag: exit 2, one line, no traceback, nothing written.

The drills that train run ``python -m bench`` in a fresh process (behind ``slow``); the
bad-input table runs in this process.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.tracking import MlflowTracker, owner_alive, process_tags
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _suite_file(tmp_path: Path, name: str, seeds=(0, 1), rounds: int = 2, defenses=None) -> Path:
    base = tiny_raw(train__rounds=rounds)
    base.pop("seed")  # the suite's seeds set it
    raw = {
        "suite": name,
        "base": base,
        "grid": {"defenses": defenses if defenses is not None else [[]]},
        "seeds": list(seeds),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _popen(args, uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args), "-q"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _runs(uri: str, suite: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    return [] if exp is None else list(client.search_runs([exp.experiment_id], max_results=1000))


def _cells(runs) -> list:
    return [r for r in runs if r.data.tags.get("role") == "cell"]


def _wait_for_running_cell(uri: str, suite: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if any(r.info.status == "RUNNING" for r in _cells(_runs(uri, suite))):
                return
        except Exception:  # the store is being created by the process under test
            pass
        time.sleep(0.2)
    raise AssertionError(f"no cell RUNNING within {timeout} s")


def _session(sid: int) -> list[int]:
    """Pids of the processes of session ``sid`` (Linux /proc): what ``privbench`` started."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _one_finished_run_per_key(runs, keys: int) -> None:
    cells = _cells(runs)
    finished = [r.data.tags["run_key"] for r in cells if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == keys, sorted(finished)
    assert not [r for r in runs if r.info.status == "RUNNING"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- fast: ownership of runs


def test_owner_alive_same_host_by_pid_other_hosts_by_heartbeat():
    me = process_tags()
    assert owner_alive(me)
    host = me["host"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not owner_alive({**me, "pid": str(gone.pid)})
    # pid 1 runs, but started long after a claim made 30 years ago: the pid was reused
    assert not owner_alive({**me, "pid": "1", "claimed_at": "1995-01-01T00:00:00+00:00"}) or not Path("/proc/1/stat").exists()
    now = time.time()
    other = {"host": host + "-elsewhere", "pid": "4242"}
    fresh = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    stale = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 3600))
    assert owner_alive({**other, "heartbeat": fresh}, now=now)
    assert not owner_alive({**other, "heartbeat": stale}, now=now)
    # a run without owner tags (an older privbench): alive for a while after it started
    assert owner_alive({}, start_time_ms=int((now - 60) * 1000), now=now)
    assert not owner_alive({}, start_time_ms=int((now - 3600) * 1000), now=now)


def test_concurrent_claims_on_one_key_leave_exactly_one_owner(tmp_path):
    """Six trackers (as if six processes) claim the same cell at once: one wins, the
    others are told it is RUNNING; when it has finished, a new claim is told FINISHED."""
    uri = f"sqlite:///{tmp_path / 'claims.db'}"
    suite = type("S", (), {"name": "claims", "source": {}, "cells": []})()
    trackers = [MlflowTracker(uri) for _ in range(6)]
    for t in trackers:
        t.begin_suite(suite)
    tags = {"suite": "claims", "run_key": "k0"}
    results: list = [None] * len(trackers)
    go = threading.Barrier(len(trackers))

    def claim(i):
        go.wait()
        results[i] = trackers[i].claim("cell k0", tags)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(trackers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = [i for i, c in enumerate(results) if c.run_id]
    assert len(winners) == 1, results
    assert all(c.reason.startswith("RUNNING in pid") for c in results if not c.run_id)
    winner = trackers[winners[0]]
    with winner.cell("cell k0", tags, run_id=results[winners[0]].run_id) as out:
        out.metrics({"m": 1.0})
    assert trackers[0 if winners[0] else 1].claim("cell k0", tags).reason == "FINISHED"
    cells = _cells(_runs(uri, "claims"))
    assert [(r.info.status, r.data.tags["run_key"]) for r in cells] == [("FINISHED", "k0")]  # withdrawn claims are deleted
    for t in trackers:
        t.end_suite("FINISHED")


def test_report_lists_every_cell_it_left_out_and_why(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'left.db'}"
    cells = [type("C", (), {"run_key": f"k{i}", "name": f"breast_cancer · no defense · seed {i}"})() for i in range(4)]
    suite = type("S", (), {"name": "left", "source": {"suite": "left"}, "cells": cells})()
    tracker = MlflowTracker(uri)
    tracker.begin_suite(suite)
    for c in cells[:2]:
        tags = {"suite": "left", "run_key": c.run_key, "dataset": "breast_cancer", "defenses": "none"}
        try:
            with tracker.cell(c.name, tags, run_id=tracker.claim(c.name, tags).run_id) as out:
                out.params({"seed": c.run_key[1:], "data.name": "breast_cancer"})
                out.metrics({"utility/test_accuracy": 0.9}, step=1)
                if c.run_key == "k1":
                    raise RuntimeError("boom in round 1")
        except RuntimeError:
            pass
    running = tracker.claim(cells[2].name, {"suite": "left", "run_key": "k2"})  # this live process holds it
    assert running.run_id
    # k3 never got a run
    assert main(["report", "--suite", "left", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-attach"]) == 0
    err = capsys.readouterr().err
    assert "cells: 1 in the report, 3 left out" in err
    assert "1 cell(s) FAILED and are left out of the report: breast_cancer · no defense · seed 1 (RuntimeError: boom in round 1)" in err
    assert f"1 cell(s) RUNNING and are left out of the report: breast_cancer · no defense · seed 2 (running in pid {os.getpid()}" in err
    assert "1 cell(s) missing and are left out of the report: breast_cancer · no defense · seed 3 (no run in the store" in err
    tracker.end_suite("KILLED")


# --------------------------------------------------------------------------- fast: bad input, one line, exit 2


class _Fake(http.server.BaseHTTPRequestHandler):
    """Not an MLflow server: answers every request with ``code`` and an HTML body."""

    code = 404

    def do_GET(self):
        code = int(self.path.split("/")[1]) if self.path.split("/")[1].isdigit() else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"<html>not mlflow</html>")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def bad_input_env(tmp_path_factory):
    """A valid one-cell suite, an existing store, and files that are not stores."""
    tmp = tmp_path_factory.mktemp("bad_input")
    suite = _suite_file(tmp, "bad", seeds=(0,))
    store = tmp / "store" / "m.db"
    MlflowTracker(f"sqlite:///{store}")  # creates the tables, no runs
    (tmp / "notdb.db").write_text("this is not sqlite\n")
    (tmp / "plainfile").write_text("x")
    (tmp / "adir").mkdir()
    (tmp / "empty.yaml").write_text("")
    (tmp / "broken.yaml").write_text("suite: [unclosed\n")
    return tmp


def _fingerprint(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


_READ_ONLY = "READ_ONLY"
BAD_INPUT = [
    # (argv with {t} = the fixture folder, {store} = an existing store, {fake} = a non-MLflow HTTP server; what stderr names)
    (["run", "{t}/bad.yaml", "--tracking-uri", "garbage"], "not a tracking URI"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "foo://bar"], "unknown scheme 'foo'"),
    (["run", "{t}/bad.yaml", "--tracking-uri", ""], "empty"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "   "], "empty"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "mlflow.db"], "did you mean sqlite:///"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "file:///tmp/mlruns"], "file store"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "sqlite://"], "in-memory"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "sqlite:///:memory:"], "in-memory"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "sqlite:///{t}/notdb.db"], "is not an SQLite database"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "sqlite:///{t}/adir"], "is a directory"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "sqlite:///{t}/plainfile/sub/m.db"], "is a file, not a directory"),
    (["run", "{t}/bad.yaml", "--tracking-uri", _READ_ONLY], "read-only"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "http://"], "no host"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "https://:5000"], "no host"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{fake}/404/missing/dir"], "no MLflow API at this address (HTTP 404"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{fake}/200"], "did not answer like an MLflow tracking server"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{fake}/401"], "refused the credentials"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "postgresql+nosuchdriver://u@127.0.0.1/db"], "cannot open the store"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers", "0"], "--workers: got 0"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers", "-3"], "--workers: got -3"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers", "abc"], "invalid int value: 'abc'"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers", "1.5"], "invalid int value: '1.5'"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers", ""], "invalid int value"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--workers"], "expected one argument"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--executor", "slurm"], "invalid choice: 'slurm'"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--address", "10.0.0.1:6379"], "only used with --executor ray"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "-x"], "unrecognized arguments: -x"),
    (["run", "{t}/bad.yaml", "--tracking-uri"], "expected one argument"),
    (["run", "{t}/no_such_suite.yaml", "--tracking-uri", "{store}"], "file not found"),
    (["run", "{t}/adir", "--tracking-uri", "{store}"], "is a directory"),
    (["run", "{t}/empty.yaml", "--tracking-uri", "{store}"], "empty.yaml"),
    (["run", "{t}/broken.yaml", "--tracking-uri", "{store}"], "broken.yaml"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--set", "train.roundz=3"], "roundz"),
    (["run", "{t}/bad.yaml", "--tracking-uri", "{store}", "--only", "no cell has this name"], "no cell"),
    (["run", "--tracking-uri", "{store}"], "the following arguments are required: suite"),
    (["runn", "{t}/bad.yaml"], "invalid choice: 'runn'"),
    (["report", "--tracking-uri", "{store}"], "the following arguments are required: --suite"),
    (["report", "--suite", "bad", "--tracking-uri", "garbage"], "not a tracking URI"),
    (["report", "--suite", "bad", "--tracking-uri", "sqlite:///{t}/missing.db"], "does not exist"),
    (["report", "--suite", "bad", "--tracking-uri", "sqlite:///{t}/notdb.db"], "is not an SQLite database"),
    (["report", "--suite", "bad", "--tracking-uri", "{store}"], "is empty"),
    (["report", "--suite", "bad", "--tracking-uri", "{fake}/404"], "HTTP 404"),
]


@pytest.fixture
def read_only_store(bad_input_env):
    """A copy of the store nobody may write (chmod; as root, whom modes do not stop, chattr +i)."""
    folder = bad_input_env / "ro"
    folder.mkdir(exist_ok=True)
    db = folder / "m.db"
    if not db.exists():
        db.write_bytes((bad_input_env / "store" / "m.db").read_bytes())
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i: no way to make a read-only file here")
        yield db
        subprocess.run(["chattr", "-i", str(db)], check=True)
    else:
        db.chmod(0o444)
        folder.chmod(0o555)
        yield db
        folder.chmod(0o755)
        db.chmod(0o644)


@pytest.mark.parametrize("argv,names", BAD_INPUT, ids=[" ".join(a[:1] + a[2:])[:60] for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, names, bad_input_env, fake_server, request, capsys, monkeypatch, tmp_path):
    t = bad_input_env
    store = f"sqlite:///{t / 'store' / 'm.db'}"
    if _READ_ONLY in argv:
        argv = [f"sqlite:///{request.getfixturevalue('read_only_store')}" if a == _READ_ONLY else a for a in argv]
    argv = [a.format(t=t, store=store, fake=fake_server) for a in argv]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, os.environ.get(key, "0" if key.endswith("RETRIES") else "5"))  # no retries against the fake server
    monkeypatch.chdir(tmp_path)  # nothing may appear in the working directory either (./results, ./mlruns, ./garbage)
    before = _fingerprint(t)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("privbench: error:") and names in lines[0], lines[0]
    assert "Traceback" not in err
    assert _fingerprint(t) == before, "bad input changed the store or its folder"
    assert list(tmp_path.iterdir()) == []


def test_at_least_thirty_bad_inputs():
    assert len(BAD_INPUT) >= 30


# --------------------------------------------------------------------------- slow drills


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
def test_unreachable_server_fails_fast_with_one_line(tmp_path, capsys, restore_environ):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        os.environ.pop(key, None)  # privbench's own bounded defaults, not MLflow's minutes of retries
    suite = _suite_file(tmp_path, "unreach", seeds=(0,))
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    assert main(["run", str(suite), "--tracking-uri", uri, "-q"]) == 2
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the tracking server" in err and uri in err, err
    assert seconds < 20, f"took {seconds:.1f} s"
    print(f"unreachable server: failed after {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes through Linux's /proc")
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_ends_runs_killed_and_leaves_no_process(tmp_path, workers):
    suite = _suite_file(tmp_path, "term", seeds=(0, 1), rounds=3000)  # cells that cannot finish before the signal
    uri = f"sqlite:///{tmp_path / 'term.db'}"
    proc = _popen(["run", suite, "--workers", workers], uri)
    _wait_for_running_cell(uri, "term", proc)
    # with workers: privbench, its fork server, its resource tracker and at least one worker
    want, deadline = (4 if workers == 2 else 1), time.time() + 20
    while len(_session(proc.pid)) < want and time.time() < deadline:
        time.sleep(0.2)
    assert len(_session(proc.pid)) >= want, _session(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err, err
    runs = _runs(uri, "term")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("role") == "suite"]
    assert parent.info.status == "KILLED"
    cells = _cells(runs)
    assert cells and all(r.info.status == "KILLED" and "SIGTERM" in r.data.tags["error"] for r in cells), \
        [(r.info.status, r.data.tags.get("error")) for r in cells]
    deadline = time.time() + 10
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert _session(proc.pid) == [], "processes outlived privbench"


@pytest.mark.slow
def test_after_sigkill_the_next_run_marks_stale_runs_failed_and_reruns(tmp_path):
    suite = _suite_file(tmp_path, "killed", seeds=(0, 1), rounds=40)
    uri = f"sqlite:///{tmp_path / 'killed.db'}"
    proc = _popen(["run", suite], uri)
    _wait_for_running_cell(uri, "killed", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    stale = [r.info.run_id for r in _runs(uri, "killed") if r.info.status == "RUNNING"]
    assert stale  # the suite run at least, and the cell that was running
    again = _popen(["run", suite], uri)
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert f"marked {len(stale)} RUNNING run(s) FAILED whose process is gone" in err
    runs = {r.info.run_id: r for r in _runs(uri, "killed")}
    for rid in stale:
        assert runs[rid].info.status == "FAILED"
        assert f"(pid {proc.pid} on host {socket.gethostname()}" in runs[rid].data.tags["error"] and "is gone" in runs[rid].data.tags["error"]
    _one_finished_run_per_key(list(runs.values()), keys=2)


@pytest.mark.slow
def test_two_processes_on_one_fresh_store_run_each_cell_once(tmp_path):
    suite = _suite_file(tmp_path, "twice", seeds=(0, 1, 2), rounds=2, defenses=[[], [{"name": "clipping", "max_norm": 0.5}]])
    uri = f"sqlite:///{tmp_path / 'fresh' / 'twice.db'}"  # neither the file nor its folder exists yet
    procs = [_popen(["run", suite], uri) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "already exists" not in err, err
    runs = _runs(uri, "twice")
    _one_finished_run_per_key(runs, keys=6)
    assert [r.info.status for r in runs if r.data.tags.get("role") == "suite"] == ["FINISHED", "FINISHED"]
    assert all(r.info.status == "FINISHED" for r in _cells(runs))  # claims that lost a race were withdrawn, not left behind
