"""Fairness: subgroup metrics with known answers (fairlearn agrees with a hand computation),
min-count suppression, sensitive attributes in the config and data (refusals, bands, held-out
attributes never reaching an attack), exposure, the report's paired changes, and one tiny cell."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import parse_experiment
from bench.data import build_federation
from bench.data.sensitive import band_labels
from bench.fairness import (
    bootstrap_intervals, expected_calibration_error, exposure_metrics, gap_metrics, most_exposed, subgroup_utility, unsafe_metric_names,
)
from bench.report.fairness import fairness_comparisons
from bench.report.load import CellRun, group_settings
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ConfigError, SensitiveAttribute
from tests.conftest import tiny_raw

# A hand-built example: 2 groups of 6 records each.
#   group a: y = 1 1 1 0 0 0, p1 = .9 .8 .3 .2 .6 .1 -> pred 1 1 0 0 1 0: TP 2, FN 1, TN 2, FP 1
#   group b: y = 1 1 0 0 0 0, p1 = .7 .4 .4 .3 .2 .1 -> pred 1 0 0 0 0 0: TP 1, FN 1, TN 4, FP 0
Y = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0])
P1 = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.7, 0.4, 0.4, 0.3, 0.2, 0.1])
G = np.array(["a"] * 6 + ["b"] * 6, dtype=object)


def test_subgroup_metrics_match_a_hand_computation():
    out = subgroup_utility(Y, P1, G, "fairness/x", min_count=1)
    # by hand: accuracy a = 4/6, b = 5/6; TPR a = 2/3, b = 1/2; FPR a = 1/3, b = 0
    assert out["fairness/x/a/accuracy"] == pytest.approx(4 / 6)
    assert out["fairness/x/b/accuracy"] == pytest.approx(5 / 6)
    assert out["fairness/x/a/tpr"] == pytest.approx(2 / 3) and out["fairness/x/b/tpr"] == pytest.approx(1 / 2)
    assert out["fairness/x/a/fpr"] == pytest.approx(1 / 3) and out["fairness/x/b/fpr"] == pytest.approx(0.0)
    assert out["fairness/x/a/balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert out["fairness/x/b/balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    # AUROC b by hand: positives .7, .4 vs negatives .4 .3 .2 .1: (4 + 3.5) / 8
    assert out["fairness/x/b/auroc"] == pytest.approx(7.5 / 8)
    assert (out["fairness/x/a/count"], out["fairness/x/a/positives"]) == (6.0, 3.0)
    # gaps: accuracy 5/6 − 4/6; equalized odds = max(|2/3 − 1/2|, |1/3 − 0|) = 1/3;
    # demographic parity: selection a = 3/6, b = 1/6 -> 1/3; worst group = a
    assert out["fairness/x/accuracy_gap"] == pytest.approx(1 / 6)
    assert out["fairness/x/equalized_odds_difference"] == pytest.approx(1 / 3)
    assert out["fairness/x/demographic_parity_difference"] == pytest.approx(1 / 3)
    assert out["fairness/x/worst_group_accuracy"] == pytest.approx(4 / 6)


def test_ece_known_answer_and_perfect_calibration():
    # confidences .9 (correct), .8 (correct), .7 (wrong): bins [0.9,0.95), [0.8,0.85), [0.7,0.75)
    # ECE = (|1 − .9| + |1 − .8| + |0 − .7|) / 3 = (0.1 + 0.2 + 0.7) / 3
    assert expected_calibration_error(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.3])) == pytest.approx(1.0 / 3)
    # 10 records at p = 0.8, 8 of them positive: calibrated, ECE 0
    y = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(y, np.full(10, 0.8)) == pytest.approx(0.0, abs=1e-12)


def test_a_group_below_the_minimum_count_gives_counts_not_numbers():
    g = np.array(["a"] * 6 + ["b"] * 6, dtype=object)
    g[6:10] = "c"  # c: 4 records, b: 2 records
    out = subgroup_utility(Y, P1, g, "fairness/x", min_count=5, resamples=50)
    assert out["fairness/x/c/count"] == 4.0 and out["fairness/x/c/too_few"] == 1.0
    assert out["fairness/x/b/count"] == 2.0 and "fairness/x/b/accuracy" not in out
    assert not any(k.startswith("fairness/x/c/") and k.endswith(("accuracy", "tpr", "auroc")) for k in out)
    # one group with enough records: no gap (a gap needs two)
    assert "fairness/x/accuracy_gap" not in out and "fairness/x/a/accuracy" in out
    # a rate needs its own denominator: group a has 3 positives < 5, so no TPR
    assert "fairness/x/a/tpr" not in out


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(y * 0.3 + rng.random(400) * 0.7, 0, 1)
    g = np.where(rng.random(400) < 0.3, "f", "m").astype(object)
    ci = bootstrap_intervals(y, p1, g, resamples=300)
    gaps = gap_metrics(y, p1, g)
    for k in ("accuracy_gap", "worst_group_accuracy", "demographic_parity_difference"):
        assert ci[k][0] <= gaps[k] <= ci[k][1]
    assert bootstrap_intervals(y, p1, g, resamples=300) == ci


def test_exposure_per_group_and_most_exposed_shares():
    rng = np.random.default_rng(0)
    n = 400
    member = np.arange(n) % 2 == 0
    group = np.where(np.arange(n) < 200, "a", "b").astype(object)
    # group a's members are perfectly separable; group b's scores are noise
    scores = np.where((group == "a") & member, 10.0, 0.0) + rng.random(n)
    out = exposure_metrics(scores, member, group, "fairness/exposure/t/g", min_count=10)
    assert out["fairness/exposure/t/g/a/auc"] == pytest.approx(1.0)
    assert out["fairness/exposure/t/g/b/auc_ci_low"] < 0.5 < out["fairness/exposure/t/g/b/auc_ci_high"]
    assert out["fairness/exposure/t/g/a/tpr_at_fpr_0.01"] == pytest.approx(1.0)
    few = exposure_metrics(scores[:30], member[:30], group[:30], "p", min_count=20)
    assert few == {"p/a/members": 15.0, "p/a/nonmembers": 15.0, "p/a/too_few": 1.0}
    dist = np.where(np.arange(n) < 10, 100.0, 1.0)  # records 0..9 are outliers (5 of them members, in group a)
    top = most_exposed(scores, member, np.full(n, "s1", dtype=object), {"g": group}, dist, top=10, prefix="e")
    assert top["e/g/a/share"] == 1.0 and top["e/g/a/member_share"] == pytest.approx(0.5)
    assert top["e/site/s1/share"] == 1.0
    assert 0.0 <= top["e/outlier_share"] <= 1.0


# --------------------------------------------------------------------------- config and data


def _heart(heart_data_dir, fairness, **data):
    return tiny_raw(data={"name": "heart_disease", "partition": "natural", "data_dir": heart_data_dir, **data}, fairness=fairness)


def test_attribute_forms_are_equivalent_and_absent_fairness_keeps_the_run_key(heart_data_dir):
    a = parse_experiment(_heart(heart_data_dir, {"attributes": ["sex", {"age": {"bands": [55]}}]}))
    b = parse_experiment(_heart(heart_data_dir, {"attributes": {"sex": {}, "age": {"bands": [55]}}}))
    c = parse_experiment(_heart(heart_data_dir, {"attributes": [{"name": "sex"}, {"name": "age", "bands": [55]}]}))
    assert a == b == c and a.fairness.attributes[1].bands == (55.0,)
    plain = parse_experiment(tiny_raw())
    assert "fairness" not in plain.to_dict()  # configs without it hash as before
    assert "fairness.attributes" in a.flat_params()


@pytest.mark.parametrize(
    "fairness, pattern",
    [
        ({"attributes": ["sexx"]}, r"'sexx' is not a column of heart_disease \(did you mean 'sex'\?\)"),
        ({"attributes": ["age"]}, r"fairness\.attributes\.age: a continuous column needs bands"),
        ({"attributes": [{"sex": {"bands": [1]}}]}, r"'sex' is categorical"),
        ({"attributes": [{"age": {"bands": [60, 50]}}]}, r"strictly increasing"),
        ({"attributes": ["sex", "sex"]}, r"'sex' listed twice"),
        ({"atributes": ["sex"]}, r"did you mean 'attributes'"),
    ],
)
def test_bad_attributes_are_refused_in_one_line(heart_data_dir, fairness, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        parse_experiment(_heart(heart_data_dir, fairness))
    assert "\n" not in str(exc.value)


def test_a_dataset_without_sensitive_attributes_refuses_the_key():
    with pytest.raises(ConfigError, match=r"^fairness\.attributes: 'breast_cancer' has no sensitive attributes") as exc:
        parse_experiment(tiny_raw(fairness={"attributes": ["sex"]}))
    assert "\n" not in str(exc.value)
    # without attributes, fairness per hospital still works on any binary dataset
    assert parse_experiment(tiny_raw(fairness={})).fairness.attributes == ()


def test_age_bands_label_and_code_every_record(heart_data_dir):
    assert band_labels([55]) == ("under_55", "55_and_over")
    assert band_labels([45, 60.5]) == ("under_45", "45_to_60.5", "60.5_and_over")
    cfg = parse_experiment(_heart(heart_data_dir, {"attributes": [{"age": {"bands": [55]}}, "sex"]}))
    fed, truth = build_federation(cfg.data, Seeds(0), cfg.fairness)
    age, sex = truth.sensitive
    assert age.groups == ("under_55", "55_and_over") and sex.groups == ("female", "male")
    # decode age from the (standardised) model input and check the band of every test record
    f = next(f for f in fed.info.features if f.name == "age")
    raw_age = fed.test.x[:, f.columns[0]].numpy() * f.std + f.mean
    assert np.array_equal(age.of(fed.test.ids), (raw_age >= 55 - 1e-3).astype(int))
    fs = next(f for f in fed.info.features if f.name == "sex")
    assert np.array_equal(sex.of(fed.test.ids), fed.test.x[:, fs.columns[0] + 1].numpy().astype(int))  # one-hot "male" column


def _walk(obj, seen=None):
    """Every value reachable from a view through dataclass fields, mappings and sequences."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v, seen)


def test_a_held_out_attribute_never_reaches_an_attack(heart_data_dir, monkeypatch):
    from bench.components import component_class

    kept = parse_experiment(_heart(heart_data_dir, {"attributes": ["sex"]}))
    held = parse_experiment(_heart(heart_data_dir, {"attributes": [{"sex": {"input": False}}]}))
    fed_k, truth_k = build_federation(kept.data, Seeds(0), kept.fairness)
    fed_h, truth_h = build_federation(held.data, Seeds(0), held.fairness)
    assert "sex" in [f.name for f in fed_k.info.features] and "sex" not in [f.name for f in fed_h.info.features]
    assert fed_h.info.num_inputs == fed_k.info.num_inputs - 2  # sex's two one-hot columns are gone
    assert np.array_equal(truth_h.sensitive[0].codes, truth_k.sensitive[0].codes) and not truth_h.sensitive[0].model_input
    assert np.array_equal(fed_h.candidates.ids, fed_k.candidates.ids)  # same split either way

    seen = []
    cls = component_class("attack", "loss_threshold")
    original = cls.run
    monkeypatch.setattr(cls, "run", lambda self, view, rng: (seen.append(view), original(self, view, rng))[1])
    result = run_in_memory(held)
    assert seen, "the attack did not run"
    for value in _walk(seen[0]):
        assert not isinstance(value, SensitiveAttribute)
        if hasattr(value, "features"):
            assert "sex" not in [f.name for f in value.features]
    assert result.metrics["fairness/sex/female/count"] > 0  # measured all the same, from the ground truth


def _csv(path, n=240, classes=2):
    rng = np.random.default_rng(0)
    sex = rng.choice(["F", "M"], n, p=[0.3, 0.7])
    x1 = rng.normal(size=n)
    label = ((x1 + (sex == "M") * 0.5 + rng.normal(scale=0.5, size=n)) > 0.3).astype(int) if classes == 2 else rng.integers(0, classes, n)
    pd.DataFrame({"site": rng.choice(["h1", "h2", "h3"], n), "label": label, "sex": sex, "x1": x1,
                  "x2": rng.normal(size=n), "bmi": rng.normal(27, 4, n)}).to_csv(path, index=False)
    return str(path)


def test_csv_attributes_any_column_and_refusals(tmp_path):
    path = _csv(tmp_path / "t.csv")
    base = {"data": {"name": "csv", "path": path, "partition": "natural"}}
    cfg = parse_experiment(tiny_raw(**base, fairness={"attributes": ["sex", {"bmi": {"bands": [25, 30]}}]}))
    _, truth = build_federation(cfg.data, Seeds(0), cfg.fairness)
    assert [a.groups for a in truth.sensitive] == [("F", "M"), ("under_25", "25_to_30", "30_and_over")]
    bad = parse_experiment(tiny_raw(**base, fairness={"attributes": ["ethnicity"]}))  # csv columns are known at data time
    with pytest.raises(ConfigError, match=r"'ethnicity' is not a column of csv"):
        build_federation(bad.data, Seeds(0), bad.fairness)
    multi = parse_experiment(tiny_raw(data={"name": "csv", "path": _csv(tmp_path / "m.csv", classes=3), "partition": "natural",
                                            "multiclass": True},  # a declared 3-class label: the loader takes it, fairness refuses it
                                      fairness={"attributes": ["sex"]}))
    with pytest.raises(ConfigError, match=r"need a binary label"):
        build_federation(multi.data, Seeds(0), multi.fairness)


def test_tiny_cell_logs_fairness_metrics_with_mlflow_safe_names(tmp_path):
    path = _csv(tmp_path / "t.csv", n=600)  # ≥ 100 non-members: bench.artifacts' ROC caption needs TPR at 1 % FPR
    cfg = parse_experiment(tiny_raw(data={"name": "csv", "path": path, "partition": "natural"},
                                    fairness={"attributes": ["sex", {"bmi": {"bands": [27]}}], "min_count": 5, "bootstrap": 50}))
    m = run_in_memory(cfg).metrics
    fair = [k for k in m if k.startswith("fairness/")]
    assert not unsafe_metric_names(fair)
    assert m["fairness/sex/F/count"] + m["fairness/sex/M/count"] == m["fairness/site/h1/count"] + m["fairness/site/h2/count"] + m["fairness/site/h3/count"]
    assert m["fairness/sex/worst_group_accuracy"] == pytest.approx(min(m["fairness/sex/F/accuracy"], m["fairness/sex/M/accuracy"]))
    assert m["fairness/sex/F/accuracy_ci_low"] <= m["fairness/sex/F/accuracy"] <= m["fairness/sex/F/accuracy_ci_high"]
    assert "fairness/exposure/loss_threshold/sex/M/auc" in m and "fairness/exposed/loss_threshold/top" in m
    assert any(re.match(r"^fairness/site/h\d/sex/[FM]/count$", k) for k in fair)


# --------------------------------------------------------------------------- report


def _cell(name, seed, metrics, **params):
    p = {"seed": str(seed), "data.name": "heart_disease", **params}
    return CellRun(f"id-{name}-{seed}", f"heart_disease · {name} · seed {seed}", "FINISHED", seed, p,
                   {"dataset": "heart_disease", "run_key": f"{name}-{seed}"}, metrics)


def test_report_pairs_fairness_metrics_by_seed():
    acc = "fairness/sex/female/accuracy"
    base = [_cell("no defense", s, {acc: v, "fairness/sex/female/count": 40.0}) for s, v in enumerate([0.80, 0.70, 0.90])]
    dp = [_cell("dp_sgd(eps=1,C=1)", s, {acc: v}, defenses="dp_sgd") for s, v in enumerate([0.70, 0.61, 0.79])]
    comps = fairness_comparisons(group_settings(base + dp))
    (c,) = [c for c in comps if c.metric == acc]
    # per-seed differences -0.10, -0.09, -0.11: mean -0.10, paired t interval excludes 0
    assert c.diff.mean == pytest.approx(-0.10) and c.diff.high < 0 and c.diff.verdict == "lower"
    assert c.baseline == "heart_disease · no defense" and len(c.per_seed) == 3


def test_smaller_group_difference_in_differences():
    from bench.report.fairness import smaller_group_differences

    f, m = "fairness/sex/female/accuracy", "fairness/sex/male/accuracy"
    counts = {"fairness/sex/female/count": 40.0, "fairness/sex/male/count": 140.0}
    base = [_cell("no defense", s, {f: 0.8, m: 0.8, **counts}) for s in range(3)]
    # female loses 0.10, 0.12, 0.08; male loses 0.02 each seed: difference −0.08, −0.10, −0.06
    dp = [_cell("dp", s, {f: 0.8 - df, m: 0.78}, defenses="dp_sgd") for s, df in enumerate([0.10, 0.12, 0.08])]
    ((setting, attr, small, large, d),) = smaller_group_differences(group_settings(base + dp))
    assert (attr, small, large) == ("sex", "female", "male")
    assert d.mean == pytest.approx(-0.08) and d.verdict == "lower"


# --------------------------------------------------------------------------- reconstruction exposure


def _heart_truth(heart_data_dir, per_site=24):
    cfg = parse_experiment(_heart(heart_data_dir, {"attributes": ["sex", {"age": {"bands": [55]}}]}, members_per_site=per_site))
    return build_federation(cfg.data, Seeds(0), cfg.fairness)[1]


def _women_exact_men_continuous_wrong(truth):
    """Per hospital, a reconstruction equal to every woman's record and, for men, right on every
    categorical feature but off by 10 std on every continuous one (so a man's accuracy is exactly
    n_categorical / n_features, whichever man his row is matched to)."""
    from bench.types import Reconstruction, Reconstructions

    sex = next(a for a in truth.sensitive if a.name == "sex")
    items = []
    for s, rec in truth.site_train.items():
        x = rec.x.clone()
        male = torch.as_tensor(sex.of(rec.ids) == sex.groups.index("male"))
        for f in truth.info.features:
            if f.kind != "categorical":
                x[male, f.columns[0]] += 10.0
        items.append(Reconstruction(round=1, target=s, x=x, labels=None, objective=0.0, sites=(s,)))
    return Reconstructions(items=tuple(items))


def test_reconstruction_accuracy_per_subgroup_known_answer(heart_data_dir):
    from bench.fairness import reconstruction_fairness
    from bench.metrics.reconstruction import reconstruction_metrics

    truth = _heart_truth(heart_data_dir)
    out = _women_exact_men_continuous_wrong(truth)
    feats = truth.info.features
    cat = sum(f.kind == "categorical" for f in feats) / len(feats)
    m = reconstruction_fairness("tableak", out, truth, min_count=10, resamples=100)
    p = "fairness/exposure/tableak"
    assert m[f"{p}/sex/female/feature_accuracy"] == 1.0 and m[f"{p}/sex/female/record_exact_match"] == 1.0
    assert m[f"{p}/sex/male/feature_accuracy"] == pytest.approx(cat) and m[f"{p}/sex/male/record_exact_match"] == 0.0
    assert m[f"{p}/sex/female/feature_accuracy_vs_rest"] == pytest.approx(1.0 - cat)
    assert m[f"{p}/sex/female/feature_accuracy_ci_low"] == m[f"{p}/sex/female/feature_accuracy_ci_high"] == 1.0  # no spread
    assert m[f"{p}/sex/female/feature_accuracy_vs_rest_ci_low"] == pytest.approx(1.0 - cat)
    gain_f = m[f"{p}/sex/female/feature_accuracy_gain"]
    assert gain_f == pytest.approx(1.0 - m[f"{p}/sex/female/baseline_feature_accuracy"])
    assert m[f"{p}/sex/female/feature_accuracy_gain_vs_rest"] == pytest.approx(gain_f - m[f"{p}/sex/male/feature_accuracy_gain"])
    # groups come from the ground truth: counts add up to the attacked records, per sex and per hospital
    nf, nm = m[f"{p}/sex/female/records"], m[f"{p}/sex/male/records"]
    assert nf + nm == 4 * 24 == sum(m[f"{p}/site/{s}/records"] for s in truth.site_names)
    # a hospital's accuracy is its share of women at 1 and of men at `cat`; the record-weighted mean is the headline
    sex = truth.sensitive[[a.name for a in truth.sensitive].index("sex")]
    for s, rec in truth.site_train.items():
        w = float((sex.of(rec.ids) == 0).mean())
        assert m[f"{p}/site/{s}/feature_accuracy"] == pytest.approx(w + (1 - w) * cat)
    head = reconstruction_metrics(out, truth)
    assert (nf * 1.0 + nm * cat) / (nf + nm) == pytest.approx(head["feature_accuracy"])
    # the per-record prior baseline replays the headline's draws: its mean is the headline baseline
    base = (nf * m[f"{p}/sex/female/baseline_feature_accuracy"] + nm * m[f"{p}/sex/male/baseline_feature_accuracy"]) / (nf + nm)
    assert base == pytest.approx(head["baseline_feature_accuracy"])


def test_reconstruction_exposure_refuses_small_groups():
    from bench.fairness import RecordReconstruction, reconstruction_exposure

    n = 25
    rec = RecordReconstruction(ids=np.arange(n), site=np.full(n, "h", dtype=object), accuracy=np.linspace(0, 1, n),
                               exact=np.zeros(n, bool), baseline=np.full(n, 0.5))
    groups = np.array(["a"] * 5 + ["b"] * 18 + [""] * 2, dtype=object)  # two records without a known group
    out = reconstruction_exposure(rec, groups, "p", min_count=10, resamples=50)
    assert out == {**{k: v for k, v in out.items() if k.startswith("p/b/")}, "p/a/records": 5.0, "p/a/too_few": 1.0}
    assert out["p/b/records"] == 18.0 and out["p/b/feature_accuracy"] == pytest.approx(rec.accuracy[5:23].mean())
    assert out["p/b/feature_accuracy_ci_low"] <= out["p/b/feature_accuracy"] <= out["p/b/feature_accuracy_ci_high"]
    assert out["p/b/feature_accuracy_gain"] == pytest.approx(rec.accuracy[5:23].mean() - 0.5)
    assert "p/b/feature_accuracy_vs_rest" not in out and "p/b/feature_accuracy_gain_vs_rest" not in out  # the rest (a: 5) < min_count
    assert not any(k.endswith("_ci_low") for k in reconstruction_exposure(rec, groups, "p", 10, resamples=0))


def test_reconstruction_exposure_logs_only_aggregates(heart_data_dir):
    from bench.fairness import RECONSTRUCTION_KEYS, reconstruction_fairness

    truth = _heart_truth(heart_data_dir)
    m = reconstruction_fairness("tableak", _women_exact_men_continuous_wrong(truth), truth, min_count=10, resamples=20)
    groups = {a.name: set(a.groups) for a in truth.sensitive} | {"site": set(truth.site_names)}
    name = re.compile(r"^fairness/exposure/tableak/(?P<attr>[^/]+)/(?P<group>[^/]+)/(?P<key>[a-z_]+?)(_ci_low|_ci_high)?$")
    assert m and not unsafe_metric_names(list(m))
    for k, v in m.items():
        got = name.match(k)
        # names are built from attribute, group and key vocabularies only: no id, no feature value
        assert got and got["group"] in groups[got["attr"]] and got["key"] in RECONSTRUCTION_KEYS, k
        assert isinstance(v, float) and (got["key"] == "records" or -1.0 <= v <= 1.0), k
    pairs = {(name.match(k)["attr"], name.match(k)["group"]) for k in m}
    assert pairs == {(a, g) for a, gs in groups.items() for g in gs}
    assert len(m) <= len(pairs) * 3 * len(RECONSTRUCTION_KEYS)  # a fixed number per group, not one per record


def test_report_reconstruction_rows_pair_by_seed():
    from bench.report.fairness import reconstruction_rows

    p = "fairness/exposure/tableak/sex"
    def cell(name, seed, f, vs, **params):
        return _cell(name, seed, {f"{p}/female/records": 14.0, f"{p}/female/feature_accuracy": f, f"{p}/female/feature_accuracy_vs_rest": vs,
                                  f"{p}/female/feature_accuracy_gain_vs_rest": vs - 0.06,
                                  f"{p}/male/records": 8.0, f"{p}/male/too_few": 1.0}, **{"attacks.tableak.iterations": "1000", **params})
    base = [cell("no defense", s, f, vs) for s, (f, vs) in enumerate([(0.80, 0.05), (0.70, 0.04), (0.90, 0.06)])]
    dp = [cell("dp", s, f - 0.3, vs - 0.05, defenses="dp_sgd") for s, (f, vs) in enumerate([(0.80, 0.05), (0.71, 0.04), (0.89, 0.06)])]
    settings = group_settings(base + dp)
    rows = reconstruction_rows(settings, fairness_comparisons(settings))
    fem = [r for r in rows if r[3] == "female"]
    assert len(fem) == 2 and fem[0][4] == "no defense" and "higher" in fem[0][9]  # +0.05 over the rest on every seed
    assert fem[1][7].startswith("-0.300") and fem[1][7].endswith("lower")  # paired by seed: -0.30, -0.29, -0.31
    assert fem[1][10].endswith("lower") and "no detectable difference" in fem[0][11]  # gain − rest: -0.01, -0.02, 0.00
    assert not any(c.metric.endswith("gain_vs_rest") for c in fairness_comparisons(settings))  # its change is vs_rest's
    assert all(r[6] == "too few (n=8)" for r in rows if r[3] == "male")
