"""DP-SGD inside each hospital: equivalences, clipping, noise level, accounting, end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.accounting import default_delta, epsilon_of
from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model, flatten, load_flat
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer
from bench.types import ConfigError, DPEvent, Records
from defenses.base import FederationFacts
from defenses.dp_sgd import DPSGD, DPTrainer, steps_per_round
from conftest import tiny_raw


def _records(n: int = 40, d: int = 5, seed: int = 0) -> Records:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    return Records(ids=np.arange(n), x=x, y=y)


def _model(d: int = 5, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def _plain(batch_size: int, lr: float = 0.5, n: int = 40, epochs: int = 1, optimizer: str = "sgd") -> PlainTrainer:
    s = LocalSettings(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=0.5 if optimizer == "sgd" else 0.0)
    return PlainTrainer(_model(), _records(n), s)


def _per_sample_grads(model: nn.Module, params: torch.Tensor, data: Records) -> torch.Tensor:
    load_flat(model, params)
    rows = []
    for i in range(len(data)):
        model.zero_grad()
        nn.functional.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


# ------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("mode", ["engine", "ew", "hooks", "ghost"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_zero_noise_infinite_clip_equals_plain_training(mode, optimizer):
    """σ = 0, C = ∞ and PlainTrainer's batches (sampling: shuffle) give the plain model."""
    plain = _plain(batch_size=16, epochs=2, optimizer=optimizer)  # 40 = 16+16+8: a short last batch
    dp = DPTrainer(_plain(batch_size=16, epochs=2, optimizer=optimizer), 0.0, math.inf, "shuffle", mode)
    start = flatten(_model(seed=3))
    for r in range(3):  # several rounds: Opacus objects are reused, optimizer state reset
        a = plain.train(start, torch.Generator().manual_seed(r))
        b = dp.train(start, torch.Generator().manual_seed(r))
        torch.testing.assert_close(b.params, a.params, rtol=1e-5, atol=1e-6)
        assert (a.num_steps, a.num_samples) == (b.num_steps, b.num_samples)
        start = a.params
    assert dp.steps_taken == 3 * plain.steps_per_round()


def test_zero_noise_infinite_clip_equals_no_defense_in_the_federation(tiny_cfg):
    """The whole FedAvg run: dp_sgd(σ=0, C=∞, shuffle) reproduces the run without a defense."""
    seeds = Seeds(0)
    fed, _ = build_federation(tiny_cfg.data, seeds)
    initial = build_model(fed.info, tiny_cfg.model, seeds.torch("init"))
    dp = DPSGD(DPSGD.Params(noise_multiplier=0.0, max_grad_norm=math.inf, sampling="shuffle"))
    a = run_federated(fed, initial, [], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    b = run_federated(fed, initial, [dp], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    torch.testing.assert_close(b.final_params, a.final_params, rtol=1e-5, atol=1e-6)
    assert b.dp_events == ()  # shuffle sampling claims no epsilon
    assert dp.tags() == {"dp_sgd_sampling": "shuffle", "dp_sgd_per_sample": "bench.engine"}


def test_poisson_zero_noise_is_plain_sgd_on_the_same_poisson_batches():
    """Poisson mode with σ = 0, C = ∞: SGD on the same batches, averaged by the *expected* batch size."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n, b, lr = 40, 8, 0.3
    trainer = _plain(batch_size=b, lr=lr, n=n)
    trainer.settings = LocalSettings(epochs=1, batch_size=b, optimizer="sgd", lr=lr)
    dp = DPTrainer(trainer, 0.0, math.inf, "poisson")
    start = flatten(_model(seed=1))
    got = dp.train(start, torch.Generator().manual_seed(7)).params

    model, data = _model(), _records(n)
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=b / n, steps=steps_per_round(n, b, 1), generator=torch.Generator().manual_seed(7))
    params = start.clone()
    for idx in sampler:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if len(idx):
            load_flat(model, params)
            model.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx], reduction="sum").backward()
            params = params - lr * torch.cat([p.grad.reshape(-1) for p in model.parameters()]) / b
    torch.testing.assert_close(got, params, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ clipping and noise


def test_single_record_update_is_clipped_to_C():
    """One record, q = 1, lr = 1, σ = 0: the step is the clipped gradient, its norm exactly min(‖g‖, C)."""
    n = 1
    trainer = PlainTrainer(_model(), _records(n), LocalSettings(epochs=1, batch_size=1, optimizer="sgd", lr=1.0))
    start = flatten(_model(seed=2))
    g = _per_sample_grads(_model(), start, _records(n))[0]
    C = 0.25 * float(g.norm())
    res = DPTrainer(trainer, 0.0, C, "poisson").train(start, torch.Generator().manual_seed(0))
    step = res.params - start
    assert float(step.norm()) == pytest.approx(C, rel=1e-4)
    torch.testing.assert_close(step, -g * C / g.norm(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["engine", "ew", "hooks", "ghost"])
def test_every_per_sample_gradient_is_clipped_before_averaging(mode):
    """Full batch (q = 1), σ = 0: the step is −lr·mean_i clip_C(g_i); each clipped norm ≤ C."""
    n, C, lr = 24, 0.2, 1.0
    trainer = PlainTrainer(_model(), _records(n), LocalSettings(epochs=1, batch_size=n, optimizer="sgd", lr=lr))
    start = flatten(_model(seed=4))
    grads = _per_sample_grads(_model(), start, _records(n))
    norms = grads.norm(dim=1)
    assert (norms > C).sum() >= n // 2  # the bound is active for most records
    clipped = grads * torch.clamp(C / (norms + 1e-6), max=1.0)[:, None]
    assert float(clipped.norm(dim=1).max()) <= C + 1e-6
    res = DPTrainer(trainer, 0.0, C, "poisson", mode).train(start, torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.params - start, -lr * clipped.mean(0), rtol=1e-4, atol=1e-6)
    assert float((res.params - start).norm()) <= lr * C + 1e-6


@pytest.mark.parametrize("mode", ["engine", "ew", "ghost"])
def test_noise_std_is_sigma_C_over_expected_batch(mode):
    """One full-batch step: (σ > 0 result) − (σ = 0 result) is N(0, (lr·σ·C/b)²) per coordinate."""
    n, C, sigma, lr = 20, 0.5, 2.0, 1.0
    start = flatten(_model(seed=5))

    def step(z: float, seed: int) -> torch.Tensor:
        t = PlainTrainer(_model(), _records(n), LocalSettings(epochs=1, batch_size=n, optimizer="sgd", lr=lr))
        return DPTrainer(t, z, C, "poisson", mode).train(start, torch.Generator().manual_seed(seed)).params

    base = step(0.0, 0)
    noise = torch.cat([step(sigma, s) - base for s in range(60)])  # 60 × 66 coordinates
    expected = lr * sigma * C / n
    assert float(noise.mean()) == pytest.approx(0.0, abs=4 * expected / math.sqrt(noise.numel()))
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)


# ------------------------------------------------------------------ accounting, config, reproducibility


def _facts(sizes: dict, rounds: int = 5, per_round: int | None = None, batch: int = 8, delta=None) -> FederationFacts:
    return FederationFacts(
        site_names=tuple(sizes), site_sizes=sizes, sites_per_round=per_round or len(sizes), rounds=rounds,
        num_params=66, local_epochs=1, batch_size=batch, accountant="rdp", delta=delta,
    )


def _event(sigma, q, steps, n) -> DPEvent:
    return DPEvent(kind="poisson_gaussian", unit="record", party="x", noise_multiplier=sigma, sample_rate=q, steps=steps, population=n)


def test_events_count_every_step_of_every_round_per_hospital(tiny_cfg):
    raw = tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0}], attacks=[])
    raw["train"].update(rounds=4, sites_per_round=2)
    cfg = parse_experiment(raw)
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    dp = DPSGD(cfg.defenses[0].params)
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [dp], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    joined = {s.name: sum(s.name in r.participants for r in rec.rounds) for s in fed.sites}
    events = {e.party: e for e in rec.dp_events}
    for site in fed.sites:
        n = len(site.train)
        per_round = steps_per_round(n, cfg.train.batch_size, cfg.train.local_epochs)
        if joined[site.name]:
            e = events[site.name]
            assert (e.unit, e.steps, e.population, e.noise_multiplier) == ("record", joined[site.name] * per_round, n, 1.0)
            assert e.sample_rate == pytest.approx(cfg.train.batch_size / n)
    assert sum(joined.values()) == 4 * 2


@pytest.mark.parametrize("accountant", ["rdp", pytest.param("prv", marks=pytest.mark.slow)])
def test_target_epsilon_is_met_per_hospital(accountant):
    sizes = {"small": 60, "large": 400}
    d = DPSGD(DPSGD.Params(target_epsilon=2.0))
    d.setup(dataclasses.replace(_facts(sizes, rounds=5), accountant=accountant))
    for name, n in sizes.items():
        sigma = d.noise_for(n)
        steps = 5 * steps_per_round(n, 8, 1)
        eps = epsilon_of([_event(sigma, 8 / n, steps, n)], default_delta(n), accountant)
        assert 1.9 <= eps <= 2.0
    assert d.noise_for(60) != d.noise_for(400)  # calibrated per hospital size


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"noise_multiplier": 1.0, "target_epsilon": 1.0},
        {"noise_multiplier": 1.0, "max_grad_norm": "inf"},
        {"target_epsilon": 1.0, "sampling": "shuffle"},
    ],
)
def test_check_refuses_bad_combinations(params):
    with pytest.raises(ConfigError, match="dp_sgd"):
        parse_experiment(tiny_raw(defenses=[{"name": "dp_sgd", **params}]))


def test_a_hospital_is_wrapped_once():
    d = DPSGD(DPSGD.Params(noise_multiplier=1.0))
    d.setup(_facts({"a": 40}))
    d.wrap_local_training(_plain(8), "a")
    with pytest.raises(RuntimeError, match="wrapped twice"):
        d.wrap_local_training(_plain(8), "a")


def test_same_seed_same_model_other_seed_other_model():
    start = flatten(_model(seed=6))
    runs = [DPTrainer(_plain(8), 1.0, 1.0).train(start, torch.Generator().manual_seed(s)).params for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])


def test_training_never_writes_into_the_global_params():
    start = flatten(_model(seed=6))
    keep = start.clone()
    DPTrainer(_plain(8), 1.0, 1.0).train(start, torch.Generator().manual_seed(0))
    assert torch.equal(start, keep)


def test_runner_logs_per_site_epsilon_and_the_maximum():
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": 1.2}], attacks=[]))
    res = run_in_memory(cfg)
    events = res.record.dp_events
    assert len(events) == 3
    assert all(e.neighbouring == "add_remove" for e in events)  # Opacus's accountants
    per_site = {e.party: epsilon_of([e], default_delta(e.population), "rdp") for e in events}
    for site, eps in per_site.items():
        assert res.metrics[f"privacy/site/{site}/epsilon"] == pytest.approx(eps)
        assert res.metrics[f"privacy/site/{site}/delta"] == 1e-5  # min(1e-5, 1/(100 n)) for n < 1000
    assert res.metrics["privacy/epsilon"] == pytest.approx(max(per_site.values()))
    assert res.metrics["privacy/delta"] == 1e-5
    assert res.tags["dp"] == "true" and res.tags["privacy_unit"] == "record"
    assert res.tags["neighbouring"] == "record:add_remove" and "dp_weak_guarantee" not in res.tags


@pytest.mark.slow
def test_epsilon_falls_as_noise_rises_end_to_end():
    eps = []
    for z in (0.6, 1.0, 2.0):
        cfg = parse_experiment(tiny_raw(defenses=[{"name": "dp_sgd", "noise_multiplier": z}], attacks=[]))
        eps.append(run_in_memory(cfg).metrics["privacy/epsilon"])
    assert eps[0] > eps[1] > eps[2]


@pytest.mark.parametrize("mode", ["engine", "ew", "hooks", "ghost"])
def test_empty_poisson_batches_still_take_a_noise_only_step(mode):
    """q = 1/3 on 3 records: about 30 % of steps sample nobody; they still count, and add only noise."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n = 3
    settings = LocalSettings(epochs=1, batch_size=1, optimizer="sgd", lr=1.0)
    start = flatten(_model(seed=8))
    seed = next(
        s for s in range(100)
        if all(len(b) == 0 for b in UniformWithReplacementSampler(num_samples=n, sample_rate=1 / n, steps=3, generator=torch.Generator().manual_seed(s)))
    )  # a round in which every batch is empty
    quiet = DPTrainer(PlainTrainer(_model(), _records(n), settings), 0.0, 1.0, "poisson", mode)
    res = quiet.train(start, torch.Generator().manual_seed(seed))
    assert res.num_steps == 3 and quiet.steps_taken == 3
    torch.testing.assert_close(res.params, start)  # nothing sampled, no noise: no change
    noisy = DPTrainer(PlainTrainer(_model(), _records(n), settings), 1.0, 1.0, "poisson", mode)
    moved = noisy.train(start, torch.Generator().manual_seed(seed)).params - start
    # three noise-only steps of std σC/b = 1 each: the move is N(0, 3) per coordinate
    assert 1.0 < float(moved.std()) < 3.0
