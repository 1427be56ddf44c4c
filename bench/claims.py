"""Who owns a RUNNING run: process identity, liveness, claims and runs whose process is gone.

Several ``privbench`` processes may write to one store at once. A cell is *claimed* before it
runs (:meth:`bench.tracking.MlflowTracker.claim`): a RUNNING child run tagged with the
claimer's identity (:func:`process_tags`: ``host``, ``pid``, ``claimed_at`` and a ``heartbeat``
that :class:`Heartbeat` refreshes every :data:`HEARTBEAT_S` seconds). :func:`owner_alive`
decides whether such a run's process still lives (same host: its pid; another host: its
heartbeat is younger than :data:`STALE_AFTER_S`); :func:`reap_runs` marks FAILED the RUNNING
runs whose owner is gone. :class:`Claim` and :class:`Reaped` are what a tracker returns.

A leaf: the standard library only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

if TYPE_CHECKING:  # (reap_runs takes the tracker; no import at run time)
    from bench.tracking import MlflowTracker

log = logging.getLogger(__name__)

# A claim's owner refreshes its ``heartbeat`` tag this often; on another host, a RUNNING run
# whose heartbeat is older than STALE_AFTER_S belongs to a process that is gone. Ten missed
# beats: a busy server or a few minutes of clock skew between hosts do not kill a live claim.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# a claim that finds a rival claim made at the same moment backs off and tries again
CLAIM_ATTEMPTS = 6


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


class Heartbeat:
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


def reap_runs(tracker: MlflowTracker, runs) -> list[Reaped]:
    """Mark FAILED those of ``runs`` (RUNNING) whose owner is gone and that this process does not own."""
    out = []
    for r in runs:
        if r.info.status == "RUNNING" and r.info.run_id not in tracker._owned and not owner_alive(r.data.tags, r.info.start_time):
            out.append(tracker._mark_gone(r))
    return out
