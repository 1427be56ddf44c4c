"""Accounting from DP events: golden values of Opacus's accountants and the closed form."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from bench.accounting import account, default_delta, epsilon_of
from bench.types import DPEvent


def ev(sigma: float, q: float, steps: int, party: str = "h", unit: str = "record", population: int = 100) -> DPEvent:
    return DPEvent(kind="poisson_gaussian", unit=unit, party=party, noise_multiplier=sigma, sample_rate=q, steps=steps, population=population)


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
    rep = account([ev(1.0, 0.1, 100, "a", population=50), ev(1.0, 0.1, 400, "b", population=200)])
    (ea, da), (eb, db) = rep.per_party[("record", "a")], rep.per_party[("record", "b")]
    assert da == default_delta(50) == pytest.approx(1 / 500)
    assert db == pytest.approx(1 / 2000)
    assert eb > ea  # more steps and a smaller delta
    assert rep.epsilon() == eb
