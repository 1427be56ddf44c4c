"""Server-side attacks: update_cosine and source_inference.

* both need each hospital's update, so a suite that pairs them with secure aggregation is
  refused when it is loaded, with the reason;
* on a federation whose hospitals memorise their records, the server's update cosine
  separates members from non-members and source inference beats chance 1/K.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from attacks.membership.source_inference import SourceInference
from attacks.membership.update_cosine import UpdateCosine
from bench.config import parse_experiment
from bench.federated import run_federated
from bench.metrics import membership_metrics
from bench.models import build_model
from bench.seeding import Seeds
from bench.types import ConfigError
from bench.views import server_view
from conftest import tiny_raw
from test_lira_rmia import INFO, _cfg, _fed, _records


@pytest.mark.parametrize("attack", ["update_cosine", "source_inference"])
def test_refused_under_secure_aggregation(attack):
    raw = tiny_raw(attacks=[{"name": attack}], defenses=[{"name": "secure_aggregation"}])
    with pytest.raises(ConfigError, match=f"'{attack}' needs each hospital's individual update.*'secure_aggregation'"):
        parse_experiment(raw)


@pytest.mark.parametrize("attack", ["update_cosine", "source_inference"])
def test_allowed_without_secure_aggregation(attack):
    parse_experiment(tiny_raw(attacks=[{"name": attack}], defenses=[{"name": "clipping", "max_norm": 1.0}]))


def _server_view(train_on_candidates: bool):
    """3 hospitals x 40 records with random labels (fitted only by memorising them);
    candidates: the 120 members and 120 non-members."""
    cfg = _cfg(model__name="mlp", model__hidden=[64], train__rounds=6, train__local_epochs=3, train__batch_size=8, train__lr=0.3)
    pop = _records(240, 0)
    perm = np.random.default_rng(1).permutation(240)
    member = np.zeros(240, bool)
    member[perm[:120]] = True
    site_of = np.full(240, -1)
    if train_on_candidates:
        sites = {f"s{i}": pop.take(np.sort(perm[i * 40 : (i + 1) * 40])) for i in range(3)}
        for i in range(3):
            site_of[perm[i * 40 : (i + 1) * 40]] = i
    else:
        other = _records(120, 5, 10_000)
        sites = {f"s{i}": other.take(np.arange(i * 40, (i + 1) * 40)) for i in range(3)}
    fed = dataclasses.replace(_fed(sites), candidates=pop)
    seeds = Seeds(0)
    rec = run_federated(fed, build_model(INFO, cfg.model, seeds.torch("init")), [], cfg.train, cfg.privacy, seeds, evaluate=False)
    view = server_view(rec, fed, lambda: build_model(INFO, cfg.model, torch.Generator().manual_seed(0)))
    return view, member, site_of


def test_update_cosine_separates_memorised_members_only():
    view, member, _ = _server_view(True)
    scores = UpdateCosine(UpdateCosine.Params()).run(view, np.random.default_rng(0)).scores
    assert membership_metrics(scores, member)["auc"] > 0.6
    control, member, _ = _server_view(False)
    scores = UpdateCosine(UpdateCosine.Params()).run(control, np.random.default_rng(0)).scores
    assert abs(membership_metrics(scores, member)["auc"] - 0.5) < 0.1  # AUC std here ~0.037


def test_source_inference_beats_chance():
    view, member, site_of = _server_view(True)
    guess = SourceInference(SourceInference.Params()).run(view, np.random.default_rng(0))
    assert (guess.ids == view.known_records.ids).all()
    acc = float((guess.site_index[member] == site_of[member]).mean())
    # chance is 1/3 ± 0.043 for 120 members
    assert acc > 0.5


def test_source_scoring_counts_members_only():
    from bench.metrics import score
    from bench.types import GroundTruth, SourceGuesses

    truth = GroundTruth(
        candidate_ids=np.arange(6), candidate_is_member=np.array([1, 1, 1, 1, 0, 0], bool),
        candidate_site=np.array([0, 1, 0, 1, 0, 1]), site_names=("a", "b"), site_train={},
    )
    # right on 3 of 4 members, wrong on both non-members
    out = score(SourceGuesses(ids=np.arange(6), site_index=np.array([0, 1, 0, 0, 1, 0])), truth)
    assert out["accuracy"] == 0.75 and out["chance"] == 0.5 and out["lift"] == 1.5
    assert out["accuracy_nonmembers"] == 0.0
