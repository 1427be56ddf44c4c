"""``privbench ui``: the MLflow UI on the results store (``bench.ui`` does the work)."""

from __future__ import annotations

import logging
import os
import sys


def cmd_ui(args) -> int:
    """``privbench ui``; once it has started and stopped an MLflow server, the process ends at once
    (``os._exit`` after flushing): tearing down MLflow's modules at interpreter exit takes about a
    second, which would double the time from Ctrl-C to the prompt (issue 23: within 2 s)."""
    from bench.ui import cmd_ui as run_ui

    code = run_ui(args)
    if getattr(args, "started_server", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
