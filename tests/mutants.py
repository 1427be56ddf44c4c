"""Deliberately broken DP mechanisms and accountants, for proving that the audits can fail.

Test-only: nothing here is registered, so no suite file can reach it. :func:`substituted`
swaps a broken class in for the real one under the same public name for the duration of a
``with`` block (in this process only), so the whole pipeline — config, engine, accounting,
audit, verdict — runs unchanged around the bug.

Each mutant subclasses the real defense and changes one thing, either in the mechanism (what
was really done) or in the DP events (what the accountant is told); both make the
accountant's ε smaller than the truth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from typing import Iterator

import torch

from defenses import DEFENSES
from defenses.client_dp import ClientDP
from defenses.dp_sgd import DPSGD


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


#: bug name -> (public name it replaces, broken class)
MUTANTS = {
    "noise_halved": ("dp_sgd", HalfNoiseDPSGD),
    "no_noise": ("dp_sgd", NoNoiseDPSGD),
    "no_clipping": ("dp_sgd", NoClipDPSGD),
    "accountant_half_rate": ("dp_sgd", HalfRateAccountantDPSGD),
    "accountant_one_epoch": ("dp_sgd", OneEpochAccountantDPSGD),
    "client_noise_over_m_squared": ("client_dp", SquaredDenominatorClientDP),
}


@contextlib.contextmanager
def substituted(bug: str) -> Iterator[None]:
    """Within the block, the public defense name of ``bug`` builds the broken class."""
    name, cls = MUTANTS[bug]
    real = DEFENSES._items[name]
    DEFENSES._items[name] = cls
    try:
        yield
    finally:
        DEFENSES._items[name] = real


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
    }
    raw = configs[bug]
    raw.setdefault("attacks", WHITEBOX)
    if raw["model"]["hidden"] != [256] and attacks is not None:
        raw["model"] = {"name": "mlp", "hidden": [256]}  # the black-box audit needs no wide model
    if attacks is not None:
        raw["attacks"] = attacks
    return raw
