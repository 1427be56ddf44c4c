"""The one-run canary audit (Steinke, Nasr, Jagielski 2023) in the pipeline.

* inserting canaries is a pure transform: inputs untouched, about half the canaries in
  training, each exactly where ground truth says;
* the attack never sees which canaries went in (its output is scores only);
* an audit bound above the accountant's ε is tagged and logged loudly; below it is not;
* end to end: without a defense the audit finds evidence (bound > 0); with DP-SGD the
  bound stays below the accountant's ε.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from attacks.audit.canary import insert_canaries
from bench.config import parse_experiment
from bench.data import build_federation
from bench.auditing import audit_verdict
from bench.runner import run_in_memory
from bench.seeding import Seeds
from conftest import tiny_raw


def test_insert_canaries_is_pure_and_matches_truth(tiny_cfg):
    fed, truth = build_federation(tiny_cfg.data, Seeds(0))
    sizes = [len(s.train) for s in fed.sites]
    new_fed, fields = insert_canaries(fed, 400, np.random.default_rng(0))
    new_truth = dataclasses.replace(truth, **fields)
    assert [len(s.train) for s in fed.sites] == sizes and fed.canaries is None and truth.canary_ids is None
    inc = new_truth.canary_included
    assert abs(inc.mean() - 0.5) < 0.08
    assert sum(len(s.train) for s in new_fed.sites) == sum(sizes) + int(inc.sum())
    trained = np.concatenate([s.train.ids for s in new_fed.sites])
    assert np.array_equal(np.isin(new_truth.canary_ids, trained), inc)
    assert not np.isin(new_fed.canaries.ids, fed.candidates.ids).any()  # fresh ids
    assert len(np.unique(trained)) == len(trained)


def _audit(bound, eps, max_cert=6.0):
    return {"epsilon_lower_bound": bound, "accountant_epsilon": eps, "delta": 1e-5, "max_certifiable_epsilon": max_cert,
            "epsilon_estimate": bound, "all_rounds/epsilon_lower_bound": bound, "all_rounds/max_certifiable_epsilon": max_cert}


def test_audit_verdict_tags_a_bound_above_epsilon(caplog):
    with caplog.at_level(logging.ERROR):
        out, tags = audit_verdict({"a": _audit(2.5, 1.0)}, {"a": ["all_rounds"]})
    assert out["audit/epsilon_lower_bound"] == 2.5 and out["audit/accountant_epsilon"] == 1.0
    assert tags["audit_verdict"] == "violation" and tags["audit_violation"] == "true" and tags["audit_suspect"] == "false"
    assert tags["audit_power"].startswith("power unknown")  # no detectable_factor given
    assert "AUDIT VIOLATION" in caplog.text
    _, tags = audit_verdict({"a": _audit(2.5, 8.0, max_cert=9.0)}, {"a": ["all_rounds"]})
    assert tags["audit_verdict"] == "no_violation" and tags["audit_violation"] == "false"
    assert audit_verdict({}, {}) == ({}, {})


def test_an_audit_that_cannot_certify_the_claimed_epsilon_says_so(caplog):
    """A ceiling (max certifiable ε) below the accountant's ε: 'no violation' is vacuous."""
    with caplog.at_level(logging.WARNING):
        out, tags = audit_verdict({"a": _audit(0.5, 8.0, max_cert=3.5)}, {"a": ["all_rounds"]})
    assert tags["audit_verdict"] == "vacuous" and tags["audit_violation"] == "false"
    assert tags["audit_power"].startswith("vacuous") and out["audit/detectable_factor"] == float("inf")
    assert "vacuous" in caplog.text


def test_two_tiers_are_never_confused():
    """An estimate above the claim without a certified bound is 'suspect', never 'violation';
    a certified violation stays 'violation' whatever the estimate; power is stated in words."""
    base = {**_audit(0.5, 2.0), "all_rounds/suspect": 1.0, "detectable_factor": 2.0, "detectable_epsilon_ratio": 2.4}
    out, tags = audit_verdict({"a": base}, {"a": ["all_rounds"]})
    assert (tags["audit_verdict"], tags["audit_violation"], tags["audit_suspect"]) == ("suspect", "false", "true")
    assert tags["audit_power"] == "would catch noise understated >= 2x (epsilon understated >= 2.4x)"
    assert out["audit/detectable_factor"] == 2.0
    _, tags = audit_verdict({"a": {**base, **_audit(2.5, 2.0)}}, {"a": ["all_rounds"]})
    assert (tags["audit_verdict"], tags["audit_violation"], tags["audit_suspect"]) == ("violation", "true", "false")
    honest = {**base, "all_rounds/suspect": 0.0}
    assert audit_verdict({"a": honest}, {"a": ["all_rounds"]})[1]["audit_verdict"] == "no_violation"


def _audit_cell(defenses):
    raw = tiny_raw(attacks=[{"name": "canary_audit", "num_canaries": 200, "guess_fraction": 0.1}], defenses=defenses)
    raw["data"] = {"name": "breast_cancer", "partition": "iid", "num_sites": 2}
    raw["model"] = {"name": "mlp", "hidden": [64]}
    raw["train"] = {"rounds": 10, "local_epochs": 5, "batch_size": 16, "lr": 0.3}
    return run_in_memory(parse_experiment(raw))


@pytest.mark.slow
def test_audit_finds_leakage_without_defense_and_stays_below_dp_epsilon():
    plain = _audit_cell([])
    assert plain.metrics["audit/epsilon_lower_bound"] > 0.2
    assert "audit_violation" not in plain.tags  # no ε to compare with
    dp = _audit_cell([{"name": "dp_sgd", "noise_multiplier": 1.0}])
    # stated at δ ≤ 1e-5 (the accountant's default δ here) and compared with the accountant's ε
    # for the weakest hospital at that same δ
    assert dp.metrics["audit/canary_audit/delta"] == dp.metrics["audit/delta"] == min(dp.metrics["privacy/delta"], 1e-5)
    assert dp.metrics["audit/accountant_epsilon"] == pytest.approx(dp.metrics["privacy/epsilon"])
    assert dp.metrics["audit/epsilon_lower_bound"] <= dp.metrics["audit/accountant_epsilon"]
    assert dp.tags["audit_violation"] == "false"
