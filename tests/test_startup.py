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


def _schema(db: Path) -> dict:
    """Tables with their columns (name, type, not-null, primary key), indexes, and the migration version.
    (Not the CREATE text: SQLite keeps an ALTER-added column's text as written, which may differ by formatting.)"""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        cols = {t: sorted((c[1], c[2].upper(), c[3], c[5]) for c in con.execute(f'PRAGMA table_info("{t}")')) for t in tables}
        indexes = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"))
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        return {"columns": cols, "indexes": indexes, "version": version}
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
