"""Start-up (issue 15): the CLI imports only what a command needs, and a new SQLite store is a
copy of a once-migrated template that MLflow accepts as its own."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "opacus", "ray", "matplotlib", "sklearn", "pandas")


def test_importing_the_cli_loads_no_heavy_library():
    code = f"import bench.cli, sys; bad = sorted(set({HEAVY!r}) & set(sys.modules)); print(','.join(bad))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import bench.cli` imported {out.stdout.strip()}"


def test_version_does_not_import_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "--version"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("privbench ")
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}


def _schema(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall())
    finally:
        con.close()


def test_new_stores_from_the_template_equal_what_mlflow_makes(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.tracking import open_client

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made = []
    for name in ("a", "b"):  # the first makes the template, the second copies it
        (tmp_path / name).mkdir()
        db = tmp_path / name / "mlflow.db"
        client = open_client(f"sqlite:///{db}")
        (default,) = client.search_experiments()
        assert default.name == "Default" and default.experiment_id == "0"
        made.append(db)
    assert list((tmp_path / "cache" / "privbench").glob("mlflow-*-empty.db"))
    own = tmp_path / "own.db"
    MlflowClient(tracking_uri=f"sqlite:///{own}").search_experiments()  # MLflow's own creation, migrations and all
    assert _schema(made[0]) == _schema(made[1]) == _schema(own)
    # and it is a working store: an experiment and a run can be written and read back
    client = MlflowClient(tracking_uri=f"sqlite:///{made[1]}")
    exp = client.create_experiment("x")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
