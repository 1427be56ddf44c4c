"""Deliberately broken DP mechanisms and accountants, for proving that the audits can fail.

Test-only: nothing here is registered, so no suite file can reach it. :func:`substituted`
swaps a broken class in for the real one under the same public name for the duration of a
``with`` block (in this process only), so the whole pipeline — config, engine, accounting,
audit, verdict — runs unchanged around the bug.

Each mutant subclasses the real defense and changes one thing, either in the mechanism (what
was really done) or in the DP events (what the accountant is told); both make the
accountant's ε smaller than the truth. Mechanism bugs inside a hospital's DP-SGD swap in a
broken ``DPTrainer`` (``DPSGD.trainer_class``): the records' sampler, the clip, the noise of
some steps or some parameters — the places real DP-SGD bugs live.

:data:`TRUE_MECHANISM` says, for each bug, what really ran as DP events (the accountant on
them is the true ε), or ``INFINITE`` where no finite ε holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from typing import Iterator

import torch

from defenses import DEFENSES
from defenses.client_dp import ClientDP
from defenses.dp_sgd import DPSGD, DPTrainer


class HalfNoiseDPSGD(DPSGD):
    """The optimizer adds noise σ/2 while the accountant is told σ."""

    def wrap_local_training(self, trainer, site):
        wrapped = super().wrap_local_training(trainer, site)
        wrapped.optimizer.noise_multiplier = wrapped.noise_multiplier / 2
        return wrapped


class NoNoiseDPSGD(DPSGD):
    """The optimizer adds no noise at all while the accountant is told σ."""

    def wrap_local_training(self, trainer, site):
        wrapped = super().wrap_local_training(trainer, site)
        wrapped.optimizer.noise_multiplier = 0.0
        return wrapped


def _sum_without_clipping(self) -> None:
    # Opacus' clip_and_accumulate with the per-sample clip factor left out
    for p in self.params:
        grad = self._get_flat_grad_sample(p).to(p.dtype).sum(dim=0)
        p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad


class NoClipDPSGD(DPSGD):
    """Per-sample gradients are summed without clipping (the noise is still σ·C)."""

    def wrap_local_training(self, trainer, site):
        wrapped = super().wrap_local_training(trainer, site)
        wrapped.optimizer.clip_and_accumulate = types.MethodType(_sum_without_clipping, wrapped.optimizer)
        return wrapped


class HalfRateAccountantDPSGD(DPSGD):
    """The accountant is told a Poisson sampling rate half the one used."""

    def dp_events(self):
        return tuple(dataclasses.replace(e, sample_rate=e.sample_rate / 2) for e in super().dp_events())


class OneEpochAccountantDPSGD(DPSGD):
    """The accountant is told one local epoch per round whatever ``train.local_epochs`` ran."""

    def dp_events(self):
        epochs = self.facts.local_epochs
        return tuple(dataclasses.replace(e, steps=e.steps // epochs) for e in super().dp_events())


class SquaredDenominatorClientDP(ClientDP):
    """client_dp's central noise is σC/m² instead of σC/m (the accountant is told σ)."""

    def transform_aggregate(self, aggregate: torch.Tensor, ctx) -> torch.Tensor:
        m = len(ctx.participants)
        noisy = super().transform_aggregate(aggregate, ctx)
        return aggregate + (noisy - aggregate) / m


# --------------------------------------------------------------------------- broken trainers


class _EngineOnly(DPTrainer):
    """The per-step bugs below live in the engine path's seams (``_batches``,
    ``_step_noise_std``, ``_privatize``, the clip); the documented configs (MLPs) take it."""

    def train(self, global_params, generator):
        if self.program is None:
            raise RuntimeError("this mutant needs dp_sgd's engine path (an MLP or the small CNN)")
        return super().train(global_params, generator)


class FullBatchTrainer(_EngineOnly):
    """Every row (records and canaries) in every step, while the accountant is told Poisson q."""

    def _batches(self, generator):
        for _ in range(self.round_steps):
            yield torch.arange(self.n_rows)


class RateTrainer(_EngineOnly):
    """Poisson sampling at ``factor``·q while the accountant is told q."""

    factor = 1.5

    def _batches(self, generator):
        q = min(1.0, self.sample_rate * self.factor)
        for _ in range(self.round_steps):
            yield (torch.rand(self.n_rows, generator=generator) < q).nonzero().view(-1)


class HalvedSizeTrainer(RateTrainer):
    """q computed from half the hospital's size (b / (n/2) = 2q) for sampling; the accountant is told q."""

    factor = 2.0


class ShuffleTrainer(_EngineOnly):
    """Shuffled batches (every row exactly once per epoch, as many steps as Poisson takes),
    accounted as Poisson sampling at q."""

    def _batches(self, generator):
        per_epoch = max(1, self.round_steps // self.settings.epochs)
        for _ in range(self.settings.epochs):
            order = torch.randperm(self.n_rows, generator=generator)
            yield from torch.tensor_split(order, per_epoch)


class EveryOtherStepNoiseTrainer(_EngineOnly):
    """Noise on odd steps only; even steps are released without noise."""

    def _step_noise_std(self):
        self._count = getattr(self, "_count", 0) + 1
        return super()._step_noise_std() if self._count % 2 else 0.0


class FirstLayerNoiseTrainer(_EngineOnly):
    """Noise on the first parameter tensor only (the first layer's weights): every other
    parameter is released noiseless."""

    def _privatize(self, summed, noise_std, ebs, gens):
        noisy = super()._privatize(summed, noise_std, ebs, gens)
        return (noisy[0],) + tuple(s / float(ebs) for s in summed[1:])


class DoubledClipTrainer(_EngineOnly):
    """Per-sample gradients clipped at 2C while the noise is σ·C."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip = 2 * self.clip


def _with_trainer(cls):
    return type(f"DPSGDWith{cls.__name__}", (DPSGD,), {"trainer_class": cls})


class HalfRoundsAccountantDPSGD(DPSGD):
    """The accountant is told half the steps that ran (a wrong step count)."""

    def dp_events(self):
        return tuple(dataclasses.replace(e, steps=e.steps // 2) for e in super().dp_events())


#: bug name -> (public name it replaces, broken class)
MUTANTS = {
    "noise_halved": ("dp_sgd", HalfNoiseDPSGD),
    "no_noise": ("dp_sgd", NoNoiseDPSGD),
    "no_clipping": ("dp_sgd", NoClipDPSGD),
    "accountant_half_rate": ("dp_sgd", HalfRateAccountantDPSGD),
    "accountant_one_epoch": ("dp_sgd", OneEpochAccountantDPSGD),
    "client_noise_over_m_squared": ("client_dp", SquaredDenominatorClientDP),
    "full_batch": ("dp_sgd", _with_trainer(FullBatchTrainer)),
    "rate_1_5x": ("dp_sgd", _with_trainer(RateTrainer)),
    "dataset_size_halved": ("dp_sgd", _with_trainer(HalvedSizeTrainer)),
    "shuffle_as_poisson": ("dp_sgd", _with_trainer(ShuffleTrainer)),
    "noise_every_other_step": ("dp_sgd", _with_trainer(EveryOtherStepNoiseTrainer)),
    "noise_first_layer_only": ("dp_sgd", _with_trainer(FirstLayerNoiseTrainer)),
    "clip_doubled": ("dp_sgd", _with_trainer(DoubledClipTrainer)),
    "accountant_half_steps": ("dp_sgd", HalfRoundsAccountantDPSGD),
}

INFINITE = None  # no finite ε holds for what ran


def _replace(**fn):
    return lambda e: dataclasses.replace(e, **{k: f(e) for k, f in fn.items()})


#: bug -> what really ran, as a map from each claimed DP event to the true one (INFINITE: no finite ε)
TRUE_MECHANISM = {
    "noise_halved": _replace(noise_multiplier=lambda e: e.noise_multiplier / 2),
    "no_noise": INFINITE,
    "no_clipping": INFINITE,  # unbounded sensitivity
    "accountant_half_rate": _replace(sample_rate=lambda e: min(1.0, 2 * e.sample_rate)),
    "accountant_one_epoch": _replace(steps=lambda e: 2 * e.steps),  # the documented config runs 2 local epochs
    "client_noise_over_m_squared": _replace(noise_multiplier=lambda e: e.noise_multiplier / 4),  # m = 4 hospitals
    "full_batch": _replace(sample_rate=lambda e: 1.0),
    "rate_1_5x": _replace(sample_rate=lambda e: min(1.0, 1.5 * e.sample_rate)),
    "dataset_size_halved": _replace(sample_rate=lambda e: min(1.0, 2 * e.sample_rate)),
    # each row in exactly one step per epoch: no amplification by sampling (q = 1), one step per
    # epoch per row (the documented config runs 1 local epoch, so steps / steps-per-round rounds)
    "shuffle_as_poisson": _replace(sample_rate=lambda e: 1.0, steps=lambda e: e.steps // math.ceil(e.population / 16)),  # batch 16
    "noise_every_other_step": INFINITE,
    "noise_first_layer_only": INFINITE,
    "clip_doubled": _replace(noise_multiplier=lambda e: e.noise_multiplier / 2),
    "accountant_half_steps": _replace(steps=lambda e: 2 * e.steps),
}


def true_epsilon(bug: str, events, accountant: str, delta: float, party: str) -> float:
    """The accountant's ε, for ``party`` at ``delta`` under add/remove, on what really ran."""
    from bench.accounting import account

    fix = TRUE_MECHANISM[bug]
    if fix is INFINITE:
        return math.inf
    unit = "client" if party == "federation" else "record"
    evs = [dataclasses.replace(fix(e), neighbouring="add_remove") for e in events if e.party == party and e.unit == unit]
    return account(evs, accountant, delta).epsilon(unit)


@contextlib.contextmanager
def substituted(bug: str) -> Iterator[None]:
    """Within the block, the public defense name of ``bug`` builds the broken class."""
    from bench.registry import Entry

    name, cls = MUTANTS[bug]
    DEFENSES.get(name)  # the real entry, loaded (so that restoring it needs no import)
    real = DEFENSES._entries[name]
    DEFENSES._entries[name] = Entry(name, None, "built-in", obj=cls)
    try:
        yield
    finally:
        DEFENSES._entries[name] = real


def _heart(data_dir: str, **over) -> dict:
    """The audit suite's base cell (experiments/audit.yaml) with overrides."""
    raw = {
        "data": {"name": "heart_disease", "partition": "natural", "data_dir": data_dir, "download": False},
        "model": {"name": "mlp", "hidden": [256]},
        "train": {"rounds": 25, "local_epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.1},
        "privacy": {"accountant": "rdp", "delta": 1e-5},
        "seed": 0,
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        if leaf:
            raw[section] = {**raw[section], leaf: value}
        else:
            raw[key] = value
    return raw


WHITEBOX = [{"name": "dpsgd_audit", "num_canaries": 5000}]


def bug_config(bug: str, data_dir: str, attacks: list | None = None) -> dict:
    """The documented configuration in which each bug is meant to be caught (docs/bench-audit.md).

    Record-level bugs in the mechanism: DP-SGD on the largest hospital at a claimed ε of 2–4.
    A sampling rate told 2× too low: ε = 2 with 15,000 canaries (5,000 catch it in 2 of 3
    seeds). One epoch told when two ran: full-batch DP-SGD (q = 1, σ = 2.5), where the
    mechanism is exactly Gaussian and the one-run analysis is tightest — and still not enough.
    """
    sgd = lambda **p: [{"name": "dp_sgd", "max_grad_norm": 1.0, **p}]  # noqa: E731
    configs = {
        "noise_halved": _heart(data_dir, defenses=sgd(target_epsilon=2.0)),
        "no_noise": _heart(data_dir, defenses=sgd(target_epsilon=4.0)),
        "no_clipping": _heart(data_dir, defenses=sgd(target_epsilon=2.0)),
        # q/2 halves the claimed ε (≈ 0.94 instead of 2): the margin is thin, so this one audits
        # with 15,000 canaries (a 512-unit MLP: 15,874 parameters)
        "accountant_half_rate": _heart(data_dir, model={"name": "mlp", "hidden": [512]}, defenses=sgd(target_epsilon=2.0),
                                       attacks=[{"name": "dpsgd_audit", "num_canaries": 15000}]),
        "accountant_one_epoch": _heart(data_dir, train__batch_size=128, train__local_epochs=2, defenses=sgd(noise_multiplier=2.5)),
        "client_noise_over_m_squared": _heart(
            data_dir, defenses=[{"name": "client_dp", "noise_multiplier": 5.0, "clip_norm": 0.5}],
            attacks=[{"name": "client_canary_audit", "num_canaries": 5000}],
        ),
        # the bugs of issue 20, each at the audit suite's ε = 2 cell (5,000 canaries)
        **{bug: _heart(data_dir, defenses=sgd(target_epsilon=2.0)) for bug in (
            "full_batch", "rate_1_5x", "dataset_size_halved", "shuffle_as_poisson", "noise_every_other_step",
            "clip_doubled", "accountant_half_steps")},
        # noise missing on 9.7 % of the parameters: random directions spread over every
        # parameter see σ·√0.903 (nothing to catch); Dirac canaries on the noiseless ones see no noise
        "noise_first_layer_only": _heart(data_dir, defenses=sgd(target_epsilon=2.0),
                                         attacks=[{"name": "dpsgd_audit", "num_canaries": 5000, "directions": "dirac"}]),
    }
    raw = configs[bug]
    raw.setdefault("attacks", WHITEBOX)
    if raw["model"]["hidden"] != [256] and attacks is not None:
        raw["model"] = {"name": "mlp", "hidden": [256]}  # the black-box audit needs no wide model
    if attacks is not None:
        raw["attacks"] = attacks
    return raw
