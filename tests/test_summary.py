"""The end-of-run CLI summary: what a reader acts on must be there, right and ≤ 120 wide.

Known answers on hand-made cells: the strongest membership attack is the one with the highest
*lower* interval end (not the highest point value), ε always comes with δ, the analytic
attack's 100 % shows, inversion cells are labelled attack-only, audit violations are loud.
"""

from __future__ import annotations

import pytest

from bench.cli import SUMMARY_WIDTH, SummaryRow, _logged_tags, _summary_table, format_membership, format_privacy
from bench.cli import format_reconstruction, format_utility, strongest_membership, summary_cells
from bench.executors import RecordingCellLog


def mia(name: str, tpr: float, low: float, high: float) -> dict[str, float]:
    return {f"attack/{name}/auc": 0.55, f"attack/{name}/tpr_at_fpr_0.01": tpr,
            f"attack/{name}/tpr_at_fpr_0.01_ci_low": low, f"attack/{name}/tpr_at_fpr_0.01_ci_high": high}


UTILITY = {"utility/test_accuracy": 0.939, "utility/majority_baseline": 0.627}
DP = {"privacy/epsilon": 3.992, "privacy/delta": 1e-5}
INVERSION = {"utility/test_accuracy": 0.098, "utility/majority_baseline": 0.1, "attack/analytic/feature_accuracy": 1.0,
             "attack/analytic/feature_accuracy_ci_low": 1.0, "attack/analytic/feature_accuracy_ci_high": 1.0,
             "attack/analytic/targets": 4.0, "attack/tableak/feature_accuracy": 0.7, "attack/tableak/targets": 4.0}


def row(metrics, tags=None, name="breast_cancer · dp_sgd(eps=4,C=1) · seed 0") -> SummaryRow:
    return SummaryRow(name, "FINISHED", metrics, tags or {}, 3.2)


def test_strongest_attack_is_the_highest_lower_end_not_the_highest_point():
    # a lucky point estimate on few records (0.10 [0.00, 0.40]) must not beat a reliable 0.06 [0.03, 0.10]
    m = {**mia("lira", 0.10, 0.0, 0.40), **mia("rmia", 0.06, 0.03, 0.10), **mia("loss_threshold", 0.02, 0.01, 0.05)}
    assert strongest_membership(m) == ("rmia", 0.06, 0.03, 0.10)
    assert format_membership(m) == ("0.060 [0.030,0.100]", "rmia")
    # ties on the lower end go to the higher point value
    tie = {**mia("a", 0.01, 0.0, 0.05), **mia("b", 0.02, 0.0, 0.07)}
    assert strongest_membership(tie)[0] == "b"


def test_epsilon_never_without_delta():
    assert format_privacy(DP, {}) == "3.99 (1e-05)"
    assert format_privacy({"privacy/epsilon": 4.0, "privacy/delta": 0.0015}, {}) == "4.00 (0.0015)"
    assert format_privacy({"privacy/epsilon": 12.07, "privacy/delta": 0.025}, {"dp_weak_guarantee": "true"}) == "12.1 (0.025)!"
    assert format_privacy({"privacy/epsilon": 1.0}, {}) == "1.00 (δ ?)"
    assert format_privacy(UTILITY, {}) == "no DP"


def test_inversion_result_shows_and_attack_only_cells_are_labelled():
    assert format_reconstruction(INVERSION) == "features 100%"
    assert format_reconstruction({"attack/ig/psnr": 23.64, "attack/ig/targets": 4.0, "attack/dlg/psnr": 9.0}) == "PSNR 23.6 dB"
    assert format_utility(INVERSION) == "attack-only"
    assert format_utility(UTILITY) == "0.939 (maj 0.627)"
    assert format_utility({"utility/test_accuracy": 0.6, "utility/majority_baseline": 0.627}) == "0.600! (maj 0.627)"
    # a membership cell is not attack-only, even with an inversion attack in it
    assert format_utility({**INVERSION, **UTILITY, **mia("lira", 0.1, 0.05, 0.2)}) == "0.939 (maj 0.627)"


def test_unsupported_low_fpr_says_why():
    m = {"attack/lira/auc": 0.6, "attack/lira/tpr_at_fpr_0.01_unsupported": 60.0}
    assert format_membership(m) == ("AUC 0.600", "lira")  # the supported metric instead of n/a
    m = {**m, "attack/lira/auc_ci_low": 0.51, "attack/lira/auc_ci_high": 0.69, "attack/rmia/auc": 0.65, "attack/rmia/auc_ci_low": 0.45,
         "attack/rmia/auc_ci_high": 0.85}
    assert format_membership(m) == ("AUC 0.600 [0.51,0.69]", "lira")  # by the lower interval end, not the point
    assert format_membership({"attack/x/tpr_at_fpr_0.01_unsupported": 60.0}) == ("n/a: 60 non-memb.", "")
    assert format_membership(UTILITY) == ("-", "")


def test_audit_violation_is_loud_and_vacuous_audits_are_marked():
    m = {**DP, **UTILITY, "audit/epsilon_lower_bound": 5.2}
    assert "VIOLATION" in summary_cells(row(m, {"audit_violation": "true"}))[3]
    assert summary_cells(row(m, {"audit_violation": "false", "audit_verdict": "vacuous"}))[3] == "ε≥5.20 vacuous"
    assert summary_cells(row(m, {"audit_violation": "false", "audit_verdict": "no_violation"}))[3] == "ε≥5.20"
    assert summary_cells(row(m, {"audit_violation": "false", "audit_verdict": "suspect"}))[3] == "ε≥5.20 SUSPECT"
    powered = {**m, "audit/detectable_factor": 2.5}
    assert summary_cells(row(powered, {"audit_violation": "false", "audit_verdict": "no_violation"}))[3] == "ε≥5.20 2.5×"


def test_table_is_at_most_120_wide_and_explains_its_markers():
    long = "heart_disease · client_dp(z=1,C=0.5)+secure_aggregation+sparsify(keep=0.1) · attacks=" + "+".join(["x" * 12] * 8)
    rows = [
        row({**DP, **UTILITY, **mia("loss_threshold_with_a_long_name", 0.031, 0.012, 0.062)}, {"dp_weak_guarantee": "true"}, long),
        row({**DP, **UTILITY, "audit/epsilon_lower_bound": 123.456}, {"audit_violation": "true"}),
        row(INVERSION, name="breast_cancer · no defense · attacks=analytic+tableak · seed 0"),
        SummaryRow("digits · no defense · seed 0", "FAILED"),
    ]
    text = _summary_table(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= SUMMARY_WIDTH
    assert any(line.startswith("1. heart_disease") and line.endswith("…") for line in lines)  # cut, not wrapped
    assert "features 100%" in text and "attack-only" in text and "VIOLATION" in text and "FAILED" in text
    for marker in ("highest lower end", "dp_weak_guarantee", "not a utility result", "majority class", "VIOLATION:"):
        assert marker in text
    header = "\n".join(lines[:3])
    assert "lower CI end" in header and "ε (δ)" in header and "TPR@1%FPR" in header


@pytest.mark.parametrize("tags", [{}, {"dp_weak_guarantee": "false"}])
def test_no_weak_note_without_a_weak_cell(tags):
    assert "dp_weak_guarantee" not in _summary_table([row({**DP, **UTILITY}, tags)])


def test_tags_come_back_from_a_worker_log():
    log = RecordingCellLog()
    log.tags({"dp": "true"})
    log.metrics({"a": 1.0})
    log.tags({"dp_weak_guarantee": "true"})
    assert _logged_tags(log.events) == {"dp": "true", "dp_weak_guarantee": "true"}


def test_notes_are_never_cut():
    from bench.cli import _NOTES

    assert all(len(note) <= SUMMARY_WIDTH for note in _NOTES.values())
