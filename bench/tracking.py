"""Where results go: the MLflow tracker (default) and an in-memory tracker for tests.

MLflow layout (DESIGN.md): one experiment per suite, one parent run per invocation, one
child run per cell with the flattened config as params, tags ``suite``, ``run_key``,
``dataset``, ``defenses``, ``attacks``, ``threat_models``, ``git_sha``.

Several ``privbench`` processes may write to one store at once (two terminals, two machines
of a team, a rerun while a run is still going). So that no cell runs twice, a cell is
*claimed* in the store before it runs (:meth:`MlflowTracker.claim`): a RUNNING child run with
the cell's ``run_key`` and the claimer's identity — tags ``host``, ``pid``, ``claimed_at`` and a
``heartbeat`` refreshed every :data:`HEARTBEAT_S` seconds while the process lives. Another
process skips a key that has a FINISHED run or a RUNNING run whose owner is alive
(:func:`owner_alive`): on the same host, its pid still runs (and started before the claim);
on another host, its heartbeat is younger than :data:`STALE_AFTER_S`. A RUNNING run whose
owner is gone (killed with SIGKILL, machine lost) is marked FAILED with an ``error`` tag
saying so by the next ``privbench run`` or ``report`` (:meth:`MlflowTracker.reap_gone`), and
its cell runs again. Claims use only create/search/tag/delete calls, so they work the same
on a local SQLite file and through a tracking server's REST API.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional
from urllib.parse import urlsplit

from bench.redact import redact
from bench.redact import register as register_secret
from bench.types import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("results") / "mlflow.db"

# A claim's owner refreshes its ``heartbeat`` tag this often; on another host, a RUNNING run
# whose heartbeat is older than STALE_AFTER_S belongs to a process that is gone. Ten missed
# beats: a busy server or a few minutes of clock skew between hosts do not kill a live claim.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# a claim that finds a rival claim made at the same moment backs off and tries again
CLAIM_ATTEMPTS = 6

# Bounded HTTP retries for a tracking server (set unless the user set them): MLflow's own
# defaults (7 retries, backoff factor 2, 120 s timeout) make an unreachable server look like
# a hang for minutes. With these, a refused connection fails after about 7 s (4 tries).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

# URI schemes a tracking store can have (SQLAlchemy ones may name a driver: postgresql+psycopg2)
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_HTTP_SCHEMES = ("http", "https")
_OTHER_SCHEMES = ("databricks",)
_URI_HELP = "use sqlite:///PATH/mlflow.db (a local file), http://HOST:PORT (an `mlflow server`) or postgresql://USER@HOST/DB"


class StoreError(RuntimeError):
    """The tracking store stopped answering (or refused a write) while a suite was running.

    Not a cell failure: nothing more can be logged, so the suite stops (``bench.cli``).
    """


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file under ``./results/``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{DEFAULT_STORE.resolve()}"


def bounded_http_retries() -> None:
    """Set :data:`HTTP_DEFAULTS` in this process's environment where the user did not."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _local_sqlite_path(uri: str) -> Optional[Path]:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return None


# --------------------------------------------------------------------------- checking a store


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.lower().split("+", 1)[0] if "://" in uri else ""


def check_tracking_uri(uri: str, create: bool = True) -> None:
    """Refuse a tracking URI that cannot work, before anything runs or is logged.

    Checks only what can be checked without connecting: the scheme, and for a local SQLite
    file that its path is a writable SQLite file (or, with ``create``, a file that can be
    created there).

    Raises:
        ConfigError: one line naming the URI, the problem and the fix.
    """
    where = f"--tracking-uri {redact(uri)!r}"
    if not uri or not uri.strip():
        raise ConfigError(f"{where}: empty; {_URI_HELP}")
    scheme = _scheme(uri)
    if not scheme:
        hint = f"; did you mean sqlite:///{Path(uri).resolve()}?" if uri.endswith((".db", ".sqlite")) else ""
        raise ConfigError(f"{where}: not a tracking URI (no scheme); {_URI_HELP}{hint}")
    if scheme == "file":
        raise ConfigError(f"{where}: MLflow's file store is in maintenance mode and privbench does not use it; {_URI_HELP}")
    if scheme not in _DB_SCHEMES + _HTTP_SCHEMES + _OTHER_SCHEMES:
        raise ConfigError(f"{where}: unknown scheme {scheme!r}; {_URI_HELP}")
    if scheme in _HTTP_SCHEMES:
        if not urlsplit(uri).hostname:
            raise ConfigError(f"{where}: no host; write it like http://HOST:PORT")
        return
    if scheme != "sqlite":
        return
    db = _local_sqlite_path(uri)
    if db is None or str(db) in ("", ":memory:") or uri.startswith("sqlite:///file:"):
        raise ConfigError(f"{where}: not a SQLite file path (an in-memory store loses every run); write sqlite:///PATH/mlflow.db")
    _check_sqlite_file(db, where, create)


MIN_FREE_BYTES = 64 * 1024 * 1024  # below this, a suite's params, metrics and artifacts may not fit: refused up front
MIN_FREE_ENV = "PRIVBENCH_MIN_FREE_MB"


def _check_room(folder: Path, where: str) -> None:
    """Refuse a store whose disk is (nearly) full, and an artifact folder that cannot be
    written, before any run is created: a run begun there would stay RUNNING when its first
    write fails."""
    text = os.environ.get(MIN_FREE_ENV, "").strip()
    need = int(text) * 1024 * 1024 if text.isdigit() else MIN_FREE_BYTES
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < need:
        raise ConfigError(f"{where}: the disk of {folder} has {free / 2**20:.0f} MB free, less than the {need / 2**20:.0f} MB a suite needs; "
                          f"free some space (or lower {MIN_FREE_ENV}) and run again")
    artifacts = folder / "artifacts"
    try:
        artifacts.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=artifacts, prefix=".privbench-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: cannot write artifacts to {artifacts} ({exc.strerror or exc}); make it writable (or free space) and run again") from None


def _check_sqlite_file(db: Path, where: str, create: bool) -> None:
    if db.is_dir():
        raise ConfigError(f"{where}: {db} is a directory; name a file in it, e.g. sqlite:///{db / 'mlflow.db'}")
    if not db.exists():
        if not create:
            raise ConfigError(f"{where}: no such store (file {db} does not exist); run a suite first or pass the right --tracking-uri")
        folder = db.parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ConfigError(f"{where}: {existing} is a file, not a directory; put the store in a directory")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".privbench-probe-"):
                pass
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create the store in {folder} ({exc.strerror or exc}); pick a writable directory") from None
        _check_room(folder, where)
        return
    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {db} ({exc.strerror or exc}); fix its permissions or pick another file") from None
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(f"{where}: {db} is not an SQLite database; point at an MLflow SQLite store or at a new file name")
    if not create:
        return
    # a real write probe (permissions, read-only mounts, immutable files; root ignores modes)
    try:
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5, isolation_level=None)
        try:  # sqlite opens an unwritable file read-only without a word: only a write tells
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE privbench_write_probe (x)")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return  # another writer holds it right now: writable
        raise ConfigError(f"{where}: the store {db} is read-only ({text}); make it and its directory writable, or use another file") from None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{where}: {db} is not a usable SQLite database ({exc}); point at an MLflow store or at a new file name") from None
    _check_room(db.parent, where)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> Optional[int]:
    for e in _causes(exc):
        code = getattr(e, "get_http_status_code", None)
        if callable(code):
            try:
                return int(code())
            except Exception:  # an unknown error code
                return None
    return None


def is_store_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the store itself failed (unreachable, down, locked, disk), not the request."""
    import requests

    for e in _causes(exc):
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
                          ConnectionError, TimeoutError)):
            return True
        name = type(e).__name__
        if name in ("OperationalError", "MaxRetryError", "NewConnectionError", "ProtocolError"):
            return True
        text = str(e)
        if "API request to" in text and "failed with exception" in text:
            return True
    status = _http_status(exc)
    return status is not None and status >= 500


def _short(exc: BaseException, limit: int = 300) -> str:
    """The innermost useful line of an error, shortened (MLflow wraps urllib3 in several layers)."""
    text = str(exc).replace("\n", " ")
    for marker in ("Caused by ", "failed with exception "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text[:limit]


def _probe_error(uri: str, exc: BaseException, seconds: float) -> ConfigError:
    """A one-line ConfigError for a store that fails its first request."""
    where = f"--tracking-uri {redact(uri)!r}"
    scheme = _scheme(uri)
    if isinstance(exc, ImportError):
        if scheme == "postgresql":
            return ConfigError(f"{where}: the PostgreSQL driver is missing ({exc}); pip install 'psycopg[binary]', "
                               "or pip install psycopg2-binary and write postgresql+psycopg2://...")
        return ConfigError(f"{where}: a driver for this store is missing ({exc}); pip install it")
    status = _http_status(exc)
    text = str(exc)
    if scheme in _HTTP_SCHEMES:
        if "too many 5" in text or "too many 429" in text:
            return ConfigError(f"{where}: the tracking server keeps failing (HTTP 5xx for {seconds:.0f} s: its database may be down); "
                               "check the `mlflow server` log")
        if "not in a valid JSON format" in text:
            return ConfigError(f"{where}: the server did not answer like an MLflow tracking server (HTTP 200 but not JSON); "
                               "check that --tracking-uri is the `mlflow server` URL")
        if is_store_outage(exc):
            return ConfigError(f"{where}: cannot reach the tracking server (gave up after {seconds:.0f} s: {_short(exc, 160)}); "
                               "start `mlflow server` there or fix --tracking-uri")
        if status in (401, 403):
            return ConfigError(f"{where}: the server refused the credentials (HTTP {status}); set MLFLOW_TRACKING_USERNAME and "
                               "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        if status == 404 or "error code 404" in text:
            path = urlsplit(uri).path.rstrip("/")
            return ConfigError(f"{where}: no MLflow API at this address (HTTP 404 for {path}/api/2.0/mlflow/...); "
                               "give the server's root URL, e.g. http://HOST:5000 without a path")
        return ConfigError(f"{where}: the server did not answer like an MLflow tracking server ({_short(exc, 120)}); "
                           "check that --tracking-uri is the `mlflow server` URL")
    return ConfigError(f"{where}: cannot open the store ({type(exc).__name__}: {_short(exc, 200)}); fix the URI or the database")


@contextmanager
def _creation_lock(db: Optional[Path]) -> Iterator[None]:
    """Serialize the first creation of a SQLite store between processes (a lock file beside it).

    MLflow creates the tables of an empty SQLite file without a lock; two processes starting
    together on a fresh file then race ("table ... already exists").
    """
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the retry in open_client still helps
        yield
        return
    with open(db.parent / f"{db.name}.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _template_store() -> Path:
    """An empty SQLite store at this MLflow version's schema, made once per machine and MLflow version.

    A new SQLite store runs every MLflow schema migration (alembic) on first use: about a second
    of CPU per store. Copying this file instead skips them; MLflow then adds the store's own
    "Default" experiment (whose artifact location depends on where the store is opened), which
    is why the template has none.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privbench"
    path = folder / f"mlflow-{mlflow.__version__}-empty.db"
    if path.is_file() and _whole_store(path):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        MlflowClient(tracking_uri=f"sqlite:///{part}").search_experiments(max_results=1)
        con = sqlite3.connect(part)
        try:
            with con:
                con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        finally:
            con.close()
        os.replace(part, path)  # atomic: a concurrent maker writes its own part and replaces the same file
    finally:
        part.unlink(missing_ok=True)
    return path


def _whole_store(path: Path) -> bool:
    """Whether ``path`` is an intact SQLite file with a schema version (a few milliseconds)."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return con.execute("PRAGMA quick_check").fetchone() == ("ok",) and len(con.execute("SELECT version_num FROM alembic_version").fetchall()) == 1
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _seed_new_store(db: Path) -> None:
    """Start a store that does not exist yet (or is an empty file) as a copy of :func:`_template_store`.

    Called under :func:`_creation_lock`. Any failure leaves ``db`` as it was, and MLflow creates the
    store itself, as before.
    """
    try:
        if db.name in ("", ":memory:") or not db.parent.is_dir() or (db.exists() and db.stat().st_size > 0):
            return
        template = _template_store()
        part = db.parent / f".{db.name}.{os.getpid()}.part"
        try:
            shutil.copyfile(template, part)
            os.replace(part, db)
        finally:
            part.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - only a shortcut: MLflow's own creation follows
        log.debug("new store %s: template not used (%s)", db, exc)


def open_client(uri: str, create: bool = True):
    """An ``MlflowClient`` on ``uri`` that has answered once, or a one-line ConfigError.

    Checks the URI (:func:`check_tracking_uri`), then makes one cheap request: a local SQLite
    store is created under a file lock (:func:`_creation_lock`), a server must answer within
    the bounded HTTP retries (:data:`HTTP_DEFAULTS`).
    """
    from mlflow.tracking import MlflowClient

    check_tracking_uri(uri, create=create)
    db = _local_sqlite_path(uri)
    t0 = time.monotonic()
    for attempt in range(3):
        try:
            with _creation_lock(db if create else None):
                if create and db is not None and attempt == 0:
                    _seed_new_store(db)
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
            return client
        except ConfigError:
            raise
        except Exception as exc:
            if "already exists" in str(exc) and attempt < 2:  # a store being created by a process without our lock
                time.sleep(0.5)
                continue
            raise _probe_error(uri, exc, time.monotonic() - t0) from None
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- who owns a run


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_iso(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def process_tags() -> dict[str, str]:
    """This process's identity on a run it owns: ``host``, ``pid``, ``claimed_at``, ``heartbeat``."""
    now = _now_iso()
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "claimed_at": now, "heartbeat": now}


def _proc_start(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), on Linux; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            return float("inf")  # a zombie: dead, only not yet reaped by its parent
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int, since: Optional[float] = None) -> bool:
    """Whether process ``pid`` of this host runs and (where knowable) started before ``since``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    except OSError:
        return False
    started = _proc_start(pid)
    if started is not None and since is not None and started > since + 5:
        return False  # the pid was reused by a process that started after the claim
    return started != float("inf")


def owner_alive(tags: Mapping[str, str], start_time_ms: Optional[int] = None, now: Optional[float] = None,
                host: Optional[str] = None) -> bool:
    """Whether the process that owns a RUNNING run is still alive.

    Same host: its pid runs and started before the claim. Another host: its ``heartbeat``
    tag is younger than :data:`STALE_AFTER_S`. A run without these tags (an older privbench)
    counts as alive until :data:`STALE_AFTER_S` after its start.
    """
    now = time.time() if now is None else now
    here = socket.gethostname() if host is None else host
    beat = _parse_iso(tags.get("heartbeat")) or _parse_iso(tags.get("claimed_at"))
    if beat is None:
        beat = (start_time_ms or 0) / 1000.0
    if tags.get("host") == here and tags.get("pid", "").isdigit():
        return pid_alive(int(tags["pid"]), _parse_iso(tags.get("claimed_at")))
    return now - beat < STALE_AFTER_S


def owner_text(tags: Mapping[str, str], now: Optional[float] = None) -> str:
    """``pid 123 on host h, heartbeat 12 s ago`` (for messages)."""
    now = time.time() if now is None else now
    beat = _parse_iso(tags.get("heartbeat"))
    ago = f", heartbeat {now - beat:.0f} s ago" if beat is not None else ""
    return f"pid {tags.get('pid', '?')} on host {tags.get('host', '?')}{ago}"


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`MlflowTracker.claim`: a RUNNING run now owned by this process
    (``run_id``), or ``None`` and why the cell is not ours to run."""

    run_id: Optional[str]
    reason: str = ""


@dataclass(frozen=True)
class Reaped:
    """A RUNNING run whose process was gone, now marked FAILED."""

    run_id: str
    name: str
    owner: str


def _interrupt_text(exc: BaseException) -> str:
    sig = exc.args[0] if isinstance(exc, KeyboardInterrupt) and exc.args else ("SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
    return f"interrupted ({sig}); the cell runs again next time"


class CellLog:
    """What a running cell writes: params, metrics (with step), tags and artifacts."""

    def params(self, params: Mapping[str, Any]) -> None: ...
    def metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None: ...
    def tags(self, tags: Mapping[str, str]) -> None: ...
    def text(self, text: str, path: str) -> None: ...
    def bytes(self, data: bytes, path: str) -> None: ...
    def figure(self, fig: Any, path: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        self.bytes(buf.getvalue(), path)


# --------------------------------------------------------------------------- in memory


class MemoryCellLog(CellLog):
    def __init__(self, name: str, tags: Mapping[str, str]) -> None:
        self.name = name
        self.status = "RUNNING"
        self.param_values: dict[str, Any] = {}
        self.metric_history: dict[str, list[tuple[Optional[int], float]]] = {}
        self.tag_values: dict[str, str] = dict(tags)
        self.artifacts: dict[str, bytes] = {}

    def params(self, params):
        self.param_values.update(params)

    def metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metric_history.setdefault(k, []).append((step, float(v)))

    def tags(self, tags):
        self.tag_values.update(tags)

    def text(self, text, path):
        self.artifacts[path] = text.encode()

    def bytes(self, data, path):
        self.artifacts[path] = data

    def final(self) -> dict[str, float]:
        return {k: v[-1][1] for k, v in self.metric_history.items()}


class MemoryTracker:
    """Keeps everything in memory (tests)."""

    def __init__(self) -> None:
        self.runs: list[MemoryCellLog] = []
        self.parent_status: Optional[str] = None

    def begin_suite(self, suite) -> None:
        self.parent_status = "RUNNING"

    def reap_gone(self, suite_name: str) -> list[Reaped]:
        return []

    def finished_keys(self, suite) -> set[str]:
        return {r.tag_values["run_key"] for r in self.runs if r.status == "FINISHED"}

    def claim(self, name: str, tags: Mapping[str, str], ignore_finished_before: Optional[float] = None) -> Claim:
        for r in self.runs:
            if r.tag_values.get("run_key") == tags.get("run_key") and r.status in ("FINISHED", "RUNNING"):
                return Claim(None, r.status)
        self.runs.append(MemoryCellLog(name, tags))
        return Claim(str(len(self.runs) - 1))

    @contextmanager
    def cell(self, name: str, tags: Mapping[str, str], run_id: Optional[str] = None) -> Iterator[MemoryCellLog]:
        if run_id is None:
            run = MemoryCellLog(name, tags)
            self.runs.append(run)
        else:
            run = self.runs[int(run_id)]
        try:
            yield run
        except (KeyboardInterrupt, SystemExit) as exc:
            run.status = "KILLED"
            run.tag_values["error"] = _interrupt_text(exc)
            raise
        except BaseException as exc:
            run.status = "FAILED"
            run.tag_values["error"] = f"{type(exc).__name__}: {exc}"
            raise
        run.status = "FINISHED"

    def parent_log(self) -> Optional[CellLog]:
        return None

    def log_dataset(self, run_id: str, cfg) -> None:
        """(MLflow's dataset inputs have no in-memory counterpart.)"""

    def save_view(self) -> None:
        """(No UI to save a view for.)"""

    def end_suite(self, status: str, reason: Optional[str] = None) -> None:
        for r in self.runs:
            if r.status == "RUNNING":
                r.status = "KILLED" if status == "KILLED" else "FAILED"
        self.parent_status = status


# --------------------------------------------------------------------------- MLflow


class MlflowCellLog(CellLog):
    """One MLflow run's log; a store that stops answering raises :class:`StoreError`."""

    def __init__(self, client, run_id: str, call: Optional[Callable[..., Any]] = None) -> None:
        self.client = client
        self.run_id = run_id
        self._call = call or (lambda fn, *a, **k: fn(*a, **k))

    def params(self, params):
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]  # no credential reaches the store
        for i in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def metrics(self, metrics, step=None):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self._call(self.client.log_batch, self.run_id, metrics=items[i : i + 500])

    def tags(self, tags):
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    def text(self, text, path):
        self._call(self.client.log_text, self.run_id, redact(text), path)

    def bytes(self, data, path):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            parent = str(Path(path).parent)
            self._call(self.client.log_artifact, self.run_id, str(local), None if parent == "." else parent)


class _Heartbeat:
    """Refreshes the ``heartbeat`` tag of every run this process owns, from a daemon thread."""

    def __init__(self, beat: Callable[[], None], every: float) -> None:
        self._beat, self._every = beat, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="privbench-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except Exception as exc:  # a missed beat is harmless; the next one may get through
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()


class MlflowTracker:
    """Logs to an MLflow tracking store (local SQLite by default, or a server).

    Args:
        tracking_uri: MLflow tracking URI; default :func:`default_tracking_uri`.
        create: create a local SQLite store that does not exist yet (``run``); else refuse it (``report``).

    Raises:
        ConfigError: the URI cannot work or the store does not answer (:func:`open_client`).
    """

    def __init__(self, tracking_uri: Optional[str] = None, create: bool = True) -> None:
        self.uri = default_tracking_uri() if tracking_uri is None else tracking_uri
        register_secret(self.uri)  # its password is masked in everything privbench prints or logs
        if _scheme(self.uri) in _HTTP_SCHEMES:
            bounded_http_retries()
        self.client = open_client(self.uri, create=create)
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.sha = git_sha()
        self.lost: Optional[str] = None  # why the store stopped answering, once it has
        self._owned: dict[str, str] = {}  # run id -> name: RUNNING runs this process must end
        self._lock = threading.Lock()
        self._heartbeat: Optional[_Heartbeat] = None
        self._rng = random.Random(os.getpid() ^ time.monotonic_ns())  # claim back-off only, never results

    # ---- store calls

    def _call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """``fn(*args)``; an outage of the store becomes :class:`StoreError` (and is remembered)."""
        if self.lost is not None:
            raise StoreError(self.lost)
        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                # SQLite with several writers: a lock held past sqlite's 5 s busy timeout (rare) is
                # waited out a few times before it counts as an outage; a locked write did not commit
                if "database is locked" in str(exc) and attempt < 3:
                    time.sleep(1.0 + attempt)
                    continue
                if is_store_outage(exc):
                    self.lost = redact(f"the tracking store {self.uri} stopped answering ({_short(exc, 200)})")
                    self._stop_heartbeat()
                    raise StoreError(self.lost) from exc
                raise
        raise AssertionError("unreachable")

    def _search(self, filter_string: str, experiment_id: Optional[str] = None) -> list:
        out, token = [], None
        while True:
            page = self._call(self.client.search_runs, [experiment_id or self.experiment_id], filter_string=filter_string,
                              max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _own(self, run_id: str, name: str) -> None:
        with self._lock:
            self._owned[run_id] = name

    def _disown(self, run_id: str) -> None:
        with self._lock:
            self._owned.pop(run_id, None)

    def _end(self, run_id: str, status: str, error: Optional[str] = None) -> None:
        try:
            if error:
                self._call(self.client.set_tag, run_id, "error", redact(error)[:1000])
            self._call(self.client.set_terminated, run_id, status=status)
        finally:
            self._disown(run_id)

    def _beat(self) -> None:
        with self._lock:
            owned = list(self._owned)
        now = _now_iso()
        for rid in owned:
            self.client.set_tag(rid, "heartbeat", now)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    # ---- suite

    def _experiment(self, name: str) -> str:
        exp = self._call(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self._call(self.client.restore_experiment, exp.experiment_id)
            return exp.experiment_id
        db = _local_sqlite_path(self.uri)
        location = None
        if db is not None:  # keep artifacts beside the local store, not in the current directory
            location = (db.parent / "artifacts" / name).resolve().as_uri()
        try:
            return self._call(self.client.create_experiment, name, artifact_location=location)
        except StoreError:
            raise
        except Exception:  # another process created it a moment ago
            exp = self._call(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def begin_suite(self, suite) -> None:
        """Create the suite's parent run (owned by this process) and start the heartbeat."""
        self.experiment_id = self._experiment(suite.name)
        run = self._call(
            self.client.create_run,
            self.experiment_id,
            run_name=f"{suite.name} · {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"suite": suite.name, "role": "suite", "git_sha": self.sha, "cells": str(len(suite.cells)), **process_tags()},
        )
        self.parent_id = run.info.run_id
        self._own(self.parent_id, suite.name)
        import yaml

        self._call(self.client.log_text, self.parent_id, yaml.safe_dump(suite.source, sort_keys=False), "suite.yaml")
        planned = [{"run_key": c.run_key, "name": c.name} for c in suite.cells if getattr(c, "run_key", None)]
        if planned:  # what this invocation set out to run: the report names the cells that never got a run
            self._call(self.client.log_text, self.parent_id, json.dumps(planned, indent=1), "cells.json")
        self._heartbeat = _Heartbeat(self._beat, HEARTBEAT_S)

    def finished_keys(self, suite) -> set[str]:
        exp = self._call(self.client.get_experiment_by_name, suite.name)
        if exp is None:
            return set()
        runs = self._search("attributes.status = 'FINISHED' and tags.role = 'cell'", exp.experiment_id)
        return {r.data.tags.get("run_key") for r in runs if r.data.tags.get("run_key")}

    def reap_gone(self, suite_name: str) -> list[Reaped]:
        """Mark FAILED every RUNNING run of the suite whose process is gone (:func:`owner_alive`).

        Returns:
            the runs marked, for one line of output.
        """
        exp = self._call(self.client.get_experiment_by_name, suite_name)
        if exp is None:
            return []
        return reap_runs(self, self._search("attributes.status = 'RUNNING'", exp.experiment_id))

    def _mark_gone(self, run) -> Reaped:
        owner = owner_text(run.data.tags)
        msg = (f"privbench: the process that ran this ({owner}) is gone (killed or its machine lost); "
               f"marked FAILED by pid {os.getpid()} on host {socket.gethostname()} at {_now_iso()}")
        self._call(self.client.set_tag, run.info.run_id, "error", redact(msg))
        self._call(self.client.set_terminated, run.info.run_id, status="FAILED")
        return Reaped(run.info.run_id, run.info.run_name or run.info.run_id, owner)

    def _holder(self, run_key: str, mine: Optional[str], ignore_finished_before: Optional[float]) -> Optional[str]:
        """Why ``run_key`` is not ours: a FINISHED run, or a live RUNNING claim other than ``mine``."""
        runs = self._search(f"tags.run_key = '{run_key}' and tags.role = 'cell'")
        for r in runs:
            if r.info.run_id == mine:
                continue
            if r.info.status == "FINISHED":
                if ignore_finished_before is not None and (r.info.end_time or 0) / 1000.0 < ignore_finished_before:
                    continue  # --no-resume: finished before this invocation began
                return "FINISHED"
            if r.info.status == "RUNNING":
                if owner_alive(r.data.tags, r.info.start_time):
                    return f"RUNNING in {owner_text(r.data.tags)}"
                if r.info.run_id not in self._owned:
                    self._mark_gone(r)
        return None

    def claim(self, name: str, tags: Mapping[str, str], ignore_finished_before: Optional[float] = None) -> Claim:
        """Make the cell ``tags['run_key']`` ours: a RUNNING child run no other process will duplicate.

        Check that no FINISHED run (newer than ``ignore_finished_before``, for ``--no-resume``) and
        no live claim exists, create ours, then check again: if a rival claim appeared meanwhile,
        withdraw ours (delete it) and try again after a random pause. Whoever checks second sees
        the first claim, so at most one claim survives; the pause breaks ties where both withdrew.
        """
        key = tags["run_key"]
        for attempt in range(CLAIM_ATTEMPTS):
            held = self._holder(key, None, ignore_finished_before)
            if held:
                return Claim(None, held)
            rid = self._create(name, tags)
            if not self._holder(key, rid, ignore_finished_before):
                return Claim(rid)
            self._disown(rid)
            self._call(self.client.delete_run, rid)
            time.sleep(self._rng.uniform(0.05, 0.3) * (attempt + 1))
        return Claim(None, "contended: other processes kept claiming it")

    def _create(self, name: str, tags: Mapping[str, str]) -> str:
        from bench.signals import hold_signals

        with hold_signals():  # owned as soon as it exists, so an interrupt ends it
            run = self._call(
                self.client.create_run,
                self.experiment_id,
                run_name=name,
                tags={**tags, "role": "cell", "git_sha": self.sha, "mlflow.parentRunId": self.parent_id, **process_tags()},
            )
            self._own(run.info.run_id, name)
        return run.info.run_id

    @contextmanager
    def cell(self, name: str, tags: Mapping[str, str], run_id: Optional[str] = None) -> Iterator[MlflowCellLog]:
        """Log one cell into the claimed run ``run_id`` (or a new run), ending it FINISHED, FAILED
        (with an ``error`` tag), or KILLED on an interrupt. When the store itself fails, nothing
        more is written (the next ``run``/``report`` marks the run FAILED) and StoreError goes up."""
        rid = run_id or self._create(name, tags)
        try:
            yield MlflowCellLog(self.client, rid, self._call)
        except StoreError:
            self._disown(rid)
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            self._end_quietly(rid, "KILLED", _interrupt_text(exc))
            raise
        except BaseException as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
            self._end(rid, "FAILED", msg)
            raise
        self._end(rid, "FINISHED")

    def _end_quietly(self, run_id: str, status: str, error: str) -> None:
        try:
            self._end(run_id, status, error)
        except Exception as exc:  # the store is gone too: the next run marks it FAILED
            log.warning("could not end run %s %s: %s", run_id, status, exc)

    def parent_log(self) -> Optional[CellLog]:
        return MlflowCellLog(self.client, self.parent_id, self._call) if self.parent_id else None

    def log_dataset(self, run_id: str, cfg) -> None:
        """The cell's data as an MLflow dataset input (the Dataset column: name and digest of
        ``cfg.data_fingerprint``). A convenience: a failure is a warning."""
        from bench.data import dataset_display_name
        from bench.mlflow_view import log_dataset_input

        try:  # (an outage is remembered by _call: the next write stops the suite)
            self._call(log_dataset_input, self.client, run_id, dataset_display_name(cfg.data), cfg.data_fingerprint or "unknown", cfg.data.path)
        except Exception as exc:  # noqa: BLE001 - the tag data_fingerprint holds the same
            log.warning("could not log the dataset input of run %s: %s", run_id, exc)

    def save_view(self) -> None:
        """Save the suite's runs view (headline columns, grouped by setting) that `privbench ui`'s
        link opens. A failure costs only the view, never a result: a warning."""
        from bench.mlflow_view import write_suite_view

        try:
            self._call(write_suite_view, self.client, self.experiment_id)
        except Exception as exc:  # noqa: BLE001 - the results are already logged
            log.warning("could not save the suite's MLflow view (%s); `privbench ui` saves it again", exc)

    def end_suite(self, status: str, reason: Optional[str] = None) -> None:
        """End the parent run and any claim still open: KILLED after an interrupt, else FAILED,
        with ``reason`` (default: the cell did not finish) as their ``error`` tag."""
        self._stop_heartbeat()
        if self.lost is not None:
            return  # nothing can be written; the next run or report marks these runs FAILED
        with self._lock:
            open_runs = [rid for rid in self._owned if rid != self.parent_id]
        for rid in open_runs:
            self._end_quietly(rid, "KILLED" if status == "KILLED" else "FAILED", reason or "the suite ended before this cell finished; it runs again next time")
        if self.parent_id:
            self._end(self.parent_id, status)


def reap_runs(tracker: MlflowTracker, runs) -> list[Reaped]:
    """Mark FAILED those of ``runs`` (RUNNING) whose owner is gone and that this process does not own."""
    out = []
    for r in runs:
        if r.info.status == "RUNNING" and r.info.run_id not in tracker._owned and not owner_alive(r.data.tags, r.info.start_time):
            out.append(tracker._mark_gone(r))
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
