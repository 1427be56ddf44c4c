"""End to end through the CLI into a real MLflow store (SQLite in a temporary folder).

DESIGN.md "MLflow conventions": one experiment per suite, one parent run per invocation,
one FINISHED child run per cell, the resolved config as dotted params and as an artifact,
per-round metrics with ``step=round``, and a second invocation skips finished cells.

The fast test runs a 2-cell suite written here; the slow one runs ``experiments/quick.yaml``
(whatever cells it has when the test runs: the expected runs are derived from the file).
"""

from __future__ import annotations

import dataclasses

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.components import component_class
from bench.config import parse_experiment
from bench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
METRIC_NAME = re.compile(r"^[/\w.\- ]*$")  # what MLflow accepts
CELL_TAGS = ("suite", "run_key", "dataset", "defenses", "threat_models", "git_sha")
OWNER_TAGS = ("host", "pid", "claimed_at", "heartbeat")  # who ran it: see bench/tracking.py, claims

TINY = """\
suite: tiny_e2e
description: two cells for the default test run
base:
  data: {name: breast_cancer, partition: iid, num_sites: 3}
  model: {name: logreg}
  train: {rounds: 3, local_epochs: 1, batch_size: 16, lr: 0.1}
  attacks: [{name: loss_threshold}]
grid:
  defenses: [[], [{name: clipping, max_norm: 0.5}]]
seeds: [0]
"""


def run_cli(suite_path: Path, db: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    return subprocess.run(
        [sys.executable, "-m", "bench", "run", str(suite_path), "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def client_for(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def all_runs(client, experiment_id: str) -> list:
    return list(client.search_runs([experiment_id], max_results=1000))


def check_store(db: Path, suite_path: Path, tmp: Path) -> dict:
    """Assert the MLflow layout of one invocation of ``suite_path``; return what was found."""
    suite = load_suite(str(suite_path))
    cells = {c.run_key: c for c in suite.cells}
    client = client_for(db)
    named = [e for e in client.search_experiments() if e.name == suite.name]
    assert len(named) == 1, "one MLflow experiment per suite"
    exp = named[0]
    runs = all_runs(client, exp.experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, "one parent run per invocation"
    parent = parents[0]
    assert parent.data.tags.get("role") == "suite" and parent.info.status == "FINISHED"
    assert all(parent.data.tags.get(t) for t in OWNER_TAGS)
    # the cells this invocation planned (the report names planned cells that never got a run)
    planned = json.loads(Path(client.download_artifacts(parent.info.run_id, "cells.json", str(tmp))).read_text(encoding="utf-8"))
    assert {c["run_key"]: c["name"] for c in planned} == {k: c.name for k, c in cells.items()}
    assert len(children) == len(cells), "one child run per cell"
    assert {r.data.tags["run_key"] for r in children} == set(cells)
    for run in children:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        cell = cells[tags["run_key"]]
        cfg = cell.config
        where = f"cell {run.info.run_name}"
        assert run.info.status == "FINISHED", where
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags.get("role") == "cell"
        assert run.info.run_name == cell.name
        for t in CELL_TAGS + OWNER_TAGS:
            assert tags.get(t), f"{where}: tag {t} missing"
        assert tags["suite"] == suite.name and tags["dataset"] == cfg.data.name
        assert tags["defenses"] == ("+".join(d.name for d in cfg.defenses) or "none")
        assert tags["threat_models"] == "+".join(sorted({component_class("attack", a.name).threat_model for a in cfg.attacks}))
        # metrics
        assert all(METRIC_NAME.match(k) for k in metrics), [k for k in metrics if not METRIC_NAME.match(k)]
        if tags.get("cell_kind") == "attack_only":  # a one-round inversion cell: never shown as utility
            assert not any(k.startswith("utility/") for k in metrics) and 0.0 <= metrics["attack_only/test_accuracy"] <= 1.0, where
        else:
            assert 0.0 <= metrics["utility/test_accuracy"] <= 1.0, where
        for spec in cfg.attacks:
            if component_class("attack", spec.name).kind == "membership":
                assert 0.0 <= metrics[f"attack/{spec.name}/auc"] <= 1.0, f"{where}: attack/{spec.name}/auc"
        # params: the resolved config flattened with dots, every value as logged
        for key, value in cfg.flat_params().items():
            assert params.get(key) == value, f"{where}: param {key}={params.get(key)!r}, expected {value!r}"
        # the config artifact reproduces the cell
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp))
        logged = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
        assert logged == cfg.to_dict()
        # with the data it used (the fingerprint is part of the cell's identity)
        assert tags["data_fingerprint"] == cfg.data_fingerprint != ""
        assert dataclasses.replace(parse_experiment(logged), data_fingerprint=tags["data_fingerprint"]).run_key == tags["run_key"]
    return {"client": client, "experiment": exp, "parent": parent, "children": children, "suite": suite, "runs": runs}


# --------------------------------------------------------------------------- fast: 2 cells


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_e2e")
    suite_path = tmp / "tiny.yaml"
    suite_path.write_text(TINY, encoding="utf-8")
    db = tmp / "store" / "m.db"
    mlruns_before = (REPO / "mlruns").exists()
    proc = run_cli(suite_path, db, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not mlruns_before:
        assert not (REPO / "mlruns").exists(), "the run wrote an mlruns/ folder into the repository"
    return {"db": db, "suite_path": suite_path, "tmp": tmp, **check_store(db, suite_path, tmp / "artifacts_check")}


def test_tiny_suite_layout(tiny_store):
    assert len(tiny_store["children"]) == 2
    by_def = {r.data.tags["defenses"]: r for r in tiny_store["children"]}
    assert set(by_def) == {"none", "clipping"}
    clip = by_def["clipping"].data.params
    assert clip["defenses.clipping.max_norm"] == "0.5" and clip["defenses"] == "clipping"
    assert clip["train.rounds"] == "3" and clip["data.name"] == "breast_cancer" and clip["model.name"] == "logreg"
    assert by_def["none"].data.params["defenses"] == "none"
    assert not any(k.startswith("defenses.clipping") for k in by_def["none"].data.params)


def test_tiny_suite_per_round_metrics_use_step_round(tiny_store):
    client, rounds = tiny_store["client"], 3
    for run in tiny_store["children"]:
        for metric in ("utility/test_accuracy", "utility/worst_site_accuracy"):
            history = client.get_metric_history(run.info.run_id, metric)
            by_step: dict[int, set] = {}
            for m in history:
                by_step.setdefault(m.step, set()).add(m.value)
            assert sorted(by_step) == list(range(1, rounds + 1)), f"{metric}: steps {sorted(by_step)}"
            assert all(len(v) == 1 for v in by_step.values()), f"{metric}: two values for one round"
            assert run.data.metrics[metric] == next(iter(by_step[rounds]))  # the final value is round R's


def test_tiny_suite_per_round_history_has_one_point_per_round(tiny_store):
    client = tiny_store["client"]
    for run in tiny_store["children"]:
        assert len(client.get_metric_history(run.info.run_id, "utility/test_accuracy")) == 3


def test_tiny_suite_second_invocation_runs_nothing(tiny_store, monkeypatch):
    """The same command again (in this process, to save an interpreter start; the slow test
    repeats it as a subprocess on quick.yaml)."""
    from bench.cli import main

    client, exp = tiny_store["client"], tiny_store["experiment"]
    before = len(all_runs(client, exp.experiment_id))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_store['db']}")
    assert main(["run", str(tiny_store["suite_path"]), "-q"]) == 0
    after = all_runs(client, exp.experiment_id)
    assert len(after) == before, "a second invocation must not add runs when every cell is FINISHED"


# --------------------------------------------------------------------------- slow: quick.yaml


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path):
    suite_path = REPO / "experiments" / "quick.yaml"
    db = tmp_path / "m.db"
    proc = run_cli(suite_path, db, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = check_store(db, suite_path, tmp_path / "artifacts_check")
    assert found["suite"].name == "quick"
    # check_store asserted attack/<name>/auc in every cell with that membership attack; the
    # baseline attack must be among them
    with_lt = [r for r in found["children"] if "attack/loss_threshold/auc" in r.data.metrics]
    assert with_lt, "no cell of quick.yaml runs the loss_threshold baseline"
    n_runs = len(found["runs"])
    again = run_cli(suite_path, db, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(all_runs(found["client"], found["experiment"].experiment_id)) == n_runs, "no new run on the second invocation"
