"""Components by import path and by entry point (issue 25 item 1), and their contracts.

A user module is written to ``tmp_path`` and put on ``sys.path``; an installed plug-in is a tiny
``*.dist-info`` folder with an ``entry_points.txt`` beside it (importlib.metadata finds it on
``sys.path``: no pip install). Every refusal is one line naming what is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.config import parse_experiment
from bench.registry import REGISTRIES
from bench.runner import run_in_memory
from bench.types import ConfigError, DatasetInfo
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]

USER_MODULE = '''
from __future__ import annotations

import torch
from torch import nn


class TinyResNet(nn.Module):
    """A residual MLP with GroupNorm (a user's own model, not a built-in)."""

    def __init__(self, info, width: int = 8, blocks: int = 1, scale: float = 1.0):
        super().__init__()
        self.inp = nn.Linear(info.num_inputs, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.GroupNorm(2, width), nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks))
        self.out = nn.Linear(width, info.num_classes)
        self.scale = scale

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for b in self.blocks:
            h = h + self.scale * b(h)
        return self.out(h)


def make_linear(info, bias: bool = True):
    """A factory function: the dataset's facts in, a module out."""
    return nn.Sequential(nn.Flatten(), nn.Linear(info.num_inputs, info.num_classes, bias=bias))


def not_a_module(info):
    return 3


class NoInfo(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()


class Star(nn.Module):
    def __init__(self, info, *sizes):
        super().__init__()
'''

PLUGIN_MODULE = '''
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from attacks.base import Attack, per_example_loss
from bench.models import load_flat
from bench.types import MembershipScores, OutsiderView
from defenses.base import ClientContext, Defense


class ScaledLoss(Attack):
    """Negative loss times a factor (a plug-in attack). Threat model: outsider."""

    name = "scaled_loss"
    threat_model = "outsider"

    @dataclass(frozen=True)
    class Params:
        factor: float = field(default=2.0, metadata={"gt": 0})

    def run(self, view: OutsiderView, rng: np.random.Generator) -> MembershipScores:
        model = load_flat(view.model_fn(), view.final_params)
        loss = per_example_loss(model, view.candidates.x, view.candidates.y).numpy()
        return MembershipScores(ids=view.candidates.ids.copy(), scores=-self.params.factor * loss.astype(np.float64))


class Damp(Defense):
    """Multiply each hospital's update by ``factor`` (a plug-in defense; not DP)."""

    name = "damp"

    @dataclass(frozen=True)
    class Params:
        factor: float = field(default=0.5, metadata={"gt": 0, "le": 1})

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return update * self.params.factor


class InsiderAttack(Attack):
    """Declares a threat model privbench does not know."""

    threat_model = "insider"

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, view, rng):
        return None


class NoParams(Defense):
    """A defense without its Params dataclass."""

    Params = None


class DPWithoutEvents(Defense):
    """Claims DP, but gives the accountant nothing."""

    is_dp = True

    @dataclass(frozen=True)
    class Params:
        pass


class WrongReturn(Attack):
    """Returns a plain array instead of MembershipScores. Threat model: outsider."""

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, view, rng):
        return np.zeros(3)
'''


@pytest.fixture
def user_path(tmp_path, monkeypatch):
    """``usernets.py`` and ``myplug.py`` importable; an installed ``myplug`` distribution whose
    entry points name a good attack, a good defense and a broken attack; registries restored after."""
    (tmp_path / "usernets.py").write_text(USER_MODULE)
    (tmp_path / "myplug.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [privbench.attacks]
        scaled_loss = myplug:ScaledLoss
        insider = myplug:InsiderAttack

        [privbench.defenses]
        damp = myplug:Damp
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {k: (dict(r._entries), r._plugins_scanned) for k, r in REGISTRIES.items()}
    for r in REGISTRIES.values():
        r._plugins_scanned = False
    yield tmp_path
    for k, r in REGISTRIES.items():
        r._entries, r._plugins_scanned = saved[k][0], saved[k][1]
    for mod in ("usernets", "myplug"):
        sys.modules.pop(mod, None)


def _cfg(**over):
    return parse_experiment(tiny_raw(train__rounds=1, **over))


# --------------------------------------------------------------------------- models by import path


def test_user_model_class_by_import_path_runs_with_its_own_params(user_path):
    cfg = _cfg(model={"name": "usernets:TinyResNet", "width": 6, "blocks": 2})
    assert dict(cfg.model.params) == {"width": 6, "blocks": 2, "scale": 1.0}  # defaults filled in, checked types
    assert cfg.flat_params()["model.params.width"] == "6"
    info = DatasetInfo(name="x", input_shape=(5,), num_classes=2)
    model = REGISTRIES["model"].get("usernets:TinyResNet").build(info, cfg.model)
    assert isinstance(model, torch.nn.Module) and model(torch.zeros(3, 5)).shape == (3, 2)
    assert len(model.blocks) == 2 and model.inp.out_features == 6
    result = run_in_memory(cfg)
    assert 0.0 <= result.metrics["utility/test_accuracy"] <= 1.0
    assert "attack/loss_threshold/auc" in result.metrics
    # a different parameter is a different cell; the same is the same
    assert _cfg(model={"name": "usernets:TinyResNet", "width": 7}).run_key != cfg.run_key
    assert _cfg(model={"name": "usernets:TinyResNet", "width": 6, "blocks": 2}).run_key == cfg.run_key


def test_factory_function_is_a_model_too(user_path):
    cfg = _cfg(model={"name": "usernets:make_linear", "bias": False})
    info = DatasetInfo(name="x", input_shape=(4,), num_classes=3)
    model = REGISTRIES["model"].get("usernets:make_linear").build(info, cfg.model)
    assert [p.shape for p in model.parameters()] == [torch.Size([3, 4])]


def test_builtin_models_keep_their_config_and_run_key():
    cfg = _cfg(model={"name": "mlp", "hidden": [8]})
    assert cfg.model.params is None and "params" not in cfg.to_dict()["model"]


@pytest.mark.parametrize("model,needle", [
    ({"name": "usernets:TinyResNet", "widht": 3}, "model.widht: unknown key (did you mean 'width'?)"),
    ({"name": "usernets:TinyResNet", "width": "wide"}, "model.width: got 'wide'; expected an integer"),
    ({"name": "usernets:Nope"}, "model.name: module 'usernets' has no 'Nope'"),
    ({"name": "nomodule_xyz.nets:Net"}, "model.name: cannot import 'nomodule_xyz.nets' (no module 'nomodule_xyz')"),
    ({"name": "usernets:NoInfo"}, "expected the dataset's facts first: (info, **params)"),
    ({"name": "usernets:Star"}, "takes *sizes; parameters must be named"),
])
def test_model_refusals_are_one_line_naming_what_is_missing(user_path, model, needle):
    with pytest.raises(ConfigError) as err:
        _cfg(model=model)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_a_model_that_returns_no_module_is_refused_at_build(user_path):
    cfg = _cfg(model={"name": "usernets:not_a_module"})
    info = DatasetInfo(name="x", input_shape=(4,), num_classes=2)
    with pytest.raises(ConfigError, match="returned int, not a torch.nn.Module"):
        REGISTRIES["model"].get(cfg.model.name).build(info, cfg.model)


def test_a_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "brokennet.py").write_text("import torch\nraise RuntimeError('no GPU here\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        _cfg(model={"name": "brokennet:Net"})
    assert str(err.value) == "model.name: importing 'brokennet' failed: RuntimeError: no GPU here"


# --------------------------------------------------------------------------- attacks and defenses


def test_attack_and_defense_by_import_path(user_path):
    cfg = _cfg(attacks=[{"name": "myplug:ScaledLoss", "factor": 3.0}], defenses=[{"name": "myplug:Damp", "factor": 0.25}])
    assert cfg.attacks[0].params.factor == 3.0 and cfg.defenses[0].params.factor == 0.25
    result = run_in_memory(cfg)
    assert "attack/myplug:ScaledLoss/auc" in result.metrics
    with pytest.raises(ConfigError, match=r"defenses.myplug:Damp.factor: got 2.0; must be <= 1"):
        _cfg(defenses=[{"name": "myplug:Damp", "factor": 2.0}])


def test_plugin_with_the_same_code_as_a_builtin_gives_the_same_numbers(user_path):
    """ScaledLoss with factor 1 is loss_threshold: the plug-in path changes nothing in the run."""
    ours = run_in_memory(_cfg(attacks=[{"name": "myplug:ScaledLoss", "factor": 1.0}]))
    builtin = run_in_memory(_cfg(attacks=[{"name": "loss_threshold"}]))
    assert ours.metrics["attack/myplug:ScaledLoss/auc"] == builtin.metrics["attack/loss_threshold/auc"]
    assert ours.metrics["utility/test_accuracy"] == builtin.metrics["utility/test_accuracy"]


@pytest.mark.parametrize("spec,needle", [
    ({"attacks": [{"name": "myplug:InsiderAttack"}]}, "declares threat_model 'insider'; expected one of outsider, server, peer"),
    ({"defenses": [{"name": "myplug:NoParams"}]}, "has no Params dataclass"),
    ({"defenses": [{"name": "myplug:DPWithoutEvents"}]}, "declares is_dp but has no dp_events()"),
    ({"attacks": [{"name": "usernets:TinyResNet"}]}, "is not a subclass of attacks.base.Attack"),
])
def test_contract_refusals_name_what_is_missing(user_path, spec, needle):
    with pytest.raises(ConfigError) as err:
        _cfg(**spec)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_an_attack_returning_the_wrong_type_is_refused_in_one_line(user_path):
    with pytest.raises(ConfigError, match=r"returned ndarray; its run\(\) must return bench.types.MembershipScores"):
        run_in_memory(_cfg(attacks=[{"name": "myplug:WrongReturn"}]))


def test_builtins_meet_the_same_contracts():
    """One path: every built-in is loaded through its module:attr entry and the contract check."""
    for family, reg in REGISTRIES.items():
        for entry in reg.entries():
            if entry.origin == "built-in":
                assert reg.get(entry.name) is not None and entry.obj is not None, (family, entry.name)


# --------------------------------------------------------------------------- entry points


def test_entry_points_register_plugins_by_name(user_path):
    attacks, defenses = REGISTRIES["attack"], REGISTRIES["defense"]
    assert "scaled_loss" in attacks.names() and "damp" in defenses.names()
    assert attacks.origin("scaled_loss") == "plug-in myplug"
    cfg = _cfg(attacks=[{"name": "scaled_loss", "factor": 1.5}], defenses=[{"name": "damp"}])
    result = run_in_memory(cfg)
    assert "attack/scaled_loss/auc" in result.metrics
    # the broken one is refused when used, in one line that names the plug-in and the problem
    with pytest.raises(ConfigError) as err:
        _cfg(attacks=[{"name": "insider"}])
    assert "plug-in myplug" in str(err.value) and "threat_model 'insider'" in str(err.value)


def test_list_shows_plugins_with_parameters_and_refusals(user_path):
    from bench.catalog import describe, overview

    text = overview()
    assert "scaled_loss" in text and "plug-in myplug" in text and "Parameters: factor." in text
    assert "insider" in text and "REFUSED" in text
    one = describe("damp")
    assert "damp (defense)" in one and "factor" in one and "default 0.5" in one
    path = describe("usernets:TinyResNet")
    assert "(model)" in path and "width" in path and "default 8" in path


def test_list_in_a_fresh_process_finds_the_installed_plugin(user_path):
    env = {**os.environ, "PYTHONPATH": f"{user_path}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "scaled_loss" in out.stdout and "damp" in out.stdout and "REFUSED" in out.stdout


def test_validate_accepts_plugin_model_keys_in_the_schema(user_path, tmp_path):
    """``privbench validate`` runs the JSON Schema first: a plug-in model's own keys (and grid axes
    over them) are not "unknown keys" there; the loader checks them."""
    from bench.catalog import schema_errors

    raw = {"suite": "s", "base": {**tiny_raw(), "model": {"name": "usernets:TinyResNet", "width": 4}},
           "grid": {"model.width": [4, 8]}, "seeds": [0]}
    raw["base"].pop("seed")
    assert schema_errors(raw) == []
    raw["base"]["model"] = {"name": "mlp", "widht": 4}
    assert any("widht: unknown key" in line for line in schema_errors(raw))
