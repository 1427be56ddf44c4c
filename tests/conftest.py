"""Shared fixtures: a tiny 3-hospital federation that trains in well under a second, a
temporary SQLite MLflow store, and the UCI heart-disease copy in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.config import parse_experiment

REPO = Path(__file__).resolve().parents[1]
SHARED_HEART = REPO.parent / "shared" / "data" / "uci-heart-disease"


def heart_dir() -> Path:
    """The test copy of UCI Heart Disease (never committed to the project)."""
    env = os.environ.get("PRIVBENCH_TEST_HEART_DIR")
    return Path(env) if env else SHARED_HEART


@pytest.fixture
def heart_data_dir() -> str:
    d = heart_dir()
    if not (d / "processed.cleveland.data").is_file():
        pytest.fail(f"UCI heart-disease test copy missing at {d}; set PRIVBENCH_TEST_HEART_DIR")
    return str(d)


def tiny_raw(**over) -> dict:
    """A 3-hospital breast-cancer federation, 3 rounds, logistic regression."""
    raw = {
        "data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3},
        "model": {"name": "logreg"},
        "train": {"rounds": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "attacks": [{"name": "loss_threshold"}],
        "seed": 0,
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return raw


@pytest.fixture
def tiny_cfg():
    return parse_experiment(tiny_raw())


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
