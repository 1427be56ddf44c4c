"""Oracles for the one-run audit statistics (``bench.metrics.audit``): closed forms checked
against independent numerical integration, exact null sizes of the certified tests, known
answers with every guess right, monotonicity, the Bonferroni correction, the f-DP vs Steinke
relationship, and the idealized DP-SGD ceiling against the accountant."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from bench.accounting import epsilon_of
from bench.metrics.audit import (
    audit_summary,
    ceiling,
    count_correct,
    default_guess_counts,
    dp_inverse_blow_up,
    fdp_epsilon_lower_bound,
    fdp_gdp_mu_lower_bound,
    fdp_rejects,
    gaussian_fit_epsilon,
    gaussian_fit_interval,
    gaussian_fit_mu,
    gaussian_hockey_stick,
    gaussian_pair_delta,
    gaussian_pair_epsilon,
    gdp_delta,
    gdp_epsilon,
    guesses,
    rule_audit,
    simulate_dpsgd_canaries,
    simulate_fedavg_canaries,
    steinke_epsilon_lower_bound,
)
from bench.types import DPEvent

DELTA = 1e-5


def _hockey(pdf1, pdf0, eps):
    """∫ (p − e^ε q)₊ by adaptive quadrature (independent of the code); the break points
    keep quad from stepping over a narrow region where p > e^ε q."""
    f = lambda x: max(0.0, pdf1(x) - math.exp(eps) * pdf0(x))  # noqa: E731
    return integrate.quad(f, -30, 30, points=np.linspace(-6, 6, 25), limit=500, epsabs=1e-14)[0]


def _numeric_delta(pdf1, pdf0, eps):
    """max over both orders of the hockey-stick divergence."""
    return max(_hockey(pdf1, pdf0, eps), _hockey(pdf0, pdf1, eps))


# --------------------------------------------------------------------------- GDP conversion


@pytest.mark.parametrize("mu", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("eps", [0.0, 1.0, 4.0])
def test_gdp_delta_matches_numerical_integration(mu, eps):
    want = _numeric_delta(stats.norm(mu, 1).pdf, stats.norm(0, 1).pdf, eps)
    assert gdp_delta(mu, eps) == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_gdp_epsilon_inverts_delta_and_has_known_values():
    assert gdp_delta(1.0, 0.0) == pytest.approx(2 * stats.norm.cdf(0.5) - 1)  # ε = 0: TV distance
    for mu in (0.2, 1.0, 2.5):
        eps = gdp_epsilon(mu, DELTA)
        assert gdp_delta(mu, eps) == pytest.approx(DELTA, rel=1e-8)
    assert gdp_epsilon(0.0, DELTA) == 0.0 and gdp_epsilon(1e-7, 0.5) == 0.0
    assert gdp_epsilon(0.5, DELTA) < gdp_epsilon(1.0, DELTA) < gdp_epsilon(2.0, DELTA)
    with pytest.raises(ValueError):
        gdp_epsilon(1.0, 0.0)


# --------------------------------------------------------------------------- Gaussian-fit estimate


def test_gaussian_pair_equal_variances_is_gdp():
    # N(2, 2²) vs N(0, 2²) is μ-GDP with μ = 1; a variance ratio of 1 + 1e-9 takes the
    # quadratic branch and must agree
    want = gdp_epsilon(1.0, DELTA)
    assert float(gaussian_pair_epsilon(2.0, 2.0, 0.0, 2.0, DELTA)) == pytest.approx(want, rel=1e-7)
    assert float(gaussian_pair_epsilon(2.0, 2.0 * (1 + 1e-9), 0.0, 2.0, DELTA)) == pytest.approx(want, rel=1e-5)
    assert float(gaussian_pair_epsilon(5.0, 1.0, 5.0, 1.0, DELTA)) == 0.0


@pytest.mark.parametrize("m1,s1,eps", [(1.0, 1.5, 1.0), (0.5, 0.7, 0.5), (0.0, 1.3, 0.2), (2.0, 0.8, 3.0), (4.0, 0.5, 6.0)])
def test_gaussian_pair_unequal_variances_matches_integration(m1, s1, eps):
    p1, p0 = stats.norm(m1, s1).pdf, stats.norm(0, 1).pdf
    for a, s, b, t, p, q in [(m1, s1, 0.0, 1.0, p1, p0), (0.0, 1.0, m1, s1, p0, p1)]:  # each order
        want = _hockey(p, q, eps)
        assert float(gaussian_hockey_stick(a, s, b, t, eps)) == pytest.approx(want, rel=1e-5, abs=1e-11)
    want = _numeric_delta(p1, p0, eps)
    assert float(gaussian_pair_delta(m1, s1, 0.0, 1.0, eps)) == pytest.approx(want, rel=1e-5, abs=1e-11)


def test_gaussian_fit_recovers_gdp_on_large_samples():
    rng = np.random.default_rng(0)
    inc = rng.random(200_000) < 0.5
    for mu in (0.5, 1.0, 2.0):
        scores = mu * inc + rng.normal(size=inc.size)
        assert gaussian_fit_epsilon(scores, inc, DELTA) == pytest.approx(gdp_epsilon(mu, DELTA), rel=0.02)
        assert gaussian_fit_mu(scores, inc) == pytest.approx(mu, rel=0.02)


def test_estimate_on_pure_noise_is_near_zero():
    rng = np.random.default_rng(1)
    inc = rng.random(200_000) < 0.5
    scores = rng.normal(size=inc.size)
    assert gaussian_fit_epsilon(scores, inc, DELTA) < 0.1
    assert gdp_epsilon(gaussian_fit_mu(scores, inc), DELTA) < 0.05
    # smaller samples: the fitted variances differ by chance, and unequal variances have an
    # unbounded privacy loss, so the estimate is biased upwards (documented), but small
    inc, scores = inc[:20_000], scores[:20_000]
    point = gaussian_fit_epsilon(scores, inc, DELTA)
    low, high = gaussian_fit_interval(scores, inc, DELTA, np.random.default_rng(2), resamples=100)
    assert 0.0 <= low <= point <= high < 0.6


def test_bootstrap_interval_covers_truth_and_is_reproducible():
    rng = np.random.default_rng(3)
    inc = rng.random(4000) < 0.5
    scores = 1.0 * inc + rng.normal(size=inc.size)
    a = gaussian_fit_interval(scores, inc, DELTA, np.random.default_rng(4))
    b = gaussian_fit_interval(scores, inc, DELTA, np.random.default_rng(4))
    assert a == b
    assert a[0] < gdp_epsilon(1.0, DELTA) < a[1]


# --------------------------------------------------------------------------- certified bounds


def _first_rejecting_v(reject_at_zero, r):
    return next((v for v in range(r + 1) if reject_at_zero(v)), r + 1)


@pytest.mark.parametrize("r", [20, 100])
@pytest.mark.parametrize("delta", [0.0, DELTA])
def test_false_rejection_of_perfect_privacy_is_at_most_p(r, delta):
    # Random scores (or a mechanism with ε = 0) make v ~ Bin(r, ½) exactly: each test's
    # chance of a positive bound is P[Bin(r, ½) >= first rejecting v], which must be <= p.
    m, p = 1000, 0.05
    tests = {
        "fdp": lambda v: fdp_rejects(lambda y: dp_inverse_blow_up(y, np.zeros(1), delta), m, r, v, p)[0],
        "steinke": lambda v: steinke_epsilon_lower_bound(m, r, v, delta, p) > 0,
        "gdp": lambda v: fdp_rejects(lambda y: np.atleast_1d(y), m, r, v, p)[0],  # μ = 0: ψ(y) = y
    }
    for name, rejects in tests.items():
        v_star = _first_rejecting_v(rejects, r)
        size = stats.binom.sf(v_star - 1, r, 0.5)
        assert size <= p, (name, v_star, size)
        assert stats.binom.sf(v_star - 2, r, 0.5) > p * 0.2  # and not absurdly conservative


def test_certified_bounds_are_zero_on_random_scores():
    m, p, seeds = 200, 0.05, 30
    positive = {"epsilon_lower_bound": 0, "epsilon_lower_bound_steinke": 0, "gdp_mu_lower_bound": 0}
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        out = audit_summary(rng.normal(size=m), rng.random(m) < 0.5, DELTA, p)
        for key in positive:
            positive[key] += out[key] > 0
    allowed = stats.binom.ppf(0.999, seeds, p)  # at most the expected false-rejection rate
    assert all(n <= allowed for n in positive.values()), positive


def test_gdp_bound_is_sound_on_a_gaussian_mechanism():
    # score = μ·included + N(0, 1) is exactly μ-GDP per canary: the certified μ may exceed
    # the true μ in at most a fraction p of runs
    mu, m, k, reps = 1.5, 500, 25, 60
    rng = np.random.default_rng(5)
    above = 0
    for _ in range(reps):
        inc = rng.random(m) < 0.5
        r, v = count_correct(guesses(mu * inc + rng.normal(size=m), k, k), inc)
        above += fdp_gdp_mu_lower_bound(m, r, v) > mu
    assert above <= stats.binom.ppf(0.999, reps, 0.05)


def test_all_guesses_right_give_the_max_certifiable():
    rng = np.random.default_rng(6)
    inc = rng.random(1000) < 0.5
    out = audit_summary(inc.astype(float), inc, DELTA, guess_counts=((50, 50),))
    assert out["correct"] == out["guesses"] == 100
    assert out["epsilon_lower_bound"] == out["max_certifiable_epsilon"] > 0
    assert out["epsilon_lower_bound_steinke"] == out["max_certifiable_epsilon_steinke"] > 0
    # pure DP, all r right: rejected iff q^r < p, so ε* = logit(p^(1/r)) for both analyses
    root = 0.05 ** (1 / 100)
    want = math.log(root / (1 - root))
    assert fdp_epsilon_lower_bound(1000, 100, 100, 0.0) == pytest.approx(want, abs=1e-3)
    assert steinke_epsilon_lower_bound(1000, 100, 100, 0.0) == pytest.approx(want, abs=1e-9)


def test_bounds_are_monotone_in_the_number_right():
    m, r = 1000, 100
    rows = [
        (fdp_epsilon_lower_bound(m, r, v, DELTA), steinke_epsilon_lower_bound(m, r, v, DELTA), fdp_gdp_mu_lower_bound(m, r, v))
        for v in range(50, r + 1, 5)
    ]
    arr = np.array(rows)
    assert (np.diff(arr, axis=0) >= -1e-9).all()
    assert (arr[0] == 0).all() and (arr[-1, :2] > 3).all() and arr[-1, 2] > 1
    assert (arr[-1, :2] > arr[-2, :2] + 0.3).all()  # the last wrong guess costs a lot


def test_fdp_versus_steinke():
    # What the measurements show (see the module docstring): for the (ε, δ) curve the f-DP
    # analysis equals Steinke et al. when every guess is right and δ = 0, is a hair looser
    # (≤ 0.03) with wrong guesses, and is clearly tighter when m·δ is not small against p
    # (Steinke's δ term is 2mδ); the μ-GDP family's ε is far above both.
    for r, v in [(100, 75), (100, 90), (500, 450), (20, 18)]:
        f, s = fdp_epsilon_lower_bound(1000, r, v, 0.0), steinke_epsilon_lower_bound(1000, r, v, 0.0)
        assert s - 0.03 <= f <= s + 1e-9
        mu = fdp_gdp_mu_lower_bound(1000, r, v)
        assert gdp_epsilon(mu, DELTA) > fdp_epsilon_lower_bound(1000, r, v, DELTA) + 0.15
    assert fdp_epsilon_lower_bound(10, 10, 10, 0.0) == pytest.approx(steinke_epsilon_lower_bound(10, 10, 10, 0.0), abs=1e-3)
    assert fdp_epsilon_lower_bound(5000, 500, 500, DELTA) > steinke_epsilon_lower_bound(5000, 500, 500, DELTA) + 0.1


def test_bonferroni_never_raises_a_bound():
    rng = np.random.default_rng(7)
    scores, inc = simulate_dpsgd_canaries(1000, 200, 0.1, 1.2, rng)
    rule = ((50, 50),)
    one = audit_summary(scores, inc, DELTA, guess_counts=rule)
    three = audit_summary(scores, inc, DELTA, guess_counts=rule * 3)  # same rule, level p/3
    assert three["level"] == pytest.approx(0.05 / 3) and one["level"] == 0.05
    for key in ("epsilon_lower_bound", "epsilon_lower_bound_steinke", "gdp_mu_lower_bound", "max_certifiable_epsilon"):
        assert three[key] < one[key], key
    assert three["epsilon_estimate"] == one["epsilon_estimate"]  # the estimate is not a test


def test_rule_audit_known_answer_and_bad_input():
    scores = np.array([5.0, 4, 3, 2, 1, 0])
    assert list(guesses(scores, 2, 1)) == [1, 1, 0, 0, 0, -1]
    out = rule_audit(scores, np.array([1, 1, 0, 1, 0, 0], bool), 2, 1, delta=0.0)
    # three right of three happens with probability 1/8 > 0.05 at ε = 0: no evidence
    assert (out["guesses"], out["correct"], out["epsilon_lower_bound"], out["epsilon_lower_bound_steinke"]) == (3, 3, 0, 0)
    with pytest.raises(ValueError):
        guesses(scores, 4, 3)
    with pytest.raises(ValueError):
        fdp_epsilon_lower_bound(10, 5, 6, DELTA)
    with pytest.raises(ValueError):
        audit_summary(scores, np.ones(6, bool), DELTA)  # no excluded canary
    with pytest.raises(ValueError):
        audit_summary(scores, np.array([1, 0, 1, 0, 1, 0], bool), DELTA, p=1.5)
    with pytest.raises(ValueError):
        audit_summary(scores[:5], np.array([1, 0, 1, 0, 1, 0], bool), DELTA)


def test_default_guess_counts_are_symmetric_fractions():
    assert default_guess_counts(1000) == ((25, 25), (50, 50), (100, 100))
    assert all(k >= 1 and 2 * k <= 10 for k, _ in default_guess_counts(10))


# --------------------------------------------------------------------------- idealized mechanisms


def test_simulations_have_the_stated_moments():
    rng = np.random.default_rng(8)
    s, inc = simulate_fedavg_canaries(40_000, 50, 2.0, rng)
    assert s[inc].mean() - s[~inc].mean() == pytest.approx(50, abs=0.2)
    assert s[~inc].std() == pytest.approx(2.0 * math.sqrt(50), rel=0.02)
    s, inc = simulate_dpsgd_canaries(40_000, 200, 0.1, 1.0, rng)
    assert s[inc].mean() - s[~inc].mean() == pytest.approx(20, abs=0.2)
    assert s[inc].var() == pytest.approx(200 * 0.1 * 0.9 + 200, rel=0.03)  # Binomial + Gaussian


# σ from opacus.accountants.utils.get_noise_multiplier(target_epsilon=ε, target_delta=1e-5,
# sample_rate=0.1, steps=200, accountant="rdp") for ε = 1, 2, 4, 8
SIGMAS = (5.9375, 3.2421875, 1.884765625, 1.1956787109375)


def test_dpsgd_ceiling_is_below_the_accountant_and_grows_with_epsilon():
    certified = []
    for sigma in SIGMAS:
        event = DPEvent("poisson_gaussian", "record", "h", sigma, 0.1, 200, 1000)
        eps = epsilon_of([event], DELTA)
        sim = functools.partial(simulate_dpsgd_canaries, 1000, 200, 0.1, sigma)
        c = ceiling(sim, DELTA, np.random.default_rng(9), reps=5)
        for key in ("epsilon_lower_bound", "epsilon_lower_bound_steinke"):
            assert c[key] < eps, (sigma, key, c[key], eps)  # no false alarm
        certified.append(c["epsilon_lower_bound"])
    assert np.all(np.diff(certified) > 0) and certified[0] > 0


# --------------------------------------------------------------------------- every step observed


def test_step_statistic_weighs_a_noiseless_step_by_its_evidence():
    """Known answer: half the steps are released without noise. The summed statistic averages
    them with the noisy ones; the per-step likelihood ratio (each step's noise scale from the
    data) ranks every canary that was present in a noiseless step above every excluded one."""
    from bench.metrics.audit import step_llr_scores

    rng = np.random.default_rng(0)
    m, steps, q, sigma = 2000, 40, 0.1, 1.0
    included = rng.random(m) < 0.5
    present = (rng.random((steps, m)) < q) & included
    noise = rng.normal(0, sigma, (steps, m))
    noise[::2] = 0.0  # every other step without noise
    u = present + noise
    scores = step_llr_scores(u, q)
    seen_clean = present[::2].any(axis=0)
    assert scores[seen_clean].min() > scores[~included].max()
    summed = u.sum(axis=0)
    assert summed[seen_clean].min() < summed[~included].max()  # the sum cannot tell them apart


def test_step_statistic_scores_a_noiseless_parameter_at_its_own_scale():
    """Canaries on coordinates released without noise (a per-parameter bug) are ranked first;
    on an honest mechanism the per-canary scale never applies (the statistic equals the
    per-step one)."""
    from bench.metrics.audit import step_llr_scores

    rng = np.random.default_rng(1)
    m, steps, q = 3000, 200, 0.13
    included = rng.random(m) < 0.5
    present = (rng.random((steps, m)) < q) & included
    noise = rng.normal(0, 1.0, (steps, m))
    honest = step_llr_scores(present + noise, q)
    scale = 1.4826 * np.median(np.abs(present + noise - np.median(present + noise, axis=1, keepdims=True)), axis=1, keepdims=True)
    by_step = np.logaddexp(np.log1p(-q), np.log(q) + (present + noise - 0.5) / scale**2).sum(axis=0)
    assert np.allclose(honest, by_step)
    noise[:, :100] = 0.0  # 100 canaries on parameters without noise
    scores = step_llr_scores(present + noise, q)
    top = np.argsort(-scores)[: int(included[:100].sum())]
    assert set(top) == set(np.flatnonzero(included[:100]))


def test_detectable_factor_finds_the_weakening_the_audit_flags():
    """Known answer with a flag that fires exactly when σ ≤ 1/3 of the claim: the smallest
    factor in the grid is 3; a flag that never fires gives inf (vacuous)."""
    from bench.metrics.audit import detectable_factor

    sim = lambda k, rng: (np.array([1.0 / k]), np.array([True]))  # noqa: E731  (σ of the weakened mechanism)
    assert detectable_factor(sim, lambda s, i: s[0] <= 1 / 3 + 1e-12, np.random.default_rng(0)) == 3.0
    assert detectable_factor(sim, lambda s, i: False, np.random.default_rng(0)) == float("inf")


def test_black_box_profile_is_the_weakest_party_at_every_delta_from_one_curve_each():
    """A black-box audit's claimed profile (several hospitals: the weakest at each δ) from one Rényi
    curve per hospital equals the accountant asked at every δ (what it did before, 23× the work)."""
    import types

    from bench.auditing import PROFILE_DELTAS, accountant_epsilon, claimed_profile
    from bench.types import DPEvent

    events = [DPEvent(kind="poisson_gaussian", unit="record", party=p, noise_multiplier=s, sample_rate=q, steps=k,
                      population=n, source="dp_sgd", neighbouring="add_remove")
              for p, s, q, k, n in (("a", 1.1, 0.05, 200, 300), ("b", 0.8, 0.1, 120, 150), ("c", 2.0, 0.02, 400, 900))]
    out = types.SimpleNamespace(party=None, unit="record")
    eps, deltas = claimed_profile(out, events, "rdp")
    expected = [accountant_epsilon(out, events, "rdp", d) for d in PROFILE_DELTAS]
    assert list(deltas) == list(PROFILE_DELTAS)
    np.testing.assert_allclose(eps, expected, rtol=1e-12)
