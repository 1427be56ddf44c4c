"""Statistics of one-run privacy audits (pure functions; numpy and scipy only).

An audit inserts ``m`` canaries, each included independently with probability ½, runs the
mechanism once, and scores every canary (higher = more likely included). From the scores
and the true inclusion this module derives:

* **certified ε lower bounds** at a stated δ and confidence ``1 − p``. The auditor guesses
  "in" for the ``k_pos`` highest scores, "out" for the ``k_neg`` lowest and abstains on the
  rest (:func:`guesses`); ``v`` of the ``r = k_pos + k_neg`` guesses are right.

  - :func:`steinke_epsilon_lower_bound` — Steinke, Nasr, Jagielski (NeurIPS 2023),
    "Privacy Auditing with One (1) Training Run", Theorem 3.1 with the δ term of their
    Proposition 5.7.
  - :func:`fdp_epsilon_lower_bound` and :func:`fdp_gdp_mu_lower_bound` — Mahloujifar,
    Melis, Chaudhuri (ICML 2025), "Auditing f-Differential Privacy in One Run"
    (arXiv 2410.22235): the probability of ≥ v right guesses under *any* f-DP mechanism
    is bounded by a recursion over the number of right guesses (:func:`fdp_rejects`).
    For the (ε, δ)-DP trade-off curve the result is a certified (ε, δ) lower bound,
    directly comparable with an accountant's ε at δ: this is the **headline** bound of
    :func:`audit_summary`, declared before any data is seen. For the μ-GDP family the
    result is a μ that the mechanism is certified *not* to satisfy; its ε at δ
    (:func:`gdp_epsilon`) is what a μ-GDP mechanism would give, i.e. a lower bound on the
    accountant's ε only under the assumption that the mechanism's trade-off curve is
    Gaussian-shaped (true of the Gaussian mechanism, approximately of DP-SGD).

  Measured relationship on the same (m, r, v): with the (ε, δ) curve the f-DP analysis
  equals Steinke et al.'s when every guess is right and δ = 0, is slightly looser (by at
  most ~0.02 in ε) when some guesses are wrong, and tighter when 2mδ is not small against p
  (m = 5000, δ = 1e-5, all right: +0.14). The paper's gains come from the GDP family: its
  ε is 30–45 % above the (ε, δ) bound on idealized DP-SGD runs.

* an **ε estimate** (not a bound): Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar
  (ICLR 2024), "One-shot empirical privacy estimation for federated learning" — fit one
  normal to the included canaries' scores and one to the excluded ones and report the ε at
  δ of that pair of Gaussians (:func:`gaussian_fit_epsilon`), with a bootstrap interval.

* the **maximum certifiable ε**: the same analysis with every guess right; an audit can
  never certify more than this, whatever the mechanism.

* the **ceiling** (:func:`ceiling`): the same analysis on scores from an idealized
  simulation of the mechanism (:func:`simulate_dpsgd_canaries`,
  :func:`simulate_fedavg_canaries`), i.e. what a perfect auditor of this kind could get.

Choice of defaults (measured with :func:`ceiling` on the idealized white-box DP-SGD
simulation, q = 0.1, 200 steps, σ such that Opacus' RDP accountant gives ε ∈ {1, 2, 4, 8}
at δ = 1e-5, m ∈ {1000, 5000}, p = 0.05, medians of 20 runs):

* symmetric guesses (as many "out" as "in") beat positive-only ones: the best symmetric
  rule certifies more than the best positive-only rule in all 8 settings (by 0.03–0.6);
* the best single fraction of canaries guessed is 20 % (ε = 1, m = 1000), 10 % (ε ∈ {2, 4},
  m = 1000) and 5 % otherwise; one fixed fraction can lose much of the bound (at ε = 1,
  m = 1000: 0.10 with 10 %, 0.04 with 5 %, against 0.16 for the default below);
* trying 5 %, 10 % and 20 % (:data:`DEFAULT_GUESS_FRACTIONS`) at level p/3 each stays
  within 10 % of the best single pre-declared fraction (5 % or 10 %) in every setting, and
  beats trying 2 %, 5 %, 10 %, 20 %, 40 % at p/5 in 7 of the 8.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats
from scipy.special import log_ndtr, ndtr, ndtri

#: Fractions of the canaries guessed (half "in", half "out") that :func:`audit_summary`
#: tries by default; the best one is kept, each tried at level p / len (Bonferroni).
DEFAULT_GUESS_FRACTIONS = (0.05, 0.1, 0.2)
DEFAULT_RESAMPLES = 200  # bootstrap resamples of the Gaussian-fit estimate
_GRID = 64  # parameter values tested per pass of the vectorised search
_PASSES = 3  # passes: resolution ≈ range / 63³
_SEARCH_START = 16.0  # first upper end of the search for ε or μ (doubled while all rejected)
_SEARCH_MAX = 1024.0  # beyond this the bound is reported as this value


# --------------------------------------------------------------------------- guesses


def guesses(scores: np.ndarray, k_pos: int, k_neg: int) -> np.ndarray:
    """The auditor's guesses for each canary.

    Args:
        scores: one score per canary, higher = more likely included.
        k_pos: number of "included" guesses, given to the highest scores.
        k_neg: number of "excluded" guesses, given to the lowest scores.

    Returns:
        An int array: +1 for the ``k_pos`` highest scores, −1 for the ``k_neg`` lowest,
        0 (abstain) otherwise. Ties are broken by position (stable sort).

    Raises:
        ValueError: if the counts are negative or exceed the number of canaries.
    """
    n = len(scores)
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > n:
        raise ValueError(f"one-run audit: need k_pos, k_neg >= 0 and k_pos + k_neg <= {n} canaries; got {k_pos}, {k_neg}")
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    guess = np.zeros(n, np.int64)
    guess[order[:k_pos]] = 1
    if k_neg:
        guess[order[n - k_neg :]] = -1
    return guess


def count_correct(guess: np.ndarray, included: np.ndarray) -> tuple[int, int]:
    """``(r, v)``: the number of guesses made and of right ones."""
    included = np.asarray(included, bool)
    r = int((guess != 0).sum())
    v = int(((guess == 1) & included).sum() + ((guess == -1) & ~included).sum())
    return r, v


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(f"one-run audit: need 0 <= v <= r <= m and m >= 1; got m={m}, r={r}, v={v}")


def _check_level(p: float, delta: float) -> None:
    if not 0 < p < 1:
        raise ValueError(f"one-run audit: the level p must be in (0, 1); got {p}")
    if not 0 <= delta < 1:
        raise ValueError(f"one-run audit: δ must be in [0, 1); got {delta}")


# --------------------------------------------------------------------------- Steinke et al.


def steinke_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ≥ v right guesses out of r under the null "(ε, δ)-DP" (Steinke et al. 2023).

    ``q = e^ε/(1+e^ε)`` is the accuracy of ε-DP randomized response; the δ term is
    ``2·m·δ·max_{1≤i≤v} P[v > Bin(r, q) ≥ v − i] / i`` (their Proposition 5.7).

    Args:
        m: number of canaries.
        r: number of guesses.
        v: number of right guesses.
        epsilon: the ε of the null hypothesis.
        delta: the δ of the null hypothesis.

    Returns:
        The p-value, capped at 1.

    Raises:
        ValueError: unless ``0 <= v <= r <= m``.
    """
    _check_counts(m, r, v)
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if v == 0 or delta == 0:
        return min(beta, 1.0)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # pmf(v-1), pmf(v-2), ..., pmf(0)
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + 2 * m * delta * alpha, 1.0)


def steinke_epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = 0.05) -> float:
    """Largest ε such that (ε, δ)-DP is rejected at level ``p`` by r guesses with v right.

    Binary search on the p-value (increasing in ε); 0 when even ε = 0 cannot be rejected.

    Returns:
        The certified ε lower bound (holds with probability ≥ 1 − p).
    """
    _check_level(p, delta)
    if steinke_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while steinke_p_value(m, r, v, hi, delta) < p:
        lo, hi = hi, hi * 2
        if hi > _SEARCH_MAX:
            return float(lo)
    for _ in range(60):
        mid = (lo + hi) / 2
        if steinke_p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return float(lo)


# --------------------------------------------------------------------------- f-DP (Mahloujifar et al.)


def gdp_inverse_blow_up(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``ψ(y) = f(1 − y)`` for μ-GDP, ``f(α) = Φ(Φ⁻¹(1 − α) − μ)``: ``Φ(Φ⁻¹(y) − μ)``.

    ψ(y) is the least probability of guessing a canary's bit wrongly that an f-DP
    mechanism allows when the probability of guessing it right is y.
    """
    return ndtr(ndtri(y) - mu)


def dp_inverse_blow_up(y: np.ndarray, epsilon: np.ndarray, delta: float) -> np.ndarray:
    """``ψ(y) = f(1 − y)`` for (ε, δ)-DP, ``f(α) = max(0, 1 − δ − e^ε α, e^{−ε}(1 − δ − α))``:
    ``max(0, e^{−ε}(y − δ), 1 − δ − e^ε (1 − y))``."""
    return np.maximum(0.0, np.maximum(np.exp(-epsilon) * (y - delta), 1.0 - delta - np.exp(epsilon) * (1.0 - y)))


def fdp_rejects(psi: Callable[[np.ndarray], np.ndarray], m: int, r: int, v: int, p: float) -> np.ndarray:
    """Whether ≥ v right guesses out of r rejects f-DP at level ``p`` (Mahloujifar et al.).

    ``psi`` maps an array of "right" probabilities to the least "wrong" probabilities, one
    column per hypothesis (e.g. ``lambda y: gdp_inverse_blow_up(y, mus)``), so a whole grid
    of hypotheses is tested at once.

    The recursion is the paper's (for an adversary that may abstain; cf.
    ``FDPAnalysisNode`` in facebookresearch/PrivacyGuard). Sketch of why it is a bound: let
    ``P_t = P[exactly t right]`` (an adversary may as well always make its r guesses),
    ``R_j = Σ_{t≥j} t·P_t / m`` and ``H_j = Σ_{t≥j} (r − t)·P_t / m``. For canary i, "guess i
    right and ≥ j others right" and "guess i wrong and ≥ j others right" are
    post-processings of the mechanism's output for fixed other canaries, so f-DP (with ψ
    convex and Jensen over canaries) gives ``H_j ≥ ψ(R_{j+1})``; and ``R_0 + H_0 = r/m``.
    Suppose ``P[≥ v right] ≥ p``. Start from the tail cheapest for the adversary, all of
    mass p at exactly v right (``R_v = p·v/m``, ``H_v = p·(r−v)/m``), and walk down j adding
    at each level only the mass that ``H_j ≥ ψ(R_{j+1})`` forces:
    ``h_j = max(h_{j+1}, ψ(r_{j+1}))``, ``r_j = r_{j+1} + j/(r−j)·(h_j − h_{j+1})``. If even
    this needs ``r_0 + h_0 > r/m`` (total probability above 1), no f-DP mechanism makes
    ≥ v right guesses with probability ≥ p: reject at level p. (On small cases the
    recursion's total mass equals the minimum of the convex program over all P_t with
    every constraint ``H_j ≥ ψ(R_{j+1})``, checked numerically.)

    Args:
        psi: the inverse blow-up ``ψ(y) = f(1 − y)`` of the (symmetric) trade-off f, vectorised.
        m: number of canaries.
        r: number of guesses.
        v: number of right guesses.
        p: the level.

    Returns:
        A bool array, one entry per hypothesis column of ``psi``.
    """
    _check_counts(m, r, v)
    budget = r / m
    shape = np.shape(psi(np.float64(0.5)))  # one entry per hypothesis
    rr = np.full(shape, p * v / m)
    hh = np.full(shape, p * (r - v) / m)
    for j in range(v - 1, -1, -1):
        h_new = np.maximum(hh, psi(np.minimum(rr, 1.0)))
        rr = rr + (j / (r - j)) * (h_new - hh)
        hh = h_new
        if np.all(rr + hh > budget):  # r_j, h_j only grow as j falls: every hypothesis is rejected
            break
    return rr + hh > budget


def _end_of_rejections(rejects: Callable[[np.ndarray], np.ndarray], lo: float = 0.0) -> float:
    """The largest parameter θ such that every θ' ≤ θ is rejected (searched on grids).

    Reporting the end of the *initial run* of rejections (rather than the largest rejected
    value) keeps the bound valid even if the sufficient test above is not monotone in θ.
    Returns 0 when ``lo`` itself is not rejected; at most :data:`_SEARCH_MAX`.
    """
    if not rejects(np.array([lo]))[0]:
        return 0.0
    hi = _SEARCH_START
    while True:
        grid = np.linspace(lo, hi, _GRID)
        ok = rejects(grid)
        if not ok.all():
            break
        if hi >= _SEARCH_MAX:
            return float(hi)
        lo, hi = hi, min(2 * hi, _SEARCH_MAX)
    for _ in range(_PASSES):
        first = int(np.argmin(ok))  # first hypothesis kept; grid[0] is always rejected
        lo, hi = float(grid[first - 1]), float(grid[first])
        grid = np.linspace(lo, hi, _GRID)
        ok = rejects(grid)
        ok[0] = True  # rejected at the previous pass
        if ok.all():
            return float(grid[-2])
    return float(grid[int(np.argmin(ok)) - 1])


def fdp_epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = 0.05) -> float:
    """Certified (ε, δ) lower bound of the f-DP one-run analysis for the (ε, δ)-DP curve.

    The largest ε such that (ε', δ)-DP is rejected at level ``p`` for every ε' ≤ ε by r
    guesses with v right (:func:`fdp_rejects`). Directly comparable with an accountant's ε
    at the same δ.

    Returns:
        The bound (0 when (0, δ)-DP cannot be rejected).
    """
    _check_counts(m, r, v)
    _check_level(p, delta)
    return _end_of_rejections(lambda eps: fdp_rejects(lambda y: dp_inverse_blow_up(y, eps, delta), m, r, v, p))


def fdp_gdp_mu_lower_bound(m: int, r: int, v: int, p: float = 0.05) -> float:
    """Largest μ such that μ'-GDP is rejected at level ``p`` for every μ' ≤ μ (f-DP analysis).

    Returns:
        The μ (0 when 0-GDP, i.e. perfect privacy, cannot be rejected). Its ε at δ is
        :func:`gdp_epsilon`.
    """
    _check_counts(m, r, v)
    _check_level(p, 0.0)
    return _end_of_rejections(lambda mu: fdp_rejects(lambda y: gdp_inverse_blow_up(y, mu), m, r, v, p))


# --------------------------------------------------------------------------- Gaussian DP


def gdp_delta(mu: float, eps: float) -> float:
    """δ(ε) of μ-GDP: ``Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)`` (Dong, Roth, Su 2022, Cor. 2.13).

    Raises:
        ValueError: if μ < 0.
    """
    if mu < 0:
        raise ValueError(f"gdp_delta: μ must be >= 0; got {mu}")
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    # e^ε Φ(·) in log space: e^ε overflows long before the product does
    d = float(ndtr(-eps / mu + mu / 2) - np.exp(eps + log_ndtr(-eps / mu - mu / 2)))
    return max(d, 0.0)


def gdp_epsilon(mu: float, delta: float) -> float:
    """ε at δ of μ-GDP (inverse of :func:`gdp_delta` in ε, by Brent's method).

    Returns:
        ε ≥ 0 (0 when δ(0) ≤ δ; ∞ for μ = ∞).

    Raises:
        ValueError: if μ < 0 or δ is not in (0, 1).
    """
    if mu < 0 or not 0 < delta < 1:
        raise ValueError(f"gdp_epsilon: need μ >= 0 and 0 < δ < 1; got μ={mu}, δ={delta}")
    if math.isinf(mu):
        return math.inf
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gdp_delta(mu, hi) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12))


# --------------------------------------------------------------------------- Gaussian-fit estimate


def _mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Standard normal mass of [lo, hi], accurate in either tail."""
    upper = lo > 0
    return np.where(upper, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))


def gaussian_hockey_stick(a, s, b, t, eps) -> np.ndarray:
    """``sup_S P(S) − e^ε Q(S)`` for P = N(a, s²), Q = N(b, t²) (vectorised).

    ``log p/q`` is the quadratic ``A x² + B x + C``: the set where it exceeds ε is a half-line
    (A = 0), the outside of an interval (A > 0) or an interval (A < 0).
    """
    a, s, b, t, eps = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (a, s, b, t, eps)))
    A = 0.5 / t**2 - 0.5 / s**2
    B = a / s**2 - b / t**2
    C = 0.5 * b**2 / t**2 - 0.5 * a**2 / s**2 + np.log(t / s) - eps
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # linear case (equal variances): log p/q > ε on a half-line beyond x0
        x0 = -C / B
        right = B > 0
        lin_p = np.where(right, ndtr(-(x0 - a) / s), ndtr((x0 - a) / s))
        lin_q = np.where(right, ndtr(-(x0 - b) / t), ndtr((x0 - b) / t))
        lin = np.where(B == 0, 0.0, lin_p - np.exp(eps) * lin_q)
        # quadratic case: numerically stable roots (one may be huge when A is tiny)
        D = B**2 - 4 * A * C
        sq = np.sqrt(np.maximum(D, 0.0))
        q = -0.5 * (B + np.where(B >= 0, sq, -sq))
        r1, r2 = q / A, C / q
        x1, x2 = np.minimum(r1, r2), np.maximum(r1, r2)
        outside_p = ndtr((x1 - a) / s) + ndtr(-(x2 - a) / s)
        outside_q = ndtr((x1 - b) / t) + ndtr(-(x2 - b) / t)
        inside_p = _mass((x1 - a) / s, (x2 - a) / s)
        inside_q = _mass((x1 - b) / t, (x2 - b) / t)
        quad = np.where(A > 0, outside_p - np.exp(eps) * outside_q, inside_p - np.exp(eps) * inside_q)
        quad = np.where((A < 0) & (D <= 0), 0.0, quad)
    out = np.where(A == 0, lin, quad)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def gaussian_pair_delta(mean1, std1, mean0, std0, eps) -> np.ndarray:
    """δ(ε) of the pair N(mean1, std1²), N(mean0, std0²): the hockey-stick divergence
    ``max(D_{e^ε}(P‖Q), D_{e^ε}(Q‖P))`` (both orders, as DP needs). Vectorised."""
    return np.maximum(gaussian_hockey_stick(mean1, std1, mean0, std0, eps), gaussian_hockey_stick(mean0, std0, mean1, std1, eps))


def gaussian_pair_epsilon(mean1, std1, mean0, std0, delta: float) -> np.ndarray:
    """ε at δ of the pair N(mean1, std1²) vs N(mean0, std0²), vectorised over the parameters.

    Equal variances give μ-GDP with ``μ = |mean1 − mean0| / std``; unequal variances have an
    unbounded privacy loss, but δ(ε) → 0, so ε at δ is finite. Found by a vectorised
    bisection on the decreasing δ(ε) (to ~1e-10).

    Raises:
        ValueError: if a standard deviation is not positive or δ is not in (0, 1).
    """
    if not 0 < delta < 1:
        raise ValueError(f"gaussian_pair_epsilon: δ must be in (0, 1); got {delta}")
    m1, s1, m0, s0 = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (mean1, std1, mean0, std0)))
    if np.any(~(s1 > 0)) or np.any(~(s0 > 0)):
        raise ValueError("gaussian_pair_epsilon: standard deviations must be > 0")
    lo, hi = np.zeros(m1.shape), np.full(m1.shape, 1.0)
    grow = gaussian_pair_delta(m1, s1, m0, s0, hi) > delta
    while grow.any():
        hi = np.where(grow, 2 * hi, hi)
        grow = (gaussian_pair_delta(m1, s1, m0, s0, hi) > delta) & (hi < 1e4)
    for _ in range(50):
        mid = (lo + hi) / 2
        above = gaussian_pair_delta(m1, s1, m0, s0, mid) > delta
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    zero = gaussian_pair_delta(m1, s1, m0, s0, np.zeros(m1.shape)) <= delta
    return np.where(zero, 0.0, hi)


def _split(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    included = np.asarray(included, bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"one-run audit: scores {scores.shape} and inclusion {included.shape} must be equal-length vectors")
    if np.isnan(scores).any():
        raise ValueError("one-run audit: scores must not be NaN")
    x1, x0 = scores[included], scores[~included]
    if len(x1) < 2 or len(x0) < 2:
        raise ValueError(f"one-run audit: need >= 2 included and >= 2 excluded canaries; got {len(x1)} and {len(x0)}")
    return x1, x0


def gaussian_fit_epsilon(scores: np.ndarray, included: np.ndarray, delta: float) -> float:
    """ε estimate (Andrew et al., ICLR 2024): ε at δ of normals fitted to the included and to
    the excluded canaries' scores. An estimate, not a bound; ∞ if a group's scores are all
    equal, NaN if a score is infinite. Biased upwards on pure noise: the fitted variances
    differ by sampling error, and a variance ratio ≠ 1 has an unbounded privacy loss (on
    1,000 pure-noise canaries at δ = 1e-5 it is typically 0.3–1.5; on 200,000 about 0.03).

    Raises:
        ValueError: for mismatched inputs or fewer than 2 canaries in a group.
    """
    x1, x0 = _split(scores, included)
    if not (np.isfinite(x1).all() and np.isfinite(x0).all()):
        return math.nan  # ±∞ scores rank fine for guesses but have no normal fit
    s1, s0 = x1.std(ddof=1), x0.std(ddof=1)
    if s1 == 0 or s0 == 0:
        return 0.0 if (s1 == s0 and x1.mean() == x0.mean()) else math.inf
    return float(gaussian_pair_epsilon(x1.mean(), s1, x0.mean(), s0, delta))


def gaussian_fit_mu(scores: np.ndarray, included: np.ndarray) -> float:
    """The equal-variance simplification of the fit: ``μ = |mean₁ − mean₀| / s`` with the
    pooled standard deviation s, i.e. the scores read as μ-GDP. Less sensitive than the
    two-variance fit to sampling noise in the variances (whose privacy loss is unbounded),
    but blind to a variance difference. NaN for infinite scores.
    """
    x1, x0 = _split(scores, included)
    if not (np.isfinite(x1).all() and np.isfinite(x0).all()):
        return math.nan
    pooled = math.sqrt(((len(x1) - 1) * x1.var(ddof=1) + (len(x0) - 1) * x0.var(ddof=1)) / (len(x1) + len(x0) - 2))
    diff = abs(float(x1.mean() - x0.mean()))
    if pooled == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / pooled


def gaussian_fit_interval(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    rng: np.random.Generator,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    equal_variance: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`gaussian_fit_epsilon` (or, with
    ``equal_variance``, of the pooled-variance estimate read as μ-GDP); included and excluded
    canaries are resampled separately, so each resample keeps the group sizes.

    Returns:
        ``(low, high)`` at ``level``.
    """
    if resamples < 2 or not 0 < level < 1:
        raise ValueError(f"bootstrap: need resamples >= 2 and 0 < level < 1; got {resamples}, {level}")
    x1, x0 = _split(scores, included)
    if not (np.isfinite(x1).all() and np.isfinite(x0).all()):
        return math.nan, math.nan
    b1 = x1[rng.integers(0, len(x1), size=(resamples, len(x1)))]
    b0 = x0[rng.integers(0, len(x0), size=(resamples, len(x0)))]
    s1 = np.maximum(b1.std(axis=1, ddof=1), 1e-300)
    s0 = np.maximum(b0.std(axis=1, ddof=1), 1e-300)
    if equal_variance:
        n1, n0 = len(x1), len(x0)
        pooled = np.sqrt(((n1 - 1) * s1**2 + (n0 - 1) * s0**2) / (n1 + n0 - 2))
        mus = np.abs(b1.mean(axis=1) - b0.mean(axis=1)) / pooled
        eps = np.array([_gdp_epsilon_or_nan(float(mu), delta) for mu in mus])
    else:
        eps = gaussian_pair_epsilon(b1.mean(axis=1), s1, b0.mean(axis=1), s0, delta)
    tail = (1 - level) / 2
    low, high = np.quantile(eps, [tail, 1 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- idealized mechanisms


def simulate_dpsgd_canaries(
    m: int, steps: int, sample_rate: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``m`` Dirac canaries under record-level DP-SGD, seen white-box (the ceiling).

    Each canary's gradient is a clipped (norm C) vector along its own coordinate, which no
    other record touches; the auditor sees every step's noisy sum and adds up its
    coordinate over the steps. In units of C: included ~ Bernoulli(½) and
    ``score = Binomial(steps, q)·included + Normal(0, σ²·steps)``.

    Returns:
        ``(scores, included)``.
    """
    if m < 1 or steps < 1 or not 0 < sample_rate <= 1 or noise_multiplier < 0:
        raise ValueError(f"simulate_dpsgd_canaries: bad m={m}, steps={steps}, q={sample_rate}, σ={noise_multiplier}")
    included = rng.random(m) < 0.5
    sampled = rng.binomial(steps, sample_rate, size=m)
    noise = rng.normal(0.0, noise_multiplier * math.sqrt(steps), size=m)
    return sampled * included + noise, included


def _mad(x: np.ndarray, axis: int) -> np.ndarray:
    """1.4826 × the median absolute deviation along ``axis`` (a normal's σ, robust to outliers)."""
    return 1.4826 * np.median(np.abs(x - np.median(x, axis=axis, keepdims=True)), axis=axis, keepdims=True)


def step_llr_scores(u: np.ndarray, sample_rate: float) -> np.ndarray:
    """One score per canary from every privatized step: the sum over steps of the
    log-likelihood ratio of "this canary is in the data" for the subsampled Gaussian.

    Args:
        u: (steps, m) projections of each released step on each canary direction, in units of
            a canary's clipped contribution to one step (C / expected batch size).
        sample_rate: the Poisson rate q the mechanism claims.

    Per step t the noise scale s_t is *estimated from the data* (1.4826 × the median absolute
    deviation over the m canaries: robust to the ≈ q/2 share that is present) — and per canary
    too where its own noise over the steps is below half of that — so a step (or a parameter)
    released with less noise than claimed — or none — weighs as much as its evidence, where a
    sum over steps averages it away. With s_t the claimed σ this is the Neyman–Pearson
    statistic of the idealized mechanism; either way it is a function of the released output
    only, so the one-run analysis of the guesses it ranks stays valid.
    ``score_i = Σ_t log(1 − q + q·exp((u_ti − ½) / s_t²))``.
    """
    u = np.asarray(u, np.float64)
    if u.ndim != 2 or not 0 < sample_rate <= 1:
        raise ValueError(f"step_llr_scores: need a (steps, m) array and 0 < q <= 1; got shape {u.shape}, q={sample_rate}")
    scale = np.maximum(_mad(u, axis=1), 1e-6)  # (steps, 1): each step's noise
    own = _mad(u / scale, axis=0)  # (1, m): each canary's noise relative to its steps'
    # a canary whose own noise is less than half its steps' sits on parameters released with too
    # little noise: score it at its own scale (an honest mechanism never gets there: the MAD of
    # hundreds of steps is within ~10 % of 1, so the statistic is unchanged)
    scale = scale * np.where(own < 0.5, np.maximum(own, 1e-6), 1.0)
    z = (u - 0.5) / scale**2
    absent = np.log1p(-sample_rate) if sample_rate < 1 else -np.inf
    return np.logaddexp(absent, math.log(sample_rate) + z).sum(axis=0)


def simulate_dpsgd_step_canaries(
    m: int, steps: int, sample_rate: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``m`` canaries under record-level DP-SGD when every step is observed (the
    ``every_step`` ceiling): per step, in units of C, ``Bernoulli(q)·included + Normal(0, σ²)``,
    scored by :func:`step_llr_scores`. Returns ``(scores, included)``."""
    if m < 1 or steps < 1 or not 0 < sample_rate <= 1 or noise_multiplier < 0:
        raise ValueError(f"simulate_dpsgd_step_canaries: bad m={m}, steps={steps}, q={sample_rate}, σ={noise_multiplier}")
    included = rng.random(m) < 0.5
    present = (rng.random((steps, m)) < sample_rate) & included[None, :]
    u = present + rng.normal(0.0, noise_multiplier, size=(steps, m))
    return step_llr_scores(u, sample_rate), included


def simulate_fedavg_canaries(
    m: int, rounds: int, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``m`` canary clients under client-level DP-FedAvg (every client every round,
    q = 1), seen white-box: ``score = rounds·included + Normal(0, σ²·rounds)`` (units of the
    clip). Returns ``(scores, included)``."""
    if m < 1 or rounds < 1 or noise_multiplier < 0:
        raise ValueError(f"simulate_fedavg_canaries: bad m={m}, rounds={rounds}, σ={noise_multiplier}")
    included = rng.random(m) < 0.5
    return rounds * included + rng.normal(0.0, noise_multiplier * math.sqrt(rounds), size=m), included


# --------------------------------------------------------------------------- summary


def default_guess_counts(m: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS) -> tuple[tuple[int, int], ...]:
    """Symmetric guess rules ``(k_pos, k_neg)`` guessing the given fractions of ``m`` canaries
    (at least one guess each side; duplicates dropped)."""
    out: list[tuple[int, int]] = []
    for f in fractions:
        k = max(1, int(round(f * m / 2)))
        if 2 * k <= m and (k, k) not in out:
            out.append((k, k))
    if not out:
        raise ValueError(f"default_guess_counts: {m} canaries allow no symmetric guess")
    return tuple(out)


def rule_audit(
    scores: np.ndarray, included: np.ndarray, k_pos: int, k_neg: int, delta: float, p: float = 0.05
) -> dict[str, float]:
    """Score one pre-declared guess rule at level ``p`` (no multiple-testing correction).

    Returns:
        ``canaries``, ``guesses``, ``correct``, ``epsilon_lower_bound`` (the headline f-DP
        (ε, δ) bound) and ``epsilon_lower_bound_steinke``. δ = 0 is allowed (pure DP).
    """
    _check_level(p, delta)
    included = np.asarray(included, bool)
    if len(included) != len(scores):
        raise ValueError(f"one-run audit: {len(scores)} scores but {len(included)} inclusion flags")
    r, v = count_correct(guesses(scores, k_pos, k_neg), included)
    m = len(included)
    return {
        "canaries": float(m),
        "guesses": float(r),
        "correct": float(v),
        "epsilon_lower_bound": fdp_epsilon_lower_bound(m, r, v, delta, p),
        "epsilon_lower_bound_steinke": steinke_epsilon_lower_bound(m, r, v, delta, p),
    }


def audit_summary(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    p: float = 0.05,
    guess_counts: Sequence[tuple[int, int]] | None = None,
    rng: np.random.Generator | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, float]:
    """Every statistic of a one-run audit, for scoring.

    Several guess rules may be tried; the best is chosen *after* seeing the results, so each
    rule is tested at level ``p / len(guess_counts)`` (Bonferroni) and every reported bound
    (Steinke, f-DP (ε, δ), GDP μ) is the maximum over rules of bounds at that level; by the
    union bound each holds with probability ≥ 1 − p. The maximum certifiable ε uses the same
    correction. The headline ``epsilon_lower_bound`` is pre-declared: the f-DP analysis with
    the (ε, δ)-DP curve (``epsilon_lower_bound_fdp``); it is never the maximum over analyses.

    Args:
        scores: one score per canary, higher = more likely included.
        included: whether each canary was included (ground truth).
        delta: the δ at which ε bounds and the estimate are stated.
        p: the level (1 − confidence).
        guess_counts: ``(k_pos, k_neg)`` rules to try; default :func:`default_guess_counts`.
        rng: generator for the bootstrap interval of the estimate; with ``None`` or
            ``resamples == 0`` the interval is NaN.
        resamples: bootstrap resamples.

    Returns:
        ``canaries``, ``guesses``, ``guesses_positive``, ``correct`` (of the rule that gives the
        headline bound), ``level`` (p / number of rules), ``delta``, ``epsilon_lower_bound``,
        ``epsilon_lower_bound_fdp``, ``epsilon_lower_bound_steinke``, ``gdp_mu_lower_bound``,
        ``gdp_epsilon_lower_bound`` (its ε at δ; certified only if the mechanism is
        Gaussian-shaped), ``epsilon_estimate`` (the equal-variance Gaussian fit,
        :func:`gaussian_fit_mu` read as μ-GDP), ``epsilon_estimate_low``,
        ``epsilon_estimate_high`` (its bootstrap interval), ``epsilon_estimate_two_variance``
        (Andrew et al.'s two-variance fit, :func:`gaussian_fit_epsilon`: biased upwards when
        the variances are nearly equal, e.g. 1.28× the accountant's ε at ε = 1 in
        docs/bench-audit.md, so it is not the headline),
        ``max_certifiable_epsilon`` (headline analysis, all guesses right) and
        ``max_certifiable_epsilon_steinke``.

    Raises:
        ValueError: for mismatched inputs, a bad level or δ, or a rule with too many guesses.
    """
    _check_level(p, delta)
    if not delta > 0:
        raise ValueError("audit_summary: δ must be > 0 (the GDP conversion and the estimate need it)")
    _split(scores, included)  # validates
    scores = np.asarray(scores, np.float64)
    included = np.asarray(included, bool)
    m = len(scores)
    rules = tuple(guess_counts) if guess_counts is not None else default_guess_counts(m)
    if not rules:
        raise ValueError("audit_summary: no guess rule given")
    level = p / len(rules)
    rows = []
    for k_pos, k_neg in rules:
        r, v = count_correct(guesses(scores, k_pos, k_neg), included)
        rows.append(
            {
                "guesses": r,
                "guesses_positive": k_pos,
                "correct": v,
                "fdp": fdp_epsilon_lower_bound(m, r, v, delta, level),
                "steinke": steinke_epsilon_lower_bound(m, r, v, delta, level),
                "mu": fdp_gdp_mu_lower_bound(m, r, v, level),
                "max_fdp": fdp_epsilon_lower_bound(m, r, r, delta, level),
                "max_steinke": steinke_epsilon_lower_bound(m, r, r, delta, level),
            }
        )
    best = max(rows, key=lambda row: (row["fdp"], row["mu"]))
    mu = max(row["mu"] for row in rows)
    out = {
        "canaries": float(m),
        "guesses": float(best["guesses"]),
        "guesses_positive": float(best["guesses_positive"]),
        "correct": float(best["correct"]),
        "level": float(level),
        "delta": float(delta),
        "epsilon_lower_bound": float(best["fdp"]),
        "epsilon_lower_bound_fdp": float(best["fdp"]),
        "epsilon_lower_bound_steinke": float(max(row["steinke"] for row in rows)),
        "gdp_mu_lower_bound": float(mu),
        "gdp_epsilon_lower_bound": gdp_epsilon(mu, delta),
        "epsilon_estimate": _gdp_epsilon_or_nan(gaussian_fit_mu(scores, included), delta),
        "epsilon_estimate_two_variance": gaussian_fit_epsilon(scores, included, delta),
        "max_certifiable_epsilon": float(max(row["max_fdp"] for row in rows)),
        "max_certifiable_epsilon_steinke": float(max(row["max_steinke"] for row in rows)),
    }
    if rng is not None and resamples > 0:
        out["epsilon_estimate_low"], out["epsilon_estimate_high"] = gaussian_fit_interval(
            scores, included, delta, rng, resamples, equal_variance=True
        )
    else:
        out["epsilon_estimate_low"] = out["epsilon_estimate_high"] = math.nan
    return out


def ceiling(
    simulate: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    delta: float,
    rng: np.random.Generator,
    reps: int = 10,
    p: float = 0.05,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> dict[str, float]:
    """The ceiling of an audit: :func:`audit_summary` (same rules, level and δ) on ``reps``
    runs of an idealized simulation of the mechanism, summarised by the median of each
    statistic.

    Args:
        simulate: draws ``(scores, included)`` from a generator, e.g.
            ``functools.partial(simulate_dpsgd_canaries, 1000, 200, 0.1, 1.2)``.
        delta: the δ of the bounds and the estimate.
        rng: source of the simulations' randomness.
        reps: simulated runs.
        p: the level.
        guess_counts: as in :func:`audit_summary`.

    Returns:
        The median over runs of each numeric statistic of :func:`audit_summary` (no bootstrap).
    """
    if reps < 1:
        raise ValueError(f"ceiling: need reps >= 1; got {reps}")
    runs = [audit_summary(*simulate(rng), delta, p, guess_counts, rng=None) for _ in range(reps)]
    return _median(runs)


def _gdp_epsilon_or_nan(mu: float, delta: float) -> float:
    return math.nan if math.isnan(mu) else gdp_epsilon(mu, delta)


def _median(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: float(np.median([run[k] for run in runs])) for k in runs[0]}


#: factors k by which :func:`detectable_factor` weakens the claimed mechanism (σ/k or q·k)
POWER_FACTORS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
POWER = 0.8  # a weakening counts as detectable when it is flagged in at least this share of runs


def detectable_factor(
    simulate_weakened: Callable[[float, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    flags: Callable[[np.ndarray, np.ndarray], bool],
    rng: np.random.Generator,
    reps: int = 10,
    factors: Sequence[float] = POWER_FACTORS,
    power: float = POWER,
) -> float:
    """The audit's detection power: the smallest factor k (of ``factors``) such that the
    idealized mechanism weakened by k (``simulate_weakened(k, rng)``) is flagged by ``flags``
    (the audit's own certified verdict, same canaries, guesses and level) in at least
    ``power`` of ``reps`` simulated runs; ``inf`` when even the largest is not (a vacuous audit).
    """
    if reps < 1 or not 0 < power <= 1:
        raise ValueError(f"detectable_factor: need reps >= 1 and 0 < power <= 1; got {reps}, {power}")
    need = math.ceil(power * reps)
    for k in factors:
        hits = 0
        for done in range(reps):
            hits += bool(flags(*simulate_weakened(float(k), rng)))
            if hits >= need or hits + (reps - done - 1) < need:
                break
        if hits >= need:
            return float(k)
    return math.inf
