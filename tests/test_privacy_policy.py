"""Issue 11, items 1–2: the δ policy and the explicit neighbouring relation, end to end.

Every ε a cell logs is stated at a δ far below 1/n and under a named neighbouring relation;
a δ ≥ 1/n is flagged without losing a defense's own weak-guarantee reason; audits compare
with the add/remove ε, the relation their canaries instantiate.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bench.accounting import account, epsilon_of
from bench.auditing import accountant_epsilon
from bench.config import parse_experiment
from bench.runner import privacy_tags, run_cell
from bench.tracking import MemoryCellLog
from bench.types import AuditScores, ConfigError, DPEvent
from conftest import tiny_raw

CLIENT_DP = {"name": "client_dp", "noise_multiplier": 1.0, "clip_norm": 0.5}


def _run(raw: dict) -> MemoryCellLog:
    cfg = parse_experiment(raw)
    out = MemoryCellLog(cfg.label(), {})
    run_cell(cfg, out)
    return out


def _client_event(neighbouring: str, rounds: int = 3, hospitals: int = 3) -> DPEvent:
    return DPEvent("poisson_gaussian", "client", "federation", 1.0, 1.0, rounds, hospitals, "client_dp", neighbouring)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("defenses", [[{"name": "dp_sgd", "noise_multiplier": 1.0}],
                                      [{"name": "dp_sgd", "noise_multiplier": 1.0}, CLIENT_DP]])
def test_replace_one_is_refused_at_record_level(defenses):
    raw = tiny_raw(defenses=defenses, attacks=[], privacy={"neighbouring": "replace_one"})
    with pytest.raises(ConfigError, match=r"^privacy\.neighbouring: got 'replace_one'; dp_sgd .* use add_remove or auto$"):
        parse_experiment(raw)
    # add/remove and auto are accepted for dp_sgd; replace-one for client_dp alone
    for rel in ("add_remove", "auto"):
        parse_experiment(tiny_raw(defenses=defenses, attacks=[], privacy={"neighbouring": rel}))
    parse_experiment(tiny_raw(defenses=[CLIENT_DP], attacks=[], privacy={"neighbouring": "replace_one"}))


def test_unknown_relation_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"privacy\.neighbouring: got 'replace'.*did you mean 'replace_one'"):
        parse_experiment(tiny_raw(privacy={"neighbouring": "replace"}))


# ------------------------------------------------------------------ cells


def test_dp_sgd_cell_logs_delta_beside_epsilon_per_site():
    out = _run(tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0}], attacks=[]))
    final = out.final()
    sites = [k.split("/")[2] for k in final if k.startswith("privacy/site/") and k.endswith("/epsilon")]
    assert len(sites) == 3
    for s in sites:
        assert final[f"privacy/site/{s}/delta"] == 1e-5  # each hospital holds < 1000 records
    assert out.param_values["privacy.neighbouring"] == "auto"
    assert out.tag_values["neighbouring"] == "record:add_remove"
    assert "dp_weak_guarantee" not in out.tag_values


def test_client_dp_defaults_to_replace_one_and_can_be_restated_as_add_remove():
    auto = _run(tiny_raw(defenses=[CLIENT_DP], attacks=[]))
    add = _run(tiny_raw(defenses=[CLIENT_DP], attacks=[], privacy={"neighbouring": "add_remove"}))
    assert auto.tag_values["neighbouring"] == "client:replace_one"
    assert add.tag_values["neighbouring"] == "client:add_remove"
    assert add.param_values["privacy.neighbouring"] == "add_remove"
    e_auto, e_add = auto.final()["privacy/client/epsilon"], add.final()["privacy/client/epsilon"]
    # 3 hospitals, 3 rounds, σ = 1: replace-one is the add/remove Gaussian at σ/2
    half = DPEvent("poisson_gaussian", "client", "federation", 0.5, 1.0, 3, 3)
    assert e_auto == pytest.approx(epsilon_of([half], 1e-5))
    assert e_add == pytest.approx(epsilon_of([_client_event("add_remove")], 1e-5))
    assert e_auto > 2 * e_add
    assert auto.final()["privacy/client/delta"] == add.final()["privacy/client/delta"] == 1e-5


def test_delta_at_or_above_one_over_n_is_tagged_and_keeps_client_dps_reason(caplog):
    # 3 hospitals: δ = 0.5 ≥ 1/3. client_dp also tags its own "few hospitals" reason: both survive.
    with caplog.at_level(logging.WARNING, logger="bench.runner"):
        out = _run(tiny_raw(defenses=[CLIENT_DP], attacks=[], privacy={"delta": 0.5}))
    tags = out.tag_values
    assert tags["dp_weak_guarantee"] == "true"
    assert "3 hospitals" in tags["dp_weak_guarantee_reason"]  # client_dp's
    assert "delta >= 1/n for client 'federation' (n=3, delta=0.5)" in tags["dp_weak_guarantee_reason"]
    assert any("delta >= 1/n" in r.getMessage() for r in caplog.records)


def test_privacy_tags_merge_reasons_and_leave_inputs_alone():
    rep = account([_client_event("replace_one")], delta=0.5)
    before = {"dp_weak_guarantee": "true", "dp_weak_guarantee_reason": "few hospitals"}
    keep = dict(before)
    tags = privacy_tags(rep, before)
    assert before == keep
    assert tags["dp_weak_guarantee_reason"].startswith("few hospitals; delta >= 1/n")
    assert privacy_tags(account([_client_event("replace_one")]), {}) == {
        "dp": "true", "privacy_unit": "client", "neighbouring": "client:replace_one",
    }
    assert privacy_tags(account([]), before) == {"dp": "false"}


# ------------------------------------------------------------------ audits


def test_audits_compare_with_the_add_remove_epsilon():
    # canary clients are present or absent: the audit's claim is add/remove even when the
    # cell's headline ε is replace-one
    events = (_client_event("replace_one", rounds=20, hospitals=4),)
    out = AuditScores(ids=np.arange(10), observations={"all_rounds": np.zeros(10)}, unit="client", party="federation")
    audited = accountant_epsilon(out, events, "rdp", 1e-5)
    assert audited == pytest.approx(account([_client_event("add_remove", 20, 4)]).epsilon(), rel=1e-9)
    assert audited == pytest.approx(30.127, abs=1e-3)
    assert account(events).epsilon() == pytest.approx(81.116, abs=1e-3)
