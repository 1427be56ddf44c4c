"""A user's own model (defined outside privbench, ``tests/user_models/clinic_nets.py``) through
DP-SGD, LiRA, the white-box audit, gradient inversion, secure aggregation and client-level DP with
one YAML line: on the engine where it compiles the model, else on Opacus, visibly (issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.training import LocalSettings, PlainTrainer
from bench.types import DatasetInfo, Records
from defenses.dp_sgd import DPTrainer

REPO = Path(__file__).resolve().parents[1]
USER_MODELS = Path(__file__).resolve().parent / "user_models"
sys.path.insert(0, str(USER_MODELS))

from clinic_nets import ResidualGN, VisitAttention  # noqa: E402

IMAGES = DatasetInfo(name="noise-images", input_shape=(1, 8, 8), num_classes=10, modality="image")
TABULAR = DatasetInfo(name="noise", input_shape=(30,), num_classes=2)


def _records(info: DatasetInfo, n: int = 40) -> Records:
    g = torch.Generator().manual_seed(3)
    return Records(ids=np.arange(n, dtype=np.int64), x=torch.rand(n, *info.input_shape, generator=g),
                   y=torch.randint(0, info.num_classes, (n,), generator=g))


def _train(model_cls, info: DatasetInfo, mode: str) -> tuple[torch.Tensor, DPTrainer]:
    torch.manual_seed(0)
    net = model_cls(info)
    init = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    t = DPTrainer(PlainTrainer(net, _records(info), LocalSettings(epochs=1, batch_size=8, optimizer="sgd", lr=0.1)),
                  1.0, 1.0, "poisson", mode)
    out = t.train(init, torch.Generator().manual_seed(7))
    return out.params, t


@pytest.mark.parametrize("model_cls, info", [(ResidualGN, IMAGES), (VisitAttention, TABULAR)], ids=["residual_gn", "visit_attention"])
def test_own_model_dp_sgd_falls_back_to_opacus_visibly_and_two_opacus_modes_agree(model_cls, info):
    """The engine runs sequential models only: ``auto`` takes Opacus's expanded weights and says
    so; Opacus's hooks give the same parameters with the same seed (same batches, same noise)."""
    auto, t = _train(model_cls, info, "auto")
    assert t.grad_sample_mode == "ew" and "not nn.Sequential" in t.fallback_reason
    hooks, _ = _train(model_cls, info, "hooks")
    torch.testing.assert_close(auto, hooks, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(auto, _train(model_cls, info, "ew")[0] * 0)  # it trained


SUITE = """\
suite: own-models
base:
  data: {{name: digits, partition: iid, num_sites: 2, max_records_per_site: 200}}
  model: {{name: "clinic_nets:ResidualGN", width: 8}}
  train: {{rounds: 2, local_epochs: 1, batch_size: 16, lr: 0.1}}
  privacy: {{accountant: rdp}}
variants:
  - {{defenses: [{{name: dp_sgd, target_epsilon: 4.0, max_grad_norm: 1.0}}], attacks: [{{name: lira, num_references: 4, fixed_variance: true}}]}}
  - {{defenses: [{{name: dp_sgd, target_epsilon: 4.0, max_grad_norm: 1.0}}], attacks: [{{name: dpsgd_audit, num_canaries: 200}}]}}
  - {{defenses: [{{name: client_dp, noise_multiplier: 1.0, clip_norm: 0.5}}, {{name: secure_aggregation}}], attacks: [{{name: loss_threshold}}]}}
  - {{data.members_per_site: 1, train.rounds: 1, train.batch_size: 1, defenses: [], attacks: [{{name: inverting_gradients, iterations: 50, restarts: 1}}]}}
  - {{data.name: breast_cancer, model: {{name: "clinic_nets:VisitAttention", visits: 5, dim: 8}},
     defenses: [{{name: dp_sgd, target_epsilon: 4.0, max_grad_norm: 1.0}}], attacks: [{{name: lira, num_references: 4, fixed_variance: true}}, {{name: dpsgd_audit, num_canaries: 200}}]}}
seeds: [0]
"""


@pytest.mark.slow
def test_own_models_run_through_every_family_with_one_yaml_line(tmp_path):
    import mlflow

    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(USER_MODELS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--tracking-uri", uri, "-q"], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("using Opacus (grad_sample_mode ew)") <= 3  # once per DP-SGD cell, not per hospital and reference
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("own-models")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")}
    assert len(runs) == 5, list(runs)
    dp = [r for r in runs.values() if "dp_sgd" in r.info.run_name]
    assert len(dp) == 3
    for r in dp:
        m, tags = r.data.metrics, r.data.tags
        assert abs(m["privacy/epsilon"] - 4.0) < 0.05 and tags["dp_sgd_per_sample"] == "opacus ew"
        assert "not nn.Sequential" in tags["dp_sgd_engine_fallback"]
    lira = [r for r in dp if "attack/lira/auc" in r.data.metrics]
    audit = [r for r in dp if any(k.startswith("audit/") for k in r.data.metrics)]
    assert len(lira) == 2 and len(audit) == 2
    assert all(0.0 <= r.data.metrics["attack/lira/auc"] <= 1.0 for r in lira)
    assert all(r.data.tags.get("audit_verdict") in ("no_violation", "vacuous", "suspect", "violation") for r in audit)
    (secagg,) = [r for r in runs.values() if "client_dp" in r.info.run_name]
    assert secagg.data.metrics["privacy/epsilon"] > 0 and "attack/loss_threshold/auc" in secagg.data.metrics
    (inv,) = [r for r in runs.values() if "inverting_gradients" in str(r.data.tags) or any("inverting_gradients" in k for k in r.data.metrics)]
    assert any(k.startswith("attack/inverting_gradients/") and "psnr" in k for k in inv.data.metrics)
