"""Distributed DP under secure aggregation: noise shares, accounting, dropouts (real and claimed),
and the ε that holds against each adversary."""

from __future__ import annotations

import math

import pytest
import torch

from bench.accounting import account, against_metrics, epsilon_of, events_against
from bench.config import parse_experiment
from bench.runner import make_defenses, run_in_memory
from bench.types import ConfigError, DPEvent
from defenses.base import ClientContext, FederationFacts, ServerContext
from defenses.client_dp import ClientDP
from defenses.distributed_dp import DistributedDP, effective_multiplier
from conftest import tiny_raw


def _facts(n: int = 4, rounds: int = 5) -> FederationFacts:
    names = tuple(f"h{i}" for i in range(n))
    return FederationFacts(site_names=names, site_sizes={s: 50 for s in names}, sites_per_round=n, rounds=rounds,
                           num_params=10, local_epochs=1, batch_size=8, accountant="rdp", delta=None)


def _run_rounds(d, n: int, rounds: int) -> None:
    """Drive the hooks as the engine does (no aggregator bound: every participant is in the sum)."""
    for r in range(1, rounds + 1):
        for i in range(n):
            d.transform_update(torch.zeros(3), ClientContext(f"h{i}", r, 50, torch.Generator().manual_seed(i)))
        d.transform_aggregate(torch.zeros(3), ServerContext(r, tuple(f"h{i}" for i in range(n)), torch.Generator()))


def test_each_share_is_clipped_update_plus_gaussian_of_variance_sigma2_C2_over_t():
    d = DistributedDP(DistributedDP.Params(noise_multiplier=2.0, clip_norm=0.5, min_contributors=3))
    d.setup(_facts(4))
    big = torch.full((200_000,), 10.0)
    g = torch.Generator().manual_seed(0)
    out = d.transform_update(big, ClientContext("h0", 1, 50, g))
    clipped = big * (0.5 / torch.linalg.vector_norm(big))
    noise = out - clipped
    assert float(noise.std()) == pytest.approx(2.0 * 0.5 / math.sqrt(3), rel=0.01)
    assert abs(float(noise.mean())) < 0.01
    assert torch.equal(big, torch.full((200_000,), 10.0))  # pure


def test_sum_of_all_shares_has_the_central_noise_sigma_C():
    """n hospitals with t = n: the noise in the sum is N(0, σ²C²) — client_dp's noise on the sum."""
    d = DistributedDP(DistributedDP.Params(noise_multiplier=1.5, clip_norm=1.0))
    d.setup(_facts(4))
    zero = torch.zeros(100_000)
    total = sum(d.transform_update(zero, ClientContext(f"h{i}", 1, 50, torch.Generator().manual_seed(i))) for i in range(4))
    assert float(total.std()) == pytest.approx(1.5, rel=0.01)


def test_epsilon_equals_central_client_dp_at_the_same_total_noise_without_dropouts():
    """The test the issue asks for: no dropouts, t = n: the same ε as client_dp at the same σ;
    and with t < n, the realised ε is client_dp's at the total noise σ·√(n/t)."""
    n, rounds, sigma = 4, 20, 1.2
    cdp = ClientDP(ClientDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    cdp.setup(_facts(n, rounds))
    _run_rounds(cdp, n, rounds)
    ddp = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    ddp.setup(_facts(n, rounds))
    _run_rounds(ddp, n, rounds)
    e_central = account(cdp.dp_events()).epsilon("client")
    e_dist = account(ddp.dp_events()).epsilon("client")
    assert math.isfinite(e_central) and e_dist == pytest.approx(e_central, rel=1e-9)

    t = 3
    ddp3 = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0, min_contributors=t))
    ddp3.setup(_facts(n, rounds))
    _run_rounds(ddp3, n, rounds)
    cdp_same_total = ClientDP(ClientDP.Params(noise_multiplier=sigma * math.sqrt(n / t), clip_norm=1.0))
    cdp_same_total.setup(_facts(n, rounds))
    _run_rounds(cdp_same_total, n, rounds)
    assert account(ddp3.dp_events()).epsilon("client") == pytest.approx(account(cdp_same_total.dp_events()).epsilon("client"), rel=1e-9)
    assert account(ddp3.dp_events()).epsilon("client") < e_dist  # more total noise, smaller ε


class _FakeSecAgg:
    """What secure_aggregation records per round (``rounds``: included inputs, threshold)."""

    replaces_aggregation = True
    hides_updates = True

    def __init__(self, included, threshold):
        self.rounds = [{"included": float(k), "threshold": float(threshold)} for k in included]


def test_dropouts_remove_shares_and_the_epsilon_grows_round_by_round():
    n, sigma = 4, 1.0
    d = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    d.setup(_facts(n, 4))
    d.see_defenses([d, _FakeSecAgg([4, 3, 4, 2], threshold=2)])
    _run_rounds(d, n, 4)
    events = {e.noise_multiplier: e.steps for e in d.dp_events()}
    got = sorted(events.items())
    assert [k for _, k in got] == [1, 1, 2]
    assert [z for z, _ in got] == pytest.approx([sigma * math.sqrt(2 / 4), sigma * math.sqrt(3 / 4), sigma])
    hist = [(z / 2, 1.0, k) for z, k in events.items()]  # replace-one: σ/2 per event
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = hist
    assert account(d.dp_events()).epsilon("client") == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    no_drop = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    no_drop.setup(_facts(n, 4))
    _run_rounds(no_drop, n, 4)
    assert account(d.dp_events()).epsilon("client") > account(no_drop.dp_events()).epsilon("client")


def test_claimed_dropouts_cut_the_sum_to_the_protocol_threshold_and_t_at_the_threshold_keeps_sigma():
    """A malicious server may claim dropouts down to secure aggregation's threshold t_s: shares
    of σ²C²/t with t ≤ t_s keep at least σ; with t = n > t_s the ε against it is larger."""
    n, rounds, sigma = 4, 10, 1.0
    central = ClientDP(ClientDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    central.setup(_facts(n, rounds))
    _run_rounds(central, n, rounds)
    eps_sigma = account(central.dp_events()).epsilon("client")

    honest_t = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0, min_contributors=3))
    naive = DistributedDP(DistributedDP.Params(noise_multiplier=sigma, clip_norm=1.0))
    for d in (honest_t, naive):
        d.setup(_facts(n, rounds))
        d.see_defenses([d, _FakeSecAgg([4] * rounds, threshold=3)])
        _run_rounds(d, n, rounds)
    eps = lambda d, adv: account(events_against([d], adv)).epsilon("client")  # noqa: E731
    assert eps(honest_t, "malicious_server") == pytest.approx(eps_sigma, rel=1e-9)  # σ survives claimed dropouts
    assert eps(honest_t, "outsider") < eps_sigma  # and with all four in, the realised noise is σ√(4/3)
    assert eps(naive, "outsider") == pytest.approx(eps_sigma, rel=1e-9)
    assert eps(naive, "malicious_server") > eps_sigma  # t = 4 > t_s = 3: claimed dropouts cost ε
    z_claimed = effective_multiplier(sigma, 3, 4)
    assert eps(naive, "malicious_server") == pytest.approx(
        epsilon_of([DPEvent("poisson_gaussian", "client", "federation", z_claimed, 1.0, rounds, n, neighbouring="replace_one")],
                   1e-5), rel=1e-9)
    # a peer knows its own share: k − 1 = 3 of t = 3 shares protect the others
    assert eps(honest_t, "peer") == pytest.approx(eps_sigma, rel=1e-9)


def test_without_secure_aggregation_the_server_sees_each_update_with_its_own_share_only():
    n, rounds = 4, 5
    d = DistributedDP(DistributedDP.Params(noise_multiplier=1.0, clip_norm=1.0))
    d.setup(_facts(n, rounds))
    d.see_defenses([d])
    _run_rounds(d, n, rounds)
    (ev,) = events_against([d], "server")
    assert ev.noise_multiplier == pytest.approx(0.5) and ev.steps == rounds  # σ/√t
    assert account(events_against([d], "server")).epsilon() > account(events_against([d], "outsider")).epsilon()


def test_central_client_dp_holds_nothing_against_the_server_that_draws_its_noise():
    n, rounds = 4, 5
    c = ClientDP(ClientDP.Params(noise_multiplier=1.0, clip_norm=1.0))
    c.setup(_facts(n, rounds))
    _run_rounds(c, n, rounds)
    assert events_against([c], "server") == () and events_against([c], "malicious_server") == ()
    assert events_against([c], "outsider") == c.dp_events() == events_against([c], "peer")


def test_bad_settings_are_refused_at_load_time():
    with pytest.raises(ConfigError, match="distributed_dp.min_contributors"):
        parse_experiment(tiny_raw(defenses=[{"name": "distributed_dp", "min_contributors": 5}]))
    with pytest.raises(ConfigError, match="distributed_dp"):
        parse_experiment(tiny_raw(defenses=[{"name": "distributed_dp", "clip_norm": "inf"}]))
    with pytest.raises(ConfigError, match="sites_per_round"):
        parse_experiment(tiny_raw(defenses=[{"name": "distributed_dp"}], train__sites_per_round=2))


def test_real_masked_input_dropouts_under_secure_aggregation_are_accounted_end_to_end():
    """The real protocol drops hospitals at masked_input (allowed for distributed_dp, refused for
    client_dp): the ε is accounted from the shares that reached each sum, and it is logged
    against each adversary."""
    defs = [{"name": "distributed_dp", "noise_multiplier": 1.0, "clip_norm": 1.0, "min_contributors": 2},
            {"name": "secure_aggregation", "dropout": {"round": "masked_input", "rate": 0.2}}]  # t_s = 2 of 3
    cfg = parse_experiment(tiny_raw(defenses=defs, train__rounds=6, seed=0))
    with pytest.raises(ConfigError, match="client_dp"):
        parse_experiment(tiny_raw(defenses=[{"name": "client_dp"}, defs[1]]))
    res = run_in_memory(cfg)
    secagg_inputs = res.metrics["defense/secure_aggregation/inputs_in_sum_per_round"]
    assert secagg_inputs < 3  # some hospitals did drop
    m = res.metrics
    assert m["privacy/against/outsider/client/epsilon"] == pytest.approx(m["privacy/epsilon"])
    assert m["privacy/against/server/client/epsilon"] == pytest.approx(m["privacy/epsilon"])
    assert m["privacy/epsilon_after_claimed_dropouts"] >= m["privacy/epsilon"] - 1e-9
    assert m["privacy/against/peer/client/epsilon"] > m["privacy/epsilon"]
    # the realised ε lies between all three shares every round (σ√(3/2)) and two (σ, the claimed worst case)
    all_in = epsilon_of([DPEvent("poisson_gaussian", "client", "federation", effective_multiplier(1.0, 3, 2), 1.0, 6, 3,
                                 neighbouring="replace_one")], 1e-5)
    assert all_in < m["privacy/epsilon"] < m["privacy/epsilon_after_claimed_dropouts"]
    assert m["privacy/epsilon_after_claimed_dropouts"] == pytest.approx(epsilon_of(
        [DPEvent("poisson_gaussian", "client", "federation", 1.0, 1.0, 6, 3, neighbouring="replace_one")], 1e-5))
    defenses = make_defenses(cfg)
    assert m["privacy/delta"] == pytest.approx(1e-5) and defenses[0].aggregator is defenses[1]


def test_against_metrics_keep_each_adversary_and_unit_explicit():
    n, rounds = 4, 3
    c = ClientDP(ClientDP.Params(noise_multiplier=1.0, clip_norm=1.0))
    c.setup(_facts(n, rounds))
    _run_rounds(c, n, rounds)
    metrics, tags = against_metrics([c], account(c.dp_events()))
    assert tags["privacy/against/server/client"] == "none" and tags["privacy/against/malicious_server/client"] == "none"
    assert metrics["privacy/against/outsider/client/epsilon"] == pytest.approx(account(c.dp_events()).epsilon())
    assert "privacy/epsilon_after_claimed_dropouts" not in metrics
