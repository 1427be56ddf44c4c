"""Oracles for the membership metrics: perfect and random scores, Clopper–Pearson against
scipy, the ROC ε bound's closed form and the one-run audit against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.metrics.audit import guesses as one_run_guesses
from bench.metrics.audit import rule_audit as one_run_audit
from bench.metrics.audit import steinke_epsilon_lower_bound as one_run_epsilon_lower_bound
from bench.metrics.audit import steinke_p_value as one_run_p_value
from bench.metrics.membership import (
    clopper_pearson,
    epsilon_lower_bound_from_roc,
    membership_metrics,
    roc_counts,
    tpr_at_fpr_ci,
)


def test_perfect_separation_gives_auc_one_and_full_tpr():
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = np.r_[np.linspace(10, 11, 500), np.linspace(0, 1, 500)]
    m = membership_metrics(scores, is_member)
    assert m["auc"] == 1.0
    assert m["advantage"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["tpr_at_fpr_0.001"] == 1.0
    lo, hi = clopper_pearson(500, 500)
    assert m["tpr_at_fpr_0.01_ci_low"] == pytest.approx(lo) and hi == 1.0


def test_random_scores_give_auc_half():
    rng = np.random.default_rng(0)
    is_member = rng.random(20000) < 0.5
    m = membership_metrics(rng.normal(size=20000), is_member)
    assert abs(m["auc"] - 0.5) < 0.015
    # TPR at 1% FPR of a random guess is ~1%, and the interval covers it
    assert m["tpr_at_fpr_0.01_ci_low"] <= 0.01 <= m["tpr_at_fpr_0.01_ci_high"] + 0.005
    assert m["roc_epsilon_heuristic"] < 0.15


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1000), (417, 1000), (999, 1000)])
def test_clopper_pearson_matches_scipy(k, n):
    want = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(want.low, abs=1e-12)
    assert hi == pytest.approx(want.high, abs=1e-12)


def test_tpr_at_fpr_counts_ties_as_one_threshold():
    # members: 9, 8, 5; non-members: 9, 1 -> at FPR 0 only nothing above 9 exists
    scores = np.array([9, 8, 5, 9, 1.0])
    is_member = np.array([1, 1, 1, 0, 0], bool)
    tp, fp, n_pos, n_neg = roc_counts(scores, is_member)
    assert list(tp) == [0, 1, 2, 3, 3] and list(fp) == [0, 1, 1, 1, 2]
    tpr, lo, hi = tpr_at_fpr_ci(scores, is_member, 0.0)
    assert tpr == 0.0 and (lo, hi) == clopper_pearson(0, 3)
    tpr, _, _ = tpr_at_fpr_ci(scores, is_member, 0.5)
    assert tpr == 1.0


def test_roc_epsilon_bound_closed_form():
    # one threshold that separates perfectly: FPR = FNR = 0 observed on n = 1000 each;
    # the one-sided 97.5% CP upper bound of 0/n is 1 - 0.025**(1/n)
    n = 1000
    scores = np.r_[np.ones(n), np.zeros(n)]
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    u = 1 - 0.025 ** (1 / n)
    want = math.log((1 - 1e-5 - u) / u)
    assert epsilon_lower_bound_from_roc(scores, is_member, delta=1e-5) == pytest.approx(want, rel=1e-9)


def test_one_run_p_value_pure_dp_is_binomial_tail():
    # δ = 0: p = P[Bin(r, e^ε/(1+e^ε)) ≥ v]
    q = math.exp(1.0) / (1 + math.exp(1.0))
    assert one_run_p_value(100, 20, 18, 1.0, 0.0) == pytest.approx(stats.binom.sf(17, 20, q))


def test_one_run_bound_hand_computed_case():
    # All r = 10 guesses right, δ = 0: reject ε iff q^10 < 0.05, so the bound is
    # ε* = logit(0.05^(1/10)) = log(0.05^0.1 / (1 - 0.05^0.1)) = 1.9207...
    root = 0.05 ** 0.1
    want = math.log(root / (1 - root))
    assert one_run_epsilon_lower_bound(m=10, r=10, v=10, delta=0.0) == pytest.approx(want, abs=1e-9)
    # the δ term, by hand for m=10, r=2, v=2, ε=0 (q=½): P[Bin≥2] = 1/4;
    # max(P[Bin=1]/1, (P[Bin=1]+P[Bin=0])/2) = max(1/2, 3/8) = 1/2 -> p = 1/4 + 2·10·δ·1/2
    assert one_run_p_value(10, 2, 2, 0.0, 0.01) == pytest.approx(0.25 + 0.1)


def test_one_run_bound_falls_with_delta_and_wrong_guesses():
    b0 = one_run_epsilon_lower_bound(1000, 200, 190, delta=0.0)
    b1 = one_run_epsilon_lower_bound(1000, 200, 190, delta=1e-5)
    b2 = one_run_epsilon_lower_bound(1000, 200, 150, delta=1e-5)
    assert b0 >= b1 > b2 > 0
    # half right is what chance gives: no evidence against ε = 0
    assert one_run_epsilon_lower_bound(1000, 200, 100, delta=1e-5) == 0.0


def test_one_run_audit_guesses_top_and_bottom():
    scores = np.array([5.0, 4, 3, 2, 1, 0])
    assert list(one_run_guesses(scores, 2, 1)) == [1, 1, 0, 0, 0, -1]
    included = np.array([1, 1, 0, 1, 0, 0], bool)
    out = one_run_audit(scores, included, 2, 1, delta=0.0)
    assert (out["guesses"], out["correct"], out["canaries"]) == (3.0, 3.0, 6.0)
    # three right guesses happen with probability 1/8 > 0.05 even at ε = 0: no evidence
    assert out["epsilon_lower_bound"] == 0.0
