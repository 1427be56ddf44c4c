"""σ for a target ε: the replayed search equals Opacus's ``get_noise_multiplier`` (issue 26)."""

from __future__ import annotations

import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from bench.accounting import EPSILON_TOLERANCE, epsilon_curve, noise_multiplier_for
from defenses.dp_sgd import calibrate_noise


def opacus_sigma(eps: float, delta: float, q: float, steps: int, accountant: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q, steps=steps, accountant=accountant))


def opacus_epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def check(eps: float, delta: float, q: float, steps: int, accountant: str) -> None:
    noise_multiplier_for.cache_clear()
    mine = noise_multiplier_for(eps, delta, q, steps, accountant)
    assert mine == opacus_sigma(eps, delta, q, steps, accountant)  # the same search's answer, not only close to it
    reached = opacus_epsilon(mine, q, steps, delta, accountant)
    assert eps - EPSILON_TOLERANCE <= reached <= eps


# heart-disease hospitals: q = 32/n for n in 60..300, 3–5 rounds of one local epoch; a large one; full batch
SETTINGS = [(0.2, 75, 1e-5), (0.05, 60, 1e-5), (0.01, 3000, 1e-6), (1.0, 10, 1e-5)]


@pytest.mark.parametrize("q,steps,delta", [SETTINGS[1], SETTINGS[3]])
@pytest.mark.parametrize("eps", [1.0, 8.0])
def test_rdp_sigma_equals_opacus(eps, q, steps, delta):
    check(eps, delta, q, steps, "rdp")


@pytest.mark.slow
@pytest.mark.parametrize("q,steps,delta", SETTINGS)
@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
def test_rdp_sigma_equals_opacus_grid(eps, q, steps, delta):
    check(eps, delta, q, steps, "rdp")


@pytest.mark.parametrize("eps", [1.0, 8.0])
def test_prv_sigma_equals_opacus_full_batch(eps):
    check(eps, 1e-5, 1.0, 10, "prv")


@pytest.mark.slow
@pytest.mark.parametrize("q,steps,delta", SETTINGS[:3])
@pytest.mark.parametrize("eps", [0.5, 1.0, 4.0, 8.0])
def test_prv_sigma_equals_opacus(eps, q, steps, delta):
    check(eps, delta, q, steps, "prv")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_curve_is_the_accountants_epsilon(accountant):
    """ε(σ) walked over few orders (and PRV's domain sized with it) equals the accountant's, at every σ."""
    sigmas = [0.3, 0.55, 0.8, 1.3, 2.5, 7.0, 40.0, 900.0] if accountant == "rdp" else [0.6, 1.3, 7.0]
    for q, steps, delta in SETTINGS[:2] + [(0.5, 6, 1e-7)]:
        curve = epsilon_curve(q, steps, delta, accountant)
        for s in sigmas + sigmas[::-1]:  # a walk up and back down the σ's, from each previous best order
            assert curve(s) == opacus_epsilon(s, q, steps, delta, accountant), (q, steps, delta, s)


def test_curve_is_non_increasing_in_sigma():
    curve = epsilon_curve(0.05, 60, 1e-5, "rdp")
    values = [curve(0.5 + 0.01 * i) for i in range(60)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_unreachable_target_fails_like_opacus():
    with pytest.raises(ValueError, match="privacy budget is too low"):
        opacus_sigma(1e-6, 1e-5, 1.0, 1000, "rdp")
    with pytest.raises(ValueError, match="privacy budget is too low"):
        noise_multiplier_for(1e-6, 1e-5, 1.0, 1000, "rdp")


def test_cached_per_setting_and_used_by_dp_sgd():
    noise_multiplier_for.cache_clear()
    first = calibrate_noise(8.0, 1e-5, 0.1, 40, "rdp")
    again = calibrate_noise(8, 1e-5, 0.1, 40, "rdp")  # the same setting, however the numbers are typed
    info = noise_multiplier_for.cache_info()
    assert first == again and info.misses == 1 and info.hits == 1
    assert calibrate_noise(8.0, 1e-5, 0.1, 41, "rdp") != first  # another step count is another entry
