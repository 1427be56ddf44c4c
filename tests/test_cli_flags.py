"""Issue 23, item 7: `privbench list DATASET` shows the data.* keys, global flags after the
subcommand, clipping's and sparsification's "how often did it act" metrics, and the warning
for a cell no better than the majority class."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.catalog import data_params
from bench.cli import _finished_row, at_or_below_majority, build_parser, main
from bench.config import parse_experiment
from bench.runner import run_in_memory
from defenses.base import ClientContext, FederationFacts
from defenses.clipping import Clipping
from defenses.sparsify import Sparsify
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- list NAME of a dataset


def _keys(out: str) -> set[str]:
    """The parameter names of a `privbench list NAME` table (lines indented four spaces)."""
    table = out[out.index("parameters"):]
    return {line.split()[0] for line in table.splitlines() if line.startswith("    ") and not line.startswith("     ")}


def test_list_csv_shows_the_csv_keys_with_default_type_and_meaning(capsys):
    assert main(["list", "csv"]) == 0
    out = capsys.readouterr().out
    assert "parameters: none" not in out
    keys = _keys(out)
    assert {"path", "site_column", "label_column", "positive_labels", "multiclass", "partition", "num_sites"} <= keys
    assert "data_dir" not in keys and "download" not in keys and "name" not in keys  # heart disease's own; name is the choice itself
    line = next(line for line in out.splitlines() if line.strip().startswith("site_column "))
    assert "string" in line and "default site" in line
    assert "default label" in next(line for line in out.splitlines() if line.strip().startswith("label_column "))
    assert "> 0, < 1" in next(line for line in out.splitlines() if line.strip().startswith("test_fraction "))
    meaning = out.splitlines()[out.splitlines().index(next(line for line in out.splitlines() if line.strip().startswith("path "))) + 1]
    assert "CSV file" in meaning  # a one-line meaning under each key


def test_list_heart_disease_shows_data_dir_and_not_the_csv_keys(capsys):
    assert main(["list", "heart_disease"]) == 0
    keys = _keys(capsys.readouterr().out)
    assert {"data_dir", "download", "partition", "member_fraction"} <= keys
    assert not keys & {"path", "site_column", "label_column", "positive_labels"}


def test_every_data_key_applies_to_some_dataset_and_every_key_has_a_meaning():
    from bench.components import registry
    from bench.config import DataConfig
    import dataclasses

    shown = {p.name for n in registry("dataset").names() for p in data_params(n)}
    assert shown == {f.name for f in dataclasses.fields(DataConfig)} - {"name"}
    assert all(p.doc for n in registry("dataset").names() for p in data_params(n))


# --------------------------------------------------------------------------- -v on either side


@pytest.mark.parametrize("argv", [["run", "s.yaml", "-v"], ["-v", "run", "s.yaml"], ["run", "s.yaml", "--verbose"],
                                  ["list", "csv", "-v"], ["-v", "list"], ["report", "--suite", "x", "-v"], ["ui", "-v"]])
def test_verbose_parses_before_or_after_the_subcommand(argv):
    assert build_parser().parse_args(argv).verbose is True


@pytest.mark.parametrize("argv", [["run", "s.yaml"], ["list"], ["validate", "s.yaml", "--data"]])
def test_without_verbose_it_is_off(argv):
    assert build_parser().parse_args(argv).verbose is False


_PROBE = """
import json, logging, os, sys
from bench import cli
def probe(args):  # what main set up, in place of running the command
    print(json.dumps({"root": logging.getLogger().getEffectiveLevel(), "verbose": args.verbose,
                      "mlflow_env": os.environ.get("MLFLOW_LOGGING_LEVEL"), "command": args.command}))
    return 0
cli._dispatch = probe
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv,debug", [(["run", "s.yaml", "-v"], True), (["-v", "run", "s.yaml"], True),
                                        (["run", "s.yaml"], False), (["list", "csv", "-v"], True)])
def test_verbose_turns_on_debug_logging_in_either_order(argv, debug, tmp_path):
    """main's own logging set-up, in a fresh process (pytest's log capture would make basicConfig a no-op)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["command"] == (argv[1] if argv[0] == "-v" else argv[0])
    assert got["verbose"] is debug
    assert got["root"] == (logging.DEBUG if debug else logging.WARNING)
    assert got["mlflow_env"] == ("DEBUG" if debug else "WARNING")


def test_verbose_after_the_subcommand_runs_the_command(capsys):
    assert main(["list", "heart_disease", "-v"]) == 0
    assert "data_dir" in capsys.readouterr().out


# --------------------------------------------------------------------------- clipping and sparsify metrics


def _facts(sites=("a", "b", "c")) -> FederationFacts:
    return FederationFacts(site_names=tuple(sites), site_sizes={s: 10 for s in sites}, sites_per_round=len(sites), rounds=1,
                           num_params=4, local_epochs=1, batch_size=8, accountant="rdp", delta=None)


def _ctx(site: str) -> ClientContext:
    return ClientContext(site=site, round=1, num_samples=10, generator=torch.Generator().manual_seed(0))


UPDATES = {"a": torch.tensor([3.0, 4.0, 0.0, 0.0]), "b": torch.tensor([0.0, 0.0, 1.0, 0.0]), "c": torch.tensor([1.0, 1.0, 1.0, 1.0])}  # norms 5, 1, 2


@pytest.mark.parametrize("bound,expected", [(10.0, 0.0), (5.0, 0.0), (1.5, 2 / 3), (0.5, 1.0)])
def test_clipped_fraction_known_answers(bound, expected):
    d = Clipping(Clipping.Params(max_norm=bound))
    d.setup(_facts())
    for site, u in UPDATES.items():
        out = d.transform_update(u, _ctx(site))
        assert torch.linalg.vector_norm(out) <= bound * (1 + 1e-6)
    d.transform_update(torch.stack(list(UPDATES.values())) * 100, _ctx("canaries"))  # an audit's canary clients: not counted
    assert d.metrics() == {"defense/clipping/clipped_fraction": pytest.approx(expected)}


def test_clipping_without_updates_logs_nothing():
    d = Clipping(Clipping.Params())
    d.setup(_facts())
    assert d.metrics() == {}


def test_sparsify_kept_fractions_known_answers():
    d = Sparsify(Sparsify.Params(keep_fraction=0.5))  # keeps 2 of 4 coordinates
    d.setup(_facts())
    for site, u in UPDATES.items():
        d.transform_update(u, _ctx(site))
    m = d.metrics()
    assert m["defense/sparsify/kept_fraction"] == pytest.approx(0.5)
    # a: 3,4 kept (all of 25); b: one non-zero, kept (all); c: 2 of 4 equal entries (half)
    assert m["defense/sparsify/kept_norm_fraction"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["defense/sparsify/changed_fraction"] == pytest.approx(1 / 3)  # only c had more non-zeros than kept
    full = Sparsify(Sparsify.Params(keep_fraction=1.0))
    full.setup(_facts())
    for site, u in UPDATES.items():
        full.transform_update(u, _ctx(site))
    assert full.metrics() == {"defense/sparsify/kept_fraction": 1.0, "defense/sparsify/kept_norm_fraction": 1.0,
                              "defense/sparsify/changed_fraction": 0.0}


@pytest.mark.parametrize("bound,expected", [(1e6, 0.0), (1e-6, 1.0)])
def test_a_run_logs_the_clipped_fraction(bound, expected):
    """Through the whole pipeline: a bound above every update's norm never acts, one below every norm always does."""
    res = run_in_memory(parse_experiment(tiny_raw(defenses=[{"name": "clipping", "max_norm": bound}], train__rounds=2)))
    assert res.metrics["defense/clipping/clipped_fraction"] == expected


def test_a_run_logs_the_kept_fraction():
    res = run_in_memory(parse_experiment(tiny_raw(defenses=[{"name": "sparsify", "keep_fraction": 0.25}], train__rounds=2)))
    m = res.metrics
    p = res.record.rounds[-1].global_params.numel()
    assert m["defense/sparsify/kept_fraction"] == pytest.approx(math.ceil(0.25 * p) / p)
    assert 0 < m["defense/sparsify/kept_norm_fraction"] < 1
    assert m["defense/sparsify/changed_fraction"] == 1.0  # dense updates: every one lost coordinates


# --------------------------------------------------------------------------- warning at or below the majority class


def test_warning_when_accuracy_is_at_or_below_the_majority_baseline(caplog):
    with caplog.at_level(logging.WARNING, logger="privbench"):
        _finished_row("cell-a", {"utility/test_accuracy": 0.627, "utility/majority_baseline": 0.627}, {})
        _finished_row("cell-b", {"utility/test_accuracy": 0.5, "utility/majority_baseline": 0.627}, {})
        _finished_row("cell-c", {"utility/test_accuracy": 0.94, "utility/majority_baseline": 0.627}, {})
        _finished_row("cell-d", {"utility/test_accuracy": 0.5}, {})  # no baseline logged: nothing to compare
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert "cell-a" in warned[0] and "0.627 is at or below the majority-class baseline 0.627" in warned[0]
    assert "cell-b" in warned[1] and "0.500" in warned[1]


def test_warning_and_summary_marker_agree():
    """One comparison for both: the summary's "!" and the warning."""
    from bench.cli import format_utility

    inversion = {"utility/test_accuracy": 0.098, "utility/majority_baseline": 0.1, "attack/analytic/feature_accuracy": 1.0,
                 "attack/analytic/targets": 3.0}
    for m in ({"utility/test_accuracy": 0.6, "utility/majority_baseline": 0.627},
              {"utility/test_accuracy": 0.7, "utility/majority_baseline": 0.627}, inversion):
        assert (at_or_below_majority(m) is not None) == ("!" in format_utility(m))
    assert at_or_below_majority(inversion) is None  # an attack-only cell's accuracy is not a utility result


def test_summary_shows_the_flagged_accuracy_and_its_baseline_whole():
    from bench.cli import SUMMARY_WIDTH, SummaryRow, _summary_table

    m = {"utility/test_accuracy": 0.623, "utility/majority_baseline": 0.632}
    table = _summary_table([SummaryRow("clipping(C=1e-06) · seed 0", "FINISHED", m, {}, 1.7)])
    assert "0.623! (maj 0.632)" in table
    assert max(len(line) for line in table.splitlines()) <= SUMMARY_WIDTH
