"""``privbench ui``: the MLflow UI on a results store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from bench.types import ConfigError


def cmd_ui(args) -> int:
    from bench.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(exe):
        raise ConfigError("the mlflow command is not installed; pip install mlflow")
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C to stop")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
