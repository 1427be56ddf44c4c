"""The curious peer hospital: its view, and FedMIA-style membership inference from the global models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.membership.peer_fedmia import PeerFedMIA, temporal_z
from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.metrics import score
from bench.models import MODELS, build_model
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ConfigError, MembershipScores
from bench.views import derive_views, peer_view
from conftest import tiny_raw


def _trained(**over):
    cfg = parse_experiment(tiny_raw(attacks=[{"name": "peer_fedmia"}], **over))
    seeds = Seeds(cfg.seed)
    fed, truth = build_federation(cfg.data, seeds)
    model_fn = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [], cfg.train, cfg.privacy, seeds, evaluate=False)
    return cfg, fed, truth, model_fn, rec


def test_peer_view_holds_what_the_hospital_receives_and_not_its_own_records_as_targets():
    cfg, fed, truth, model_fn, rec = _trained()
    site = fed.site_names[1]
    view = derive_views(rec, fed, model_fn, ["peer"], peer_site=site)["peer"]
    assert view.site == site
    assert len(view.received) == cfg.train.rounds
    for sent, r in zip(view.received, rec.rounds):
        assert torch.equal(sent, r.global_params)
    assert torch.equal(view.final_params, rec.final_params)
    own = set(fed.sites[1].train.ids.tolist())
    assert own and not own & set(view.candidates.ids.tolist())
    # every other candidate stays a target
    assert len(view.candidates) == len(fed.candidates) - len(own)
    assert all(torch.equal(u, r.updates[site]) for u, r in zip(view.own_updates, rec.rounds))
    assert not hasattr(view, "updates")  # no other hospital's update reaches a peer
    assert set(view.own_holdout.ids.tolist()) == set(fed.sites[1].test.ids.tolist())
    with pytest.raises(ConfigError, match="nowhere"):
        peer_view(rec, fed, model_fn, "nowhere")


def test_temporal_z_is_null_for_non_members_and_positive_for_a_record_trained_on():
    rng = np.random.default_rng(0)
    rounds, m = 6, 4000
    level = rng.gamma(2.0, 0.5, size=m)
    traj = np.stack([level * (0.9**r) + rng.normal(0, 0.02, m) for r in range(rounds + 1)])
    ref, tgt = traj[:, :2000], traj[:, 2000:].copy()
    z = temporal_z(tgt, ref)
    assert z.shape == (2 * rounds, 2000)
    assert abs(z.mean()) < 0.05 and abs(z[0].std() - 1) < 0.1  # same distribution: standard normal per round
    member = tgt.copy()
    member[1:] -= 0.3 * np.arange(1, rounds + 1)[:, None]  # it falls 0.3 more every round
    assert temporal_z(member, ref).mean() > 1.0


def test_scores_are_null_when_the_models_carry_no_membership_signal():
    """The trajectory of every record is the same function of its features whether or not it
    was trained on when the 'global models' are random (never trained): AUC ≈ 0.5."""
    cfg, fed, truth, model_fn, rec = _trained(data__num_sites=3)
    g = torch.Generator().manual_seed(5)
    fake = [torch.randn_like(r.global_params, generator=g) for r in rec.rounds]
    view = peer_view(rec, fed, model_fn)
    view = type(view)(**{**view.__dict__, "received": tuple(fake), "final_params": torch.randn_like(rec.final_params, generator=g)})
    out = PeerFedMIA(PeerFedMIA.Params()).run(view, np.random.default_rng(0))
    m = score(out, truth)
    assert m["auc_ci_low"] < 0.5 < m["auc_ci_high"]


def test_overfit_federation_leaks_to_the_peer_end_to_end(heart_data_dir):
    """Few members, many local epochs: the peer's trajectory test finds the other hospitals'
    members (AUC interval above 0.5), scored only on the others' records."""
    raw = tiny_raw(attacks=[{"name": "peer_fedmia"}], train__rounds=8, train__local_epochs=10, train__batch_size=8,
                   train__lr=0.3, model={"name": "mlp", "hidden": [64]}, seed=1,
                   data={"name": "heart_disease", "partition": "natural", "data_dir": heart_data_dir, "download": False,
                         "members_per_site": 15})
    res = run_in_memory(parse_experiment(raw))
    assert res.metrics["attack/peer_fedmia/auc_ci_low"] > 0.5, res.metrics["attack/peer_fedmia/auc"]


def test_scores_cover_only_other_hospitals_records():
    cfg, fed, truth, model_fn, rec = _trained()
    out = PeerFedMIA(PeerFedMIA.Params()).run(peer_view(rec, fed, model_fn), np.random.default_rng(0))
    assert isinstance(out, MembershipScores)
    own = set(fed.sites[0].train.ids.tolist())
    assert not own & set(out.ids.tolist()) and np.isfinite(out.scores).all()
