"""Attribute inference in the report (issue 24 item 3): the member/non-member signal
(``attack/<attack>/<attribute>/signal``, bench.metrics.attribute) as a decision-table column with
its interval and verdict word, paired with no defense, in the HTML, and in the threat matrix.

Synthetic run frames with known answers: with no defense the outsider's signal on ``sex`` is
0.10 on every seed (± 0.005: the interval over 3 seeds is far above 0) and the server's 0.04;
under DP-SGD both straddle 0.
"""

from __future__ import annotations

import pytest

from bench.report import paired_comparisons
from bench.report.decision import as_mapping, decision_html, decision_table
from bench.report.load import CellRun, group_settings
from bench.report.threats import matrix_figure, threat_matrix, verdicts

DP_TAGS = {"dp": "true", "privacy_unit": "record", "neighbouring": "record:add_remove"}


def _run(setting, seed, metrics, defenses="none", tags=None, **params):
    p = {"seed": str(seed), "data.name": "heart_disease", "defenses": defenses,
         "attacks": "attribute_inference+attribute_inference_server", **params}
    t = {"dataset": "heart_disease", "run_key": f"{setting}-{seed}", "defenses": defenses, **(tags or {})}
    return CellRun(f"id-{setting}-{seed}", f"{setting} · seed {seed}", "FINISHED", seed, p, t, metrics)


def _signal(attack, attr, value, half=0.05):
    k = f"attack/{attack}/{attr}/signal"
    return {k: value, f"{k}_ci_low": value - half, f"{k}_ci_high": value + half, f"{k}_verdict": 0.0}


def _cells(with_dp=True):
    cells = []
    for i in range(3):
        wobble = 0.005 * (i - 1)
        cells.append(_run("no defense", i, {
            "utility/test_accuracy": 0.80,
            **_signal("attribute_inference", "sex", 0.10 + wobble), **_signal("attribute_inference", "age", 0.01 + wobble),
            **_signal("attribute_inference_server", "sex", 0.04 + wobble),
            # a per-subgroup signal: not a headline, however large
            "attack/attribute_inference/sex/group/site/a/signal": 0.9}))
        if with_dp:
            cells.append(_run("dp_sgd(eps=1)", i, {
                "utility/test_accuracy": 0.75, "privacy/epsilon": 1.0, "privacy/delta": 1e-5,
                **_signal("attribute_inference", "sex", (-0.02, 0.01, 0.02)[i]), **_signal("attribute_inference", "age", (0.01, -0.01, 0.0)[i]),
                **_signal("attribute_inference_server", "sex", (0.01, -0.02, 0.0)[i])},
                defenses="dp_sgd", tags=DP_TAGS, **{"defenses.dp_sgd.target_epsilon": "1.0"}))
    return cells


def test_decision_table_has_the_strongest_attribute_signal_with_interval_and_verdict():
    cells = _cells()
    table = decision_table(group_settings(cells), paired_comparisons(cells))
    assert "attribute inference" in table.head
    rows = {r[0].text: dict(zip(table.head, r)) for r in table.rows}
    base = rows["no defense"]["attribute inference"]
    # the outsider's sex signal (0.10 on every seed) beats the server's 0.04 and age's 0.01, and the 0.9 of a subgroup is not a headline
    assert base.text.startswith("attribute_inference sex: signal +0.100 [") and base.mean == pytest.approx(0.10)
    assert 0 < base.low < 0.1 < base.high < 0.12 and base.verdict == "leaks beyond imputation"
    assert "strongest of 3" in base.detail
    dp = rows["dp_sgd(eps=1)"]["attribute inference"]
    assert dp.low < 0 < dp.high and dp.verdict.startswith("no detectable signal")
    # the strongest under DP is age (highest lower end), paired with no defense's age signal (0.01): no detectable change
    assert dp.text.startswith("attribute_inference age:") and dp.verdict == "no detectable signal; no detectable change vs no defense"


def test_paired_comparisons_cover_the_attribute_signal():
    comps = paired_comparisons(_cells())
    sex = [c for c in comps if c.metric == "attack/attribute_inference/sex/signal"]
    assert len(sex) == 1 and sex[0].diff.verdict == "lower" and sex[0].diff.high < 0
    assert not [c for c in comps if "/group/" in c.metric]


def test_attribute_column_is_in_the_html_and_absent_without_those_metrics():
    cells = _cells()
    page = decision_html(decision_table(group_settings(cells), paired_comparisons(cells)))
    assert "<th>attribute inference</th>" in page and "leaks beyond imputation" in page and "class='v bad'" in page
    plain = [_run("no defense", i, {"utility/test_accuracy": 0.8}) for i in range(3)]
    t = decision_table(group_settings(plain), paired_comparisons(plain))
    assert "attribute inference" not in t.head and all("attribute inference" not in r for r in as_mapping(t))


def test_threat_matrix_shows_attribute_inference_against_each_adversary(tmp_path):
    cells = _cells()
    m = threat_matrix([{"row": c.tags["defenses"], "seed": c.seed, "metrics": dict(c.metrics), "tags": dict(c.tags)} for c in cells])
    out, server = m["none"]["outsider"], m["none"]["server"]
    assert (out.attack, out.metric, out.chance) == ("attribute_inference", "sex/signal", 0.0)
    assert out.estimate.mean == pytest.approx(0.10) and out.estimate.low > 0
    assert (server.attack, server.metric) == ("attribute_inference_server", "sex/signal")
    said = verdicts(m)
    assert any("none / outsider" in v and "leaks sex beyond imputation" in v for v in said), said
    assert not any(v.startswith("dp_sgd") and "leaks" in v for v in said), said  # under DP the signal holds 0
    assert matrix_figure(m, tmp_path / "threats.png").stat().st_size > 10_000
    # the decision table's adversary columns say it in the signal's words
    table = decision_table(group_settings(cells), paired_comparisons(cells))
    row = dict(zip(table.head, next(r for r in table.rows if r[0].text == "no defense")))
    assert row["vs outsider (final model)"].verdict == "leaks beyond imputation"
