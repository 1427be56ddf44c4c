"""dp_sgd's group_clip (static DPSGD-F, Xu, Du, Wu 2021): per-group clipping bounds C·s_g,
noise σ·C·max s, ε unchanged, canaries still at C, refusals, reference federations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.canaries import make_directions

from bench.config import parse_experiment
from bench.data import build_federation, check_data
from bench.models import flatten
from bench.reference import vectorizable
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer, RecordGroups
from bench.types import ConfigError, InsertedCanaries, Records
from defenses.dp_sgd import DPSGD, DPTrainer, GroupClip
from conftest import tiny_raw
from test_dp_sgd import _model, _per_sample_grads, _records
from test_fairness import _csv
from test_whitebox_audit import replay_canary_counts

GC = GroupClip(attribute="sex", scale={"female": 2.0})


def _scales(codes) -> torch.Tensor:
    return GC.row_scales(("female", "male"), np.asarray(codes))


def _trainer(n: int, lr: float = 1.0) -> PlainTrainer:
    return PlainTrainer(_model(), _records(n), LocalSettings(epochs=1, batch_size=n, optimizer="sgd", lr=lr))


def test_row_scales_listed_group_unlisted_and_missing():
    assert _scales([0, 1, -1, 0]).tolist() == [2.0, 1.0, 1.0, 2.0]
    assert GC.max_scale == 2.0 and GroupClip("sex", {"male": 1}).max_scale == 1.0


@pytest.mark.parametrize("code, scale", [(0, 2.0), (1, 1.0), (-1, 1.0)])
def test_single_record_is_clipped_to_C_times_its_groups_scale(code, scale):
    """Known answer: one record, q = 1, lr = 1, σ = 0: the step is the gradient clipped to C·s_g exactly."""
    start = flatten(_model(seed=2))
    g = _per_sample_grads(_model(), start, _records(1))[0]
    C = 0.2 * float(g.norm())  # both C and 2C are below ‖g‖: the bound is active
    t = DPTrainer(_trainer(1), 0.0, C, "poisson", clip_scales=_scales([code]), max_scale=GC.max_scale)
    step = t.train(start, torch.Generator().manual_seed(0)).params - start
    assert float(step.norm()) == pytest.approx(C * scale, rel=1e-4)
    torch.testing.assert_close(step, -g * C * scale / g.norm(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["ew", "hooks"])
def test_every_row_is_clipped_to_its_own_bound(mode):
    """Full batch, σ = 0: the step is −lr·mean_i clip_{C·s_i}(g_i); every clipped norm ≤ C·s_i."""
    n, C = 24, 0.2
    codes = np.arange(n) % 3 - 1  # missing, female, male
    s = _scales(codes)
    start = flatten(_model(seed=4))
    grads = _per_sample_grads(_model(), start, _records(n))
    bound = (C * s).float()
    clipped = grads * torch.clamp(bound / (grads.norm(dim=1) + 1e-6), max=1.0)[:, None]
    assert bool((clipped.norm(dim=1) <= bound + 1e-6).all())
    assert bool((grads.norm(dim=1) > bound).sum() >= n // 2)
    t = DPTrainer(_trainer(n), 0.0, C, "poisson", mode, clip_scales=s, max_scale=GC.max_scale)
    res = t.train(start, torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.params - start, -clipped.mean(0), rtol=1e-4, atol=1e-6)


def test_noise_std_is_sigma_C_max_scale_over_expected_batch():
    """(σ > 0) − (σ = 0) is N(0, (lr·σ·C·max s/b)²) per coordinate, whatever group the records are in."""
    n, C, sigma = 20, 0.5, 2.0
    start = flatten(_model(seed=5))
    s = _scales(np.ones(n, np.int64))  # every record male (s = 1): the noise still follows max s = 2

    def step(z: float, seed: int) -> torch.Tensor:
        t = DPTrainer(_trainer(n), z, C, "poisson", clip_scales=s, max_scale=GC.max_scale)
        return t.train(start, torch.Generator().manual_seed(seed)).params

    base = step(0.0, 0)
    noise = torch.cat([step(sigma, k) - base for k in range(60)])
    expected = sigma * C * GC.max_scale / n
    assert float(noise.mean()) == pytest.approx(0.0, abs=4 * expected / math.sqrt(noise.numel()))
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)


def test_gradient_canaries_stay_clipped_to_C():
    """Known answer as in test_whitebox_audit: zero-feature records (all in the scaled group),
    σ = 0, canaries of norm 3C: each moves its weight by lr·C/(q·n) per step sampled — C, not 2C."""
    m, clip, lr, n = 10, 0.7, 0.5, 20
    dirs = make_directions("dirac", m, 12, 0, np.random.default_rng(0))
    dirs = type(dirs)(**{**dirs.__dict__, "coordinates": np.arange(m)})
    canaries = InsertedCanaries(kind="gradient", directions=dirs, included=np.ones(m, bool), site="a", scale=3.0, seed=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))
    data = Records(ids=np.arange(n), x=torch.zeros(n, 5), y=torch.zeros(n, dtype=torch.int64))
    plain = PlainTrainer(model, data, LocalSettings(epochs=1, batch_size=4, optimizer="sgd", lr=lr), canaries=canaries)
    trainer = DPTrainer(plain, 0.0, clip, clip_scales=_scales(np.zeros(n, np.int64)), max_scale=2.0)
    out = trainer.train(torch.zeros(12), torch.Generator().manual_seed(0))
    counts = replay_canary_counts(trainer)
    assert counts.sum() > 0
    moved = -out.params[:m].numpy() * trainer.optimizer.expected_batch_size / (lr * clip)
    assert np.allclose(moved, counts, atol=1e-4)


# --------------------------------------------------------------------------- config, ε, end to end


def _raw(path, group_clip=None, fairness=("sex",), **over):
    dp = {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 0.5}
    if group_clip is not None:
        dp["group_clip"] = group_clip
    raw = tiny_raw(data={"name": "csv", "path": path, "partition": "natural"}, defenses=[dp], **over)
    if fairness is not None:
        raw["fairness"] = {"attributes": list(fairness), "min_count": 5, "bootstrap": 0}
    return raw


def test_epsilon_and_dp_events_are_unchanged_and_the_model_differs(tmp_path):
    path = _csv(tmp_path / "t.csv", n=300)
    plain = run_in_memory(parse_experiment(_raw(path, attacks=[])))
    fair = run_in_memory(parse_experiment(_raw(path, {"attribute": "sex", "scale": {"F": 2.0}}, attacks=[])))
    assert fair.record.dp_events == plain.record.dp_events
    assert fair.metrics["privacy/epsilon"] == plain.metrics["privacy/epsilon"]
    eps = {k: v for k, v in plain.metrics.items() if k.startswith("privacy/")}
    assert eps == {k: v for k, v in fair.metrics.items() if k.startswith("privacy/")}
    assert not torch.equal(fair.record.final_params, plain.record.final_params)
    assert fair.tags["dp_sgd_group_clip"] == "sex:F=2" and fair.metrics["defense/dp_sgd/group_clip/max_scale"] == 2.0
    assert 0 < fair.metrics["defense/dp_sgd/site/h1/scaled_fraction"] < 1


def test_calibrated_sigma_does_not_depend_on_group_clip():
    facts = dict(site_names=("a",), site_sizes={"a": 100}, sites_per_round=1, rounds=5, num_params=66,
                 local_epochs=1, batch_size=8, accountant="rdp", delta=None)
    from defenses.base import FederationFacts

    a, b = DPSGD(DPSGD.Params(target_epsilon=1.0)), DPSGD(DPSGD.Params(target_epsilon=1.0, group_clip=GC))
    a.setup(FederationFacts(**facts)), b.setup(FederationFacts(**facts))
    assert a.noise_for(100) == b.noise_for(100)


def test_reference_federations_run_group_clip_sequentially(tmp_path):
    """The vectorised references refuse (visibly); the sequential ones get each record's group."""
    path = _csv(tmp_path / "t.csv", n=300)
    cfg = parse_experiment(_raw(path, {"attribute": "sex", "scale": {"F": 2.0}}, attacks=[{"name": "lira", "num_references": 2}]))
    assert "group_clip" in vectorizable([(s.name, s.params) for s in cfg.defenses], "sgd")
    m = run_in_memory(cfg).metrics
    assert m["cost/reference/K2_independent/vectorized"] == 0.0  # lira: independent references by default


def test_group_codes_reach_each_hospitals_trainer(tmp_path):
    path = _csv(tmp_path / "t.csv", n=300)
    cfg = parse_experiment(_raw(path, {"attribute": "sex", "scale": {"F": 2.0}}, attacks=[]))
    fed, truth = build_federation(cfg.data, Seeds(0), cfg.fairness)
    d = DPSGD(cfg.defenses[0].params)
    from bench.federated import federation_facts

    d.setup(federation_facts(fed, cfg.train, cfg.privacy, 10))
    site = fed.sites[0]
    sex = truth.sensitive[0]
    groups = {"sex": RecordGroups(labels=sex.groups, codes=sex.of(site.train.ids))}
    t = d.wrap_local_training(PlainTrainer(_model(), site.train, LocalSettings(1, 16, "sgd", 0.1), groups=groups), site.name)
    expected = np.where(sex.of(site.train.ids) == sex.groups.index("F"), 1.0, 0.5)
    assert np.allclose(t.row_bounds.numpy(), expected)


def test_config_without_group_clip_keeps_its_run_key(tmp_path):
    cfg = parse_experiment(_raw(str(tmp_path / "t.csv"), attacks=[]))
    assert "group_clip" not in cfg.to_dict()["defenses"][0]
    assert cfg.defenses[0].params == DPSGD.Params(noise_multiplier=1.0, max_grad_norm=0.5)


@pytest.mark.parametrize(
    "group_clip, fairness, extra, pattern",
    [
        ({"attribute": "age", "scale": {"F": 2}}, ("sex",), {}, r"group_clip\.attribute: got 'age'; it must be one of the cell's fairness\.attributes \(sex\)"),
        ({"attribute": "sex", "scale": {"F": 2}}, None, {}, r"fairness\.attributes \(none\); add it"),
        ({"attribute": "sex", "scale": {"F": 0.5}}, ("sex",), {}, r"group_clip\.scale\.F: got 0\.5; expected a finite number >= 1"),
        ({"attribute": "sex", "scale": {}}, ("sex",), {}, r"group_clip\.scale: got \{\}; expected a mapping"),
        ({"attribute": "sex", "scale": {"F": 2}}, ("sex",), {"grad_sample_mode": "ghost"}, r"use grad_sample_mode: ew or hooks"),
    ],
)
def test_bad_group_clip_is_refused_in_one_line(tmp_path, group_clip, fairness, extra, pattern):
    raw = _raw(str(tmp_path / "t.csv"), group_clip, fairness, attacks=[])
    raw["defenses"][0].update(extra)
    with pytest.raises(ConfigError, match=pattern) as exc:
        parse_experiment(raw)
    assert "\n" not in str(exc.value)


def test_unknown_subgroup_is_refused_once_the_data_is_loaded(tmp_path):
    cfg = parse_experiment(_raw(_csv(tmp_path / "t.csv"), {"attribute": "sex", "scale": {"female": 2.0}}, attacks=[]))
    with pytest.raises(ConfigError, match=r"group_clip\.scale: 'female' is not a subgroup of 'sex'; its subgroups: F, M$"):
        check_data([cfg])
