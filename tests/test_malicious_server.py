"""Issue 21 (A): the malicious server acts through the federation's hooks (ServerPlan), and the
hospitals' client-side checks answer it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from attacks.malicious.imprint import Imprinted, read_bins, trap_parameters
from attacks.malicious.inconsistency import ModelInconsistency
from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ConfigError, PlanInputs
from conftest import tiny_raw
from defenses.model_check import consistency_failures, model_digest

HEART = os.environ.get("PRIVBENCH_DATA_DIR", "/work/shared/data/uci-heart-disease")
needs_heart = pytest.mark.skipif(not os.path.isdir(HEART), reason="UCI heart disease data not available")


def heart_raw(attacks, defenses=(), rounds=1, epochs=1, batch_size=1000, seed=0):
    return {
        "data": {"name": "heart_disease", "partition": "natural", "data_dir": HEART},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"rounds": rounds, "local_epochs": epochs, "batch_size": batch_size, "lr": 0.1},
        "attacks": list(attacks), "defenses": list(defenses), "seed": seed,
    }


# --------------------------------------------------------------------------- known answers


def test_read_bins_returns_each_record_alone_in_its_bin_exactly():
    """One SGD step through the imprint module: bins holding one record give it back exactly."""
    torch.manual_seed(0)
    d, k = 5, 64
    inner = torch.nn.Sequential(torch.nn.Linear(d, 2))
    model = Imprinted(inner, d, k)
    a = torch.nn.functional.normalize(torch.randn(d), dim=0)
    x = torch.randn(6, d)
    h = x @ a
    # thresholds between the sorted measurements: each record alone in its bin
    hs = torch.sort(h).values
    thresholds = torch.cat([hs[:1] - 1, (hs[:-1] + hs[1:]) / 2])
    thresholds = torch.cat([thresholds, torch.linspace(float(hs[-1]) + 1, float(hs[-1]) + 2, k - len(thresholds))])
    trap = trap_parameters(a, thresholds, 1e-3, 0.1)
    torch.nn.utils.vector_to_parameters(torch.cat([trap, torch.nn.utils.parameters_to_vector(inner.parameters())]), model.parameters())
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1, 1, 0]))
    gw, gb = torch.autograd.grad(loss, [model.imprint.weight, model.imprint.bias])
    got = read_bins(gw, gb, 1e-6)
    assert len(got) == len(x)
    order = torch.argsort(h)
    assert torch.allclose(got, x[order], atol=1e-4)


def test_model_digests_agree_only_on_identical_models():
    p = torch.randn(50)
    q = p.clone()
    q[3] += 1e-7
    digests = {"a": model_digest(p, "arch"), "b": model_digest(p.clone(), "arch"), "c": model_digest(q, "arch")}
    assert consistency_failures({k: digests[k] for k in ("a", "b")}, 1) == []
    assert {tuple(sorted(x)) for x in consistency_failures(digests, 1)} == {("a", "c"), ("b", "c")}
    assert model_digest(p, "arch") != model_digest(p, "other")


@needs_heart
def test_model_inconsistency_isolates_the_target_update_exactly_but_the_output_bias():
    """Under secure aggregation the sum divided by the target's weight is the target's update
    in every coordinate except the output bias (the others' label counts)."""
    cfg = parse_experiment(heart_raw([{"name": "model_inconsistency", "inversion": "analytic"}], [{"name": "secure_aggregation", "bits": 64}]))
    seeds = Seeds(cfg.seed)
    fed, _ = build_federation(cfg.data, seeds, cfg.fairness)
    from bench.models import MODELS

    model_fn = lambda: MODELS.get("mlp").build(fed.info, cfg.model)  # noqa: E731
    initial = build_model(fed.info, cfg.model, seeds.torch("init"))
    attack = ModelInconsistency(cfg.attacks[0].params)
    inputs = PlanInputs(fed.info, model_fn, torch.nn.utils.parameters_to_vector(initial.parameters()), fed.site_names,
                        {s.name: len(s.train) for s in fed.sites}, 1, fed.population)
    plan = attack.server_plan(inputs, np.random.default_rng(0))
    from bench.runner import make_defenses

    rec = run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False, plan=plan)
    r = rec.rounds[0]
    target = fed.site_names[0]
    isolated = r.aggregate / r.weights[target]
    n_head = fed.info.num_classes
    body = slice(0, len(isolated) - n_head)
    assert torch.allclose(isolated[body], r.updates[target][body], atol=1e-6)
    others = [s for s in r.participants if s != target]
    assert all(float(r.updates[s][body].abs().max()) == 0.0 for s in others)  # their updates vanished
    assert set(r.sent) == set(others)  # the server records what it sent to whom


# --------------------------------------------------------------------------- the measured targets, small


@needs_heart
def test_imprint_recovers_records_verbatim_from_the_secure_sum():
    """Heart disease, 4 hospitals, secure aggregation, FedSGD: trap weights read ≥ 25 % of the
    records verbatim from the aggregate, and what the attacker claims is right (≥ 0.95)."""
    res = run_in_memory(parse_experiment(heart_raw([{"name": "imprint"}], [{"name": "secure_aggregation"}])))
    m = res.metrics
    assert m["attack/imprint/recovered_fraction_worst_site"] >= 0.25, m
    assert m["attack/imprint/feature_accuracy"] >= 0.95
    assert m["attack/imprint/feature_accuracy_ci_low"] > m["attack/imprint/baseline_feature_accuracy"]
    assert res.tags["adversary"] == "malicious_server"
    assert "change_architecture" in res.tags["adversary_capabilities"]


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_imprint_recovers_digits_images_verbatim_from_the_secure_sum(model):
    """The image path: digits (1x8x8), 3 hospitals of 60 records, the default 32-bit secure
    aggregation, FedSGD. The imprint layer sits on the flattened image in front of the CNN (or
    the MLP), as in Fowl et al.; every hospital gets images back verbatim (pixel MSE < 1e-4),
    and what the attacker claims by its own range test is mostly right."""
    raw = tiny_raw(attacks=[{"name": "imprint", "bins": 256}], defenses=[{"name": "secure_aggregation"}], model={"name": model},
                   data={"name": "digits", "partition": "iid", "num_sites": 3, "max_records_per_site": 60},
                   train={"rounds": 1, "local_epochs": 1, "batch_size": 1000, "lr": 0.1})
    res = run_in_memory(parse_experiment(raw))
    m = {k[len("attack/imprint/"):]: v for k, v in res.metrics.items() if k.startswith("attack/imprint/")}
    assert m["records_recovered"] >= 1
    assert m["recovered_fraction_worst_site"] > 0  # every hospital loses images, not only one
    assert m["recovered_fraction_ci_low"] > 0.25
    assert m["records_recovered"] >= 0.8 * m["records_claimed"]  # the claims are mostly verbatim
    assert res.tags["adversary"] == "malicious_server"


@needs_heart
def test_imprint_refuses_a_view_where_the_server_did_not_act():
    """The read-out needs the trap it planted: an honest server's view is refused, not read."""
    from attacks.malicious.imprint import Imprint

    with pytest.raises(ConfigError, match="did not act maliciously"):
        Imprint(Imprint.Params()).run(
            __import__("dataclasses").replace(_honest_view(), adversary="honest_but_curious"), np.random.default_rng(0)
        )


def _honest_view():
    from bench.types import ServerView

    return ServerView(info=None, model_fn=None, rounds=(), site_names=(), known_records=None, updates_hidden=True)


@needs_heart
def test_model_check_aborts_every_inconsistent_round_and_no_honest_round():
    attacks = [{"name": "model_inconsistency", "inversion": "analytic", "rounds": [1, 3]}]
    defenses = [{"name": "secure_aggregation"}, {"name": "model_check"}]
    res = run_in_memory(parse_experiment(heart_raw(attacks, defenses, rounds=4)))
    aborted = [r.round for r in res.record.rounds if r.aborted is not None]
    assert aborted == [1, 3]
    assert all(r.aborted.startswith("model_inconsistency") for r in res.record.rounds if r.aborted)
    assert res.metrics["attack/model_inconsistency/rounds_aborted"] == 2
    assert res.tags["rounds_aborted"] == "1,3"
    # the round the hospitals refused leaves the model as it was
    assert torch.equal(res.record.rounds[1].global_params, res.record.rounds[0].global_params)
    honest = run_in_memory(parse_experiment(heart_raw([{"name": "tableak", "iterations": 2, "restarts": 1}], defenses, rounds=4)))
    assert all(r.aborted is None for r in honest.record.rounds)
    assert honest.metrics["defense/model_check/rounds_aborted"] == 0
    assert honest.tags["adversary"] == "honest_but_curious"


@needs_heart
def test_model_check_refuses_an_architecture_outside_the_allow_list():
    defenses = [{"name": "secure_aggregation"}, {"name": "model_check"}]
    res = run_in_memory(parse_experiment(heart_raw([{"name": "imprint"}], defenses, rounds=2)))
    assert all(r.aborted is not None and r.aborted.startswith("architecture_not_allowed") for r in res.record.rounds)
    assert res.metrics["attack/imprint/rounds_aborted"] == 1
    assert "attack/imprint/recovered_fraction" not in res.metrics  # nothing came back


def test_withheld_noise_releases_the_clean_model_while_epsilon_is_still_claimed():
    base = dict(train__rounds=3, defenses=[{"name": "client_dp", "noise_multiplier": 1.0, "clip_norm": 0.5}])
    bad = run_in_memory(parse_experiment(tiny_raw(attacks=[{"name": "withheld_noise"}], **base)))
    noiseless = run_in_memory(parse_experiment(tiny_raw(
        attacks=[{"name": "loss_threshold"}], train__rounds=3, defenses=[{"name": "client_dp", "noise_multiplier": 0.0, "clip_norm": 0.5}])))
    honest = run_in_memory(parse_experiment(tiny_raw(attacks=[{"name": "loss_threshold"}], **base)))
    assert torch.allclose(bad.record.final_params, noiseless.record.final_params)
    assert not torch.allclose(bad.record.final_params, honest.record.final_params)
    assert bad.metrics["privacy/epsilon"] == honest.metrics["privacy/epsilon"]  # what the hospitals were told
    assert bad.tags["dp_holds_against_adversary"] == "false"
    assert "dp_holds_against_adversary" not in honest.tags


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("raw, match", [
    (tiny_raw(attacks=[{"name": "model_inconsistency"}]), "logreg has no ReLU"),
    (tiny_raw(attacks=[{"name": "withheld_noise"}]), "nothing to withhold"),
    (tiny_raw(attacks=[{"name": "imprint"}, {"name": "withheld_noise"}],
              defenses=[{"name": "client_dp"}]), "both a malicious server"),
    (tiny_raw(attacks=[{"name": "imprint"}, {"name": "loss_threshold"}]), "cannot share a cell"),
    (tiny_raw(attacks=[{"name": "imprint", "rounds": [9]}]), "attacks.imprint.rounds"),
])
def test_refused_before_training(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_experiment(raw)


# --------------------------------------------------------------------------- membership after model inconsistency


def _planted_membership(malicious: bool, rounds: int = 4):
    """3 hospitals x 40 records with random labels (fitted only by memorising them; the planted
    federation of tests/test_server_mia.py); candidates: each hospital's 40 members and 40
    non-members held out from it. ``malicious``: model_inconsistency isolates hospital s0 in
    every round under 64-bit secure aggregation; else an honest server sees every update."""
    import dataclasses

    from attacks.membership.update_cosine import UpdateCosine
    from bench.runner import make_defenses
    from bench.types import GroundTruth
    from bench.views import server_view
    from test_lira_rmia import INFO, _cfg, _fed, _records

    defenses = [{"name": "secure_aggregation", "bits": 64}] if malicious else []
    cfg = _cfg(model__name="mlp", model__hidden=[64], train__rounds=rounds, train__local_epochs=3, train__batch_size=8,
               train__lr=0.3, defenses=defenses)
    pop = _records(240, 0)
    perm = np.random.default_rng(1).permutation(240)
    site_of = np.zeros(240, np.int64)
    member = np.zeros(240, bool)
    for i in range(3):
        member[perm[i * 40 : (i + 1) * 40]] = True
        site_of[perm[i * 40 : (i + 1) * 40]] = i
        site_of[perm[120 + i * 40 : 120 + (i + 1) * 40]] = i
    sites = {f"s{i}": pop.take(np.sort(perm[i * 40 : (i + 1) * 40])) for i in range(3)}
    fed = dataclasses.replace(_fed(sites), candidates=pop, population=pop)
    truth = GroundTruth(candidate_ids=pop.ids, candidate_is_member=member, candidate_site=site_of,
                        site_names=fed.site_names, site_train=sites, info=INFO)
    seeds = Seeds(0)
    model_fn = lambda: build_model(INFO, cfg.model, torch.Generator().manual_seed(0))  # noqa: E731
    initial = build_model(INFO, cfg.model, seeds.torch("init"))
    attack = plan = None
    if malicious:
        attack = ModelInconsistency(ModelInconsistency.Params(target="s0", inversion="analytic", rounds=tuple(range(1, rounds + 1))))
        inputs = PlanInputs(INFO, model_fn, torch.nn.utils.parameters_to_vector(initial.parameters()), fed.site_names,
                            {s.name: len(s.train) for s in fed.sites}, rounds, pop)
        plan = attack.server_plan(inputs, np.random.default_rng(0))
    rec = run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False, plan=plan)
    view = server_view(rec, fed, model_fn, adversary=plan.adversary if malicious else "honest_but_curious")
    out = (attack or UpdateCosine(UpdateCosine.Params())).run(view, np.random.default_rng(0))
    return out, truth


def test_model_inconsistency_membership_on_the_isolated_update_matches_update_cosine_without_secure_aggregation():
    """Known answer: secure aggregation hides every update, model inconsistency undoes it. The
    isolated hospital's membership AUC (its members against the non-members held out from it)
    is clearly above chance, as update_cosine's is on the same hospital's candidates when the
    honest server sees every update (no secure aggregation), and not below that interval; a
    hospital the server shut out is not exposed by the isolated update (AUC near chance)."""
    from bench.metrics.malicious import site_membership_metrics

    honest, truth = _planted_membership(malicious=False)
    want = site_membership_metrics(honest, "s0", truth)
    out, truth = _planted_membership(malicious=True)
    assert out.membership_site == "s0" and out.membership is not None
    got = site_membership_metrics(out.membership, out.membership_site, truth)
    assert want["auc_ci_low"] > 0.5  # the honest-but-curious server's attack works here
    assert got["auc_ci_low"] > 0.5
    assert got["auc"] >= want["auc_ci_low"]  # secure aggregation bought no protection
    assert got["auc_ci_low"] <= want["auc_ci_high"]  # the two intervals overlap
    assert got["members"] == 40 and got["nonmembers"] == 40  # s0's candidates only
    shut_out = site_membership_metrics(out.membership, "s1", truth)
    assert abs(shut_out["auc"] - 0.5) < 0.15 and shut_out["auc_ci_low"] < 0.5 < shut_out["auc_ci_high"]
