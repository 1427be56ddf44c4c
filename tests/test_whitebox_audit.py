"""White-box audits: canaries go exactly where the mechanism puts records, and the audit fails
on deliberately broken DP (tests/mutants.py) while the honest implementation passes.

Fast: known answers for the canary mechanics (gradient canaries clipped and counted like
records; canary clients weighted 1/m), refusals, the views. Slow: the documented bug
configurations of docs/bench-audit.md, each caught, the honest code not flagged.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from attacks.audit.whitebox import ClientCanaryAudit, DPSGDAudit
from bench.canaries import insert_audit_canaries, make_directions
from bench.config import parse_experiment
from bench.data import build_federation, check_data
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer
from bench.types import ConfigError, InsertedCanaries, Records
from conftest import tiny_raw
from defenses.dp_sgd import DPTrainer
from mutants import _sum_without_clipping, bug_config, substituted

import types


# --------------------------------------------------------------------------- directions


@pytest.mark.parametrize("kind", ["dirac", "random"])
def test_directions_are_orthonormal_and_projection_is_the_dot_product(kind):
    d = make_directions(kind, 40, 300, 7, np.random.default_rng(0))
    rows = d.rows(np.arange(40)).double()
    assert torch.allclose(rows @ rows.T, torch.eye(40, dtype=torch.float64), atol=1e-5)
    v = torch.randn(300, generator=torch.Generator().manual_seed(1))
    assert np.allclose(d.project(v), (rows @ v.double()).numpy(), atol=1e-5)
    assert list(d.ids) == list(range(7, 47))


def test_more_canaries_than_parameters_is_refused():
    with pytest.raises(ConfigError, match="at least 50 parameters"):
        make_directions("random", 50, 49, 0, np.random.default_rng(0))


# --------------------------------------------------------------------------- gradient canaries


def _zero_feature_trainer(n: int, canaries: InsertedCanaries, noise: float, clip: float, lr: float = 0.5):
    """Logistic regression on records whose features are all zero: the records' gradients on
    the weights are exactly 0, so a weight coordinate moves only by the canaries and the noise."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))
    data = Records(ids=np.arange(n), x=torch.zeros(n, 5), y=torch.zeros(n, dtype=torch.int64))
    plain = PlainTrainer(model, data, LocalSettings(epochs=1, batch_size=4, optimizer="sgd", lr=lr), canaries=canaries)
    return DPTrainer(plain, noise, clip)


def _weight_canaries(m: int, scale: float) -> InsertedCanaries:
    # Dirac canaries on the 10 weights (not the biases) of Linear(5, 2); all included
    dirs = make_directions("dirac", m, 12, 0, np.random.default_rng(0))
    dirs = dataclasses.replace(dirs, coordinates=np.arange(m))  # weights come first in the flat vector
    return InsertedCanaries(kind="gradient", directions=dirs, included=np.ones(m, bool), site="a", scale=scale, seed=3)


def replay_canary_counts(trainer, seed: int = 0) -> np.ndarray:
    """How often each included canary was drawn in one round at σ = 0 (no noise draws): the
    records' own Poisson masks over the n records and then the canary rows, replayed."""
    g, counts = torch.Generator().manual_seed(seed), np.zeros(trainer.n_rows - trainer.n)
    for _ in range(trainer.round_steps):
        counts += (torch.rand(trainer.n_rows, generator=g) < trainer.sample_rate)[trainer.n :].numpy()
    return counts


def test_gradient_canaries_are_rows_the_records_sampler_draws_and_clipped_to_C():
    """Known answer: σ = 0, records with zero features. Each canary's weight moves by exactly
    −lr·C/(q·n) per step it was sampled in (norm 3C clipped to C), the sampling replayed from
    the records' own Poisson masks, in which the canaries are the last rows."""
    canaries, clip, lr, n = _weight_canaries(10, scale=3.0), 0.7, 0.5, 20
    trainer = _zero_feature_trainer(n, canaries, noise=0.0, clip=clip, lr=lr)
    assert trainer.n_rows == n + 10
    start = torch.zeros(12)
    out = trainer.train(start, torch.Generator().manual_seed(0))
    counts = replay_canary_counts(trainer)
    assert counts.sum() > 0
    moved = -(out.params - start)[:10].numpy() * trainer.optimizer.expected_batch_size / (lr * clip)
    assert np.allclose(moved, counts, atol=1e-4)


def test_a_sampling_bug_reaches_the_canaries():
    """The canaries travel the records' sampler, so a sampling bug acts on them too: with the
    full-batch mutant (every row in every step, accounted as Poisson q) every included canary's
    weight moves in every step — where the honest sampler moves it in about q of them."""
    from mutants import FullBatchTrainer

    canaries, clip, lr, n = _weight_canaries(10, scale=3.0), 0.7, 0.5, 20
    honest = _zero_feature_trainer(n, canaries, noise=0.0, clip=clip, lr=lr)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))
    data = Records(ids=np.arange(n), x=torch.zeros(n, 5), y=torch.zeros(n, dtype=torch.int64))
    plain = PlainTrainer(model, data, LocalSettings(epochs=1, batch_size=4, optimizer="sgd", lr=lr), canaries=canaries)
    broken = FullBatchTrainer(plain, 0.0, clip)
    unit = lr * clip / honest.optimizer.expected_batch_size
    a = -honest.train(torch.zeros(12), torch.Generator().manual_seed(0)).params[:10].numpy() / unit
    b = -broken.train(torch.zeros(12), torch.Generator().manual_seed(0)).params[:10].numpy() / unit
    assert np.allclose(b, broken.round_steps, atol=1e-4)  # every step, every canary
    assert np.allclose(a, replay_canary_counts(honest), atol=1e-4) and a.mean() < 0.5 * broken.round_steps


def test_every_privatized_step_reaches_the_server_view(tiny_cfg):
    """The audited hospital logs each released step (noisy gradient); the white-box audit scores
    them one by one (``every_step``) beside ``all_rounds`` and ``final_model``, and with plain
    SGD the steps add up to the round's update: Σ_t −lr·g̃_t = Δ."""
    raw = tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0}], attacks=[{"name": "dpsgd_audit", "num_canaries": 20}])
    cfg = parse_experiment(raw)
    from bench.federated import run_federated
    from bench.models import build_model
    from bench.runner import make_defenses
    from bench.views import server_view

    fed, _ = build_federation(cfg.data, Seeds(0))
    initial = build_model(fed.info, cfg.model, Seeds(0).torch("init"))
    site = fed.site_names[0]
    fed, _ = insert_audit_canaries(fed, "gradient", 20, 62, np.random.default_rng(0), site=site, scale=2.0, clip=1.0)
    rec = run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    view = server_view(rec, fed, lambda: build_model(fed.info, cfg.model, Seeds(0).torch("init")))
    for r in view.rounds:
        steps = r.step_updates[site]
        assert steps.shape == (r.disclosures[site].local_steps, 62)
        assert set(r.step_updates) == {site}  # only the audited hospital logs its steps
        assert torch.allclose(-cfg.train.lr * steps.sum(dim=0), rec.rounds[r.round - 1].updates[site], atol=1e-6)
    from attacks.audit.whitebox import DPSGDAudit

    out = DPSGDAudit(DPSGDAudit.Params(num_canaries=20)).run(view, np.random.default_rng(0))
    assert set(out.observations) == {"all_rounds", "final_model", "every_step"} and out.step_observations == ("every_step",)


def test_skipping_per_sample_clipping_is_visible_in_the_canaries():
    """The same setting with the clipping mutant: the canaries move their weights 3× as far —
    the white-box audit's signal for a skipped clip."""
    canaries, clip = _weight_canaries(10, scale=3.0), 0.7
    honest = _zero_feature_trainer(20, canaries, 0.0, clip)
    broken = _zero_feature_trainer(20, canaries, 0.0, clip)
    broken.optimizer.clip_and_accumulate = types.MethodType(_sum_without_clipping, broken.optimizer)
    a = honest.train(torch.zeros(12), torch.Generator().manual_seed(0)).params[:10]
    b = broken.train(torch.zeros(12), torch.Generator().manual_seed(0)).params[:10]
    assert torch.allclose(b, 3 * a, atol=1e-5) and a.abs().sum() > 0


def test_canaries_do_not_change_the_records_randomness(tiny_cfg):
    """With every canary excluded, training equals training without canaries (own stream)."""
    raw = tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0}], attacks=[{"name": "dpsgd_audit", "num_canaries": 20}])
    cfg = parse_experiment(raw)
    from bench.federated import run_federated
    from bench.models import build_model
    from bench.runner import make_defenses

    fed, _ = build_federation(cfg.data, Seeds(0))
    initial = build_model(fed.info, cfg.model, Seeds(0).torch("init"))
    with_c, _ = insert_audit_canaries(fed, "gradient", 20, 62, np.random.default_rng(0), site=fed.site_names[0], scale=2.0)
    none_in = dataclasses.replace(with_c, audit_canaries=dataclasses.replace(with_c.audit_canaries, included=np.zeros(20, bool)))
    a = run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    b = run_federated(none_in, initial, make_defenses(cfg), cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    assert torch.equal(a.final_params, b.final_params)


def test_insertion_is_pure_and_only_truth_knows_which_went_in(tiny_cfg):
    fed, truth = build_federation(tiny_cfg.data, Seeds(0))
    new, fields = insert_audit_canaries(fed, "gradient", 30, 62, np.random.default_rng(0), site=fed.site_names[1])
    assert fed.audit_canaries is None and truth.canary_ids is None
    assert np.array_equal(fields["canary_included"], new.audit_canaries.included)
    assert 5 < fields["canary_included"].sum() < 25
    assert not np.isin(fields["canary_ids"], fed.candidates.ids).any()


# --------------------------------------------------------------------------- refusals and views


@pytest.mark.parametrize(
    "attack,defenses,match",
    [
        ("dpsgd_audit", [], "add a dp_sgd defense"),
        ("dpsgd_audit", [{"name": "dp_sgd", "noise_multiplier": 1.0, "grad_sample_mode": "ghost"}], "ghost"),
        ("dpsgd_audit", [{"name": "dp_sgd", "noise_multiplier": 1.0, "sampling": "shuffle"}], "shuffle"),
        ("client_canary_audit", [{"name": "dp_sgd", "noise_multiplier": 1.0}], "add a client_dp defense"),
        ("client_canary_audit", [{"name": "client_dp", "adaptive": True, "noise_multiplier": 1.0, "clip_count_stddev": 5.0}], "adaptive"),
    ],
)
def test_an_audit_refuses_a_cell_it_cannot_audit(attack, defenses, match):
    with pytest.raises(ConfigError, match=match):
        parse_experiment(tiny_raw(attacks=[{"name": attack, "num_canaries": 20}], defenses=defenses))


def test_two_white_box_audits_in_one_cell_are_refused_at_load_time():
    both = [{"name": "dpsgd_audit", "num_canaries": 20}, {"name": "client_canary_audit", "num_canaries": 20}]
    with pytest.raises(ConfigError, match="its own cell"):
        parse_experiment(tiny_raw(attacks=both, defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0},
                                                          {"name": "client_dp", "noise_multiplier": 1.0}]))


def test_too_many_canaries_for_the_model_is_a_data_time_error():
    cfg = parse_experiment(tiny_raw(attacks=[{"name": "dpsgd_audit", "num_canaries": 100}],
                                    defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0}]))
    with pytest.raises(ConfigError, match="only 62 parameters"):
        check_data([cfg])


def test_under_secure_aggregation_the_audit_scores_the_sum():
    raw = tiny_raw(attacks=[{"name": "dpsgd_audit", "num_canaries": 40}],
                   defenses=[{"name": "dp_sgd", "noise_multiplier": 0.5}, {"name": "secure_aggregation"}])
    res = run_in_memory(parse_experiment(raw))
    assert res.metrics["audit/dpsgd_audit/canaries"] == 40
    assert np.isfinite(res.metrics["audit/dpsgd_audit/all_rounds/epsilon_estimate"])
    assert res.tags["audit_violation"] == "false"


def test_canary_clients_enter_the_released_model_with_weight_one_over_m():
    """σ = 0: every round moves the model by C/m along each included canary (m = 3 hospitals),
    so the included and excluded canaries' all-rounds scores separate completely."""
    raw = tiny_raw(attacks=[{"name": "client_canary_audit", "num_canaries": 30}],
                   defenses=[{"name": "client_dp", "noise_multiplier": 0.0, "clip_norm": 0.5}])
    res = run_in_memory(parse_experiment(raw))
    m = res.metrics
    assert m["audit/client_canary_audit/all_rounds/correct"] == m["audit/client_canary_audit/all_rounds/guesses"]
    assert m["audit/client_canary_audit/epsilon_estimate"] > 20  # no noise: no privacy


# --------------------------------------------------------------------------- the audit fails on broken DP


def _cell(bug: str, heart: str, seed: int = 0, broken: bool = True):
    raw = bug_config(bug, heart)
    raw["seed"] = seed
    cfg = parse_experiment(raw)
    if not broken:
        return run_in_memory(cfg)
    with substituted(bug):
        return run_in_memory(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["noise_halved", "no_noise", "no_clipping", "accountant_half_rate", "client_noise_over_m_squared"])
def test_each_seeded_bug_is_caught_and_the_honest_code_is_not_flagged(bug, heart_data_dir, caplog):
    with caplog.at_level(logging.ERROR):
        broken = _cell(bug, heart_data_dir)
    assert broken.tags["audit_violation"] == "true", bug
    assert "AUDIT VIOLATION" in caplog.text
    honest = _cell(bug, heart_data_dir, seed=1, broken=False)
    assert honest.tags["audit_violation"] == "false"


@pytest.mark.slow
def test_an_audit_that_cannot_catch_a_bug_says_it_cannot_fail(heart_data_dir):
    """A √2 understatement of the steps (one epoch told, two run) needs a certified bound above
    0.71× the true ε, beyond what 5,000 canaries certify: the audit must say it could not fail
    rather than report a reassuring 'no violation'."""
    res = _cell("accountant_one_epoch", heart_data_dir)
    assert res.tags["audit_violation"] == "false"
    # no certification possible (power ∞), though the uncertified tier may still see it: suspect, never violation
    assert res.tags["audit_verdict"] in ("vacuous", "suspect") and res.tags["audit_power"].startswith("vacuous")
    assert res.metrics["audit/detectable_factor"] == float("inf")
    assert res.metrics["audit/max_certifiable_epsilon"] < res.metrics["audit/accountant_epsilon"]


@pytest.mark.slow
def test_the_pipeline_reaches_the_ceiling_of_its_analysis(heart_data_dir):
    """DP-SGD at ε = 4 (δ = 1e-5): the certified bound reaches the idealized simulation's
    (docs/bench-audit.md: 1.06× at seed 0), and the estimate is within 0.7–1.0× of ε."""
    res = _cell("no_noise", heart_data_dir, broken=False)
    m = res.metrics
    assert m["audit/dpsgd_audit/all_rounds/bound_to_ceiling"] >= 0.85
    assert 0.7 <= m["audit/dpsgd_audit/estimate_to_accountant"] <= 1.05
    assert m["audit/dpsgd_audit/final_model/epsilon_lower_bound"] <= m["audit/dpsgd_audit/all_rounds/epsilon_lower_bound"]
