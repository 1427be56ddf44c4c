"""Contract of every registered dataset, model and attack (defenses: test_defenses_contract.py).

Each table below must name every entry of its registry, so registering something new
without a working configuration here fails the first test of its section.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pandas as pd
import pytest
import torch

from attacks import ATTACKS
from bench.config import parse_experiment
from bench.data import DATASETS, build_federation
from bench.models import MODELS, build_model
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import (
    THREAT_MODELS,
    AuditScores,
    ConfigError,
    AttributeInferences,
    MembershipScores,
    OutsiderView,
    PeerView,
    Reconstructions,
    ServerView,
    SourceGuesses,
)
from conftest import tiny_raw

# --------------------------------------------------------------------------- datasets

# one working `data:` section per dataset ("{heart}" / "{csv}" are filled in by fixtures)
DATASET_CONFIGS = {
    "breast_cancer": {"name": "breast_cancer", "partition": "iid", "num_sites": 3},
    "digits": {"name": "digits", "partition": "dirichlet", "num_sites": 3, "alpha": 1.0},
    "heart_disease": {"name": "heart_disease", "partition": "natural", "data_dir": "{heart}", "download": False},
    "csv": {"name": "csv", "partition": "natural", "path": "{csv}"},
    "images": {"name": "images", "partition": "natural", "path": "{images}"},
}


@pytest.fixture
def small_images(tmp_path) -> str:
    from image_fixtures import write_collection

    return str(write_collection(tmp_path / "images", sites=2, per_site=30, size=8))


@pytest.fixture
def small_csv(tmp_path) -> str:
    rng = np.random.default_rng(0)
    n = 60
    path = tmp_path / "small.csv"
    pd.DataFrame(
        {
            "site": np.repeat(["north", "south"], n // 2),
            "age": rng.integers(30, 80, n),
            "smoker": rng.choice(["no", "yes"], n),
            "label": rng.integers(0, 2, n),
        }
    ).to_csv(path, index=False)
    return str(path)


def _data_section(name: str, request) -> dict:
    section = dict(DATASET_CONFIGS[name])
    if section.get("data_dir") == "{heart}":
        section["data_dir"] = request.getfixturevalue("heart_data_dir")
    if section.get("path") == "{csv}":
        section["path"] = request.getfixturevalue("small_csv")
    if section.get("path") == "{images}":
        section["path"] = request.getfixturevalue("small_images")
    return section


def _model_for(name: str) -> dict:
    modality = DATASETS.get(name).modality
    return {"name": "cnn"} if modality == "image" else {"name": "logreg"}


def test_every_dataset_has_a_configuration_here():
    assert set(DATASET_CONFIGS) == set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_builds_a_consistent_federation(name, request):
    cls = DATASETS.get(name)
    assert cls.__doc__ and cls.__doc__.strip(), f"{name}: document the dataset"
    assert cls.modality in ("tabular", "image")
    cfg = parse_experiment(tiny_raw(data=_data_section(name, request), model=_model_for(name)))
    fed, truth = build_federation(cfg.data, Seeds(0))
    info = fed.info
    assert info.name == name and info.modality == cls.modality and info.num_classes >= 2
    assert len(fed.sites) >= 2 and len(set(fed.site_names)) == len(fed.sites)
    blocks = [b for s in fed.sites for b in (s.train, s.test)] + [fed.test, fed.candidates]
    for rec in blocks:
        assert len(rec.ids) == rec.x.shape[0] == rec.y.shape[0] > 0
        assert tuple(rec.x.shape[1:]) == info.input_shape
        assert rec.x.dtype == torch.float32 and rec.y.dtype == torch.int64 and rec.ids.dtype == np.int64
        assert torch.isfinite(rec.x).all(), "missing values must be imputed"
        assert int(rec.y.min()) >= 0 and int(rec.y.max()) < info.num_classes
    if info.modality == "tabular":
        # the features tile the model input exactly, in order
        cols = [f.columns for f in info.features]
        assert cols[0][0] == 0 and cols[-1][1] == info.input_shape[0]
        assert all(a[1] == b[0] for a, b in zip(cols, cols[1:]))
    else:
        assert info.features == ()
    assert len(truth.candidate_is_member) == len(fed.candidates)
    assert truth.candidate_is_member.any() and (~truth.candidate_is_member).any()


# --------------------------------------------------------------------------- models

# datasets each model must work on (tabular and image where the model allows both)
MODEL_DATASETS = {
    "logreg": ["breast_cancer", "digits"],
    "mlp": ["breast_cancer", "digits"],
    "cnn": ["digits"],
}


def test_every_model_has_datasets_here():
    assert set(MODEL_DATASETS) == set(MODELS.names())


@pytest.fixture(scope="module")
def federations():
    out = {}
    for name in ("breast_cancer", "digits"):
        cfg = parse_experiment(tiny_raw(data=DATASET_CONFIGS[name], model=_model_for(name)))
        out[name] = build_federation(cfg.data, Seeds(0))[0]
    return out


@pytest.mark.parametrize("model,dataset", [(m, d) for m, ds in MODEL_DATASETS.items() for d in ds])
def test_every_model_forward_and_backward(model, dataset, federations):
    fed = federations[dataset]
    cfg = parse_experiment(tiny_raw(data=DATASET_CONFIGS[dataset], model={"name": model, "hidden": [16]}))
    net = build_model(fed.info, cfg.model, torch.Generator().manual_seed(0))
    again = build_model(fed.info, cfg.model, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters())), "init must follow the generator"
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()), "no BatchNorm (DP-SGD)"
    batch = fed.sites[0].train
    logits = net(batch.x[:5])
    assert logits.shape == (5, fed.info.num_classes) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch.y[:5]).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_image_only_model_refuses_tabular_data():
    with pytest.raises(ConfigError, match="model.name"):
        parse_experiment(tiny_raw(model={"name": "cnn"}))


# --------------------------------------------------------------------------- attacks

VIEW_TYPES = {"outsider": OutsiderView, "server": ServerView, "peer": PeerView}
OUTPUT_TYPES = {"membership": MembershipScores, "source": SourceGuesses, "reconstruction": Reconstructions, "audit": AuditScores,
                "attribute": AttributeInferences}
# the smallest settings that exercise each attack end to end on the tiny federation
ATTACK_SETTINGS = {
    "loss_threshold": {},
    "peer_fedmia": {},
    "lira": {"num_references": 2},
    "rmia": {"num_references": 2, "num_z": 50},
    "update_cosine": {},
    "source_inference": {},
    "canary_audit": {"num_canaries": 20},
    "dpsgd_audit": {"num_canaries": 20},
    "client_canary_audit": {"num_canaries": 20},
    "analytic": {},
    "dlg": {"iterations": 2, "restarts": 1},
    "inverting_gradients": {"iterations": 2, "restarts": 1},
    "tableak": {"iterations": 2, "restarts": 1},
    "imprint": {"bins": 64},
    "model_inconsistency": {"inversion": "analytic"},
    "withheld_noise": {},
    "attribute_inference": {"attributes": [{"name": "mean_radius", "bands": [14.0]}], "folds": 2},
    "attribute_inference_server": {"attributes": [{"name": "mean_radius", "bands": [14.0]}], "folds": 2},
}
# attacks that need another model than the tiny federation's logreg
ATTACK_MODELS = {"model_inconsistency": {"name": "mlp", "hidden": [8]}}
# the defenses an attack audits (it refuses to run without them)
ATTACK_DEFENSES = {
    "dpsgd_audit": [{"name": "dp_sgd", "noise_multiplier": 1.0}],
    "client_canary_audit": [{"name": "client_dp", "noise_multiplier": 1.0}],
    "withheld_noise": [{"name": "client_dp", "noise_multiplier": 1.0}],
}
# the headline metric each kind of attack must produce
HEADLINE = {"membership": "auc", "source": "accuracy", "reconstruction": "feature_accuracy", "audit": "epsilon_lower_bound",
            "attribute": "mean_radius/signal"}  # attack/<name>/<attribute>/signal


def test_every_attack_has_settings_here():
    assert set(ATTACK_SETTINGS) == set(ATTACKS.names())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_declares_its_threat_model_and_view(name):
    cls = ATTACKS.get(name)
    assert cls.name == name
    assert cls.threat_model in THREAT_MODELS
    assert cls.kind in OUTPUT_TYPES
    hints = typing.get_type_hints(cls.run)
    assert hints["view"] is VIEW_TYPES[cls.threat_model], "run() must take the view of its threat model"
    assert hints["return"] is OUTPUT_TYPES[cls.kind]
    if cls.needs_individual_updates:
        assert cls.threat_model == "server", "only the server sees individual updates"
    assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
    doc = " ".join((cls.__doc__ or "").split())
    assert "Threat model" in doc, f"{name}: the docstring must state its threat model"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_runs_end_to_end(name, monkeypatch):
    """Through the real runner on the tiny federation: the attack receives the view of its
    threat model, returns the declared output type, and scoring yields finite metrics."""
    cls = ATTACKS.get(name)
    seen = {}
    original = cls.run

    def spy(self, view, rng):
        out = original(self, view, rng)
        seen["view"], seen["output"] = type(view), type(out)
        return out

    monkeypatch.setattr(cls, "run", spy)
    raw = tiny_raw(attacks=[{"name": name, **ATTACK_SETTINGS[name]}], train__rounds=2, train__batch_size=4,
                   data__members_per_site=4, defenses=ATTACK_DEFENSES.get(name, []),
                   model=ATTACK_MODELS.get(name, {"name": "logreg"}))
    result = run_in_memory(parse_experiment(raw))
    assert seen["view"] is VIEW_TYPES[cls.threat_model]
    assert seen["output"] is OUTPUT_TYPES[cls.kind]
    family = "audit" if cls.kind == "audit" else "attack"  # audits log under audit/<name>/...
    mine = {k: v for k, v in result.metrics.items() if k.startswith(f"{family}/{name}/")}
    assert f"{family}/{name}/{HEADLINE[cls.kind]}" in mine, sorted(mine)
    # an audit's power may be infinite (vacuous: no weakening up to 16x would be caught); nothing else
    assert all(np.isfinite(v) or ("detectable_" in k and v == np.inf) for k, v in mine.items()
               if not k.endswith("accountant_epsilon") and "_to_" not in k), mine
    assert f"cost/attack/{name}/seconds" in result.metrics
