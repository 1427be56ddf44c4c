"""The report reads a suite back from a real MLflow store and writes figures, tables and HTML.

Most tests fill a temporary SQLite store through the real ``MlflowTracker`` with known
numbers (so means, standard deviations and the Pareto front have known answers) and with
attack names the report has never heard of (it must be driven by metric families).
"""

from __future__ import annotations

import base64
import csv
import io
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.cli import main
from bench.report import (
    CellRun, comparison_records, group_settings, headline, latest_per_key, paired_comparisons, paired_difference, pareto_by_verdicts, pareto_mask,
    t_interval, write_report,
)
from bench.report.compare import setting_difference
from bench.report.figures import audit_points
from bench.tracking import MlflowTracker

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- pure parts


def test_pareto_mask_known_answer():
    # risk (lower better), utility (higher better)
    risk = [0.50, 0.60, 0.55, 0.70, 0.60]
    util = [0.70, 0.90, 0.65, 0.95, 0.85]
    # (0.55, 0.65) is dominated by (0.50, 0.70); (0.60, 0.85) by (0.60, 0.90)
    assert pareto_mask(risk, util).tolist() == [True, True, False, True, False]
    # identical points do not dominate each other
    assert pareto_mask([0.5, 0.5], [0.9, 0.9]).tolist() == [True, True]


def _cell(name, seed, key_extra=None, metrics=None, status="FINISHED", start=0, run_key=None, sizes=None, **params):
    p = {"seed": str(seed), "data.name": "heart_disease", **params}
    for site, n in (sizes or {}).items():
        p[f"data.site_size.{site}"] = str(n)
    tags = {"dataset": "heart_disease", "run_key": run_key or f"{name}-{seed}"}
    return CellRun(f"id-{name}-{seed}-{start}", f"heart_disease · {name} · seed {seed}", status, start, p, tags, metrics or {})


def test_settings_group_seeds_and_give_mean_and_sample_std():
    cells = [
        _cell("no defense", 0, metrics={"utility/test_accuracy": 0.8}, sizes={"a": 10}),
        _cell("no defense", 1, metrics={"utility/test_accuracy": 0.9}, sizes={"a": 12}),  # hospital size differs per seed
        _cell("dp_sgd(z=1,C=1)", 0, metrics={"utility/test_accuracy": 0.7}, defenses="dp_sgd"),
    ]
    settings = group_settings(cells)
    assert [s.label for s in settings] == ["heart_disease · no defense", "heart_disease · dp_sgd(z=1,C=1)"]
    mean, std, n = settings[0].stat("utility/test_accuracy")
    assert (mean, n) == (pytest.approx(0.85), 2)
    assert std == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert settings[1].stat("utility/test_accuracy") == (pytest.approx(0.7), 0.0, 1)
    assert settings[0].stat("privacy/epsilon") is None


def test_same_label_different_config_gets_the_difference_appended():
    cells = [_cell("no defense", 0, attacks="lira"), _cell("no defense", 0, attacks="canary_audit", **{"attacks.canary_audit.num_canaries": "100"})]
    labels = sorted(s.label for s in group_settings(cells))
    assert labels == ["heart_disease · no defense [attacks=canary_audit]", "heart_disease · no defense [attacks=lira]"]


def test_latest_finished_run_per_key_wins_and_failures_without_a_rerun_are_left_out():
    runs = [
        _cell("a", 0, status="FAILED", start=1, run_key="k1"),
        _cell("a", 0, status="FINISHED", start=2, run_key="k1", metrics={"utility/test_accuracy": 0.5}),
        _cell("a", 0, status="FINISHED", start=3, run_key="k1", metrics={"utility/test_accuracy": 0.6}),
        _cell("b", 0, status="FAILED", start=4, run_key="k2"),
    ]
    finished, failed = latest_per_key(runs)
    assert [c.metrics["utility/test_accuracy"] for c in finished] == [0.6]
    assert [c.run_key for c in failed] == ["k2"]
    # a later FINISHED run of the same cell under a new run_key (a code default changed) supersedes the failure
    later = _cell("b", 0, status="FINISHED", start=5, run_key="k2-new")
    assert latest_per_key(runs + [later])[1] == ()
    # but a finished run that started before the failure does not
    earlier = _cell("b", 0, status="FINISHED", start=0, run_key="k2-old")
    assert [c.run_key for c in latest_per_key(runs + [earlier])[1]] == ["k2"]


def test_headline_takes_the_strongest_attack_of_each_family_whatever_its_name():
    m = {"attack/zz_new/auc": 0.61, "attack/other/auc": 0.55, "attack/other/tpr_at_fpr_0.01": 0.2,
         "attack/inv/psnr": 17.0, "attack/src/accuracy": 0.9, "attack/bad/auc": float("nan")}
    h = headline(m)
    assert h["strongest/membership_auc"] == 0.61
    assert h["strongest/membership_tpr_at_fpr_0.01"] == 0.2
    assert h["strongest/inversion_psnr"] == 17.0
    assert "strongest/inversion_feature_accuracy" not in h


# --------------------------------------------------------------------------- intervals and paired verdicts


def test_t_interval_known_answer_and_no_interval_for_one_seed():
    e = t_interval([0.8, 0.9, 1.0])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) · s / √n
    assert (e.mean, e.low, e.high, e.n) == (pytest.approx(0.9), pytest.approx(0.9 - half), pytest.approx(0.9 + half), 3)
    one = t_interval([0.7])
    assert one.mean == 0.7 and not one.has_interval
    assert t_interval([]) is None


def test_paired_difference_verdicts_known_answers():
    # a constant shift of -0.1 with little noise: detected as lower
    d = paired_difference([(0.5, 0.6), (0.49, 0.6), (0.51, 0.6)])
    assert d.mean == pytest.approx(-0.1) and d.high < 0 and d.verdict == "lower"
    # differences 1, 2, 3: mean 2, half-width t(0.975, 2) / √3 = 2.484 -> interval holds 0
    d = paired_difference([(1, 0), (2, 0), (3, 0)])
    assert (d.low, d.high) == (pytest.approx(2 - 2.48414, abs=1e-4), pytest.approx(2 + 2.48414, abs=1e-4))
    assert d.verdict == "no detectable difference"
    # one seed: MOVER over the cells' own intervals, d = 0.3, low = 0.3 - hypot(0.1, 0.1) > 0
    d = paired_difference([(0.5, 0.2)], [((0.4, 0.6), (0.1, 0.3))])
    assert d.low == pytest.approx(0.3 - math.hypot(0.1, 0.1)) and d.verdict == "higher"
    # one seed, no interval: no verdict
    assert paired_difference([(0.5, 0.2)]).verdict == "not enough seeds"


def _run(setting, seed, metrics, defenses="none", **params):
    p = {"seed": str(seed), "data.name": "heart_disease", "defenses": defenses, **params}
    tags = {"dataset": "heart_disease", "run_key": f"{setting}-{seed}", "defenses": defenses}
    return CellRun(f"id-{setting}-{seed}", f"heart_disease · {setting} · seed {seed}", "FINISHED", seed, p, tags, metrics)


def test_paired_comparisons_detect_a_known_difference_ignore_noise_and_unpaired_seeds():
    rng = np.random.default_rng(1)
    base = [0.70, 0.62, 0.66]
    cells = [_run("no defense", i, {"attack/x/auc": b, "utility/test_accuracy": 0.8 + 0.01 * i}) for i, b in enumerate(base)]
    # dp: exactly 0.1 lower AUC on every seed (plus tiny noise); accuracy equal up to +-0.005
    cells += [_run("dp", i, {"attack/x/auc": b - 0.1 + rng.normal(0, 1e-3), "utility/test_accuracy": 0.8 + 0.01 * i + (-1) ** i * 0.005},
                   defenses="dp_sgd", **{"defenses.dp_sgd.noise_multiplier": "1.0"}) for i, b in enumerate(base)]
    # a seed the baseline lacks: never paired, whatever its value
    cells.append(_run("dp", 7, {"attack/x/auc": 0.99, "utility/test_accuracy": 0.1}, defenses="dp_sgd", **{"defenses.dp_sgd.noise_multiplier": "1.0"}))
    # another model: not the same config, so not compared with this no defense
    cells.append(_run("dp other model", 0, {"attack/x/auc": 0.5}, defenses="dp_sgd", **{"model.name": "mlp"}))
    comps = {c.metric: c for c in paired_comparisons(cells)}
    assert set(comps) == {"attack/x/auc", "utility/test_accuracy"}
    auc = comps["attack/x/auc"]
    assert auc.diff.n == 3 and {s for s, _, _ in auc.per_seed} == {"0", "1", "2"}
    assert auc.diff.mean == pytest.approx(-0.1, abs=2e-3) and auc.diff.verdict == "lower"
    acc = comps["utility/test_accuracy"]
    assert acc.diff.verdict == "no detectable difference" and acc.diff.low < 0 < acc.diff.high
    assert auc.baseline == "heart_disease · no defense"


def test_an_attack_run_with_other_parameters_is_not_compared():
    cells = [_run("no defense", i, {"attack/lira/auc": 0.7, "utility/test_accuracy": 0.8}, **{"attacks.lira.num_references": "16"}) for i in range(2)]
    cells += [_run("dp", i, {"attack/lira/auc": 0.6, "utility/test_accuracy": 0.7}, defenses="dp_sgd", **{"attacks.lira.num_references": "8"})
              for i in range(2)]
    assert [c.metric for c in paired_comparisons(cells)] == ["utility/test_accuracy"]


def test_logged_names_are_valid_mlflow_keys_and_unique_per_setting():
    # the same defense in two groups (membership attacks, and an audit that changes training): two slugs
    cells = []
    for attacks, extra in (("lira", {}), ("canary_audit", {"attacks.canary_audit.num_canaries": "100"})):
        for defenses in ("none", "dp_sgd"):
            for i in range(2):
                name = "no defense" if defenses == "none" else "dp_sgd(eps=1,C=1)+secure_aggregation"
                cells.append(_run(f"{name} · attacks={attacks}", i, {"utility/test_accuracy": 0.8 - 0.1 * (defenses != "none") + 0.01 * i},
                                  defenses=defenses, attacks=attacks, **extra))
    comps = paired_comparisons(cells)
    assert len({c.setting for c in comps}) == 2
    parent, tags, child = comparison_records(comps)
    assert all(re.fullmatch(r"[/\w.\- ]*", k) for k in [*parent, *tags] + [k for m, t in child.values() for k in [*m, *t]])
    assert len([k for k in parent if k.endswith("utility/test_accuracy/diff")]) == 2
    assert {v for k, v in tags.items()} == {"lower"}


def test_pareto_front_counts_only_detectable_differences():
    # per seed (risk, utility). B beats A on risk by noise only; C is detectably worse than A on both.
    a = [(0.60, 0.80), (0.62, 0.82), (0.61, 0.81)]
    b = [(0.605, 0.81), (0.60, 0.825), (0.60, 0.81)]  # lower risk and higher utility on average, inside the noise
    c = [(0.70, 0.70), (0.72, 0.71), (0.71, 0.70)]
    pts = [a, b, c]

    def verdicts(axis):
        return [[paired_difference([(pj[k][axis], pi[k][axis]) for k in range(3)]).verdict for pi in pts] for pj in pts]

    front = pareto_by_verdicts(verdicts(0), verdicts(1))
    assert front.tolist() == [True, True, False]
    # the raw rule on means drops A: B "dominates" it by noise
    means = np.asarray([np.mean(p, axis=0) for p in pts])
    assert pareto_mask(means[:, 0], means[:, 1]).tolist() == [False, True, False]


def test_setting_difference_is_paired_by_seed():
    cells = [_run("no defense", i, {"utility/test_accuracy": v}) for i, v in enumerate([0.6, 0.8, 0.7])]
    cells += [_run("dp", i, {"utility/test_accuracy": v - 0.05}, defenses="dp_sgd") for i, v in enumerate([0.6, 0.8, 0.7])]
    none, dp = sorted(group_settings(cells), key=lambda s: s.is_baseline)[::-1]
    d = setting_difference(dp, none, "utility/test_accuracy")
    # the seeds' spread (0.1) cancels in the pairs: an exact -0.05 shift is detected
    assert d.mean == pytest.approx(-0.05) and d.verdict == "lower"


def test_audit_points_say_when_an_audit_could_not_fail():
    m = {"audit/canary_audit/epsilon_lower_bound": 0.2, "audit/canary_audit/epsilon_estimate": 0.5,
         "audit/canary_audit/max_certifiable_epsilon": 2.8, "audit/canary_audit/accountant_epsilon": 5.6,
         "audit/canary_audit/delta": 1e-5, "privacy/epsilon": 4.0}
    (s,) = group_settings([_run("dp", 0, m, defenses="dp_sgd")])
    ((name, e, delta, _),) = audit_points(s)
    assert name == "canary_audit" and delta == 1e-5
    assert e["accountant"].mean == 5.6 and e["max_certifiable"].mean < e["accountant"].mean


# --------------------------------------------------------------------------- from a real store


def _png(color) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.imshow(np.full((4, 8, 3), color, dtype=float))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# Known numbers per (setting, seed): accuracy, membership AUC, epsilon
KNOWN = {
    ("none", 0): dict(acc=0.90, auc=0.70, eps=None),
    ("none", 1): dict(acc=0.80, auc=0.60, eps=None),
    ("dp", 0): dict(acc=0.70, auc=0.52, eps=2.0),
    ("dp", 1): dict(acc=0.72, auc=0.54, eps=2.0),
}


def _fill_store(uri: str, suite_name: str = "reptest", failed: bool = True, known=None) -> MlflowTracker:
    tracker = MlflowTracker(uri)
    suite = SimpleNamespace(name=suite_name, source={"suite": suite_name}, cells=[None] * 5)
    tracker.begin_suite(suite)
    rng = np.random.default_rng(0)
    for (setting, seed), k in (known or KNOWN).items():
        label = "no defense" if setting == "none" else "dp_sgd(z=1,C=1)"
        name = f"heart_disease · {label} · seed {seed}"
        tags = {"suite": suite_name, "run_key": f"{setting}{seed}", "dataset": "heart_disease", "defenses": setting, "seed": str(seed)}
        with tracker.cell(name, tags) as out:
            out.params({"seed": seed, "data.name": "heart_disease", "defenses": setting, "data.site_size.small": 20 + seed, "data.site_size.big": 200})
            for r in (1, 2, 3):
                out.metrics({"utility/test_accuracy": k["acc"] * r / 3, "utility/site/small/accuracy": 0.5, "utility/site/big/accuracy": 0.9}, step=r)
            final = {
                "utility/test_accuracy": k["acc"], "utility/site/small/accuracy": k["acc"] - 0.2, "utility/site/big/accuracy": k["acc"] + 0.05,
                "utility/worst_site_accuracy": k["acc"] - 0.2, "utility/site_accuracy_gap": 0.25,
                "attack/zz_mia/auc": k["auc"], "attack/zz_mia/tpr_at_fpr_0.01": k["auc"] / 10,
                "attack/zz_inv/psnr": 30 * k["auc"], "attack/zz_tab/feature_accuracy": k["auc"], "attack/zz_tab/baseline_feature_accuracy": 0.4,
                "cost/seconds": 1.0 + seed, "cost/bytes_per_client": 1000.0,
            }
            if k["eps"] is not None:
                final.update({"privacy/epsilon": k["eps"], "audit/epsilon_lower_bound": 0.3})
            out.metrics(final, step=3)
            member = np.arange(200) % 2 == 0
            scores = rng.normal(size=200) + member * (k["auc"] - 0.5) * 3
            out.bytes(_npz(ids=np.arange(200), scores=scores, is_member=member), "attacks/zz_mia/scores.npz")
            out.bytes(_png((0.2, 0.4, 0.8)), "attacks/zz_inv/grid_round1.png")
    if failed:
        with pytest.raises(RuntimeError):
            with tracker.cell("heart_disease · sparsify(keep=0.1) · seed 0", {"suite": suite_name, "run_key": "sp0", "dataset": "heart_disease"}) as out:
                out.params({"seed": 0, "defenses": "sparsify"})
                raise RuntimeError("boom in round 2")
    tracker.end_suite("FAILED" if failed else "FINISHED")
    return tracker


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'm.db'}"
    tracker = _fill_store(uri)
    res = write_report("reptest", uri, str(tmp / "out"))
    return SimpleNamespace(uri=uri, tracker=tracker, res=res, out=tmp / "out")


def test_report_draws_every_family_present_and_skips_nothing(filled):
    files = set(filled.res.files)
    assert {"frontier.png", "membership_attacks.png", "roc_zz_mia.png", "epsilon_audit.png", "gallery_zz_inv.png",
            "tabular_inversion.png", "sites.png", "rounds.png", "cost.png", "summary.csv", "report.html"} <= files
    assert filled.res.skipped == ()  # every figure's data is there, and no drawing failed
    for f in files:
        assert (filled.out / f).stat().st_size > 0
    assert filled.res.settings == 2


def test_summary_csv_holds_mean_and_std_over_seeds(filled):
    rows = {r["setting"]: r for r in csv.DictReader(open(filled.out / "summary.csv", encoding="utf-8"))}
    assert set(rows) == {"heart_disease · no defense", "heart_disease · dp_sgd(z=1,C=1)"}  # the FAILED cell is not a row
    none, dp = rows["heart_disease · no defense"], rows["heart_disease · dp_sgd(z=1,C=1)"]
    assert float(none["utility/test_accuracy mean"]) == pytest.approx(0.85)
    assert float(none["utility/test_accuracy std"]) == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert float(dp["attack/zz_mia/auc mean"]) == pytest.approx(0.53)
    assert float(dp["privacy/epsilon mean"]) == pytest.approx(2.0)
    assert none["privacy/epsilon mean"] == ""  # not DP: no ε, never a made-up one
    assert float(none["strongest/membership_auc mean"]) == pytest.approx(0.65)
    assert none["seeds"] == "0,1" and none["n"] == "2"
    md = (filled.out / "summary.md").read_text(encoding="utf-8")
    # 95 % t-interval over 2 seeds: 0.85 ± t(0.975, 1) · 0.0707 / √2 = 0.85 ± 0.635, clipped to
    # [0, 1] (an accuracy cannot exceed 1)
    assert "0.850 [0.215, 1.000]" in md
    assert float(none["utility/test_accuracy ci_low"]) == pytest.approx(0.85 - 12.7062 * np.std([0.9, 0.8], ddof=1) / math.sqrt(2), abs=1e-4)


def test_report_html_is_self_contained_and_names_the_failed_cell(filled):
    page = (filled.out / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == len(filled.res.figures)
    base64.b64decode(srcs[0].split(",", 1)[1], validate=True)
    assert "heart_disease · sparsify(keep=0.1) · seed 0" in page and "boom in round 2" in page
    assert "FAILED" in page
    assert [c.name for c in filled.res.failed_cells] == ["heart_disease · sparsify(keep=0.1) · seed 0"]


def test_report_files_are_artifacts_of_the_latest_parent_run(filled):
    client = filled.tracker.client
    assert filled.res.parent_run_id == filled.tracker.parent_id
    logged = {Path(f.path).name for f in client.list_artifacts(filled.tracker.parent_id, "report")}
    assert set(filled.res.files) <= logged
    remote = Path(client.download_artifacts(filled.tracker.parent_id, "report/summary.csv", str(filled.out.parent)))
    assert remote.read_bytes() == (filled.out / "summary.csv").read_bytes()


def test_pareto_reading_names_the_undominated_settings(filled):
    page = (filled.out / "report.html").read_text(encoding="utf-8")
    # no defense: AUC 0.65, acc 0.85; dp: AUC 0.53, acc 0.71 -> neither dominates the other
    reading = re.search(r"Pareto-optimal on the first axis[^<]*", page).group(0)
    assert "no defense" in reading and "dp_sgd" in reading


def test_comparisons_are_logged_to_the_parent_and_each_defense_cell(filled):
    client = filled.tracker.client
    parent = client.get_run(filled.tracker.parent_id).data
    key = "compare/heart_disease dp_sgd z1 C1/attack/zz_mia/auc"
    # dp - none per seed: 0.52 - 0.70 = -0.18, 0.54 - 0.60 = -0.06: mean -0.12, half-width 12.706 * 0.0849 / √2
    assert parent.metrics[f"{key}/diff"] == pytest.approx(-0.12)
    assert parent.metrics[f"{key}/diff_high"] == pytest.approx(-0.12 + 12.7062 * np.std([-0.18, -0.06], ddof=1) / math.sqrt(2), abs=1e-4)
    assert parent.tags[f"{key}/verdict"] == "no detectable difference"
    exp = client.get_experiment_by_name("reptest")
    dp_cells = client.search_runs([exp.experiment_id], "tags.defenses = 'dp'")
    assert len(dp_cells) == 2
    for r in dp_cells:
        assert r.data.tags["compare/attack/zz_mia/auc/verdict"] == "no detectable difference"
        assert r.data.metrics["compare/attack/zz_mia/auc/diff"] == pytest.approx(-0.12)
        assert r.data.tags["compare/baseline"] == "heart_disease · no defense"
    rows = list(csv.DictReader(open(filled.out / "comparisons.csv", encoding="utf-8")))
    assert {r["verdict"] for r in rows if r["metric"] == "attack/zz_mia/auc"} == {"no detectable difference"}


def test_two_seed_report_has_no_banner_and_one_seed_report_says_indicative_on_every_figure(filled, tmp_path):
    assert "INDICATIVE ONLY" not in (filled.out / "report.html").read_text(encoding="utf-8")
    uri = f"sqlite:///{tmp_path / 'one.db'}"
    _fill_store(uri, "oneseed", failed=False, known={k: v for k, v in KNOWN.items() if k[1] == 0})
    res = write_report("oneseed", uri, str(tmp_path / "out"), attach=False)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "INDICATIVE ONLY: one seed per setting" in page
    assert res.figures and all(f.reading.startswith("INDICATIVE ONLY") for f in res.figures)
    # one seed and no within-cell interval: no verdict is claimed
    assert {c.diff.verdict for c in res.comparisons} == {"not enough seeds"}


def test_figures_without_data_are_skipped_with_a_note(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker(uri)
    tracker.begin_suite(SimpleNamespace(name="bare", source={}, cells=[None]))
    with tracker.cell("breast_cancer · no defense · seed 0", {"run_key": "x", "dataset": "breast_cancer"}) as out:
        out.params({"seed": 0})
        out.metrics({"utility/test_accuracy": 0.9}, step=1)
    tracker.end_suite("FINISHED")
    res = write_report("bare", uri, str(tmp_path / "out"))
    assert res.figures == ()
    titles = {s.title for s in res.skipped}
    assert {"Privacy–utility frontier", "Accountant ε against the audited ε lower bound", "Per-hospital utility"} <= titles
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Not drawn: no DP cell" in page
    assert not list((tmp_path / "out").glob("frontier*.png"))


def test_rerun_replaces_the_previous_report_files(filled, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    write_report("reptest", filled.uri, str(out), attach=False)
    (out / "stale.png").write_bytes(b"x")
    # a manifest entry for a file no longer produced is removed on the next run; the user's file stays
    import json

    man = json.loads((out / ".report-files.json").read_text())
    (out / ".report-files.json").write_text(json.dumps(man + ["stale.png"]))
    write_report("reptest", filled.uri, str(out), attach=False)
    assert not (out / "stale.png").exists() and (out / "mine.txt").exists() and (out / "frontier.png").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_unknown_suite_lists_the_suites_there(filled, capsys):
    assert main(["report", "--suite", "nope", "--tracking-uri", filled.uri, "--no-attach"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "reptest" in err


def test_cli_empty_store_says_so(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["report", "--suite", "quick", "--tracking-uri", missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowTracker(empty).client.search_experiments()  # creates the tables, no suite
    assert main(["report", "--suite", "quick", "--tracking-uri", empty]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is empty" in err


def test_cli_reports_failed_cells_and_still_writes(filled, tmp_path, capsys):
    assert main(["report", "--suite", "reptest", "--tracking-uri", filled.uri, "--out", str(tmp_path / "o"), "--no-attach"]) == 0
    cap = capsys.readouterr()
    assert "1 cell(s) FAILED and are left out" in cap.err and "sparsify" in cap.err
    assert (tmp_path / "o" / "report.html").is_file() and "frontier.png" in cap.out


@pytest.mark.slow
def test_quick_style_suite_end_to_end(tmp_path):
    """``privbench run`` then ``privbench report`` in fresh processes: at least five PNGs, attached."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "suite: tinyrep\n"
        "base:\n  data: {name: breast_cancer, partition: iid, num_sites: 3}\n  model: {name: logreg}\n"
        "  train: {rounds: 3, local_epochs: 1, batch_size: 16, lr: 0.1}\n  attacks: [{name: loss_threshold}]\n"
        "grid:\n  defenses: [[], [{name: clipping, max_norm: 0.5}]]\nseeds: [0, 1]\n"
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exe = [sys.executable, "-m", "bench"]
    run = subprocess.run(exe + ["run", str(suite), "--tracking-uri", uri, "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rep = subprocess.run(exe + ["report", "--suite", "tinyrep", "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr
    out = tmp_path / "results" / "tinyrep"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 5, pngs
    assert (out / "report.html").is_file() and (out / "summary.csv").is_file()
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert len(rows) == 2 and all(r["n"] == "2" for r in rows)
    acc = [float(r["utility/test_accuracy mean"]) for r in rows]
    assert all(0.5 < a <= 1.0 and math.isfinite(a) for a in acc)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tinyrep")
    parent = client.search_runs([exp.experiment_id], "tags.role = 'suite'")[0]
    logged = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "report")}
    assert set(pngs) | {"report.html", "summary.csv"} <= logged
