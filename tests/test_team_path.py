"""The team path of docs/scale-out.md, for real: PostgreSQL, ``mlflow server``, Ray, two writers.

Starts PostgreSQL from the Debian packages (``apt-get install postgresql``; CI installs it) in a
temporary folder on 127.0.0.1, an ``mlflow server`` on it that serves artifacts from a temporary
folder, then:

1. runs a suite with ``--executor ray --workers 2`` (a local Ray) and, at the same time, a second
   ``privbench run`` of an overlapping suite (same suite name, some cells in common) with local
   workers: every cell has exactly one FINISHED run, and its artifacts are readable through the
   server;
2. stops (kills) the server while a suite is running: ``privbench`` fails the current cell
   within seconds with a clear reason, stops the suite, and the cells finished before are kept.

Missing PostgreSQL binaries or psycopg2 make the test FAIL (with the install line), not skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]
APT_HINT = "apt-get install -y postgresql (CI: .ci/run installs it)"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        pytest.fail(f"PostgreSQL binaries not found (/usr/lib/postgresql/*/bin/initdb): {APT_HINT}")
    return Path(found[-1]).parent


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root and there is no 'postgres' user to run PostgreSQL as: {APT_HINT} creates it")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture(scope="module")
def postgres():
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is missing: pip install psycopg2-binary (it is in the dev extra)")
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="privbench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    root.chmod(0o700)
    data, port = root / "data", _free_port()
    subprocess.run(_as_db_user([str(bindir / "initdb"), "-D", str(data), "-U", "privbench", "--auth=trust", "-E", "UTF8", "--no-instructions"]),
                   check=True, capture_output=True, timeout=120)
    log = open(root / "postgres.log", "w")
    server = subprocess.Popen(_as_db_user([str(bindir / "postgres"), "-D", str(data), "-k", str(root), "-h", "127.0.0.1", "-p", str(port),
                                           "-c", "fsync=off", "-c", "full_page_writes=off"]), stdout=log, stderr=log, start_new_session=True)
    ready = lambda: subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode == 0  # noqa: E731
    try:
        _wait(ready, 60, "PostgreSQL start", server)
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "privbench", "mlflow"], check=True, timeout=60)
        yield f"postgresql+psycopg2://privbench@127.0.0.1:{port}/mlflow"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # "smart" shutdown is SIGTERM; SIGQUIT would be immediate
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers for a test server
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--backend-store-uri", postgres,
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=log, env=env, start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 120, f"mlflow server (log: {tmp / 'server.log'})", proc)
        yield {"url": url, "proc": proc, "db": postgres, "artifacts": tmp / "artifacts"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()


def _suite(tmp_path: Path, file: str, name: str, seeds, rounds: int = 2, defenses=None) -> Path:
    base = tiny_raw(train__rounds=rounds)
    base.pop("seed")  # the suite's seeds set it
    raw = {"suite": name, "base": base, "grid": {"defenses": defenses or [[], [{"name": "clipping", "max_norm": 0.5}]]},
           "seeds": list(seeds)}
    path = tmp_path / file
    path.write_text(yaml.safe_dump(raw))
    return path


def _privbench(args, uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)  # a local Ray, started (and stopped) by privbench
    env["PRIVBENCH_RAY_LOCAL"] = "1"  # accepted here: its gRPC servers listen on every interface (bench/executors.py)
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args), "-q"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _cell_runs(uri: str, suite: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    return [] if exp is None else list(client.search_runs([exp.experiment_id], "tags.role = 'cell'", max_results=1000))


def test_ray_and_a_second_writer_on_one_server_run_each_cell_once(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'privbench[ray]')")
    from mlflow.tracking import MlflowClient

    from bench.suite import load_suite

    url = mlflow_server["url"]
    first = _suite(tmp_path, "a.yaml", "team", seeds=(0, 1))
    second = _suite(tmp_path, "b.yaml", "team", seeds=(1, 2))  # seed 1: the same cells as in the first
    keys = {c.run_key for p in (first, second) for c in load_suite(str(p)).cells}
    assert len(keys) == 6
    procs = [_privbench(["run", first, "--executor", "ray", "--workers", "2"], url), _privbench(["run", second], url)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    runs = _cell_runs(url, "team")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["run_key"] for r in finished) == sorted(keys), [(r.info.status, r.data.tags["run_key"]) for r in runs]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # artifacts went through the server (mlflow-artifacts:) and read back through it
    client = MlflowClient(tracking_uri=url)
    for r in finished:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        local = client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))
        assert yaml.safe_load(Path(local).read_text())["seed"] == int(r.data.tags["seed"])
    assert any(mlflow_server["artifacts"].rglob("config.yaml"))


def test_a_server_that_stops_mid_suite_fails_the_cell_fast_and_keeps_finished_ones(mlflow_server, tmp_path):
    url, db = mlflow_server["url"], mlflow_server["db"]
    suite = _suite(tmp_path, "stop.yaml", "teamstop", seeds=range(6), rounds=150, defenses=[[]])
    proc = _privbench(["run", suite], url)
    _wait(lambda: any(r.info.status == "FINISHED" for r in _cell_runs(url, "teamstop")), 150, "a first FINISHED cell", proc)
    os.killpg(mlflow_server["proc"].pid, signal.SIGKILL)  # the server dies (crash, machine lost)
    stopped = time.time()
    out, err = proc.communicate(timeout=120)
    seconds = time.time() - stopped
    assert proc.returncode == 1, err[-3000:]
    assert "stopped answering" in err and "the suite stopped" in err and "Traceback" not in err, err[-3000:]
    assert seconds < 40, f"privbench took {seconds:.0f} s to give up after the server stopped"
    print(f"server stopped: privbench gave up after {seconds:.1f} s")
    # what finished before is kept (read from PostgreSQL directly: the server is gone)
    runs = _cell_runs(db, "teamstop")
    finished = [r.data.tags["run_key"] for r in runs if r.info.status == "FINISHED"]
    assert finished and len(finished) == len(set(finished))
    assert len(finished) < 6  # it did stop
    assert all(r.info.status in ("FINISHED", "RUNNING") for r in runs)  # the cell it was on stays RUNNING until reaped
