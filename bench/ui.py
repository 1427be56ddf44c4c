"""``privbench ui``: the MLflow UI on a results store, opened on each suite's runs table.

For a local store (SQLite, the default ``results/mlflow.db``) it checks that the store exists
and that the port is free, saves each suite's runs view on its experiment
(:func:`bench.mlflow_view.write_suite_view`: headline metric columns, grouped by defense
setting), starts ``mlflow server --workers 1``, waits until it answers ``/health`` and prints
one link per suite. For an ``http(s)://`` tracking server, which already serves the UI, it
saves the views there and prints the links without starting anything.

The server it starts is ``mlflow server --app-name privbench`` (:mod:`bench.ui_app`: MLflow's app
plus a page that keeps the UI in training-runs mode on every page reached by clicking; the links
go through it) without MLflow's GenAI job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``:
no huey consumers). It runs in its own process group: Ctrl-C or SIGTERM stops that group
(SIGTERM, then SIGKILL after :data:`STOP_GRACE` seconds), and a watchdog process
(:func:`watchdog`) stops it when ``privbench ui`` itself is killed hard (SIGKILL leaves no
server, uvicorn worker or job runner holding the port).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import Optional, Sequence

from bench.redact import mask_uri, strip_credentials
from bench.safefiles import open_private
from bench.types import ConfigError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60.0  # seconds for `mlflow server` to answer /health (about 20 s on a busy 2-core machine)
CREATE_STORE = "privbench run experiments/quick.yaml"
STOP_GRACE = 0.5  # seconds the server's group gets to exit on SIGTERM before SIGKILL (the UI holds no state worth waiting for)
APP_NAME = "privbench"  # the `mlflow.app` entry point of bench/ui_app.py (pyproject.toml)
WATCH_INTERVAL = 0.2  # seconds between the watchdog's looks at its parent


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``privbench ui`` options (``bench/cli.py`` adds them to its ``ui`` subparser)."""
    parser.add_argument("--tracking-uri", help="MLflow store: a SQLite URI, or the http(s) URL of an MLflow server "
                        "(default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port the UI listens on (default 5000)")
    parser.add_argument("--suite", metavar="NAME", help="only this suite's link (the `suite:` key of its YAML)")
    parser.add_argument("--open", action="store_true", help="open the (first) suite's link in a web browser")


# --------------------------------------------------------------------------- checks


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def local_store_path(uri: str) -> Optional[Path]:
    """The file or folder a local tracking URI names (SQLite file, ``file:`` or plain path);
    ``None`` for a database server (postgresql://, mysql://...) or an http(s) server."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        return None if rest in ("", ":memory:") else Path(rest if rest.startswith("/") else rest)
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" not in uri:
        return Path(uri)
    return None


def check_store(uri: str) -> None:
    """Refuse a local store that does not exist (MLflow would create an empty one)."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise ConfigError(f"no MLflow store at {path}: create one with `{CREATE_STORE}`, or point --tracking-uri at an existing store")


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before starting MLflow (which would fail late)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port number (1-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed UI's TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {host} is in use ({exc.strerror}): stop what runs there or pick another with --port") from None


def browse_host(host: str) -> str:
    """The host to put in a link: the listening address, or loopback for a wildcard one."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


# --------------------------------------------------------------------------- suites and links


def suite_experiments(client, suite: Optional[str] = None) -> list:
    """Experiments that hold a privbench suite (a run tagged ``role=suite``), latest first."""
    from mlflow.entities import ViewType

    exps = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        exps += list(page)
        token = page.token
        if not token:
            break
    if suite is not None:
        exps = [e for e in exps if e.name == suite]
    out = [e for e in exps if client.search_runs([e.experiment_id], "tags.role = 'suite'", max_results=1)]
    if suite is not None and not out:
        names = ", ".join(e.name for e in suite_experiments(client)) or "none yet"
        raise ConfigError(f"no suite {suite!r} in this store (suites: {names}); run it with `privbench run <suite.yaml>`")
    return sorted(out, key=lambda e: e.last_update_time or 0, reverse=True)


def opener_link(base_url: str, link: str) -> str:
    """``link`` through :data:`bench.ui_app.OPEN_PATH`, which keeps the UI in training-runs mode on the
    pages reached from it: ``http://h:p/#/experiments/1/runs?...`` -> ``http://h:p/privbench/open#/experiments/1/runs?...``."""
    from bench.ui_app import OPEN_PATH

    route = link.split("#", 1)[1] if "#" in link else "/"
    return f"{base_url.rstrip('/')}{OPEN_PATH}#{route}"


def suite_links(client, base_url: str, suite: Optional[str] = None, write: bool = True,
                opener: bool = False) -> list[tuple[str, str]]:
    """``(suite name, link)`` per suite experiment, after saving its runs view (``write``).

    A view that cannot be saved (a read-only server) leaves the link without a view key, with a
    warning: the table then shows MLflow's default columns. ``opener``: links through
    :func:`opener_link` (a server started by ``privbench ui``, which serves that page).
    """
    from bench.mlflow_view import suite_link, write_suite_view

    links = []
    for exp in suite_experiments(client, suite):
        key = None
        if write:
            try:
                key = write_suite_view(client, exp.experiment_id)
            except Exception as exc:  # a server that refuses tag writes still gets its link
                log.warning("could not save the runs view of suite %r: %s", exp.name, exc)
        link = suite_link(base_url, exp.experiment_id, key)
        links.append((exp.name, opener_link(base_url, link) if opener else link))
    return links


# --------------------------------------------------------------------------- the server


def has_app() -> bool:
    """Whether ``mlflow server --app-name privbench`` can find :mod:`bench.ui_app` (the entry point is
    registered when privbench is installed: ``pip install -e .``)."""
    from importlib.metadata import distributions

    # every installed copy, not entry_points()'s first per name: a stale privbench.egg-info in the
    # working folder (on this process's path, not on the `mlflow` command's) would hide the installed one
    return any(ep.group == "mlflow.app" and ep.name == APP_NAME for d in distributions() for ep in d.entry_points)


def mlflow_command(uri: str, host: str, port: int, app: bool = False) -> list[str]:
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not os.path.exists(exe):
        raise ConfigError("the mlflow command is not installed: pip install mlflow")
    cmd = [exe, "server", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    return cmd + ["--app-name", APP_NAME] if app else cmd


def server_env() -> dict[str, str]:
    """The server's environment: MLflow's GenAI job runner (judges, scorers) off, which privbench's
    training runs never use: no job runner and huey consumers to start, stop or leave behind."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def watchdog(parent: int, group: int, interval: float = WATCH_INTERVAL) -> None:
    """Stop process group ``group`` when process ``parent`` is gone (run as its own process).

    ``privbench ui`` starts it right after the server; it returns when the group is gone (the normal
    stop), or stops the group (SIGTERM, SIGKILL after :data:`STOP_GRACE` s) once its parent changed:
    ``privbench ui`` was killed hard and this process was handed to init.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is privbench ui's to handle
    while True:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        if os.getppid() != parent:
            break
        time.sleep(interval)
    _kill_group(group, STOP_GRACE)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill_group(group: int, grace: float, child: Optional[subprocess.Popen] = None) -> None:
    """SIGTERM to ``group``, SIGKILL to whatever of it is left after ``grace`` seconds (``child``:
    this process's own child in the group, reaped while waiting: a zombie still counts as a member)."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < grace:
        if child is not None:
            child.poll()
        if not _group_alive(group):
            return
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_watchdog(group: int) -> subprocess.Popen:
    """:func:`watchdog` for this process and ``group``, in a session of its own (not the server's
    group, which it outlives, nor the terminal's, whose Ctrl-C it must not take)."""
    code = f"from bench.ui import watchdog; watchdog({os.getpid()}, {group})"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> float:
    """Seconds until ``url/health`` answers 200.

    Raises:
        RuntimeError: MLflow exited first, or did not answer within ``timeout`` seconds.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before answering {url}/health")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Stop the server this command started and its workers (its own process group): SIGTERM,
    SIGKILL after ``grace`` seconds. Its worker may outlive the ``mlflow server`` command, so the
    group is stopped even when the command has exited."""
    _kill_group(proc.pid, grace, proc)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # not reaped yet; it has been sent SIGKILL
        pass


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_links(links: Sequence[tuple[str, str]], base_url: str) -> None:
    if not links:
        print(f"no suites in this store yet: `{CREATE_STORE}`, then open {base_url}")
    for name, link in links:
        print(f"  {name}: {link}")


def cmd_ui(args) -> int:
    """``privbench ui``: see the module docstring. Exit 0 on Ctrl-C, 2 on bad input, 1 when
    MLflow fails to start (its last log lines are printed)."""
    from mlflow.tracking import MlflowClient

    from bench.store import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    suite = getattr(args, "suite", None)
    want_open = getattr(args, "open", False)
    if is_remote(uri):  # the server already serves the UI
        base = strip_credentials(uri).rstrip("/")  # links to share: the browser asks for the password itself
        links = suite_links(MlflowClient(tracking_uri=uri), base, suite)
        print(f"MLflow UI at {base} (tracking server)")
        _print_links(links, base)
        if want_open:
            webbrowser.open(links[0][1] if links else base)
        return 0

    check_store(uri)
    check_port(args.host, args.port)
    base = f"http://{browse_host(args.host)}:{args.port}"
    # save the views before MLflow opens the store: one writer at a time on a SQLite file
    app = has_app()
    if not app:
        log.warning("bench.ui_app is not registered with MLflow (reinstall privbench: pip install -e .); "
                    "run and compare pages reached by clicking may open in MLflow's GenAI mode")
    cmd = mlflow_command(uri, args.host, args.port, app=app)
    links = suite_links(MlflowClient(tracking_uri=uri), base, suite, opener=app)
    # a fresh name in the user's private folder: no fixed /tmp name a planted symlink could redirect
    fh, logfile = open_private("logs", f"ui-{args.port}-")
    print(f"starting the MLflow UI on {base} (store {mask_uri(uri)}; log {logfile}) ...", flush=True)
    with fh:
        # its own session: Ctrl-C reaches this process only, which then stops the server's group
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=server_env())
    guard = start_watchdog(proc.pid)  # a hard-killed privbench ui takes its server with it
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: where a stuck ui is, on stderr
    args.started_server = True  # bench.cli exits at once after it (see bench.cli.cmd_ui)
    # SIGTERM (kill, a scheduler; Ctrl-C cannot reach a background job) stops the server like Ctrl-C
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C too, explicitly: a process started with SIGINT ignored (a background job of a
    # non-interactive shell, as some CI runners start tests) gets no KeyboardInterrupt from Python
    previous_int = signal.signal(signal.SIGINT, _interrupt)
    try:
        try:
            secs = wait_healthy(base, proc)
        except RuntimeError as exc:
            stop(proc)
            print(f"privbench: error: {exc}; last lines of {logfile}: {_tail(logfile)}", file=sys.stderr)
            return 1
        print(f"MLflow UI on {base}, ready in {secs:.0f} s. Each suite's runs table:")
        _print_links(links, base)
        print("Ctrl-C to stop.", flush=True)
        if want_open:
            webbrowser.open(links[0][1] if links else base)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        _kill_group(guard.pid, 0.0, guard)
        guard.wait()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
