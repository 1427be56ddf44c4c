"""Signal guards for what must not be left half-done: a run being written, a child started.

A leaf module (standard library only), shared by ``bench.executors``, ``bench.early`` and
``bench.tracking`` without an import circle between them.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def hold_signals() -> Iterator[None]:
    """Delay Ctrl-C and SIGTERM until the block ends, so that a run is never left half-written.

    A signal caught meanwhile is raised afterwards as ``KeyboardInterrupt`` (with the signal's
    name, e.g. ``KeyboardInterrupt('SIGTERM')``). Only the main thread can install signal
    handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


hold_sigint = hold_signals  # the earlier name


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored in the block (main thread only), e.g. for child processes started in it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
