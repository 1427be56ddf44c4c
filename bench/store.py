"""The tracking store itself: checking a URI, creating a local store, and what its errors mean.

Everything here happens before (or beside) logging: :func:`check_tracking_uri` refuses a URI
that cannot work without connecting (scheme, a writable SQLite file, free disk space);
:func:`open_client` creates a local SQLite store (from a template, under a file lock) or makes
one cheap request to a server, and turns a first failure into a one-line ``ConfigError``
(:func:`_probe_error`); :func:`is_store_outage` tells an outage of the store (unreachable, down,
locked, disk) from a refused request, so that the tracker (``bench.tracking``) stops the suite
with :class:`StoreError` instead of failing cells one by one.

A leaf: the standard library, ``bench.redact`` and ``bench.types`` (mlflow, requests on use).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

from bench.redact import redact
from bench.types import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("results") / "mlflow.db"

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
