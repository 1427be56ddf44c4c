"""Accounting from DP events: golden values of Opacus's accountants and the closed form."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from bench.accounting import account, default_delta, effective_noise_multiplier, epsilon_of, weak_delta_reason, with_neighbouring
from bench.types import DPEvent


def ev(sigma: float, q: float, steps: int, party: str = "h", unit: str = "record", population: int = 100,
       neighbouring: str = "add_remove") -> DPEvent:
    return DPEvent(kind="poisson_gaussian", unit=unit, party=party, noise_multiplier=sigma, sample_rate=q, steps=steps,
                   population=population, neighbouring=neighbouring)


def client_ev(sigma: float = 1.0, rounds: int = 20, hospitals: int = 4, neighbouring: str = "replace_one") -> DPEvent:
    return ev(sigma, 1.0, rounds, "federation", "client", hospitals, neighbouring)


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism with sensitivity 1 (Balle & Wang, ICML 2018, Thm. 8)."""

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))

    return brentq(lambda e: delta_of(e) - delta, 0.0, 100.0)


def test_rdp_golden_value_from_opacus_test_suite():
    # opacus/tests/accountants_test.py::test_rdp_accountant asserts 7.32911117143 for this setting
    eps = epsilon_of([ev(1.5, 0.04, 2250)], 1e-5, "rdp")
    assert eps == pytest.approx(7.32911117143, abs=1e-6)


def test_events_compose_like_one_long_run():
    split = epsilon_of([ev(1.5, 0.04, 1000), ev(1.5, 0.04, 1250)], 1e-5, "rdp")
    assert split == pytest.approx(epsilon_of([ev(1.5, 0.04, 2250)], 1e-5, "rdp"), rel=1e-9)


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (2.0, 4), (0.8, 1)])
def test_prv_matches_closed_form_of_composed_gaussian(sigma, steps):
    # q = 1: k Gaussian steps of multiplier σ are one Gaussian mechanism of multiplier σ/√k
    exact = analytic_gaussian_epsilon(sigma / math.sqrt(steps), 1e-5)
    prv = epsilon_of([ev(sigma, 1.0, steps)], 1e-5, "prv")
    rdp = epsilon_of([ev(sigma, 1.0, steps)], 1e-5, "rdp")
    assert prv == pytest.approx(exact, abs=0.05)
    assert rdp >= exact - 1e-6  # RDP is an upper bound, never below the exact value


def test_prv_is_tighter_than_rdp_on_subsampled_gaussian():
    rdp = epsilon_of([ev(1.5, 0.04, 2250)], 1e-5, "rdp")
    prv = epsilon_of([ev(1.5, 0.04, 2250)], 1e-5, "prv")
    assert prv < rdp
    assert prv == pytest.approx(rdp, rel=0.15)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_falls_as_sigma_rises(accountant):
    eps = [epsilon_of([ev(s, 0.1, 200)], 1e-5, accountant) for s in (0.7, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))


def test_zero_noise_is_infinite_epsilon():
    assert math.isinf(epsilon_of([ev(0.0, 0.1, 10)], 1e-5))


def test_account_groups_parties_and_uses_default_delta():
    rep = account([ev(1.0, 0.1, 100, "a", population=50), ev(1.0, 0.1, 400, "b", population=2_000_000)])
    (ea, da), (eb, db) = rep.per_party[("record", "a")], rep.per_party[("record", "b")]
    assert da == default_delta(50) == 1e-5
    assert db == pytest.approx(1 / (100 * 2_000_000))
    assert eb > ea  # more steps and a smaller delta
    assert rep.epsilon() == eb
    assert rep.population == {("record", "a"): 50, ("record", "b"): 2_000_000}
    assert rep.relations() == {"record": "add_remove"}


# ------------------------------------------------------------------ δ policy


@pytest.mark.parametrize("n,delta", [(4, 1e-5), (122, 1e-5), (1000, 1e-5), (10**6, 1e-8)])
def test_default_delta_is_min_of_1e5_and_one_hundredth_of_one_over_n(n, delta):
    assert default_delta(n) == pytest.approx(delta, rel=1e-12)
    assert default_delta(n) <= 1 / (100 * n)  # always far below 1/n, where releasing a record is allowed


def test_weak_guarantee_is_delta_at_or_above_one_over_n():
    events = [ev(1.0, 0.1, 10, "few", population=10), ev(1.0, 0.1, 10, "many", population=1000)]
    assert weak_delta_reason(account(events)) is None  # the default never is
    rep = account(events, delta=0.01)  # ≥ 1/1000: the larger hospital's guarantee allows releasing a record
    assert rep.weak_parties() == (("record", "many"),)
    reason = weak_delta_reason(rep)
    assert "'many' (n=1000, delta=0.01)" in reason and "few" not in reason and "\n" not in reason
    assert account(events, delta=1e-3).weak_parties() == (("record", "many"),)  # δ = 1/n exactly
    assert weak_delta_reason(account(events, delta=0.99e-3)) is None


# ------------------------------------------------------------------ neighbouring relation


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("sigma,steps", [(1.0, 20), (2.0, 5), (0.8, 1)])
def test_replace_one_is_add_remove_at_half_the_noise(accountant, sigma, steps):
    replace = epsilon_of([client_ev(sigma, steps)], 1e-5, accountant)
    add_remove_half = epsilon_of([client_ev(sigma / 2, steps, neighbouring="add_remove")], 1e-5, accountant)
    assert replace == pytest.approx(add_remove_half, rel=1e-9)
    assert replace > epsilon_of([client_ev(sigma, steps, neighbouring="add_remove")], 1e-5, accountant)


def test_replace_one_closed_form_at_q1():
    # q = 1, k steps of σ under replace-one: one Gaussian mechanism of sensitivity 2 and noise σ/√k
    exact = analytic_gaussian_epsilon(1.0 / (2 * math.sqrt(3)), 1e-5)
    assert epsilon_of([client_ev(1.0, 3)], 1e-5, "prv") == pytest.approx(exact, abs=0.05)


def test_client_dp_four_hospitals_replace_one_is_about_three_times_add_remove():
    # issue 11's measurement: σ = 1, 4 hospitals, 20 rounds, RDP: 62 vs 20 at δ = 0.025 ...
    at_old_delta = [epsilon_of([client_ev(neighbouring=r)], 0.025) for r in ("replace_one", "add_remove")]
    assert at_old_delta == pytest.approx([61.955, 20.384], abs=1e-3)
    # ... and 81 vs 30 at the new default δ = 1e-5 for 4 hospitals
    rep = {r: account([client_ev(neighbouring=r)]) for r in ("replace_one", "add_remove")}
    assert rep["replace_one"].delta() == rep["add_remove"].delta() == 1e-5
    eps = {r: x.epsilon("client") for r, x in rep.items()}
    assert eps == pytest.approx({"replace_one": 81.116, "add_remove": 30.127}, abs=1e-3)
    assert 2.5 < eps["replace_one"] / eps["add_remove"] < 3.5


def test_privacy_neighbouring_restates_every_event():
    events = (client_ev(), ev(1.0, 0.1, 10))
    assert with_neighbouring(events, "auto") == events
    restated = with_neighbouring(events, "add_remove")
    assert [e.neighbouring for e in restated] == ["add_remove", "add_remove"]
    assert events[0].neighbouring == "replace_one"  # inputs untouched
    auto, add = account(events), account(events, neighbouring="add_remove")
    assert auto.relations() == {"client": "replace_one", "record": "add_remove"}
    assert add.epsilon("client") < auto.epsilon("client")
    assert add.epsilon("record") == auto.epsilon("record")
    with pytest.raises(ValueError, match="neighbouring"):
        with_neighbouring(events, "swap")


def test_replace_one_is_refused_at_record_level_and_with_subsampling():
    assert effective_noise_multiplier(client_ev(1.0)) == 0.5
    with pytest.raises(ValueError, match="client"):
        epsilon_of([ev(1.0, 0.1, 10, neighbouring="replace_one")], 1e-5)
    with pytest.raises(ValueError, match="q = 1"):
        epsilon_of([ev(1.0, 0.5, 10, "federation", "client", 10, "replace_one")], 1e-5)
    with pytest.raises(ValueError, match="several neighbouring"):
        epsilon_of([client_ev(), client_ev(neighbouring="add_remove")], 1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_privacy_profile_equals_the_accountant_at_every_delta(accountant):
    """``epsilons_of`` (one Rényi curve converted at every δ) is ``epsilon_of`` at each δ."""
    from bench.accounting import epsilon_of, epsilons_of

    events = [DPEvent(kind="poisson_gaussian", unit="record", party="a", noise_multiplier=1.3, sample_rate=0.1, steps=120, population=200),
              DPEvent(kind="poisson_gaussian", unit="record", party="a", noise_multiplier=2.0, sample_rate=1.0, steps=3, population=200)]
    deltas = [1e-9, 1e-6, 1e-5, 1e-3] if accountant == "rdp" else [1e-6, 1e-5]
    assert epsilons_of(events, deltas, accountant) == pytest.approx([epsilon_of(events, d, accountant) for d in deltas], rel=1e-12)


def test_epsilon_of_is_computed_once_per_history_and_equals_the_accountant():
    """ε of one history is cached (the cell's ε, each adversary's and the audits' ask the same
    question many times); the cached value is Opacus's accountant's, for RDP and PRV."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    from bench.accounting import _epsilon_of_history, epsilon_of
    from bench.types import DPEvent

    ev = DPEvent(kind="poisson_gaussian", unit="record", party="a", noise_multiplier=0.7, sample_rate=0.05, steps=300,
                 population=320, source="dp_sgd", neighbouring="add_remove")
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        acc.history = [(0.7, 0.05, 300)]
        before = _epsilon_of_history.cache_info().hits
        assert epsilon_of([ev], 1e-5, name) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
        assert epsilon_of([ev], 1e-5, name) == epsilon_of([ev], 1e-5, name)
        assert _epsilon_of_history.cache_info().hits >= before + 2
