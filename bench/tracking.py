"""Where results go: the MLflow tracker (the in-memory one for tests is in ``bench.memlog``).

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

Where each piece lives (one concern per module; every name stays importable from here):
``bench.store`` checks a tracking URI, creates a local store and translates its errors
(:class:`StoreError`, :func:`open_client`); ``bench.claims`` holds process identity, liveness
and stale RUNNING runs (:func:`owner_alive`, :func:`reap_runs`); ``bench.memlog`` holds the
:class:`CellLog` interface and the in-memory tracker for tests. This module keeps the MLflow
tracker. (Constants such as :data:`STALE_AFTER_S` are read where they are defined: patch
``bench.claims.STALE_AFTER_S`` to change :func:`owner_alive`, ``bench.tracking.HEARTBEAT_S``
for the tracker's heartbeat.)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from bench.claims import (  # noqa: F401 - re-exported: bench.tracking's names before the split
    CLAIM_ATTEMPTS,
    HEARTBEAT_S,
    STALE_AFTER_S,
    Claim,
    Heartbeat,
    Reaped,
    _now_iso,
    _parse_iso,
    _proc_start,
    owner_alive,
    owner_text,
    pid_alive,
    process_tags,
    reap_runs,
)
from bench.memlog import CellLog, MemoryCellLog, MemoryTracker, _interrupt_text  # noqa: F401 - re-exported
from bench.redact import redact
from bench.redact import register as register_secret
from bench.store import (  # noqa: F401 - re-exported: bench.tracking's names before the split
    _DB_SCHEMES,
    _HTTP_SCHEMES,
    _OTHER_SCHEMES,
    _URI_HELP,
    DEFAULT_STORE,
    HTTP_DEFAULTS,
    MIN_FREE_BYTES,
    MIN_FREE_ENV,
    StoreError,
    _causes,
    _check_room,
    _check_sqlite_file,
    _creation_lock,
    _http_status,
    _local_sqlite_path,
    _probe_error,
    _scheme,
    _seed_new_store,
    _short,
    _template_store,
    _whole_store,
    bounded_http_retries,
    check_tracking_uri,
    default_tracking_uri,
    is_store_outage,
    open_client,
)
from bench.types import ConfigError  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

_Heartbeat = Heartbeat  # its name before the split

@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
        self._heartbeat: Optional[Heartbeat] = None
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
        self._heartbeat = Heartbeat(self._beat, HEARTBEAT_S)

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


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
