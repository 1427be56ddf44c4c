"""Oracles for the membership metrics: perfect and random scores, Clopper–Pearson against
scipy, the bootstrap AUC against resampled sklearn AUCs and its coverage, the low-FPR gate,
source inference against its non-member baseline, the ROC ε bound's closed form and the
one-run audit against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.metrics.audit import guesses as one_run_guesses
from bench.metrics.audit import rule_audit as one_run_audit
from bench.metrics.audit import steinke_epsilon_lower_bound as one_run_epsilon_lower_bound
from bench.metrics.audit import steinke_p_value as one_run_p_value
from sklearn.metrics import roc_auc_score

from bench.metrics import difference_interval, majority_baseline, source_metrics, wilson_interval
from bench.metrics.membership import (
    bootstrap_auc_ci,
    bootstrap_counts,
    bootstrap_mean_ci,
    clopper_pearson,
    epsilon_lower_bound_from_roc,
    membership_metrics,
    roc_counts,
    supported_fpr_levels,
    tpr_at_fpr_ci,
)


def test_perfect_separation_gives_auc_one_and_full_tpr():
    is_member = np.r_[np.ones(500, bool), np.zeros(1000, bool)]
    scores = np.r_[np.linspace(10, 11, 500), np.linspace(0, 1, 1000)]
    m = membership_metrics(scores, is_member)
    assert m["auc"] == 1.0 and m["auc_ci_low"] == 1.0 and m["auc_ci_high"] == 1.0
    assert m["advantage"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["tpr_at_fpr_0.001"] == 1.0
    lo, hi = clopper_pearson(500, 500)
    assert m["tpr_at_fpr_0.01_ci_low"] == pytest.approx(lo) and hi == 1.0


@pytest.mark.parametrize("n_neg,logged,unsupported", [(99, (), (0.01, 0.001)), (100, (0.01,), (0.001,)),
                                                      (999, (0.01,), (0.001,)), (1000, (0.01, 0.001), ())])
def test_low_fpr_tpr_is_logged_only_with_enough_nonmembers(n_neg, logged, unsupported):
    # with n non-members the smallest non-zero FPR is 1/n: "TPR at FPR ≤ 1/1000" with 999 of
    # them is the TPR at zero false positives, so it is not logged under that name
    assert supported_fpr_levels(n_neg) == logged
    rng = np.random.default_rng(0)
    is_member = np.r_[np.ones(200, bool), np.zeros(n_neg, bool)]
    m = membership_metrics(rng.normal(size=len(is_member)) + is_member, is_member)
    for level in logged:
        assert f"tpr_at_fpr_{level:g}" in m and f"tpr_at_fpr_{level:g}_ci_high" in m
        assert f"tpr_at_fpr_{level:g}_unsupported" not in m
    for level in unsupported:
        assert not any(k.startswith(f"tpr_at_fpr_{level:g}") and k != f"tpr_at_fpr_{level:g}_unsupported" for k in m)
        assert m[f"tpr_at_fpr_{level:g}_unsupported"] == n_neg
    assert m["nonmembers"] == n_neg and m["members"] == 200


def test_bootstrap_counts_are_resamples():
    c = bootstrap_counts(7, 50, seed=3)
    assert c.shape == (50, 7) and (c.sum(axis=1) == 7).all() and (c >= 0).all()
    assert (c == bootstrap_counts(7, 50, seed=3)).all()  # a fixed stream: same scores, same interval


def test_bootstrap_auc_replicates_equal_sklearn_on_the_resampled_data():
    # the vectorised Mann–Whitney (with ties) must equal sklearn's AUC of each explicit resample
    rng = np.random.default_rng(2)
    is_member = rng.random(60) < 0.4
    scores = np.round(rng.normal(size=60) + is_member, 1)  # many ties
    pos, neg = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    b = 5
    cp, cn = bootstrap_counts(len(pos), b, 11), bootstrap_counts(len(neg), b, 12)
    want = []
    for r in range(b):
        idx = np.r_[np.repeat(pos, cp[r]), np.repeat(neg, cn[r])]
        want.append(roc_auc_score(is_member[idx], scores[idx]))
    # with b = 5 replicates the 2.5 % / 97.5 % percentiles are interpolations of the extremes
    lo, hi = bootstrap_auc_ci(scores, is_member, resamples=b, seed=11)
    assert lo == pytest.approx(np.quantile(want, 0.025), abs=1e-12)
    assert hi == pytest.approx(np.quantile(want, 0.975), abs=1e-12)


def test_bootstrap_auc_interval_covers_the_true_auc():
    # scores N(0,1) for non-members and N(d,1) for members: true AUC = Φ(d/√2); over 60 draws of
    # 150 + 150 records a 95 % interval must cover it about 57 times (fail below 50: P < 0.001)
    d = 0.5
    true_auc = stats.norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(5)
    is_member = np.r_[np.ones(150, bool), np.zeros(150, bool)]
    covered = 0
    for _ in range(60):
        scores = rng.normal(size=300) + d * is_member
        lo, hi = bootstrap_auc_ci(scores, is_member, resamples=300)
        assert lo <= roc_auc_score(is_member, scores) <= hi
        covered += lo <= true_auc <= hi
    assert covered >= 50


def test_bootstrap_mean_ci_weighted_and_degenerate():
    assert bootstrap_mean_ci(np.array([3.0])) == (3.0, 3.0)  # one item: nothing to resample
    lo, hi = bootstrap_mean_ci(np.full(10, 2.5))
    assert lo == hi == pytest.approx(2.5)
    v = np.random.default_rng(0).normal(size=400)
    lo, hi = bootstrap_mean_ci(v)
    se = v.std(ddof=1) / math.sqrt(len(v))
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.3 * se) and hi == pytest.approx(v.mean() + 1.96 * se, abs=0.3 * se)
    with pytest.raises(ValueError):
        bootstrap_mean_ci(np.array([1.0, 2.0]), np.array([1.0]))


def test_wilson_and_newcombe_known_answers():
    # Wilson 95 % for 81/263 (Newcombe 1998, table I example: 0.2553 to 0.3662)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    # Newcombe (1998) example 1: 56/70 − 48/80 = 0.2, method 10 interval 0.0524 to 0.3339
    d, lo, hi = difference_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)


def test_source_inference_population_effect_is_not_a_lift():
    # the case: 0.425 on members vs 0.440 on non-members -> no detectable lift, though
    # the member accuracy is far above chance 1/4
    n = 1000
    correct = np.r_[np.arange(n) < 425, np.arange(n) < 440]
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    out = source_metrics(correct, member, 4)
    assert out["accuracy"] == 0.425 and out["accuracy_nonmembers"] == 0.44 and out["chance"] == 0.25
    assert out["lift"] == pytest.approx(1.7)  # the old comparison with chance: looks like a leak
    assert out["lift_over_nonmembers"] == pytest.approx(-0.015)
    assert out["lift_over_nonmembers_ci_low"] < 0 < out["lift_over_nonmembers_ci_high"]
    assert out["lift_over_nonmembers_verdict"] == 0.0
    # a real lift: 0.60 on members vs 0.44 -> "higher"
    correct = np.r_[np.arange(n) < 600, np.arange(n) < 440]
    out = source_metrics(correct, member, 4)
    assert out["lift_over_nonmembers_ci_low"] > 0 and out["lift_over_nonmembers_verdict"] == 1.0
    # no non-members: no baseline, no lift
    assert "lift_over_nonmembers" not in source_metrics(correct[:n], member[:n], 4)


def test_majority_baseline():
    assert majority_baseline(np.array([0, 1, 1, 1])) == 0.75
    assert majority_baseline(np.array([2, 2, 0, 1, 1, 2])) == 0.5


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


def test_roc_artifact_with_too_few_nonmembers_for_low_fpr():
    """Fewer than 100 non-members: no TPR at 1 % FPR is logged, and the ROC figure says so
    instead of failing."""
    import matplotlib.pyplot as plt

    from bench.artifacts import roc_figure

    rng = np.random.default_rng(0)
    is_member = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    scores = np.r_[rng.random(30) + 0.3, rng.random(30)]
    assert "tpr_at_fpr_0.01" not in membership_metrics(scores, is_member)
    fig = roc_figure(scores, is_member, "few non-members")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert any("too few non-members" in t for t in labels)
