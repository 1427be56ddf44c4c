"""Client-level DP-FedAvg: clipping, central noise level, adaptive clipping, accounting, tags."""

from __future__ import annotations

import math

import pytest
import torch

from bench.accounting import account
from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ConfigError
from defenses.base import ClientContext, FederationFacts, ServerContext
from defenses.client_dp import ClientDP, next_clip, update_noise_multiplier
from conftest import tiny_raw


def _facts(n_sites: int = 10, per_round: int | None = None, rounds: int = 5) -> FederationFacts:
    names = tuple(f"h{i}" for i in range(n_sites))
    return FederationFacts(
        site_names=names, site_sizes={n: 50 for n in names}, sites_per_round=per_round or n_sites, rounds=rounds,
        num_params=10, local_epochs=1, batch_size=8, accountant="rdp", delta=None,
    )


def _cctx(site: str, r: int = 1) -> ClientContext:
    return ClientContext(site=site, round=r, num_samples=50, generator=torch.Generator().manual_seed(0))


def _sctx(participants, r: int = 1, seed: int = 0) -> ServerContext:
    return ServerContext(round=r, participants=tuple(participants), generator=torch.Generator().manual_seed(seed))


def test_client_update_is_clipped_to_C_and_input_untouched():
    d = ClientDP(ClientDP.Params(noise_multiplier=1.0, clip_norm=0.5))
    d.setup(_facts())
    u = torch.full((100,), 1.0)
    keep = u.clone()
    out = d.transform_update(u, _cctx("h0"))
    assert float(out.norm()) == pytest.approx(0.5, rel=1e-5)
    assert torch.equal(u, keep)
    small = torch.full((100,), 0.01)
    torch.testing.assert_close(d.transform_update(small, _cctx("h1")), small)


@pytest.mark.parametrize("m,sigma,clip", [(4, 1.0, 0.5), (10, 2.0, 1.0)])
def test_server_noise_std_is_sigma_C_over_m(m, sigma, clip):
    d = ClientDP(ClientDP.Params(noise_multiplier=sigma, clip_norm=clip))
    d.setup(_facts(m))
    agg = torch.zeros(20_000)
    noise = d.transform_aggregate(agg, _sctx([f"h{i}" for i in range(m)]))
    expected = sigma * clip / m
    # std of a sample std of N = 20000 normals is σ/√(2N) ≈ 0.5 %: 3 % is > 5 standard errors
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(agg.numel())
    assert torch.equal(agg, torch.zeros(20_000))  # input not mutated


def test_effective_noise_multiplier_of_adaptive_clipping():
    # Andrew et al. 2021: z^-2 = z_delta^-2 + (2 sigma_b)^-2
    zd = update_noise_multiplier(1.0, 2.0)
    assert zd == pytest.approx((1 - 1 / 16) ** -0.5)
    assert zd**-2 + (2 * 2.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="clip_count_stddev"):
        update_noise_multiplier(1.0, 0.4)


def test_adaptive_clip_tracks_the_target_quantile():
    """Noise-free (z = 0, tiny σ_b): C converges to the γ-quantile of the update norms."""
    m = 10
    d = ClientDP(ClientDP.Params(noise_multiplier=0.0, clip_norm=0.1, adaptive=True, target_quantile=0.3, clip_lr=0.2, clip_count_stddev=1e-9))
    d.setup(_facts(m))
    names = [f"h{i}" for i in range(m)]
    norms = {n: float(i + 1) for i, n in enumerate(names)}  # 1..10
    for r in range(1, 150):
        for n in names:
            d.transform_update(torch.tensor([norms[n], 0.0]), _cctx(n, r))
        d.transform_aggregate(torch.zeros(2), _sctx(names, r))
    assert 3.0 <= d.clip <= 4.0  # 30 % of the norms are ≤ C
    assert next_clip(1.0, 0.5, 0.5, 0.2) == 1.0


def test_events_are_client_level_with_every_hospital_each_round():
    raw = tiny_raw(defenses=[{"name": "client_dp", "noise_multiplier": 1.0, "clip_norm": 0.5}], attacks=[])
    raw["train"].update(rounds=4)
    cfg = parse_experiment(raw)
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    d = ClientDP(cfg.defenses[0].params)
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [d], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    (e,) = rec.dp_events
    assert (e.unit, e.party, e.steps, e.population, e.noise_multiplier) == ("client", "federation", 4, 3, 1.0)
    assert e.sample_rate == 1.0
    assert e.neighbouring == "replace_one"  # a public roster that always participates
    rep = account(rec.dp_events)
    assert rep.delta("client") == 1e-5  # min(1e-5, 1/(100·3))
    assert rec.tags["dp_weak_guarantee"] == "true" and "3 hospitals" in rec.tags["dp_weak_guarantee_reason"]
    # uniform weights: each participant counts 1/m, whatever its size
    assert all(list(r.weights.values()) == pytest.approx([1 / 3] * 3) for r in rec.rounds)


def test_partial_participation_is_refused_because_the_accountant_assumes_poisson_sampling(heart_data_dir):
    # fixed-size selection without replacement is not what the Poisson accountant models
    raw = tiny_raw(defenses=[{"name": "client_dp"}], attacks=[])
    raw["train"].update(sites_per_round=2)
    with pytest.raises(ConfigError, match="sites_per_round: got 2 of 3 hospitals"):
        parse_experiment(raw)
    # natural sites are only counted once loaded: refused when the defense is set up
    raw = tiny_raw(defenses=[{"name": "client_dp"}], attacks=[],
                   data={"name": "heart_disease", "partition": "natural", "data_dir": heart_data_dir})
    raw["train"].update(sites_per_round=2)
    with pytest.raises(ConfigError, match="sites_per_round: got 2 of 4 hospitals"):
        run_in_memory(parse_experiment(raw))


def test_zero_noise_aggregate_is_the_plain_mean_of_clipped_updates(tiny_cfg):
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "client_dp", "noise_multiplier": 0.0, "clip_norm": 0.05}], attacks=[]))
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [ClientDP(cfg.defenses[0].params)], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    for r in rec.rounds:
        ups = list(r.updates.values())
        assert all(float(u.norm()) <= 0.05 + 1e-6 for u in ups)
        torch.testing.assert_close(r.aggregate, torch.stack(ups).mean(0), rtol=1e-5, atol=1e-7)


def test_no_weak_tag_with_many_hospitals():
    d = ClientDP(ClientDP.Params())
    d.setup(_facts(200))
    assert d.tags() == {}


@pytest.mark.parametrize(
    "params",
    [{"clip_norm": "inf"}, {"adaptive": True, "noise_multiplier": 1.0, "clip_count_stddev": 0.3}, {"target_quantile": 1.5}],
)
def test_check_refuses_bad_settings(params):
    with pytest.raises(ConfigError, match="client_dp"):
        parse_experiment(tiny_raw(defenses=[{"name": "client_dp", **params}]))


def test_runner_reports_client_epsilon():
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "client_dp", "noise_multiplier": 1.0, "adaptive": True, "clip_count_stddev": 1.0}], attacks=[]))
    res = run_in_memory(cfg)
    assert res.metrics["privacy/epsilon"] == res.metrics["privacy/client/epsilon"] > 0
    assert res.tags["privacy_unit"] == "client"


def test_client_dp_composes_with_secure_aggregation(tiny_cfg):
    """Clipping on the client, noise on the server: under secure aggregation the same model (≤ 1e-6)."""
    from defenses.secure_aggregation import SecureAggregation

    seeds = Seeds(0)
    fed, _ = build_federation(tiny_cfg.data, seeds)
    initial = build_model(fed.info, tiny_cfg.model, seeds.torch("init"))
    p = ClientDP.Params(noise_multiplier=1.0, clip_norm=0.2, adaptive=True, clip_count_stddev=1.0)
    a = run_federated(fed, initial, [ClientDP(p)], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    b = run_federated(fed, initial, [ClientDP(p), SecureAggregation(SecureAggregation.Params())], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    torch.testing.assert_close(b.final_params, a.final_params, rtol=0, atol=1e-6)
    assert a.dp_events == b.dp_events
    assert all(r.updates_hidden for r in b.rounds)


def test_server_view_holds_the_clean_sum_because_the_server_adds_the_noise():
    """Under client_dp + secure aggregation the curious server still knows the un-noised sum:
    it adds the central noise itself. The view must not hide behind that noise."""
    from bench.views import server_view

    def record(z):
        cfg = parse_experiment(tiny_raw(defenses=[{"name": "client_dp", "noise_multiplier": z, "clip_norm": 0.5}, {"name": "secure_aggregation"}], attacks=[]))
        return run_in_memory(cfg).record, cfg

    (quiet, _), (noisy, cfg) = record(0.0), record(5.0)
    fed, _ = build_federation(cfg.data, Seeds(cfg.seed))
    v0 = server_view(quiet, fed, lambda: None).rounds[0]
    v1 = server_view(noisy, fed, lambda: None).rounds[0]
    assert v1.updates is None  # secure aggregation hides each hospital's update
    torch.testing.assert_close(v1.aggregate, v0.aggregate)  # round 1: same sum, noise not in it
    step = noisy.rounds[1].global_params - noisy.rounds[0].global_params
    assert float(torch.linalg.vector_norm(step - v1.aggregate)) > 0.1  # but the model moved by sum + noise
