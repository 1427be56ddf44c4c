"""``privbench ui`` and the saved MLflow view of a suite (bench/ui.py, bench/mlflow_view.py).

The view format is checked against the MLflow UI bundle installed with mlflow (the keys the
UI loads from a saved view, the tag prefix, the URL parameters, the deflate prefix), so an
MLflow upgrade that changes them fails here rather than silently in a browser. The browser
itself is tests/test_browser.py (slow).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import zlib
from pathlib import Path

import pytest

from bench import mlflow_view as mv
from bench.cli import main
from bench.types import ConfigError

QUICK_LIKE = [
    "utility/test_accuracy", "utility/test_auroc", "utility/worst_site_accuracy", "utility/site/site0/accuracy",
    "privacy/epsilon", "privacy/delta", "privacy/site/site0/epsilon",
    "attack/loss_threshold/auc", "attack/loss_threshold/tpr_at_fpr_0.01", "attack/loss_threshold/tpr_at_fpr_0.01_ci_low",
    "attack/loss_threshold/tpr_at_fpr_0.01_ci_high", "attack/lira/tpr_at_fpr_0.01", "attack/rmia/tpr_at_fpr_0.01",
    "attack/update_cosine/tpr_at_fpr_0.01", "attack/rmia/tpr_at_fpr_0.001_unsupported",
    "audit/epsilon_lower_bound", "audit/canary_audit/epsilon_lower_bound", "audit/detectable_factor",
    "attack/tableak/feature_accuracy", "attack/tableak/baseline_feature_accuracy", "attack/dlg/psnr", "attack/dlg/psnr_ci_low",
    "attack/inverting_gradients/psnr", "compare/utility/test_accuracy/diff", "cost/seconds", "cost/bytes_per_client",
]


def _bundle() -> str:
    import mlflow

    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    mains = sorted(js.glob("main.*.js"))
    if not mains:
        pytest.skip("this mlflow has no UI bundle")
    return "".join(p.read_text(errors="replace") for p in [*mains, *sorted(js.glob("*.chunk.js"))])


@pytest.fixture(scope="module")
def bundle() -> str:
    return _bundle()


def test_headline_columns_pick_the_comparison_metrics_in_reading_order():
    cols = mv.headline_columns(QUICK_LIKE)
    assert cols == [
        "utility/test_accuracy", "privacy/epsilon", "privacy/delta",
        # RMIA and LiRA (the state of the art) first, at most three membership columns, no interval ends
        "attack/rmia/tpr_at_fpr_0.01", "attack/lira/tpr_at_fpr_0.01", "attack/loss_threshold/tpr_at_fpr_0.01",
        "audit/epsilon_lower_bound", "audit/detectable_factor",  # the bound beside the audit's power
        "attack/tableak/feature_accuracy", "attack/dlg/psnr", "attack/inverting_gradients/psnr",
        "cost/seconds",
    ]
    assert mv.headline_columns(["utility/test_accuracy", "cost/seconds"]) == ["utility/test_accuracy", "cost/seconds"]
    assert mv.headline_columns([]) == []


def test_view_state_round_trips_in_the_ui_saved_view_format():
    cols = [mv.DATASET_COLUMN, *mv.headline_columns(QUICK_LIKE)]
    value = mv.shared_view_state(cols, all_metrics=QUICK_LIKE, now_ms=1_700_000_000_000)
    env = json.loads(value)
    # the envelope the UI's "Save view" writes, with the state deflated behind "deflate;"
    assert set(env) == {"name", "createdAt", "updatedAt", "state"}
    assert env["name"] == mv.VIEW_NAME and env["createdAt"] == env["updatedAt"] == 1_700_000_000_000
    assert env["state"].startswith("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(env["state"][len("deflate;"):])))
    assert state == mv.decode_view(value)
    assert state["selectedColumns"] == ["attributes.`Dataset`", *(f"metrics.`{m}`" for m in mv.headline_columns(QUICK_LIKE))]
    assert state["columnOrder"][0] == "attributes.`Run Name`"
    assert state["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "setting"}]}
    assert (state["orderByKey"], state["orderByAsc"]) == mv.DEFAULT_SORT
    # every metric has exactly one chart card (else the UI adds an open chart for it); the
    # headline ones are open, the rest in a collapsed section
    cards = state["compareRunCharts"]
    sections = {s["uuid"]: s for s in state["compareRunSections"]}
    per_metric = [c["metricKey"] for c in cards if c["type"] == "BAR"]
    assert sorted(per_metric) == sorted(QUICK_LIKE)
    assert len({c["uuid"] for c in cards}) == len(cards)
    for c in cards:
        shown = sections[c["metricSectionId"]]["display"]
        assert shown == (c.get("metricKey") in mv.headline_columns(QUICK_LIKE) or c["type"] != "BAR")
    kinds = {c["type"] for c in cards if sections[c["metricSectionId"]]["display"]}
    assert kinds == {"LINE", "SCATTER", "BAR"}
    # plain JSON is accepted too (the UI reads both)
    assert mv.decode_view(mv.encode_state(state, compress=False)) == state


def test_no_grouping_and_a_custom_sort():
    state = mv.decode_view(mv.shared_view_state(["utility/test_accuracy"], group_by_tag=None,
                                                sort=("metrics.`utility/test_accuracy`", False)))
    assert state["groupBy"] is None and state["orderByKey"] == "metrics.`utility/test_accuracy`"
    assert state["selectedColumns"] == ["metrics.`utility/test_accuracy`"]


def test_a_view_too_large_for_a_tag_drops_the_collapsed_charts(caplog):
    many = [f"fairness/exposure/attack{i}/sex/group{j}/tpr_at_fpr_0.01" for i in range(40) for j in range(60)]
    value = mv.shared_view_state(["utility/test_accuracy"], all_metrics=["utility/test_accuracy", *many])
    assert len(value) <= mv.MAX_TAG_VALUE
    assert "too large" in caplog.text
    assert all(c.get("metricKey") == "utility/test_accuracy" for c in mv.decode_view(value)["compareRunCharts"])


def test_view_keys_are_the_ones_the_mlflow_ui_loads(bundle):
    """What the installed UI reads: tag prefix, URL parameters, deflate prefix, the state keys
    it keeps from a saved view (search facets + UI state), column and chart vocabulary."""
    assert 'U="viewStateShareKey",$="mlflow.sharedViewState."' in bundle or (
        '"viewStateShareKey"' in bundle and '"mlflow.sharedViewState."' in bundle)
    assert 'f="deflate;"' in bundle  # the compressed-text header of the UI's (de)compressor
    assert 'e.get("workflowType")' in bundle and 'MACHINE_LEARNING="machine_learning"' in bundle
    assert '"mlflow.experimentKind"' in bundle and 'CUSTOM_MODEL_DEVELOPMENT="custom_model_development"' in bundle
    facets = re.search(r'(\["searchFilter","orderByKey"[^\]]*\])', bundle)
    ui = re.search(r'(\["selectedColumns","columnOrder"[^\]]*\])', bundle)
    assert facets and ui, "the saved-view key lists moved in the UI bundle"
    known = set(json.loads(facets.group(1))) | set(json.loads(ui.group(1)))
    state = mv.decode_view(mv.shared_view_state(["utility/test_accuracy"], all_metrics=["utility/test_accuracy"]))
    assert set(state) <= known, f"keys the UI ignores: {set(state) - known}"
    assert 'e.Tag="tag"' in bundle and 'e.Average="average"' in bundle  # groupBy mode / aggregate
    assert 'RUN_NAME:"Run Name"' in bundle and 'DATASET:"Dataset"' in bundle  # attributes.`Run Name`, `Dataset`
    for kind in ("BAR", "LINE", "SCATTER"):
        assert f'e.{kind}="{kind}"' in bundle
    assert 'SHOWALL="SHOW_ALL"' in bundle


def test_links():
    assert mv.suite_link("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=privbench&workflowType=machine_learning")
    assert mv.suite_link("http://h:1", "7", None) == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"
    link = mv.compare_link("http://h:1", "7", ["a", "b"])
    assert link.startswith("http://h:1/#/compare-runs?runs=%5B%22a%22%2C%22b%22%5D&experiments=%5B%227%22%5D")


def test_run_conventions():
    tags = mv.source_tags("experiments/quick.yaml", "0123456789abcdef")
    assert tags == {"mlflow.source.name": "experiments/quick.yaml", "mlflow.source.type": "LOCAL",
                    "mlflow.source.git.commit": "0123456789abcdef"}
    assert "mlflow.source.git.commit" not in mv.source_tags("x.yaml", "unknown")
    assert mv.dataset_name("breast_cancer") == "breast_cancer"
    assert mv.dataset_name("csv", "/data/site_a/cohort.csv") == "csv:cohort"
    fp = "sha256:" + "0123456789abcdef" * 4
    di = mv.dataset_input("cohort", fp, "/data/cohort.csv", profile={"num_sites": 4})
    assert di.dataset.name == "cohort" and di.dataset.digest == "0123456789ab" and di.dataset.source_type == "local"
    assert json.loads(di.dataset.source) == {"uri": "/data/cohort.csv"}
    assert json.loads(di.dataset.profile) == {"fingerprint": fp, "num_sites": 4}
    assert [(t.key, t.value) for t in di.tags] == [("mlflow.data.context", "train")]
    bundled = mv.dataset_input("breast_cancer", "sklearn-1.5.2:breast_cancer")
    assert bundled.dataset.source_type == "code" and re.fullmatch(r"[0-9a-f]{12}", bundled.dataset.digest)
    assert bundled.dataset.digest != mv.dataset_input("breast_cancer", "sklearn-1.6.0:breast_cancer").dataset.digest
    with pytest.raises(ValueError):
        mv.dataset_input("cohort", "")


def test_write_suite_view_and_inputs_on_a_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.ui import suite_links

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s1")
    client.create_experiment("not_a_suite")
    parent = client.create_run(exp, tags={"role": "suite"}).info.run_id
    cell = client.create_run(exp, tags={"role": "cell", "mlflow.parentRunId": parent, "setting": "x"}).info.run_id
    client.log_metric(cell, "utility/test_accuracy", 0.9, step=3)
    client.log_metric(cell, "cost/seconds", 1.0, step=3)
    client.log_metric(cell, "utility/site/a/accuracy", 0.8, step=3)
    mv.log_dataset_input(client, cell, "breast_cancer", "sha256:abcdef0123456789")
    got = client.get_run(cell).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in got] == [("breast_cancer", "abcdef012345")]

    links = suite_links(client, "http://127.0.0.1:5000", None)
    assert links == [("s1", mv.suite_link("http://127.0.0.1:5000", exp))]
    tags = client.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    state = mv.decode_view(tags["mlflow.sharedViewState.privbench"])
    assert state["selectedColumns"] == ["attributes.`Dataset`", "metrics.`utility/test_accuracy`", "metrics.`cost/seconds`"]
    assert sorted(c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "BAR") == sorted(
        ["utility/test_accuracy", "cost/seconds", "utility/site/a/accuracy"])
    with pytest.raises(ConfigError, match="no suite 'nope' in this store \\(suites: s1\\)"):
        suite_links(client, "http://127.0.0.1:5000", "nope")


def test_ui_refuses_a_missing_store(tmp_path, capsys):
    db = tmp_path / "results" / "mlflow.db"
    assert main(["ui", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(db) in err and "privbench run experiments/quick.yaml" in err
    assert not db.exists()  # nothing was created


def test_ui_refuses_a_busy_port(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"port {port}" in err and "--port" in err


def test_ui_options_and_a_tracking_server(monkeypatch, capsys):
    """With an http(s) store the server already serves the UI: links only, nothing started;
    ``--open`` opens the first suite's link."""
    import argparse

    import bench.ui as ui

    parser = argparse.ArgumentParser()
    ui.add_ui_arguments(parser)
    args = parser.parse_args(["--tracking-uri", "http://mlflow.example:5000", "--open", "--suite", "quick"])
    assert (args.open, args.suite, args.host, args.port) == (True, "quick", "127.0.0.1", 5000)
    seen = {}
    monkeypatch.setattr(ui, "suite_links", lambda client, base, suite: seen.update(base=base, suite=suite) or [
        ("quick", mv.suite_link(base, "3"))])
    monkeypatch.setattr(ui.webbrowser, "open", lambda url: seen.setdefault("opened", url))
    monkeypatch.setattr(ui.subprocess, "Popen", lambda *a, **k: pytest.fail("started a server for an http store"))
    assert ui.cmd_ui(args) == 0
    assert seen == {"base": "http://mlflow.example:5000", "suite": "quick", "opened": mv.suite_link("http://mlflow.example:5000", "3")}
    assert mv.suite_link("http://mlflow.example:5000", "3") in capsys.readouterr().out


def test_local_store_paths():
    from bench.ui import local_store_path

    assert local_store_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert local_store_path("sqlite:///rel/mlflow.db") == Path("rel/mlflow.db")
    assert local_store_path("/abs/mlruns") == Path("/abs/mlruns")
    assert local_store_path("postgresql://u@h/db") is None and local_store_path("http://h:5000") is None


def test_colours_and_grouping_are_what_the_ui_bundle_reads(bundle):
    """Issue 23: two pairs of settings shared a chart colour (the UI hashes run and group ids into its
    palette) and every single-seed setting got a group row. The keys written here are the ones the
    installed UI reads."""
    from bench import ui_app

    palette = re.search(r'const r=\[("#[0-9a-f]{6}"(?:,"#[0-9a-f]{6}")+)\]', bundle)
    assert palette, "the UI's run colour palette moved"
    assert sorted(mv.SETTING_COLORS) == sorted(json.loads(f"[{palette.group(1)}]"))  # the UI's own colours, each once
    assert f'"{mv.RUN_COLOR_TAG}"' in bundle and f'"{mv.GROUP_COLORS_STORAGE_KEY}"' in bundle
    assert "=({groupByData:e,mode:t,value:n})=>`${t}.${e}.${n||null}`" in bundle  # group id = tag.<tag>.<value>
    assert mv.group_id("setting", "no defense") == "tag.setting.no defense"
    page = ui_app.OPEN_PAGE.decode()
    assert ui_app.GROUP_COLORS_TAG == mv.GROUP_COLORS_TAG and ui_app.COLORS_STORAGE_KEY == mv.GROUP_COLORS_STORAGE_KEY
    assert mv.GROUP_COLORS_TAG in page and mv.GROUP_COLORS_STORAGE_KEY in page and "/ajax-api/2.0/mlflow/experiments/get" in page

    colors = mv.setting_colors(["a", "b", "a", "c"])
    assert list(colors) == ["a", "b", "c"] and len(set(colors.values())) == 3
    many = mv.setting_colors([str(i) for i in range(40)])
    assert len(set(list(many.values())[:29])) == 29  # distinct while the palette lasts
    assert mv.group_by_for({"a": 1, "b": 1}) is None and mv.group_by_for({"a": 3, "b": 1}) == "setting"


def test_write_suite_view_colours_each_setting_and_groups_only_settings_with_seeds(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    single, seeded = client.create_experiment("single"), client.create_experiment("seeded")
    runs = {}
    for exp, settings in ((single, ["no defense", "dp", "clip"]), (seeded, ["no defense", "no defense", "dp", "dp", "clip"])):
        for i, s in enumerate(settings):
            r = client.create_run(exp, tags={"role": "cell", "setting": s}, start_time=1000 + i).info.run_id
            client.log_metric(r, "utility/test_accuracy", 0.5)
            runs.setdefault(exp, []).append((r, s))
    for exp, grouped in ((single, None), (seeded, "setting")):
        mv.write_suite_view(client, exp)
        tags = client.get_experiment(exp).tags
        state = mv.decode_view(tags["mlflow.sharedViewState.privbench"])
        assert (state["groupBy"] or {}).get("groupByKeys", [{}])[0].get("groupByData") == grouped
        run_colors = {s: set() for _, s in runs[exp]}
        for r, s in runs[exp]:
            run_colors[s].add(client.get_run(r).data.tags[mv.RUN_COLOR_TAG])
        assert all(len(c) == 1 for c in run_colors.values())  # the seeds of a setting share its colour
        assert len({next(iter(c)) for c in run_colors.values()}) == 3  # and no two settings share one
        groups = json.loads(tags[mv.GROUP_COLORS_TAG])
        assert groups == {f"tag.setting.{s}": next(iter(c)) for s, c in run_colors.items()}
    assert json.loads(client.get_experiment(single).tags[mv.GROUP_COLORS_TAG])["tag.setting.no defense"] == mv.SETTING_COLORS[0]
