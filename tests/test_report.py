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
from bench.report import CellRun, group_settings, headline, latest_per_key, pareto_mask, write_report
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


def _fill_store(uri: str, suite_name: str = "reptest", failed: bool = True) -> MlflowTracker:
    tracker = MlflowTracker(uri)
    suite = SimpleNamespace(name=suite_name, source={"suite": suite_name}, cells=[None] * 5)
    tracker.begin_suite(suite)
    rng = np.random.default_rng(0)
    for (setting, seed), k in KNOWN.items():
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
    assert "0.850 ± 0.071" in md


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
