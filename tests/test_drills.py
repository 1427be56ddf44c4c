"""A drill of bad inputs through the real CLI: every one must end before training.

The contract (DESIGN.md "Config", bench/cli.py): bad input ends with exit code 2 and exactly one
line on stderr that names the problem and the fix, no traceback, nothing printed before it, and
nothing logged: the MLflow store (a temporary SQLite file given both as ``MLFLOW_TRACKING_URI``
and, for ``run``, as ``--tracking-uri``) is never created.

The cases are generated: non-finite numbers, wrong types and out-of-range values for every
float/int/bool/text parameter of every config section and every registered component;
unknown names and keys; bad seeds and ``--set`` overrides; broken CSV files; broken
heart-disease folders; and combinations only the data (or the model) can refuse. Each runs
through ``bench.cli.main`` in this process (``validate``, ``validate --data`` or ``run``); a
few run as ``python -m bench`` subprocesses too. :data:`CASES` lists them all (the lead
reports ``len(CASES)``); :data:`CLEAN` collects the ids that passed.

Nothing here trains: a case that got as far as training would fail the test (exit code, or a
created store), and the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import types
import typing
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import numpy as np
import pytest
import yaml

from attacks import ATTACKS
from bench.config import DataConfig, FairnessConfig, ModelConfig, PrivacyConfig, TrainConfig
from bench.data import heart_disease
from conftest import heart_dir
from defenses import DEFENSES

REPO = Path(__file__).resolve().parents[1]
HEART_FILES = tuple(f for _, f in heart_disease.HOSPITALS)


@dataclass(frozen=True)
class Drill:
    """One bad input: a suite (a mapping, or raw YAML text), the command, what the line says."""

    id: str
    suite: Any
    expect: tuple[str, ...] = ()  # substrings the one stderr line must contain
    command: str = "validate"  # "validate" or "run"
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # environment variables ("@name" placeholders allowed)
    unreadable: str = ""  # a placeholder whose file reads fail (PermissionError), as for chmod 000


CASES: list[Drill] = []
CLEAN: list[str] = []  # ids that ended cleanly (filled as the tests run)

GOOD = {
    "suite": "drill",
    "base": {
        "data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3},
        "model": {"name": "logreg"},
        "train": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "attacks": [{"name": "loss_threshold"}],
    },
    "seeds": [0],
}


def edit(*edits: tuple[str, Any], raw: Optional[dict] = None) -> dict:
    """GOOD (or ``raw``) with ``(dotted.path, value)`` edits; dotted paths start at the top."""
    d = yaml.safe_load(yaml.safe_dump(raw or GOOD))
    for path, value in edits:
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return d


def add(id: str, suite: Any, *expect: str, command: str = "validate", args: tuple[str, ...] = (), **kw) -> None:
    CASES.append(Drill(id, suite, tuple(expect), command, tuple(args), **kw))


def both(id: str, suite: Any, *expect: str, **kw) -> None:
    """The same data problem through ``validate --data`` and ``run``."""
    add(f"{id}-validate", suite, *expect, args=("--data",), **kw)
    add(f"{id}-run", suite, *expect, command="run", **kw)


# --------------------------------------------------------------------------- parameters


def _plain(tp: Any) -> tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _fields(cls: type) -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _plain(hints[f.name])[0], f) for f in dataclasses.fields(cls) if f.init and not f.metadata.get("derived")]


def _wrong_type(tp: Any) -> Any:
    if tp in (int, float):
        return "abc"
    if tp is bool:
        return "maybe"
    if tp is str:
        return 123
    if get_origin(tp) is Literal:
        return "bogus_choice"
    if get_origin(tp) is tuple:
        return 5
    return None


def _out_of_range(tp: Any, meta: Any) -> Optional[float]:
    step = 1 if tp is int else 0.5
    for key, value in (("gt", lambda b: b), ("ge", lambda b: b - step), ("lt", lambda b: b), ("le", lambda b: b + step)):
        if key in meta:
            return value(meta[key])
    return None


def _param_cases(where: str, cls: type, place) -> None:
    """Non-finite, wrong-type and out-of-range values for every field of ``cls``;
    ``place(field, value)`` returns the suite with that value in the field."""
    for name, tp, f in _fields(cls):
        path = f"{where}.{name}"
        if tp is float:
            add(f"nan-{path}", place(name, float("nan")), path, "finite")
            add(f"-inf-{path}", place(name, float("-inf")), path, "finite")
            if not f.metadata.get("inf_ok"):
                add(f"inf-{path}", place(name, float("inf")), path, "finite")
            add(f"huge-{path}", place(name, 10**400), path, "finite")
        bad = _wrong_type(tp)
        if bad is not None:
            add(f"type-{path}", place(name, bad), path)
        low = _out_of_range(tp, f.metadata) if tp in (int, float) else None
        if low is not None:
            add(f"range-{path}", place(name, low), path, "must be")


for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig), ("privacy", PrivacyConfig)):
    _param_cases(section, cls, lambda name, v, s=section: edit((f"base.{s}.{name}", v)))
_param_cases("fairness", FairnessConfig, lambda name, v: edit(("base.fairness", {"attributes": [], name: v})))
for kind, reg in (("defenses", DEFENSES), ("attacks", ATTACKS)):
    for cname, ccls in reg.items():
        _param_cases(f"{kind}.{cname}", ccls.Params, lambda name, v, k=kind, c=cname: edit((f"base.{k}", [{"name": c, name: v}])))
        add(f"unknown-key-{kind}.{cname}", edit((f"base.{kind}", [{"name": cname, "bogus_key": 1}])), f"{kind}.{cname}.bogus_key", "unknown key")

# --------------------------------------------------------------------------- names and keys

add("unknown-dataset", edit(("base.data.name", "breast_cancr")), "data.name", "did you mean 'breast_cancer'")
add("unknown-model", edit(("base.model.name", "resnet")), "model.name", "'resnet'")
add("unknown-defense", edit(("base.defenses", [{"name": "dp_sgdd"}])), "defenses[0].name", "did you mean 'dp_sgd'")
add("unknown-attack", edit(("base.attacks", [{"name": "lira2"}])), "attacks[0].name", "'lira2'")
add("component-not-a-mapping", edit(("base.defenses", [5])), "defenses[0]", "mapping")
add("components-not-a-list", edit(("base.attacks", {"name": "lira"})), "attacks")
add("defense-twice", edit(("base.defenses", [{"name": "clipping"}, {"name": "clipping"}])), "defenses", "twice")
for section in ("data", "model", "train", "privacy"):
    add(f"unknown-key-{section}", edit((f"base.{section}.bogus_key", 1)), f"{section}.bogus_key", "unknown key")
add("unknown-top-level-key", edit(("sedes", [0])), "sedes", "did you mean 'seeds'")
add("suite-name", edit(("suite", "two words")), "suite")
add("run-unknown-defense", edit(("base.defenses", [{"name": "dp_sgdd"}])), "defenses[0].name", command="run")

# --------------------------------------------------------------------------- seeds

for i, (value, needle) in enumerate([(-1, "non-negative"), (1.5, "non-negative"), ("zero", "non-negative"), (True, "non-negative"),
                                     ([], "non-empty"), ([0, 0], "twice"), ([0, -3], "seeds[1]"), ({"a": 1}, "seeds")]):
    add(f"seeds-{i}", edit(("seeds", value)), "seeds", needle)
add("base-seed-not-in-seeds", edit(("base.seed", 3), ("seeds", [0, 1])), "base.seed", "seeds")
add("base-seed-negative", edit(("base.seed", -2)), "base.seed", "non-negative")
add("grid-seed", edit(("grid", {"seed": [1, 2]})), "grid.seed", "top level")
add("variant-seeds", edit(("variants", [{"seeds": [1]}])), "variants[0].seeds", "top level")
add("run-seeds-negative", edit(("seeds", [-1])), "seeds[0]", command="run")
for text, needle in (("seed=-1", "from --set seed=-1"), ("seed=1.5", "from --set seed=1.5"), ("seeds=[]", "non-empty"),
                     ("seeds=[1,1]", "twice"), ("seed=abc", "from --set seed=abc"), ("seeds=[0,true]", "seeds[1]")):
    add(f"set-{text}", GOOD, needle, args=("--set", text))
add("run-set-seed-negative", GOOD, "from --set seed=-7", command="run", args=("--set", "seed=-7"))

# --------------------------------------------------------------------------- --set overrides

for text, needles in (("train.lr", ("key.path=value",)), ("train.lr=[1", ("YAML",)), ("trian.lr=0.1", ("did you mean 'train'",)),
                      ("train.rounds.x=1", ("not a section",)), ("train.rounds=0", ("from --set train.rounds=0",)),
                      ("train.lr=.nan", ("train.lr", "finite")), ("train.lr=.inf", ("train.lr", "finite")),
                      ("train..lr=1", ("empty key",)), ("defenses=[{name: nope}]", ("defenses[0].name",)),
                      ("data.num_sites=1.5", ("data.num_sites", "integer"))):
    add(f"set-{text}", GOOD, *needles, args=("--set", text))
    add(f"run-set-{text}", GOOD, *needles, command="run", args=("--set", text))

# --------------------------------------------------------------------------- combinations refused before training

add("tableak-on-images", edit(("base.data.name", "digits"), ("base.attacks", [{"name": "tableak"}])), "tableak", "tabular", "image")
add("analytic-on-cnn", edit(("base.data.name", "digits"), ("base.model.name", "cnn"), ("base.attacks", [{"name": "analytic"}])),
    "model", "Conv2d", "fully connected")
add("cnn-on-tables", edit(("base.model.name", "cnn")), "model.name", "image data")
add("natural-without-sites", edit(("base.data.partition", "natural")), "data.partition", "iid or dirichlet")
add("sites-nowhere-iid", edit(("base.attacks", [{"name": "dlg", "sites": ["nowhere"]}])), "attacks.dlg.sites", "'nowhere'", "site0")
add("sites-nowhere-heart", edit(("base.data", {"name": "heart_disease", "partition": "natural", "data_dir": "@heart"}),
                                ("base.attacks", [{"name": "tableak", "sites": ["nowhere"]}])), "attacks.tableak.sites", "cleveland")
add("rounds-not-trained", edit(("base.attacks", [{"name": "analytic", "rounds": [9]}])), "attacks.rounds", "train.rounds")
add("inversion-with-adam", edit(("base.train.optimizer", "adam"), ("base.attacks", [{"name": "dlg"}])), "train.optimizer", "plain SGD")
add("hidden-updates", edit(("base.defenses", [{"name": "secure_aggregation"}]), ("base.attacks", [{"name": "update_cosine"}])),
    "update_cosine", "secure_aggregation")
add("dp-sgd-both", edit(("base.defenses", [{"name": "dp_sgd", "noise_multiplier": 1, "target_epsilon": 1}])), "exactly one")
add("target-epsilon-unreachable", edit(("base.defenses", [{"name": "dp_sgd", "target_epsilon": 1e-9}])),
    "target_epsilon", "cannot reach", command="run")
add("target-epsilon-unreachable-validate", edit(("base.defenses", [{"name": "dp_sgd", "target_epsilon": 1e-9}])),
    "target_epsilon", "cannot reach", args=("--data",))
add("client-dp-adaptive-few-hospitals", edit(("base.defenses", [{"name": "client_dp", "adaptive": True}])), "clip_count_stddev")
add("client-dp-partial", edit(("base.train.sites_per_round", 2), ("base.defenses", [{"name": "client_dp"}])), "sites_per_round")
add("hospitals-too-small", edit(("base.data.num_sites", 200)), "data.num_sites", command="run")

# --------------------------------------------------------------------------- csv files

_RNG = np.random.default_rng(0)
_N = 90
_COLUMNS = ("hospital", "age", "bp", "outcome")
_ROWS = [
    (h, int(a), float(b), o)
    for h, a, b, o in zip(np.repeat(["a_hosp", "b_hosp", "c_hosp"], _N // 3), _RNG.integers(30, 80, _N),
                          _RNG.normal(120, 10, _N).round(1), _RNG.choice(["healthy", "sick"], _N))
]


def _csv_text(rows=None, header=_COLUMNS, line=None) -> str:
    """The sample table as CSV text; ``line(i, text)`` may rewrite data row ``i`` (0-based)."""
    out = [",".join(header)]
    for i, r in enumerate(rows if rows is not None else _ROWS):
        text = ",".join(str(v) for v in r)
        out.append(line(i, text) if line else text)
    return "\n".join(out) + "\n"


CSV_FILES: dict[str, Any] = {
    "ok": _csv_text(),
    "ragged_more": _csv_text(line=lambda i, t: t + ",7" if i == 4 else t),
    "ragged_fewer": _csv_text(line=lambda i, t: t.rsplit(",", 1)[0] if i == 10 else t),
    "ragged_all": _csv_text(line=lambda i, t: t + ",1"),
    "empty": "",
    "header_only": ",".join(_COLUMNS) + "\n",
    "not_utf8": b"hospital,age\n\xff\xfe,1\n",
    "unique_label": _csv_text([(h, a, b, f"patient{i}") for i, (h, a, b, _) in enumerate(_ROWS)]),
    "continuous_label": _csv_text([(h, a, b, b) for h, a, b, _ in _ROWS], header=("hospital", "age", "bp", "outcome")),
    "one_class": _csv_text([(h, a, b, "sick") for h, a, b, _ in _ROWS]),
    "no_labels": _csv_text([(h, a, b, "") for h, a, b, _ in _ROWS]),
    "inf_cell": _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "inf") if i == 3 else t),
    "minus_inf_cell": _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "-inf") if i == 7 else t),
    "overflow_cell": _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "1e400") if i == 2 else t),
    "empty_column": _csv_text([(h, a, b, "", o) for h, a, b, o in _ROWS], header=("hospital", "age", "bp", "notes", "outcome")),
    "thousands": _csv_text([(h, a, f'"{int(b)},{i % 1000:03d}"', o) for i, (h, a, b, o) in enumerate(_ROWS)]),  # read as numbers
    "decimal_comma": _csv_text([(h, a, f'"{str(b).replace(".", ",")}"', o) for h, a, b, o in _ROWS]),
    "with_id": _csv_text([(f"P{1000 + i}", h, a, b, o) for i, (h, a, b, o) in enumerate(_ROWS)], header=("patient_id",) + _COLUMNS),
    "row_number": _csv_text([(i, h, a, b, o) for i, (h, a, b, o) in enumerate(_ROWS)], header=("",) + _COLUMNS),
    "five_grades": _csv_text([(h, a, b, i % 5) for i, (h, a, b, _) in enumerate(_ROWS)]),
    "no_site": _csv_text([(a, b, o) for _, a, b, o in _ROWS], header=_COLUMNS[1:]),
    "mixed_text": _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "120 mmHg") if i == 5 else t),
    "only_site_and_label": _csv_text([(h, o) for h, _, _, o in _ROWS], header=("hospital", "outcome")),
}


def _csv(name: str, **data) -> dict:
    d = {"name": "csv", "partition": "natural", "path": f"@csv:{name}", "site_column": "hospital", "label_column": "outcome", **data}
    return edit(("base.data", d))


both("csv-ragged-more", _csv("ragged_more"), "ragged", "line 6 has 5 fields", "header has 4")
both("csv-ragged-fewer", _csv("ragged_fewer"), "ragged", "line 12 has 3 fields")
both("csv-ragged-every-row", _csv("ragged_all"), "ragged", "line 2")
both("csv-empty", _csv("empty"), "empty")
both("csv-header-only", _csv("header_only"), "no rows")
both("csv-not-utf8", _csv("not_utf8"), "UTF-8")
both("csv-unique-label", _csv("unique_label"), "data.label_column", "as many distinct values as rows")
both("csv-continuous-label", _csv("continuous_label"), "data.label_column", "distinct values")
both("csv-one-class", _csv("one_class"), "data.label_column", "fewer than 2 classes")
both("csv-no-labels", _csv("no_labels"), "no row")
both("csv-inf-cell", _csv("inf_cell"), "'bp'", "inf", "finite")
both("csv-minus-inf-cell", _csv("minus_inf_cell"), "'bp'", "-inf")
both("csv-overflow-cell", _csv("overflow_cell"), "'bp'", "finite")
both("csv-empty-column", _csv("empty_column"), "'notes'", "no values")
both("csv-decimal-comma", _csv("decimal_comma"), "'bp'", "not thousands separators", "decimal point")
both("csv-id-column", _csv("with_id"), "data.id_columns", "'patient_id'", "identifier", "data.drop_columns")
both("csv-row-number", _csv("row_number"), "data.id_columns", "'Unnamed: 0'", "row number")
both("csv-five-grades", _csv("five_grades"), "data.label_column", "5 values", "data.positive_labels", "data.multiclass: true")
both("csv-natural-without-site", _csv("no_site"), "data.site_column", "'hospital'", "iid or dirichlet")
both("csv-relative-path", _csv("ok", path="no_such_dir/patients.csv"), "data.path", "resolved to",
     str(Path.cwd() / "no_such_dir" / "patients.csv"))
add("csv-positive-label-not-found", _csv("five_grades", positive_labels=[7]), "data.positive_labels", "'7'", "0, 1, 2, 3, 4",
    args=("--data",))
add("csv-positive-labels-all", _csv("ok", positive_labels=["healthy", "sick"]), "data.positive_labels", "no negative class",
    args=("--data",))
add("csv-positive-and-multiclass", _csv("five_grades", positive_labels=[3], multiclass=True), "data.multiclass", "data.positive_labels")
add("csv-positive-label-yaml-bool", _csv("ok", positive_labels=[True]), "data.positive_labels[0]", "quote")
add("csv-positive-label-twice", _csv("five_grades", positive_labels=[3, 3.0]), "data.positive_labels", "twice")
add("csv-id-column-unknown", _csv("ok", id_columns=["patient_id"]), "data.id_columns", "'patient_id'", "columns:", args=("--data",))
add("csv-id-column-is-label", _csv("ok", id_columns=["outcome"]), "data.id_columns", "label column")
add("csv-drop-and-categorical", _csv("ok", drop_columns=["age"], categorical_columns=["age"]), "data.categorical_columns",
    "data.drop_columns", "one role")
both("csv-number-with-text", _csv("mixed_text"), "'bp'", "mixes numbers and text")
both("csv-no-features", _csv("only_site_and_label"), "no feature columns")
both("csv-missing-site-column", _csv("ok", site_column="clinic"), "data.site_column", "'clinic'", "columns:")
both("csv-missing-label-column", _csv("ok", label_column="death"), "data.label_column", "'death'")
both("csv-unknown-categorical", _csv("ok", categorical_columns=["smoker"]), "data.categorical_columns", "'smoker'")
both("csv-missing-file", _csv("ok", path="@missing"), "data.path", "not a file")
both("csv-directory", _csv("ok", path="@dir"), "data.path", "not a file")
both("csv-unreadable", _csv("ok"), "data.path", "cannot be read", "permission", unreadable="@csv:ok")
add("csv-site-is-label", _csv("ok", label_column="hospital"), "data.label_column", "same column as data.site_column")
add("run-csv-site-is-label", _csv("ok", label_column="hospital"), "same column", command="run")
add("csv-categorical-is-label", _csv("ok", categorical_columns=["outcome"]), "data.categorical_columns", "'outcome'")
add("csv-no-path", edit(("base.data", {"name": "csv", "partition": "natural"})), "data.path")
add("csv-sites-nowhere", edit(("base.data", {"name": "csv", "partition": "natural", "path": "@csv:ok", "site_column": "hospital",
                                             "label_column": "outcome"}),
                              ("base.attacks", [{"name": "tableak", "sites": ["z_hosp"]}])),
    "attacks.tableak.sites", "'z_hosp'", "a_hosp", args=("--data",))

# --------------------------------------------------------------------------- heart-disease folders


def _heart(**data) -> dict:
    return edit(("base.data", {"name": "heart_disease", "partition": "natural", "download": False, **data}))


both("heart-file-missing", _heart(data_dir="@heart_missing_va"), "data.data_dir", "processed.va.data")
both("heart-empty-folder", _heart(data_dir="@heart_empty"), "data.data_dir", "holds none of")
both("heart-no-such-folder", _heart(data_dir="@missing"), "data.data_dir")
both("heart-corrupted-byte", _heart(data_dir="@heart_corrupt"), "processed.va.data", "checksum", heart_disease.UCI_URL)
both("heart-env-incomplete-with-cache", _heart(), "PRIVBENCH_DATA_DIR", "processed.va.data",
     env=(("PRIVBENCH_DATA_DIR", "@heart_missing_va"), ("PRIVBENCH_CACHE", "@heart_cache_root")))
both("heart-env-empty-with-cache", _heart(), "PRIVBENCH_DATA_DIR",
     env=(("PRIVBENCH_DATA_DIR", "@heart_empty"), ("PRIVBENCH_CACHE", "@heart_cache_root")))
both("heart-nothing-and-no-download", _heart(), "heart_disease", "PRIVBENCH_DATA_DIR", "download",
     env=(("PRIVBENCH_CACHE", "@empty_cache"),))
both("heart-unreadable-file", _heart(data_dir="@heart"), "processed.cleveland.data", "cannot be read",
     unreadable="@heart_file")
both("heart-unknown-fairness-attribute", edit(("base.data", {"name": "heart_disease", "partition": "natural", "data_dir": "@heart"}),
                                              ("base.fairness", {"attributes": ["income"]})), "fairness")

# --------------------------------------------------------------------------- the file itself

add("yaml-syntax", "suite: x\nbase:\n  data: {name: breast_cancer\n", "line", "YAML")
add("yaml-empty", "", "empty")
add("yaml-not-a-mapping", "- 1\n- 2\n", "mapping")
add("yaml-duplicate-key", "suite: a\nsuite: b\nbase: {}\n", "twice")
add("yaml-missing-file", None, "not found")

# --------------------------------------------------------------------------- issue 22: sizes, names, values

_BIG_GRID = {f"train.{k}": list(range(1, 11)) if k != "lr" else [0.01 * (i + 1) for i in range(10)]
             for k in ("rounds", "local_epochs", "batch_size", "lr")}
_BIG_GRID["data.num_sites"] = list(range(2, 12))
_BIG_GRID["data.members_per_site"] = list(range(1, 11))  # 10^6 cells
for cmd in ("validate", "run"):
    add(f"grid-a-million-cells-{cmd}", edit(("grid", _BIG_GRID)), "1,000,000 cells", "PRIVBENCH_MAX_CELLS", command=cmd)
    add(f"seeds-too-many-{cmd}", edit(("seeds", list(range(20_000)))), "20,000 cells", "PRIVBENCH_MAX_CELLS=20000", command=cmd)
    add(f"suite-name-300-chars-{cmd}", edit(("suite", "s" * 300)), "suite", "300 characters", "at most 100", command=cmd)
    add(f"yaml-deep-{cmd}", "suite: deep\nbase: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper", command=cmd)
add("yaml-depth-40", "suite: deep\nbase:\n  data: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "nested deeper", "flatten")
add("yaml-too-large", edit(("description", "x" * 5000)), "bytes is more than", "PRIVBENCH_MAX_YAML_BYTES=",
    env=(("PRIVBENCH_MAX_YAML_BYTES", "2000"),))
add("max-cells-env-not-a-number", GOOD, "PRIVBENCH_MAX_CELLS", "positive whole number", env=(("PRIVBENCH_MAX_CELLS", "lots"),))
add("grid-over-a-lowered-limit", edit(("grid", {"train.lr": [0.1, 0.2, 0.3]})), "3 cells", env=(("PRIVBENCH_MAX_CELLS", "2"),))
for text, i in (("../../etc/passwd", 0), ("a/b", 1), (".hidden", 2), ("..", 3), ("bell\x07name", 4), ("tab\tname", 5),
                ("new\nline", 6), ("C:\\suites\\x", 7)):
    add(f"suite-name-path-or-control-{i}", edit(("suite", text)), "suite", "not starting with '.'")
add("run-suite-name-path", edit(("suite", "../escape")), "suite", command="run")
add("variant-two-spellings", edit(("variants", [{"data.name": "digits", "data": {"name": "breast_cancer"}}])),
    "variants[0]", "both set data.name", "one spelling")
add("variant-spaced-spelling", edit(("variants", [{"train.lr": 0.1, "train. lr": 0.2}])), "variants[0]", "both set train.lr")
add("grid-two-spellings", edit(("grid", {"train.lr": [0.1], "train": [{"lr": 0.2}]})), "grid", "both set train.lr")
add("variant-key-control", edit(("variants", [{"train.lr\x00": 0.1}])), "variants[0]", "not printable")
add("variant-key-too-long", edit(("variants", [{"train." + "x" * 300: 0.1}])), "variants[0]", "too long")
add("variant-value-control", edit(("variants", [{"data.name": "breast\x1bcancer"}])), "variants[0].data.name", "control character")
add("run-variant-two-spellings", edit(("variants", [{"train.lr": 0.1, "train": {"lr": 0.2}}])), "both set train.lr", command="run")
CSV_FILES["dup_header"] = _csv_text([(h, a, a, b, o) for h, a, b, o in _ROWS], header=("hospital", "age", "age", "bp", "outcome"))
CSV_FILES["dup_header_spaced"] = _csv_text([(h, a, a, o) for h, a, b, o in _ROWS], header=("hospital", "age", " age", "outcome"))
CSV_FILES["overflow_std"] = _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "1e200") if i == 5 else t)
CSV_FILES["beyond_float32"] = _csv_text(line=lambda i, t: t.replace(t.split(",")[2], "5e39") if i == 8 else t)
both("csv-duplicate-header", _csv("dup_header"), "'age' 2 times", "one name")
both("csv-duplicate-header-spaced", _csv("dup_header_spaced"), "'age' 2 times")
both("csv-overflows-after-standardisation", _csv("overflow_std"), "'bp'", "1e+200", "too large to standardise")
both("csv-beyond-float32", _csv("beyond_float32"), "'bp'", "too large to standardise")

SUBPROCESS = ("csv-ragged-more-run", "heart-env-incomplete-with-cache-validate", "nan-train.lr", "set-seed=-1",
              "yaml-deep-run", "grid-a-million-cells-run", "suite-name-300-chars-run")


# --------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Placeholder -> path of every file the drills read (written once)."""
    root = tmp_path_factory.mktemp("drill_files")
    out: dict[str, str] = {}
    for name, text in CSV_FILES.items():
        p = root / f"{name}.csv"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        out[f"@csv:{name}"] = str(p)
    src = heart_dir()
    if not (src / HEART_FILES[0]).is_file():
        pytest.fail(f"UCI heart-disease test copy missing at {src}; set PRIVBENCH_TEST_HEART_DIR")
    for name, keep in (("heart", HEART_FILES), ("heart_missing_va", HEART_FILES[:3]), ("heart_empty", ()),
                       ("heart_corrupt", HEART_FILES), ("heart_cache_root/uci-heart-disease", HEART_FILES)):
        d = root / name
        d.mkdir(parents=True)
        for f in keep:
            shutil.copyfile(src / f, d / f)
        out[f"@{name}"] = str(d)
    target = root / "heart_corrupt" / "processed.va.data"
    data = bytearray(target.read_bytes())
    k = next(i for i, b in enumerate(data) if chr(b).isdigit() and chr(b) != "9")
    data[k] += 1
    target.write_bytes(bytes(data))
    out["@heart_cache_root"] = str(root / "heart_cache_root")
    out["@heart_file"] = str(root / "heart" / HEART_FILES[0])
    out["@empty_cache"] = str(root / "empty_cache")
    out["@missing"] = str(root / "no_such_thing")
    (root / "a_directory.csv").mkdir()
    out["@dir"] = str(root / "a_directory.csv")
    return out


def _resolve(value: Any, files: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return files[value]
    if isinstance(value, dict):
        return {k: _resolve(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, files) for v in value]
    return value


def _write_suite(case: Drill, files: dict[str, str], work: Path) -> Path:
    path = work / "suite.yaml"
    if case.suite is None:
        return path  # a suite file that does not exist
    text = case.suite if isinstance(case.suite, str) else yaml.safe_dump(_resolve(case.suite, files), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def _argv(case: Drill, path: Path, db: Path) -> list[str]:
    argv = [case.command, str(path), *case.args]
    if case.command == "run":
        argv += ["-q", "--tracking-uri", f"sqlite:///{db}"]
    return argv


def _check(case: Drill, code: int, out: str, err: str, db: Path) -> None:
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for needle in case.expect:
        assert needle in lines[0], f"{needle!r} missing from: {lines[0]}"
    assert out == "", f"nothing should be printed before the error, got: {out!r}"
    assert not db.exists(), "the MLflow store was created for input that never ran"


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a drill tried to download")

    monkeypatch.setattr(heart_disease, "_download", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_before_training(case, files, offline, tmp_path, monkeypatch, capsys):
    from bench.cli import main

    db = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    for var in ("PRIVBENCH_DATA_DIR", "PRIVBENCH_CACHE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in case.env:
        monkeypatch.setenv(var, _resolve(value, files))
    if case.unreadable:
        blocked = Path(files[case.unreadable])
        original = pathlib.Path.read_bytes

        def read_bytes(self):  # what chmod 000 does for a user who is not root
            if Path(self) == blocked:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self)

        monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    path = _write_suite(case, files, tmp_path)
    capsys.readouterr()
    try:
        code = main(_argv(case, path, db))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    _check(case, code, out, err, db)
    CLEAN.append(case.id)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_a_csv_without_read_permission_is_one_line(files, tmp_path, capsys):
    from bench.cli import main

    p = tmp_path / "locked.csv"
    p.write_text(CSV_FILES["ok"])
    p.chmod(0)
    case = Drill("chmod", _csv("ok", path=str(p)), ("cannot be read",), args=("--data",))
    path = _write_suite(case, files, tmp_path)
    code = main(_argv(case, path, tmp_path / "db"))
    out, err = capsys.readouterr()
    _check(case, code, out, err, tmp_path / "db")


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_a_few_through_a_real_process(case_id, files, tmp_path):
    """The same contract with the interpreter's own stderr (logging, warnings, exit code)."""
    case = next(c for c in CASES if c.id == case_id)
    db = tmp_path / "store" / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("PRIVBENCH_DATA_DIR", "PRIVBENCH_CACHE")}
    env.update({k: _resolve(v, files) for k, v in case.env}, MLFLOW_TRACKING_URI=f"sqlite:///{db}", PYTHONIOENCODING="utf-8")
    path = _write_suite(case, files, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "bench", *_argv(case, path, db)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    _check(case, proc.returncode, proc.stdout, proc.stderr, db)


def test_the_drill_is_large_and_the_good_inputs_are_good(files, tmp_path, capsys, monkeypatch):
    """At least 120 cases; and the suites they break (GOOD, the ok CSV and its declared variants,
    the heart copy) pass."""
    from bench.cli import main

    assert len(CASES) >= 120, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "duplicate drill ids"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'db'}")
    goods = (GOOD, _csv("ok"), _heart(data_dir="@heart"),
             _csv("thousands"),  # "120,005": a number (it used to be refused)
             _csv("no_site", partition="iid", num_sites=3),  # no site column: fine without natural hospitals
             _csv("with_id", id_columns=["patient_id"]), _csv("five_grades", positive_labels=[3, 4]),
             _csv("five_grades", multiclass=True))
    for i, good in enumerate(goods):
        path = tmp_path / f"good{i}.yaml"
        path.write_text(yaml.safe_dump(_resolve(good, files)))
        assert main(["validate", str(path), "--data"]) == 0, capsys.readouterr().err
    print(f"drills: {len(CASES)} cases, {len(CLEAN)} ended clean in this session")
