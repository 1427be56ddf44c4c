"""One source of truth for the suite schema: `privbench schema`, `privbench list NAME`, every
error at once in `validate`, `--version` (bench/catalog.py)."""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from bench.catalog import data_params, describe, find, overview, schema_errors, suite_schema
from bench.cli import main
from bench.components import registry
from bench.config import DataConfig
from bench.suite import build_suite
from bench.types import ConfigError

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted(glob.glob(str(REPO / "experiments" / "*.yaml")))
QUICK = yaml.safe_load((REPO / "experiments" / "quick.yaml").read_text())
SMALL = {  # a base-only suite: a bad base value is not hidden by a variant that replaces it
    "suite": "small",
    "base": {"data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3}, "model": {"name": "logreg"},
             "train": {"rounds": 1, "lr": 0.1}, "attacks": [{"name": "loss_threshold"}]},
    "seeds": [0],
}


def _with(raw: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(raw)
    node = out
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def test_schema_is_valid_json_schema_and_every_shipped_suite_passes():
    schema = suite_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)  # serialisable as the CLI prints it
    for path in SUITES:
        assert schema_errors(yaml.safe_load(Path(path).read_text())) == [], path


# (dotted path into the quick suite, bad value): the loader refuses each, so must the schema
BAD = [
    ("base.train.lr", 0),
    ("base.train.lr", "fast"),
    ("base.train.rounds", 0),
    ("base.train.optimizer", "adamw"),
    ("base.data.partition", "random"),
    ("base.data.member_fraction", 1.0),
    ("base.data.num_sites", 0),
    ("base.model.hidden", 64),
    ("base.privacy.accountant", "gdp"),
    ("base.privacy.delta", 1.5),
    ("base.train.lrr", 0.1),
    ("base.defenses", [{"name": "dp_sgd", "noise_multiplier": -1.0}]),
    ("base.defenses", [{"name": "nope"}]),
    ("base.defenses", [{"name": "clipping", "max_norm": 0}]),
    ("base.attacks", [{"name": "lira", "num_references": 0}]),
    ("base.attacks", [{"name": "lira", "mode": "both"}]),
    ("base.attacks", [{"name": "loss_threshold", "extra": 1}]),
    ("seeds", [-1]),
    ("seeds", ["a"]),
    ("grid", {"train.lrr": [0.1]}),
    ("variants", [{"train.lr": -1}]),
    ("suitex", "x"),
]


@pytest.mark.parametrize("dotted,value", BAD, ids=[f"{d}={v!r}"[:60] for d, v in BAD])
def test_schema_refuses_what_the_loader_refuses(dotted, value):
    raw = _with(SMALL, dotted, value)
    assert schema_errors(SMALL) == []
    with pytest.raises(ConfigError):
        build_suite(raw)
    assert schema_errors(raw), f"the schema accepted {dotted}={value!r}, which the loader refuses"


def test_validate_lists_every_problem_at_once(tmp_path, capsys):
    raw = _with(_with(_with(QUICK, "base.train.lr", 0), "base.data.partitoin", "iid"), "seeds", [0, -1])
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("privbench: error:") and "3 problems" in err[0]
    body = "\n".join(err[1:])
    assert "base.train.lr" in body and "partitoin: unknown key (did you mean 'partition'?)" in body and "seeds[1]" in body
    assert "Traceback" not in body


def test_validate_with_one_problem_keeps_the_loaders_one_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_with(QUICK, "base.train.lr", 0)))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0]


@pytest.mark.parametrize("kind", ["dataset", "model", "defense", "attack"])
def test_list_name_shows_every_parameter_with_default_and_range(kind, capsys):
    for name, cls in registry(kind).items():
        assert main(["list", name]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{name} ({kind})")
        out = out[out.index("parameters"):]  # the table (the description above it may mention a key)
        params = DataConfig if kind == "dataset" else getattr(cls, "Params", None)  # a dataset's keys are data.*
        if params is None or not dataclasses.fields(params):
            assert "parameters: none" in out
            continue
        shown = {p.name for p in data_params(name)} if kind == "dataset" else None
        for f in dataclasses.fields(params):
            if shown is not None and f.name not in shown:
                continue
            line = next(line for line in out.splitlines() if line.strip().startswith(f.name + " "))
            assert "default" in line
            for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                if key in f.metadata:
                    assert f"{sym} {f.metadata[key]}" in line, line


def test_list_knows_the_family_and_threat_model():
    assert find("lira")[0] == "attack" and "threat model: outsider" in describe("lira")
    assert "DP: has ε" in describe("dp_sgd") and "not DP" in describe("clipping")
    assert "num_references" in describe("lira") and "default 16" in describe("lira")


def test_list_unknown_name_is_one_line_exit_2(capsys):
    assert main(["list", "liraa"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'lira'" in err[0]


def test_list_does_not_cut_paper_titles():
    text = " ".join(overview().split())
    for _, cls in registry("attack").items():
        first_paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        assert first_paragraph in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("privbench ")


def test_schema_command_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "privbench suite"
