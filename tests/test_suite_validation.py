"""Malformed suites through the real CLI (``python -m bench``) as a subprocess.

The contract (bench/cli.py, DESIGN.md "Config"): bad input ends with exit code 2 and exactly
one line on stderr, no traceback, naming the offending key path and value and what is
allowed (with a "did you mean" for typos); ``run`` logs nothing to MLflow.

The cases the validation contract is about each run in their own process (``python -m bench``);
the processes run concurrently in one module fixture so that their ~2 s start-up (torch) does
not add up. Further variations (ids ``inproc-*``) call the same entry point,
``bench.cli.main``, inside this process, with an uncaught exception turned into a traceback
and exit code 1 as the interpreter would, to keep the default test run fast.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sqlite3
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from attacks import ATTACKS
from defenses import DEFENSES

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "suite": "bad_input",
    "description": "a valid suite that each case breaks in one place",
    "base": {
        "data": {"name": "breast_cancer", "partition": "iid", "num_sites": 3},
        "model": {"name": "logreg"},
        "train": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "attacks": [{"name": "loss_threshold"}],
    },
    "seeds": [0],
}

# an attack that needs each hospital's update, and a defense that shows the server only the sum
NEEDS_UPDATES = "update_cosine"  # needs individual updates and runs with its defaults (attribute attacks need `attributes`)
assert ATTACKS.get(NEEDS_UPDATES).needs_individual_updates
HIDES_UPDATES = next(n for n, c in DEFENSES.items() if c.hides_updates)


def suite(*edits) -> str:
    """YAML of GOOD after applying ``(dotted.path, value)`` edits (value ``DELETE`` removes the key)."""
    raw = copy.deepcopy(GOOD)
    for path, value in edits:
        keys = path.split(".")
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return yaml.safe_dump(raw, sort_keys=False)


def renamed(old: str, new: str) -> str:
    """GOOD with top-level key ``old`` renamed to ``new`` (keeps its value)."""
    raw = copy.deepcopy(GOOD)
    raw[new] = raw.pop(old)
    return yaml.safe_dump(raw, sort_keys=False)


def nested_renamed(section: str, old: str, new: str) -> str:
    raw = copy.deepcopy(GOOD)
    sec = raw["base"][section]
    sec[new] = sec.pop(old)
    return yaml.safe_dump(raw, sort_keys=False)


MISSING = object()  # the suite path does not exist
IN_PROCESS = "inproc-"  # id prefix of the cases run through bench.cli.main in this process


@dataclass(frozen=True)
class Case:
    id: str
    text: object  # YAML text, raw bytes, or MISSING
    expect: tuple[str, ...]  # substrings the one stderr line must contain
    command: str = "validate"
    args: tuple[str, ...] = ()


GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)

CASES = [
    # ---- unknown keys, with a "did you mean"
    Case("top_level_typo", renamed("seeds", "sedes"), ("sedes", "unknown", "did you mean 'seeds'", "allowed")),
    Case(IN_PROCESS + "top_level_with_space", renamed("seeds", "seed s"), ("seed s", "did you mean 'seeds'")),
    Case("nested_typo", nested_renamed("train", "rounds", "round"), ("train.round", "unknown key", "did you mean 'rounds'")),
    # ---- types and ranges
    Case("wrong_type", suite(("base.train.rounds", "ten")), ("train.rounds", "'ten'", "integer")),
    Case("negative_lr", suite(("base.train.lr", -1)), ("train.lr", "-1", "> 0")),
    Case(IN_PROCESS + "zero_sites", suite(("base.data.num_sites", 0)), ("data.num_sites", "0", ">= 1")),
    Case(IN_PROCESS + "bad_literal", suite(("base.privacy", {"accountant": "rpd"})), ("privacy.accountant", "'rpd'", "rdp", "did you mean 'rdp'")),
    # ---- unknown component names: the registry lists what is allowed
    Case("unknown_dataset", suite(("base.data.name", "breast_cancr")),
         ("data.name", "'breast_cancr'", "did you mean 'breast_cancer'", "digits", "heart_disease")),
    Case(IN_PROCESS + "unknown_model", suite(("base.model.name", "resnet")), ("model.name", "'resnet'", "logreg", "mlp", "cnn")),
    Case("unknown_defense", suite(("base.defenses", [{"name": "dp_sgdd"}])),
         ("defenses[0].name", "'dp_sgdd'", "did you mean 'dp_sgd'", "clipping")),
    Case("unknown_attack", suite(("base.attacks", [{"name": "loss_treshold"}])),
         ("attacks[0].name", "'loss_treshold'", "did you mean 'loss_threshold'")),
    # ---- a defense's own parameters
    Case("defense_param_range", suite(("base.defenses", [{"name": "clipping", "max_norm": -1}])),
         ("defenses.clipping.max_norm", "-1", "> 0")),
    Case(IN_PROCESS + "defense_param_unknown", suite(("base.defenses", [{"name": "clipping", "max_nrm": 1.0}])),
         ("defenses.clipping.max_nrm", "did you mean 'max_norm'")),
    # ---- a combination that cannot work: refused before anything trains
    Case("hidden_updates",
         suite(("base.defenses", [{"name": HIDES_UPDATES}]), ("base.attacks", [{"name": NEEDS_UPDATES}])),
         (NEEDS_UPDATES, HIDES_UPDATES, "individual update")),
    Case(IN_PROCESS + "hidden_updates_in_grid",  # names the grid cell that breaks it
         suite(("base.attacks", [{"name": NEEDS_UPDATES}]), ("grid", {"defenses": [[], [{"name": HIDES_UPDATES}]]})),
         (NEEDS_UPDATES, HIDES_UPDATES, "in cell", "defenses=")),
    # ---- the file itself
    Case("yaml_syntax", "suite: x\nbase:\n  data: {name: breast_cancer\n  model: {name: logreg}\n",
         ("yaml_syntax.yaml", "line 4", "YAML")),
    Case("missing_file", MISSING, ("missing_file.yaml", "not found")),
    Case("empty_file", "", ("empty_file.yaml", "empty", "suite")),
    Case(IN_PROCESS + "not_a_mapping", "- suite: x\n", ("not_a_mapping.yaml", "mapping")),
    # ---- grid keys are config paths too
    Case("grid_unknown_key", suite(("grid", {"train.roundz": [1, 2]})), ("train.roundz", "did you mean 'rounds'", "in cell")),
    Case(IN_PROCESS + "grid_not_a_list", suite(("grid", {"train.lr": 0.1})), ("grid.train.lr", "0.1", "list")),
    # ---- --set overrides
    Case("set_bad_path", GOOD_TEXT, ("trian", "did you mean 'train'"), args=("--set", "trian.lr=0.1")),
    Case(IN_PROCESS + "set_out_of_range", GOOD_TEXT, ("train.rounds", "got 0", "from --set train.rounds=0"), args=("--set", "train.rounds=0")),
    Case(IN_PROCESS + "set_not_a_section", GOOD_TEXT, ("train.rounds.x", "not a section"), args=("--set", "train.rounds.x=1")),
    Case(IN_PROCESS + "set_no_equals", GOOD_TEXT, ("train.lr", "key.path=value"), args=("--set", "train.lr")),
    Case("set_bad_yaml", GOOD_TEXT, ("train.lr=[1", "YAML"), args=("--set", "train.lr=[1")),
    Case(IN_PROCESS + "set_bad_value", GOOD_TEXT, ("train.lr", "-0.5", "> 0"), args=("--set", "train.lr=-0.5")),
    # ---- `run` validates everything before it logs anything
    Case("run_wrong_type", suite(("base.train.rounds", "ten")), ("train.rounds", "'ten'", "integer"), command="run"),
    Case("run_hidden_updates",
         suite(("base.defenses", [{"name": HIDES_UPDATES}]), ("base.attacks", [{"name": NEEDS_UPDATES}])),
         (NEEDS_UPDATES, HIDES_UPDATES), command="run"),
    Case("run_unknown_defense", suite(("base.defenses", [{"name": "dp_sgdd"}])), ("defenses[0].name", "'dp_sgdd'"), command="run"),
    # data problems are found before anything is logged too (not as one FAILED run per cell)
    Case(IN_PROCESS + "run_heart_data_missing",
         suite(("base.data", {"name": "heart_disease", "partition": "natural", "data_dir": "/nonexistent/privbench-heart"})),
         ("data.data_dir", "/nonexistent/privbench-heart", "processed."), command="run"),
    Case(IN_PROCESS + "validate_data_missing",
         suite(("base.data", {"name": "heart_disease", "partition": "natural", "data_dir": "/nonexistent/privbench-heart"})),
         ("data.data_dir", "/nonexistent/privbench-heart"), args=("--data",)),
    Case(IN_PROCESS + "run_hospitals_too_small",
         suite(("base.data.num_sites", 200)), ("data.num_sites", "use fewer hospitals"), command="run"),
    Case("run_set_bad_path", GOOD_TEXT, ("trian", "did you mean 'train'"), command="run", args=("--set", "trian.lr=0.1")),
    # ---- formerly bugs (tracebacks / silent acceptance), now one-line errors
    Case(IN_PROCESS + "component_name_not_a_string", suite(("base.defenses", [{"name": ["clipping"]}])), ("defenses[0].name",)),
    Case(IN_PROCESS + "yaml_date_value", GOOD_TEXT.replace("lr: 0.1", "lr: 2024-01-01"), ("train.lr", "number")),
    Case(IN_PROCESS + "duplicate_yaml_key",
         GOOD_TEXT + "base:\n  data: {name: digits}\n",  # a second `base:` would silently replace the first
         ("base", "twice")),  # e.g. "line 12: key 'base' given twice in one mapping"
]
RUN_IDS = [c.id for c in CASES if c.command == "run"]


@dataclass
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    db: Path
    suite_path: Path


def _invoke(case: Case, root: Path) -> Outcome:
    work = root / case.id
    work.mkdir()
    path = work / f"{case.id}.yaml"
    if case.text is not MISSING:
        path.write_text(case.text, encoding="utf-8")
    db = work / "store" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONIOENCODING": "utf-8"}
    argv = [sys.executable, "-m", "bench", case.command, str(path), *case.args]
    if case.command == "run":
        argv.append("-q")
    if not case.id.startswith(IN_PROCESS):
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        return Outcome(case, proc.returncode, proc.stdout, proc.stderr, db, path)
    return Outcome(case, *_in_process(argv[3:]), db, path)


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    """``python -m bench argv`` without a new interpreter: exit code, stdout, stderr."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=err)
            code = 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad_suites")
    workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
    procs = [c for c in CASES if not c.id.startswith(IN_PROCESS)]
    with ThreadPoolExecutor(workers) as pool:
        done = {o.case.id: o for o in pool.map(lambda c: _invoke(c, root), procs)}
    done.update({c.id: _invoke(c, root) for c in CASES if c.id.startswith(IN_PROCESS)})
    return done


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_is_one_line_exit_2(outcomes, case_id):
    o = outcomes[case_id]
    assert o.returncode == 2, f"exit {o.returncode}\nstdout: {o.stdout}\nstderr: {o.stderr}"
    assert "Traceback" not in o.stderr
    lines = o.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{o.stderr}"
    line = lines[0]
    for needle in o.case.expect:
        assert needle in line, f"{needle!r} missing from: {line}"
    assert o.stdout == "", f"nothing should be printed before the error, got: {o.stdout!r}"


def test_there_are_enough_cases():
    """At least 12 malformed suite files through a real subprocess, and a few through `run`."""
    files = [c for c in CASES if isinstance(c.text, str) and not c.args and not c.id.startswith(IN_PROCESS)]
    assert len(files) >= 12
    assert len([i for i in RUN_IDS if not i.startswith(IN_PROCESS)]) >= 3


def _run_count(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


@pytest.mark.parametrize("case_id", RUN_IDS)
def test_run_with_bad_input_logs_nothing(outcomes, case_id):
    o = outcomes[case_id]
    assert o.returncode == 2, o.stderr
    # nothing logged: the store was never opened (no file), or it holds no run at all
    if o.db.exists():
        assert _run_count(o.db) == 0
    store = o.db.parent
    assert not (store / "artifacts").exists(), "artifacts were written for a suite that never ran"
    assert not (o.suite_path.parent / "mlruns").exists()


def test_the_valid_suite_is_valid():
    """The cases break GOOD in one place each: GOOD itself (and each --set base) must pass."""
    from bench.suite import build_suite

    assert len(build_suite(yaml.safe_load(GOOD_TEXT)).cells) == 1
    for c in CASES:
        if c.text is GOOD_TEXT:
            assert len(build_suite(yaml.safe_load(c.text)).cells) == 1


# --------------------------------------------------------------------------- seeds from the command line


def _cells(raw: dict, *overrides: str):
    from bench.suite import build_suite

    return build_suite(copy.deepcopy(raw), list(overrides)).cells


def test_set_seed_and_seeds_replace_the_suites_seeds():
    """Issue 14: `--set seed=5` was silently ignored (seed 0 ran, exit 0)."""
    assert [c.config.seed for c in _cells(GOOD, "seed=5")] == [5]
    assert [c.config.seed for c in _cells(GOOD, "seeds=[1, 2]")] == [1, 2]
    assert [c.config.seed for c in _cells(GOOD, "seed=[3, 4]", "seeds=7")] == [7]  # the last one wins
    assert [c.config.seed for c in _cells({**GOOD, "seeds": None, "base": {**GOOD["base"], "seed": 9}})] == [9]
    big = _cells(GOOD, f"seed={2**32 + 5}")[0]
    assert big.config.seed == 2**32 + 5 and big.run_key != _cells(GOOD, "seed=5")[0].run_key


# --------------------------------------------------------------------------- run names


def test_run_names_lead_with_the_defense_and_name_the_dataset_only_where_it_tells_cells_apart():
    """Issue 13: the MLflow runs table shows ~15 characters, and every name began "breast_cancer…"."""
    one_dataset = {**GOOD, "grid": {"defenses": [[], [{"name": "dp_sgd", "noise_multiplier": 1.0}]]}, "seeds": [0, 1]}
    names = [c.name for c in _cells(one_dataset)]
    assert names == ["no defense · seed 0", "no defense · seed 1", "dp_sgd(z=1,C=1) · seed 0", "dp_sgd(z=1,C=1) · seed 1"]

    two = {**one_dataset, "variants": [{"data.name": "breast_cancer"}, {"data.name": "digits"}]}
    cells = _cells(two)
    assert [c.name for c in cells][:2] == ["no defense · breast_cancer · seed 0", "no defense · breast_cancer · seed 1"]
    assert cells[-1].name == "dp_sgd(z=1,C=1) · digits · seed 1"
    for c in cells:  # the setting is the name without the seed, the same for every seed
        assert c.name == f"{c.setting} · seed {c.config.seed}"
    settings = {}
    for c in cells:
        settings.setdefault(c.setting, set()).add(c.config.setting_key)
    assert all(len(keys) == 1 for keys in settings.values()) and len(settings) == 4


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "experiments").glob("*.yaml")))
def test_every_shipped_suite_has_unique_names_that_start_with_the_defense(path):
    from bench.config import load_yaml

    cells = _cells(load_yaml(path))
    from bench.suite import RUN_NAME_MAX

    names = [c.name for c in cells]
    assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]
    for c in cells:  # issue 23: at most 40 characters (the runs table shows them in full), defense first, no attack lists
        assert len(c.name) <= RUN_NAME_MAX, c.name
        first = c.config.defenses[0].name if c.config.defenses else "no defense"
        spellings = {first, first[: RUN_NAME_MAX - 12], {"secure_aggregation": "secagg", "no defense": "none"}.get(first, first)}
        assert any(c.name.startswith(x) for x in spellings), c.name
        assert "attacks=" not in c.name and c.name.endswith(f" · seed {c.config.seed}")
    shorts = {}
    for c in cells:  # one short setting per setting, and no two settings share one
        shorts.setdefault(c.short_setting, set()).add(c.config.setting_key)
    assert all(len(keys) == 1 for keys in shorts.values()), shorts


def test_quick_suite_names_say_the_dataset_of_a_defense_run_on_two_and_spell_each_thing_one_way():
    """Issue 23: the digits inversion cell was "dp_sgd(z=1,C=1) · seed 0" beside breast cancer's
    "dp_sgd(eps=4,C=1) · seed 0"; "no defense" was "none" in one name; "breast" and
    "breast_cancer" both appeared."""
    from bench.config import load_yaml

    names = [c.name for c in _cells(load_yaml(str(REPO / "experiments" / "quick.yaml")), "seeds=[0]")]
    assert all(len(n) <= 40 and "…" not in n for n in names), names
    dp = [n for n in names if n.startswith("dp_sgd(")]
    assert dp and all(("digits" in n) != ("breast" in n) for n in dp), dp  # each dp_sgd name says its dataset
    assert not [n for n in names if n.startswith("none")] and sum(n.startswith("no defense") for n in names) == 4, names
    assert not [n for n in names if "breast_cancer" in n], names  # one spelling of the dataset in the suite
    assert len(set(names)) == len(names)


def test_long_names_are_shortened_and_kept_apart():
    from bench.suite import RUN_NAME_MAX, short_label

    assert short_label("dp_sgd(z=1,C=1)") == "dp_sgd(z=1,C=1)"  # a name that fits is left alone
    assert short_label("client_dp(z=1,C=0.5)+secure_aggregation") == "client_dp(z=1,C=0.5)+secagg"
    long = "no defense · breast_cancer · attacks=" + "x" * 80
    assert len(short_label(long)) == RUN_NAME_MAX - len(" · seed 0") and short_label(long).endswith("…")
    assert len(short_label(long, seed=123456)) == RUN_NAME_MAX - len(" · seed 123456")
