"""Issue 22, item 4: record-level artifacts of real patients stay out of the store unless opted in.

Per-record score files (``ids``/``scores``/``is_member``), canary member lists, reference
signals and reconstructed records are written by default only for bundled benchmark data; a
user's CSV (and UCI heart disease) get them with ``record_artifacts: true``. The default run's
artifacts on a user CSV are checked to hold no record-level data: no per-record file, and no
artifact with any patient's id or a record's exact values.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from bench.artifacts import apply_record_policy, is_record_level, record_artifacts_allowed
from bench.config import parse_experiment
from bench.runner import run_cell
from bench.tracking import MemoryCellLog

N = 120


def _csv(tmp_path) -> str:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "hospital": np.repeat(["north", "south", "east"], N // 3),
        "age": rng.integers(30, 80, N),
        "chol": rng.normal(231.7, 40, N).round(3) + 0.0007,  # values a leak would carry verbatim
        "sex": rng.choice(["f", "m"], N),
        "outcome": rng.choice(["healthy", "sick"], N),
    })
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _raw(path: str, **extra) -> dict:
    return {
        "data": {"name": "csv", "path": path, "partition": "natural", "site_column": "hospital", "label_column": "outcome",
                 "categorical_columns": ["sex"], "positive_labels": ["sick"]},
        "model": {"name": "logreg"},
        "train": {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.1},
        "attacks": [{"name": "loss_threshold"}, {"name": "tableak", "rounds": [1], "restarts": 1, "iterations": 20}],
        "seed": 0,
        **extra,
    }


def _run(raw: dict) -> MemoryCellLog:
    cfg = parse_experiment(raw)
    out = MemoryCellLog(cfg.label(), {})
    run_cell(cfg, out)
    return out


def _chol_values(path: str) -> list[str]:
    return [f"{v:.4f}" for v in pd.read_csv(path)["chol"]]


def test_default_run_on_a_user_csv_logs_no_record_level_data(tmp_path):
    path = _csv(tmp_path)
    out = _run(_raw(path))
    assert out.tag_values["record_artifacts"] == "false"
    arts = out.artifacts
    assert "attacks/loss_threshold/roc_loglog.png" in arts  # the aggregate figure stays
    assert "attacks/tableak/disclosure.json" in arts
    assert not [p for p in arts if is_record_level(p)], sorted(arts)
    for p, data in arts.items():
        assert not p.endswith((".npz", ".csv")), p
        if data[:2] == b"PK":  # an npz: no array of ids or scores
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
            pytest.fail(f"{p} holds arrays {names}")
    text = b"\n".join(arts.values()).decode("latin-1")
    leaked = [v for v in _chol_values(path) if v in text]
    assert not leaked, f"record values in artifacts: {leaked[:3]}"


def test_record_artifacts_true_opts_in_and_is_logged(tmp_path):
    path = _csv(tmp_path)
    out = _run(_raw(path, record_artifacts=True))
    assert out.tag_values["record_artifacts"] == "true"
    arts = out.artifacts
    scores = np.load(io.BytesIO(arts["attacks/loss_threshold/scores.npz"]))
    assert set(scores.files) == {"ids", "scores", "is_member"} and len(scores["ids"]) > 0
    assert any(p.startswith("attacks/tableak/round1_") and p.endswith(".csv") for p in arts), sorted(arts)
    assert out.param_values["record_artifacts"] == "True"


def test_the_default_per_dataset_and_the_key_in_the_run_key(tmp_path):
    assert record_artifacts_allowed("breast_cancer", None) and record_artifacts_allowed("digits", None)
    assert not record_artifacts_allowed("csv", None) and not record_artifacts_allowed("heart_disease", None)
    assert record_artifacts_allowed("csv", True) and not record_artifacts_allowed("digits", False)
    base = parse_experiment(_raw(_csv(tmp_path)))
    # absent from the config (and the run_key) unless written: existing cells keep their keys
    assert "record_artifacts" not in base.to_dict()
    assert parse_experiment(_raw(_csv(tmp_path), record_artifacts=False)).run_key != base.run_key
    files = {"attacks/a/scores.npz": b"1", "attacks/a/roc_loglog.png": b"2", "reference/signals_K4.npz": b"3",
             "attacks/t/round1_h.csv": b"4", "attacks/c/canary_scores.npz": b"5", "attacks/t/disclosure.json": b"6"}
    assert set(apply_record_policy(files, False)) == {"attacks/a/roc_loglog.png", "attacks/t/disclosure.json"}
    assert apply_record_policy(files, True) == files


def test_bundled_benchmark_data_keeps_its_score_files_by_default():
    raw = {"data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3}, "model": {"name": "logreg"},
           "train": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1}, "attacks": [{"name": "loss_threshold"}]}
    out = _run(raw)
    assert "attacks/loss_threshold/scores.npz" in out.artifacts
    assert out.tag_values["record_artifacts"] == "true"
