"""The MLflow UI's own view of a suite: headline columns, grouping, charts, dataset inputs.

MLflow 3 opens an experiment on its GenAI overview, shows three attribute columns and no
metric, cuts run names, and draws one chart per metric (hundreds for a suite). The UI can
load a *saved view* from an experiment tag instead; this module writes one per suite so that
a single link opens the runs table ready to compare defenses.

What MLflow 3.17.2's UI bundle does (``mlflow/server/js/build/static/js``; see
docs/reading-results.md for the evidence):

* ``#/experiments/<id>/runs?viewStateShareKey=<key>`` reads the experiment tag
  ``mlflow.sharedViewState.<key>``. Its value is an envelope
  ``{"name", "createdAt", "updatedAt", "state"}`` (JSON; times in ms); ``state`` is the view
  as JSON, either plain or ``"deflate;" + base64(zlib deflate)`` (what the UI's "Save view"
  writes). The view is the search facets (``searchFilter``, ``orderByKey``, ``orderByAsc``,
  ``startTime``, ``lifecycleFilter``, ``modelVersionFilter``, ``datasetsFilter``) plus the UI
  state (``selectedColumns``, ``columnOrder``, ``columnWidths``, ``runsHiddenMode``,
  ``compareRunCharts``, ``compareRunSections``, ``groupBy``, ...); any other key is ignored.
  A search facet in the URL (``searchFilter=...``) makes the UI ignore the share key.
* ``workflowType=machine_learning`` in the URL selects the training-runs side bar instead of
  the GenAI one. In 3.17 the experiment tag ``mlflow.experimentKind`` is read only when the
  workflow switch is off (it is on), so the URL parameter is what counts; the tag is still
  set, for UIs that read it.
* Columns are ``<group>.`<name>```: ``metrics.`utility/test_accuracy```,
  ``attributes.`Dataset```, ``tags.`setting```. The run-name column is
  ``attributes.`Run Name```.
* A chart per metric is *added* on load for every metric that has no chart card, so hiding
  charts means listing them: here every metric that is not a headline sits in one collapsed
  section ("All other metrics").
* Group by a tag makes one group row per tag value, also for a value that only one run has (a
  run without the tag goes into one "Additional runs" group). The view therefore groups by
  ``setting`` only when some setting has more than one run (seeds); a suite of single-seed
  settings is shown ungrouped. Ungrouped and sorted by start time (or unsorted), the UI nests
  child runs under their parent, collapsed, and does not load ``runsExpanded`` from a saved
  view; that view is therefore sorted by run name (no nesting) and searched to
  ``tags.role = 'cell'`` (the suite's parent run left out).
* Colours: a run's colour is its tag ``mlflow.runColor`` (what the UI's colour picker writes),
  else a hash of its run id into a 29-colour palette, so two settings may share one. A group's
  colour is ``localStorage["experimentRunColors"][<group id>]`` (group id
  ``tag.setting.<value>``), else the same hash of the group id. :func:`write_suite_view` gives
  each setting its own colour from :data:`SETTING_COLORS`: on its runs as ``mlflow.runColor`` and
  for its group in the experiment tag :data:`GROUP_COLORS_TAG`, which ``privbench ui``'s opening
  page (:mod:`bench.ui_app`) copies into that ``localStorage`` key.
* Numbers: the runs table and group rows show a metric as logged (a group's mean in full
  precision); the UI has no rounding setting a view can carry (docs/reading-results.md).

Everything here is a pure function of its arguments except :func:`write_suite_view`,
:func:`suite_metric_names` and :func:`log_dataset_input`, which talk to an ``MlflowClient``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlencode

log = logging.getLogger(__name__)

VIEW_KEY = "privbench"
"""The share key of the suite view (a stable key: rewriting the view keeps the link)."""
VIEW_NAME = "privbench: compare defenses"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
WORKFLOW_TYPE = "machine_learning"
MAX_TAG_VALUE = 20_000  # MLflow's MAX_EXPERIMENT_TAG_VAL_LENGTH, and the UI's own limit on a saved view
COMPRESSED_PREFIX = "deflate;"

RUN_NAME_COLUMN = "attributes.`Run Name`"
DATASET_COLUMN = "attributes.`Dataset`"
SOURCE_COLUMN = "attributes.`Source`"
VERSION_COLUMN = "attributes.`Version`"
_COLUMN_RE = re.compile(r"^(attributes|params|metrics|tags)\.`.+`$")

MEMBERSHIP_FPR = "tpr_at_fpr_0.01"
# the published state of the art first; the rest follow by name (a column per attack, not a maximum:
# which attack is strongest is decided on intervals by the report, not by the column order)
STRONG_MEMBERSHIP_ATTACKS = ("rmia", "lira")
MAX_MEMBERSHIP_COLUMNS = 3
MAX_RECONSTRUCTION_COLUMNS = 2
DEFAULT_SORT = ("attributes.start_time", False)  # the UI's own default: newest first
CELLS_FILTER = "tags.role = 'cell'"  # the cell runs, without the suite's parent run
NAME_SORT = ("tags.`mlflow.runName`", True)  # by run name: a setting's seeds side by side, no nesting
RUN_COLOR_TAG = "mlflow.runColor"  # the UI reads a run's colour from this tag (its colour picker writes it)
GROUP_COLORS_TAG = "privbench.groupColors"  # experiment tag: {"tag.setting.<value>": colour}, for the opening page
GROUP_COLORS_STORAGE_KEY = "experimentRunColors"  # the UI's localStorage map of group id -> colour
# the UI's own palette (RUNS_COLOR_PALETTE in main.*.js), reordered so that neighbours differ in hue
SETTING_COLORS = (
    "#2272b4", "#c83243", "#308613", "#de7921", "#8a63bf", "#04867d", "#b45091", "#a6630c", "#434a93", "#facb66",
    "#1f272d", "#8ddda8", "#e65b77", "#4299e0", "#93320b", "#5f7281", "#3ba65e", "#f792a6", "#0e538b", "#be501e",
    "#137dae", "#9e102c", "#277c43", "#f2be88", "#8acaff", "#445461", "#c82d4c", "#115026", "#8396a5",
)


def column_key(group: str, name: str) -> str:
    """A runs-table column as the UI names it, e.g. ``metrics.`utility/test_accuracy```."""
    if group not in ("attributes", "params", "metrics", "tags"):
        raise ValueError(f"column group {group!r} is not one of attributes, params, metrics, tags")
    return f"{group}.`{name}`"


def _as_column(c: str) -> str:
    return c if _COLUMN_RE.match(c) else column_key("metrics", c)


def _attack_metrics(names: set[str], metric: str) -> list[str]:
    """``attack/<a>/<metric>`` present in ``names``, strong attacks first, then by name."""
    attacks = sorted(n[len("attack/") : -len(metric) - 1] for n in names if n.startswith("attack/") and n.endswith("/" + metric))
    attacks = [a for a in attacks if a and "/" not in a]
    rank = {a: i for i, a in enumerate(STRONG_MEMBERSHIP_ATTACKS)}
    return [f"attack/{a}/{metric}" for a in sorted(attacks, key=lambda a: (rank.get(a, len(rank)), a))]


def headline_columns(metric_names: Iterable[str]) -> list[str]:
    """The metrics that line defenses up, in reading order, among those that exist.

    Utility, ε with its δ, the membership attacks' TPR at 1 % FPR (RMIA and LiRA first, at most
    three), the audit's certified ε lower bound, reconstruction quality (tabular feature
    accuracy, image PSNR; at most two each) and wall time.

    Args:
        metric_names: every metric name logged in the suite.

    Returns:
        Metric names (not column keys), e.g. ``["utility/test_accuracy", "privacy/epsilon", ...]``.
    """
    names = set(metric_names)
    out = [m for m in ("utility/test_accuracy", "privacy/epsilon", "privacy/delta") if m in names]
    out += _attack_metrics(names, MEMBERSHIP_FPR)[:MAX_MEMBERSHIP_COLUMNS]
    out += [m for m in ("audit/epsilon_lower_bound", "audit/detectable_factor") if m in names]
    out += _attack_metrics(names, "feature_accuracy")[:MAX_RECONSTRUCTION_COLUMNS]
    out += _attack_metrics(names, "psnr")[:MAX_RECONSTRUCTION_COLUMNS]
    out += [m for m in ("cost/seconds",) if m in names]
    return out


# --------------------------------------------------------------------------- chart cards
# Field for field what the UI's chart-card classes serialize (RunsChartsCardConfig and its
# LINE / BAR / SCATTER subclasses in main.*.js), so a loaded card needs no defaults filled in.


def _card(kind: str, uuid: str, section: str, *, generated: bool, runs: int = 10) -> dict[str, Any]:
    return {"uuid": uuid, "type": kind, "runsCountToCompare": runs, "metricSectionId": section, "deleted": False, "isGenerated": generated}


def _bar(metric: str, uuid: str, section: str, *, generated: bool = False) -> dict[str, Any]:
    return {**_card("BAR", uuid, section, generated=generated), "metricKey": metric, "displayName": metric}


def _line(metric: str, uuid: str, section: str) -> dict[str, Any]:
    return {
        **_card("LINE", uuid, section, generated=False),
        "metricKey": metric,
        "displayName": metric,
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",  # step = FedAvg round
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def _scatter(x: str, y: str, uuid: str, section: str) -> dict[str, Any]:
    return {
        **_card("SCATTER", uuid, section, generated=False, runs=100),
        "xaxis": {"key": x, "type": "METRIC"},
        "yaxis": {"key": y, "type": "METRIC"},
    }


def _section(uuid: str, name: str, display: bool) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "display": display, "isReordered": True, "deleted": False, "isGenerated": False}


def suite_charts(headline: Sequence[str], all_metrics: Iterable[str]) -> tuple[list[dict], list[dict]]:
    """Chart cards and sections: the headline charts open, every other metric in a collapsed section.

    Open: ``utility/test_accuracy`` per round (the convergence curve, ``step = round``), the
    privacy–utility scatter (first membership TPR against test accuracy) and a bar per headline
    metric (its final value per run, or per group with Group by). Collapsed: a bar card per other
    metric (the UI turns it into a line when the metric has rounds); listing them keeps the UI
    from adding one open chart per metric.

    Returns:
        ``(compareRunCharts, compareRunSections)``.
    """
    charts: list[dict] = []
    head, rest = "privbench-headline", "privbench-other"
    if "utility/test_accuracy" in headline:
        charts.append(_line("utility/test_accuracy", "privbench-rounds", head))
    tprs = [m for m in headline if m.endswith("/" + MEMBERSHIP_FPR)]
    if tprs and "utility/test_accuracy" in headline:
        charts.append(_scatter(tprs[0], "utility/test_accuracy", "privbench-tradeoff", head))
    charts += [_bar(m, f"privbench-h{i}", head) for i, m in enumerate(headline)]
    shown = set(headline)
    others = sorted(set(all_metrics) - shown)
    charts += [_bar(m, f"privbench-o{i}", rest, generated=True) for i, m in enumerate(others)]
    sections = [_section(head, "Compare defenses", True)]
    if others:
        sections.append(_section(rest, "All other metrics", False))
    return charts, sections


# --------------------------------------------------------------------------- the view state


def _width(column: str, least: int) -> int:
    """Pixels for a column: its header in full (about 7 px a character at the UI's font)."""
    if column == DATASET_COLUMN:
        return max(least, 250)  # "breast_cancer (0123456789ab)"; the "Train" context badge may be cut
    name = column.split("`")[1] if "`" in column else column
    return max(least, min(300, 7 * len(name) + 28))


def view_state(
    columns: Sequence[str],
    group_by_tag: Optional[str] = "setting",
    sort: tuple[str, bool] = DEFAULT_SORT,
    all_metrics: Iterable[str] = (),
    run_name_width: int = 360,
    column_width: int = 110,
    search_filter: str = "",
) -> dict[str, Any]:
    """The runs view as the UI keeps it (search facets + UI state), before encoding.

    Args:
        columns: metric names or column keys (``metrics.`m```, ``attributes.`Dataset```...),
            shown in this order after the run name; metric names become ``metrics.`<name>```.
        group_by_tag: a run tag to group by (the seeds of one defense setting share ``setting``);
            ``None`` for no grouping.
        sort: ``(orderByKey, ascending)``, e.g. ``("metrics.`utility/test_accuracy`", False)``.
        all_metrics: every metric of the suite; those not in ``columns`` get a collapsed chart.
        run_name_width: pixels of the run-name column (the UI's default cuts names at ~15
            characters).
        column_width: the least pixels of every other listed column; a metric column is as wide
            as its name (up to 300 px), the Dataset column as ``name (digest)``.
        search_filter: the runs search, e.g. ``tags.role = 'cell'``.
    """
    cols = [_as_column(c) for c in columns]
    headline = [c[len("metrics.`") : -1] for c in cols if c.startswith("metrics.`")]
    charts, sections = suite_charts(headline, all_metrics)
    state: dict[str, Any] = {
        # search facets (the UI's defaults, but the sort)
        "searchFilter": search_filter,
        "orderByKey": sort[0],
        "orderByAsc": bool(sort[1]),
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # UI state
        "selectedColumns": cols,
        "columnOrder": [RUN_NAME_COLUMN, *cols],
        "columnWidths": {RUN_NAME_COLUMN: run_name_width, **{c: _width(c, column_width) for c in cols}},
        "runsHiddenMode": "SHOW_ALL",  # charts show every run, not the UI's first 10
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": True,  # keep "Compare defenses" above "All other metrics"
        "groupBy": None,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    if group_by_tag:
        # the UI's RunsGroupByConfig: mean over the group's runs, keyed by a tag
        state["groupBy"] = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": group_by_tag}]}
    return state


def encode_state(state: Mapping[str, Any], compress: bool = True) -> str:
    """``state`` as the UI stores it: JSON, deflated and base64'd behind ``"deflate;"`` by default."""
    text = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
    if not compress:
        return text
    return COMPRESSED_PREFIX + base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")


def envelope(state_text: str, name: str = VIEW_NAME, created_ms: Optional[int] = None, updated_ms: Optional[int] = None) -> str:
    """The saved-view envelope the UI writes to ``mlflow.sharedViewState.<key>``."""
    created = int(time.time() * 1000) if created_ms is None else int(created_ms)
    return json.dumps({"name": name, "createdAt": created, "updatedAt": created if updated_ms is None else int(updated_ms), "state": state_text})


def decode_view(value: str) -> dict[str, Any]:
    """The view state in an ``mlflow.sharedViewState.*`` tag value: the inverse of what is written
    here, and what the UI accepts (an envelope, or a bare state; either deflated or plain)."""
    try:
        env = json.loads(value)
    except json.JSONDecodeError:
        env = None
    text = env["state"] if isinstance(env, dict) and isinstance(env.get("state"), str) else value
    if text.startswith(COMPRESSED_PREFIX):
        text = zlib.decompress(base64.b64decode(text[len(COMPRESSED_PREFIX) :])).decode("utf-8")
    return json.loads(text)


def shared_view_state(
    columns: Sequence[str],
    group_by_tag: Optional[str] = "setting",
    sort: tuple[str, bool] = DEFAULT_SORT,
    all_metrics: Iterable[str] = (),
    name: str = VIEW_NAME,
    now_ms: Optional[int] = None,
    search_filter: str = "",
) -> str:
    """The value of ``mlflow.sharedViewState.<key>`` for this view, exactly as the UI's "Save view"
    writes it (envelope with a deflated state). See :func:`view_state` for the arguments.

    Where listing every other metric's chart would pass MLflow's 20 000-character limit, the
    collapsed charts are dropped (the UI then adds those as open charts) and a warning is logged.
    """
    all_metrics = list(all_metrics)
    state = view_state(columns, group_by_tag, sort, all_metrics, search_filter=search_filter)
    value = envelope(encode_state(state), name, now_ms)
    if len(value) > MAX_TAG_VALUE:
        log.warning("the suite view with a chart card per metric (%d metrics) is too large for an MLflow tag; "
                    "other metrics get the UI's default charts", len(all_metrics))
        state = view_state(columns, group_by_tag, sort, (), search_filter=search_filter)
        value = envelope(encode_state(state), name, now_ms)
    if len(value) > MAX_TAG_VALUE:
        raise ValueError(f"the suite view is {len(value)} characters, over MLflow's {MAX_TAG_VALUE}: fewer columns")
    return value


# --------------------------------------------------------------------------- MLflow I/O


def _suite_runs(client, experiment_id: str) -> list:
    runs: list = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def suite_metric_names(client, experiment_id: str) -> list[str]:
    """Every metric name logged by the experiment's runs (all pages), sorted."""
    return sorted({m for r in _suite_runs(client, experiment_id) for m in r.data.metrics})


def group_id(tag: str, value: str) -> str:
    """The UI's id of a group row (group by the tag ``tag``): ``tag.<tag>.<value>``."""
    return f"tag.{tag}.{value}"


def setting_colors(settings: Sequence[str]) -> dict[str, str]:
    """A colour per setting, in the order given (the suite's order), from :data:`SETTING_COLORS`:
    distinct for up to 29 settings, then repeating."""
    out: dict[str, str] = {}
    for s in settings:
        if s not in out:
            out[s] = SETTING_COLORS[len(out) % len(SETTING_COLORS)]
    return out


def group_by_for(runs_per_setting: Mapping[str, int], tag: str = "setting") -> Optional[str]:
    """``tag`` when some setting has more than one run, else ``None``: the UI would give each
    single run a group row of its own."""
    return tag if any(n > 1 for n in runs_per_setting.values()) else None


def write_suite_view(client, experiment_id: str, metric_names: Optional[Iterable[str]] = None, key: str = VIEW_KEY) -> str:
    """Save the suite's runs view on its experiment; the UI opens it with :func:`suite_link`.

    Sets ``mlflow.sharedViewState.<key>`` (Dataset column, the headline metric columns, group
    by the ``setting`` tag when a setting has several runs, the headline charts open and the rest
    collapsed) and ``mlflow.experimentKind = custom_model_development``; gives each setting a
    colour of its own (:func:`setting_colors`: the ``mlflow.runColor`` tag of its cell runs, and
    the experiment tag :data:`GROUP_COLORS_TAG` for its group row). Rewriting keeps the key, so
    links stay valid; views a user saves in the UI have their own keys and are left alone.

    Args:
        client: an ``mlflow.MlflowClient`` on the store.
        experiment_id: the suite's experiment.
        metric_names: every metric name of the suite; read from the store when ``None``.
        key: the share key.

    Returns:
        The share key.
    """
    runs = _suite_runs(client, experiment_id)
    names = sorted({m for r in runs for m in r.data.metrics}) if metric_names is None else sorted(set(metric_names))
    cells = sorted((r for r in runs if r.data.tags.get("role") == "cell" and r.data.tags.get("setting")),
                   key=lambda r: (r.info.start_time or 0, r.info.run_id))
    counts: dict[str, int] = {}
    for r in cells:
        counts[r.data.tags["setting"]] = counts.get(r.data.tags["setting"], 0) + 1
    group = group_by_for(counts)
    columns = [DATASET_COLUMN, *headline_columns(names)]
    # ungrouped and sorted by date, the UI nests the cells under their suite run, collapsed (a saved
    # view cannot expand it): sorted by name it nests nothing, and the search keeps the cells alone
    search, sort = ("", DEFAULT_SORT) if group else (CELLS_FILTER, NAME_SORT)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key,
                              shared_view_state(columns, group, sort, all_metrics=names, search_filter=search))
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    colors = setting_colors([r.data.tags["setting"] for r in cells])
    for r in cells:
        color = colors[r.data.tags["setting"]]
        if r.data.tags.get(RUN_COLOR_TAG) != color:
            client.set_tag(r.info.run_id, RUN_COLOR_TAG, color)
    groups = json.dumps({group_id("setting", s): c for s, c in colors.items()}, ensure_ascii=False, separators=(",", ":"))
    if len(groups) <= MAX_TAG_VALUE:
        client.set_experiment_tag(experiment_id, GROUP_COLORS_TAG, groups)
    else:  # thousands of settings: the groups keep the UI's hashed colours
        log.warning("%d settings are too many for one colour map in an MLflow tag; group rows keep MLflow's colours", len(colors))
    return key


def suite_link(base_url: str, experiment_id: str, key: Optional[str] = VIEW_KEY) -> str:
    """The runs-table link of an experiment, training-runs side bar, with the saved view ``key``.

    e.g. ``http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=privbench&workflowType=machine_learning``
    """
    query = {"viewStateShareKey": key} if key else {}
    query["workflowType"] = WORKFLOW_TYPE
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def compare_link(base_url: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare-runs page for ``run_ids`` (params, metrics, parallel coordinates)."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    exps = quote(json.dumps([str(experiment_id)], separators=(",", ":")))
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}&workflowType={WORKFLOW_TYPE}"


# --------------------------------------------------------------------------- run conventions


def dataset_name(data_name: str, path: Optional[str] = None) -> str:
    """The dataset's name in MLflow: ``csv:<file stem>`` for a file (as
    ``bench.data.dataset_display_name``: a user's ``digits.csv`` is not the bundled ``digits``),
    else the registered dataset name."""
    return f"{data_name}:{Path(path).stem}" if path else data_name


def short_digest(fingerprint: str) -> str:
    """The 12 hex characters MLflow shows for a data fingerprint (``bench.data.fingerprint``):
    those of a ``sha256:<hex>`` file digest, else of the SHA-256 of the fingerprint text (e.g.
    ``sklearn-1.5.2:breast_cancer``), which is kept in full in the dataset's profile."""
    import hashlib

    if not fingerprint:
        raise ValueError("a dataset input needs a fingerprint")
    if fingerprint.startswith("sha256:") and len(fingerprint) >= 7 + 12:
        return fingerprint[7:19]
    return hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]


def dataset_input(name: str, fingerprint: str, source_uri: Optional[str] = None, context: str = "train",
                  profile: Optional[Mapping[str, Any]] = None):
    """An MLflow ``DatasetInput`` for a cell's data, which fills the runs table's Dataset column
    with ``<name> (<digest>)``.

    Args:
        name: :func:`dataset_name` (e.g. ``breast_cancer``, or ``cohort`` for ``data/cohort.csv``).
        fingerprint: the data fingerprint (``bench.data.fingerprint``); the digest is
            :func:`short_digest` of it, the full text goes into the profile.
        source_uri: the CSV's path or URL; ``None`` for a bundled dataset.
        context: the ``mlflow.data.context`` input tag.
        profile: more facts shown in the dataset drawer (e.g. ``{"num_sites": 4}``).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if not name:
        raise ValueError("a dataset input needs a name")
    if source_uri:
        source_type, source = "local", json.dumps({"uri": str(source_uri)})
    else:  # bundled with the code (scikit-learn's sets): MLflow's "code" source
        source_type, source = "code", json.dumps({"tags": {"privbench.dataset": name}})
    facts = {"fingerprint": fingerprint, **dict(profile or {})}
    ds = Dataset(name=name, digest=short_digest(fingerprint), source_type=source_type, source=source, profile=json.dumps(facts))
    return DatasetInput(ds, tags=[InputTag(key="mlflow.data.context", value=context)])


def log_dataset_input(client, run_id: str, name: str, fingerprint: str, source_uri: Optional[str] = None,
                      context: str = "train", profile: Optional[Mapping[str, Any]] = None) -> None:
    """Log :func:`dataset_input` on ``run_id`` (``MlflowClient.log_inputs``)."""
    client.log_inputs(run_id, datasets=[dataset_input(name, fingerprint, source_uri, context, profile)])


def source_tags(source_name: str, commit: Optional[str], repo_url: Optional[str] = None) -> dict[str, str]:
    """MLflow's standard source tags, which fill the Source and Version columns.

    Args:
        source_name: what ran, e.g. the suite file ``experiments/quick.yaml`` (the Source column
            shows its base name).
        commit: the git commit (the Version column shows its first 6 characters); left out when
            ``None`` or ``"unknown"``.
        repo_url: the git remote, where known (the UI links the commit for GitHub/GitLab).
    """
    tags = {"mlflow.source.name": str(source_name), "mlflow.source.type": "LOCAL"}
    if commit and commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if repo_url:
        tags["mlflow.source.git.repoURL"] = repo_url
    return tags
