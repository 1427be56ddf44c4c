"""The decision table: one row per defense setting with intervals and verdict words, first in report.html."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from bench.report import paired_comparisons, write_report
from bench.report.decision import as_mapping, decision_table, is_attack_only
from bench.report.load import CellRun, group_settings
from bench.tracking import MlflowTracker


def _run(setting, seed, metrics, defenses="none", tags=None, **params):
    p = {"seed": str(seed), "data.name": "heart_disease", "defenses": defenses, **params}
    t = {"dataset": "heart_disease", "run_key": f"{setting}-{seed}", "defenses": defenses, **(tags or {})}
    return CellRun(f"id-{setting}-{seed}", f"heart_disease · {setting} · seed {seed}", "FINISHED", seed, p, t, metrics)


DP_TAGS = {"dp": "true", "privacy_unit": "record", "neighbouring": "record:add_remove"}


def _cells():
    cells = []
    for i in range(3):
        cells.append(_run("no defense", i, {
            "utility/test_accuracy": 0.80 + 0.01 * i, "utility/worst_site_accuracy": 0.70 + 0.01 * i,
            "attack/mia/tpr_at_fpr_0.01": 0.20 + 0.01 * i, "attack/mia/tpr_at_fpr_0.01_ci_low": 0.1, "attack/mia/tpr_at_fpr_0.01_ci_high": 0.3,
            "attack/mia/auc": 0.7}))
        # DP: exactly 0.1 lower accuracy on every seed (so the paired interval is tight), TPR at chance
        cells.append(_run("dp", i, {
            "utility/test_accuracy": 0.70 + 0.01 * i + 0.001 * (-1) ** i, "utility/worst_site_accuracy": 0.60 + 0.01 * i,
            "attack/mia/tpr_at_fpr_0.01": 0.01, "attack/mia/tpr_at_fpr_0.01_ci_low": 0.0, "attack/mia/tpr_at_fpr_0.01_ci_high": 0.05,
            "attack/mia/auc": 0.5, "privacy/epsilon": 4.0, "privacy/delta": 1e-5, "audit/epsilon_lower_bound": 0.2 + 0.01 * i},
            defenses="dp_sgd", tags={**DP_TAGS, "audit_verdict": "suspect" if i == 2 else "no_violation",
                                     "audit_power": "would catch noise understated >= 2x"}, **{"defenses.dp_sgd.noise_multiplier": "1.0"}))
    # an inversion cell: attack-only, its accuracy is not a utility result (the runner logs none under utility/)
    cells.append(_run("inversion", 0, {"attack/dlg/psnr": 14.0, "attack_only/test_accuracy": 0.1}, tags={"cell_kind": "attack_only"},
                      **{"data.members_per_site": "1"}))
    return cells


def test_decision_rows_carry_intervals_and_verdict_words():
    cells = _cells()
    settings = group_settings(cells)
    t = decision_table(settings, paired_comparisons(cells))
    rows = {r[0].text: dict(zip(t.head, r)) for r in t.rows}
    dp = rows["heart_disease · dp"]
    # ε with δ, unit and relation: never ε alone
    assert dp["ε (δ, unit, relation)"].text == "ε 4 (δ 1e-05, record, record:add_remove)"
    cost = dp["accuracy cost"]
    assert cost.mean == pytest.approx(-0.1 + 0.001 / 3, abs=1e-9) and cost.high < 0 and cost.verdict == "costs accuracy"
    assert dp["worst-hospital cost"].mean == pytest.approx(-0.1) and dp["worst-hospital cost"].verdict == "costs worst hospital's accuracy"
    mia = dp["strongest membership attack"]
    assert mia.text.startswith("mia: TPR 0.010") and mia.verdict.startswith("not above chance")
    base_mia = rows["heart_disease · no defense"]["strongest membership attack"]
    assert base_mia.low > 0.01 and base_mia.verdict == "above chance"  # 0.2 ± t over 3 seeds, far above FPR 1 %
    # the most severe audit verdict over seeds, with the bound's interval and the power in words
    audit = dp["audit"]
    assert audit.verdict == "suspect" and "power: would catch" in audit.text and audit.low is not None
    assert rows["heart_disease · no defense"]["accuracy cost"].verdict == "reference"


def test_attack_only_cells_never_show_a_utility_cost():
    cells = _cells()
    settings = group_settings(cells)
    inv = next(s for s in settings if "inversion" in s.label)
    assert is_attack_only(inv) and not any(is_attack_only(s) for s in settings if s is not inv)
    t = decision_table(settings, paired_comparisons(cells))
    row = next(r for r in as_mapping(t) if "inversion" in r["setting"])
    assert row["accuracy cost"] == "attack-only" and row["worst-hospital cost"] == "attack-only"
    assert row["reconstruction"].startswith("dlg: PSNR 14.000")


def test_membership_falls_back_to_auc_where_the_fpr_is_unsupported():
    cells = [_run("no defense", i, {"utility/test_accuracy": 0.8, "attack/mia/auc": 0.70 + 0.01 * i,
                                    "attack/mia/tpr_at_fpr_0.01_unsupported": 60.0}) for i in range(3)]
    t = decision_table(group_settings(cells), paired_comparisons(cells))
    e = dict(zip(t.head, t.rows[0]))["strongest membership attack"]
    assert e.text.startswith("mia: AUC 0.710") and e.verdict == "above chance"
    assert "unsupported (60 non-members)" in e.detail


def test_report_opens_with_the_decision_table_and_attaches_its_csv(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker(uri)
    tracker.begin_suite(SimpleNamespace(name="dec", source={"suite": "dec"}, cells=[None] * 4))
    for c in _cells():
        with tracker.cell(c.name, {**c.tags, "suite": "dec"}) as out:
            out.params(dict(c.params))
            out.metrics(dict(c.metrics), step=1)
    tracker.end_suite("FINISHED")
    res = write_report("dec", uri, str(tmp_path / "out"))
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.index("id='decision'") < page.index("What the paired comparisons say") < page.index("<img")
    rows = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "out" / "decision.csv", encoding="utf-8"))}
    assert rows["heart_disease · dp"]["accuracy cost verdict"] == "costs accuracy"
    assert float(rows["heart_disease · dp"]["accuracy cost ci_high"]) < 0
    assert rows["heart_disease · inversion"]["accuracy cost "] == "attack-only"
    logged = {f.path.split("/")[-1] for f in tracker.client.list_artifacts(res.parent_run_id, "report")}
    assert "decision.csv" in logged
    # the attack-only cell is on no utility figure: it has no utility/ metric at all
    assert "inversion" not in "".join(f.reading for f in res.figures if "accuracy" in f.title.lower())
