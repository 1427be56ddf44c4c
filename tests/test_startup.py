"""Start-up (issue 15): the CLI imports only what a command needs, and a new SQLite store is a
copy of a once-migrated template that MLflow accepts as its own. Issue 26 item 3: ``list``,
``list NAME``, ``schema`` and ``validate`` (without ``--data``) import neither torch nor scipy
(the component modules name them through ``bench.lazy``), and deciding an architecture check
without building the model gives the decision the built model gives."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "opacus", "ray", "matplotlib", "sklearn", "pandas", "scipy")


def test_importing_the_cli_loads_no_heavy_library():
    code = f"import bench.cli, sys; bad = sorted(set({HEAVY!r}) & set(sys.modules)); print(','.join(bad))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import bench.cli` imported {out.stdout.strip()}"


def test_version_does_not_import_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "--version"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("privbench ")
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}



# what a command leaves in sys.modules, read at exit (argparse's --help/--version exit through SystemExit)
_WRAPPER = """
import atexit, sys
HEAVY = set({heavy!r})
atexit.register(lambda: sys.stderr.write("HEAVY=" + ",".join(sorted({{m.split('.')[0] for m in sys.modules}} & HEAVY)) + "\\n"))
sys.argv = ["privbench", *{args!r}]
from bench.cli import main
sys.exit(main())
"""

LIGHT_COMMANDS = (
    ["--version"],
    ["--help"],
    ["list"],
    ["list", "lira"],  # an attack whose module reads scipy.stats
    ["list", "imprint"],  # an attack with its own torch.nn.Module (built on first use)
    ["list", "dp_sgd"],
    ["list", "mlp"],
    ["list", "heart_disease"],
    ["schema"],
    ["validate", "experiments/quick.yaml"],  # every defense and attack once, the analytic attack's architecture check too
    ["validate", "experiments/inversion.yaml"],
)


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_import_neither_torch_nor_scipy(args):
    """Issue 26 item 3: the commands that only read configs and components load no heavy library
    (torch alone is ~1.1 s of a 2.9 s `validate`); the whole process is watched, not one import."""
    code = _WRAPPER.format(heavy=HEAVY, args=args)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], f"privbench {' '.join(args)} imported {heavy}"


def test_the_watch_sees_a_heavy_import():
    """The check above can fail: a command that trains data in (`validate --data` loads and splits
    it with torch) is reported."""
    code = _WRAPPER.format(heavy=HEAVY, args=["validate", "--data", "experiments/quick.yaml", "--only", "analytic"])
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    heavy = [line for line in out.stderr.splitlines() if line.startswith("HEAVY=")]
    assert out.returncode == 0 and len(heavy) == 1 and "torch" in heavy[0].split("=")[1].split(","), out.stderr[-2000:]


def test_a_lazy_name_imports_on_first_use_and_becomes_the_object():
    from fractions import Fraction

    from bench.lazy import Lazy, lazy

    ns: dict = {}
    ns["Fraction"] = lazy("fractions:Fraction", ns)
    ns["frac"] = lazy("fractions", ns, "frac")
    ns["statistics"] = lazy("statistics", ns)  # the name is the last part of the target by default
    assert isinstance(ns["Fraction"], Lazy) and "not imported yet" in repr(ns["Fraction"])
    assert ns["Fraction"](1, 2) == Fraction(1, 2)  # a call
    assert ns["Fraction"] is Fraction  # the global is the real object from then on
    assert ns["frac"].Fraction is Fraction and ns["frac"] is sys.modules["fractions"]  # an attribute
    assert ns["statistics"].median([3, 1, 2]) == 2 and ns["statistics"] is sys.modules["statistics"]
    # a global the module rebound itself is left alone; a module that does not exist fails at first use
    stand_in = lazy("fractions:Fraction", ns, "other")
    ns["other"] = 5
    assert stand_in(3) == 3 and ns["other"] == 5
    missing = lazy("no_such_module_here", ns)
    with pytest.raises(ModuleNotFoundError):
        missing.anything


def test_lazy_no_grad_is_torch_no_grad():
    import torch

    from bench.lazy import no_grad

    w = torch.ones(3, requires_grad=True)

    @no_grad
    def double(x):
        """Doc."""
        return 2 * x

    assert not double(w).requires_grad and (w * 2).requires_grad
    assert double.__doc__ == "Doc." and double.__name__ == "double"


def _first_layer(model) -> "InputLayer":
    """The first layer with parameters of a built model, as :class:`bench.types.InputLayer`."""
    import torch

    from bench.types import InputLayer

    for path, mod in model.named_modules():
        if list(mod.parameters(recurse=False)):
            linear = isinstance(mod, torch.nn.Linear)
            return InputLayer(path, type(mod).__name__, mod.in_features if linear else None,
                              getattr(mod, "bias", None) is not None)
    raise AssertionError("no parameters")


@pytest.mark.parametrize("model_name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize("shape", [(30,), (1, 8, 8), (3, 16, 16)])
def test_a_built_in_models_described_first_layer_is_the_one_it_builds(model_name, shape):
    """``input_layer(info, cfg)`` (no torch) describes what ``build`` makes, and the analytic
    attack's decision on the description equals its decision on the built model, message and all."""
    from attacks.inversion.analytic import Analytic
    from bench.config import ModelConfig
    from bench.models import MODELS
    from bench.types import ConfigError, DatasetInfo

    info = DatasetInfo(name="x", input_shape=shape, num_classes=3, modality="image" if len(shape) == 3 else "tabular")
    cfg = ModelConfig(name=model_name, hidden=(16, 8), channels=4)
    model_cls = MODELS.get(model_name)
    described = model_cls.input_layer(info, cfg)
    built = model_cls.build(info, cfg)
    assert described == _first_layer(built)

    def outcome(check):
        try:
            check()
            return "accepted"
        except ConfigError as exc:
            return str(exc)

    params = Analytic.Params()
    light = outcome(lambda: Analytic.check_input_layer(params, described, info))
    assert light == outcome(lambda: Analytic.check_model(params, built, info))
    assert (light == "accepted") == (model_name != "cnn")

def _schema(db: Path) -> dict:
    """Tables with their columns (name, type, not-null, primary key), indexes, and the migration version.
    (Not the CREATE text: SQLite keeps an ALTER-added column's text as written, which may differ by formatting.)"""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        cols = {t: sorted((c[1], c[2].upper(), c[3], c[5]) for c in con.execute(f'PRAGMA table_info("{t}")')) for t in tables}
        indexes = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"))
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        return {"columns": cols, "indexes": indexes, "version": version}
    finally:
        con.close()


def test_new_stores_from_the_template_equal_what_mlflow_makes(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.tracking import open_client

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made = []
    for name in ("a", "b"):  # the first makes the template, the second copies it
        (tmp_path / name).mkdir()
        db = tmp_path / name / "mlflow.db"
        client = open_client(f"sqlite:///{db}")
        (default,) = client.search_experiments()
        assert default.name == "Default" and default.experiment_id == "0"
        made.append(db)
    assert list((tmp_path / "cache" / "privbench").glob("mlflow-*-empty.db"))
    own = tmp_path / "own.db"
    MlflowClient(tracking_uri=f"sqlite:///{own}").search_experiments()  # MLflow's own creation, migrations and all
    assert _schema(made[0]) == _schema(made[1]) == _schema(own)
    # and it is a working store: an experiment and a run can be written and read back
    client = MlflowClient(tracking_uri=f"sqlite:///{made[1]}")
    exp = client.create_experiment("x")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
