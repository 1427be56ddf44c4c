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
