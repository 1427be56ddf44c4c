"""Issue 22, item 1: secrets never leave the process.

A password planted in the tracking URI (and in ``MLFLOW_TRACKING_PASSWORD``) must appear in no
line privbench prints, no log, param, tag, metric or artifact on the server (``report.html``
included), no report file and no link ``privbench ui`` prints. The slow test runs ``run``,
``report`` and ``ui`` for real against an ``mlflow server`` and sweeps every byte they produced.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bench import redact
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]
PLANTED = "Pl4nted-s3cret"  # the URI's password
PLANTED_ENV = "env-t0ken-9f3a"  # MLFLOW_TRACKING_PASSWORD's


@pytest.fixture(autouse=True)
def _fresh_secrets():
    redact.forget()
    yield
    redact.forget()


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("uri", [
    f"http://alice:{PLANTED}@mlflow.example:5000",
    f"https://alice:{PLANTED}@mlflow.example/path?x=1",
    f"postgresql+psycopg2://mlflow:{PLANTED}@db-host:5432/mlflow",
    f"mysql://root:{PLANTED}@127.0.0.1/db",
])
def test_a_uri_password_is_masked_and_the_rest_kept(uri):
    line = f"privbench: error: --tracking-uri {uri!r}: cannot reach it"
    out = redact.redact(line)
    assert PLANTED not in out
    assert ":***@" in out
    assert out.replace("***", PLANTED) == line  # only the password changed


def test_registered_and_environment_secrets_are_masked_anywhere(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PLANTED_ENV)
    redact.register(f"http://bob:{PLANTED}@h:1")
    text = f"auth failed for {PLANTED} with token {PLANTED_ENV} and %-encoded http://bob:{PLANTED}@h:1/x"
    out = redact.redact(text)
    assert PLANTED not in out and PLANTED_ENV not in out
    assert out.count("***") == 3
    # a percent-encoded password is masked in both spellings
    redact.register("http://u:p%40ss%2Fword@h")
    assert redact.redact("p@ss/word and p%40ss%2Fword") == "*** and ***"
    # no password, nothing to mask; short values are left alone (they would mangle every line)
    assert redact.redact("http://h:5000/#/experiments/1") == "http://h:5000/#/experiments/1"
    redact.register("ab")
    assert redact.redact("about abc") == "about abc"


def test_links_drop_the_credentials():
    assert redact.strip_credentials(f"http://alice:{PLANTED}@h:5000/") == "http://h:5000/"
    assert redact.strip_credentials("http://h:5000") == "http://h:5000"


def test_guard_masks_prints_logs_and_restores_the_streams(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with redact.guard(f"http://a:{PLANTED}@h:1"):
            print(f"tracking: http://a:{PLANTED}@h:1")
            print(f"bare {PLANTED}", file=sys.stderr)
            logging.getLogger("mlflow.x").error("View run at %s", f"http://a:{PLANTED}@h:1/#/runs/1")
            try:
                raise RuntimeError(f"boom {PLANTED}")
            except RuntimeError:
                logging.getLogger("x").exception("failed")
        assert sys.stdout is out and sys.stderr is err
    finally:
        root.removeHandler(handler)
    text = out.getvalue() + err.getvalue()
    assert PLANTED not in text, text
    assert "tracking: http://a:***@h:1" in text and "bare ***" in text and "View run at http://a:***@h:1" in text
    assert "RuntimeError: boom ***" in text


def test_a_store_error_line_masks_the_password(tmp_path, capsys):
    """A server that does not answer: the one error line names the URI without its password."""
    from bench.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"suite": "secret_err", "base": tiny_raw(), "seeds": [0]}))
    code = main(["report", "--suite", "x", "--tracking-uri", f"http://alice:{PLANTED}@127.0.0.1:{port}"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert PLANTED not in out + err
    assert "alice:***@127.0.0.1" in err


# --------------------------------------------------------------------------- the sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bytes_under(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_planted_password_is_found_nowhere(tmp_path):
    """run, report and ui against a real `mlflow server` reached as http://alice:PASSWORD@...:
    every output line, the store (params, tags, metrics), every artifact (report.html included),
    the report folder and privbench's own logs are swept for the password."""
    port = _free_port()
    store, artifacts, state = tmp_path / "server.db", tmp_path / "artifacts", tmp_path / "state"
    server_log = open(tmp_path / "server.log", "w")
    env_server = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--workers", "1", "--backend-store-uri", f"sqlite:///{store}",
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=server_log, stderr=server_log, env=env_server, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        uri = f"http://alice:{PLANTED}@127.0.0.1:{port}"
        suite = tmp_path / "secret.yaml"
        base = tiny_raw(train__rounds=2)
        base.pop("seed")
        suite.write_text(yaml.safe_dump({"suite": "secret_sweep", "base": base,
                                         "grid": {"defenses": [[], [{"name": "clipping", "max_norm": 0.5}]]}, "seeds": [0]}))
        env = {**os.environ, "MLFLOW_TRACKING_PASSWORD": PLANTED_ENV, "PRIVBENCH_STATE_DIR": str(state), "PYTHONIOENCODING": "utf-8"}
        env.pop("MLFLOW_TRACKING_URI", None)
        outputs = {}
        for name, args in (("run", ["-v", "run", str(suite), "--tracking-uri", uri]),
                           ("run-again", ["run", str(suite), "--tracking-uri", uri]),  # the "nothing to do" path
                           ("report", ["report", "--suite", "secret_sweep", "--tracking-uri", uri, "--out", str(tmp_path / "report")]),
                           ("ui", ["ui", "--tracking-uri", uri]),
                           ("ui-env", ["ui"])):
            e = {**env, "MLFLOW_TRACKING_URI": uri} if name == "ui-env" else env
            p = subprocess.run([sys.executable, "-m", "bench", *args], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, f"{name}: {p.stderr[-3000:]}"
            outputs[name] = p.stdout + p.stderr
        assert "alice:***@127.0.0.1" in outputs["run"]  # the tracking: line, masked, still says where
        assert f"http://127.0.0.1:{port}/#/experiments/" in outputs["ui"]  # links without credentials
        swept = {f"output of {k}": v.encode() for k, v in outputs.items()}
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        exp = client.get_experiment_by_name("secret_sweep")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 3  # parent + 2 cells
        for r in runs:
            swept[f"params/tags of {r.info.run_name}"] = repr((r.data.params, r.data.tags, r.data.metrics, r.info)).encode()
        swept.update(_bytes_under(artifacts))
        swept.update(_bytes_under(tmp_path / "report"))
        swept.update(_bytes_under(state))
        swept[str(store)] = store.read_bytes()
        server_log.flush()
        swept["server log"] = (tmp_path / "server.log").read_bytes()
        assert any(k.endswith("report.html") for k in _bytes_under(artifacts)), "report.html was not uploaded"
        assert len(swept) > 20
        for secret in (PLANTED, PLANTED_ENV):
            leaks = [k for k, v in swept.items() if secret.encode() in v]
            assert not leaks, f"{secret!r} found in: {leaks}"
        print(f"planted-password sweep: {len(swept)} outputs/files/runs searched, 0 hold either secret")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        server_log.close()
