"""The defense interface and its registry.

A defense implements any of the hooks below. A list of defenses composes: client hooks
(``wrap_local_training``, ``transform_update``) run in list order, server hooks
(``transform_aggregate``) in reverse order; at most one defense replaces ``aggregate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from bench.registry import Registry
from bench.types import DPEvent

DEFENSES: Registry = Registry("defense")


@dataclass(frozen=True)
class FederationFacts:
    """Public facts about the federation a defense may need to set itself up."""

    site_names: tuple[str, ...]
    site_sizes: Mapping[str, int]
    sites_per_round: int
    rounds: int
    num_params: int
    local_epochs: int
    batch_size: int
    accountant: str
    delta: Optional[float]


@dataclass(frozen=True)
class ClientContext:
    """Where a client-side hook runs: which hospital, which round, its own randomness."""

    site: str
    round: int
    num_samples: int
    generator: torch.Generator


@dataclass(frozen=True)
class ServerContext:
    """Where a server-side hook runs."""

    round: int
    participants: tuple[str, ...]
    generator: torch.Generator


class Defense:
    """Base class: every hook is the identity.

    Class attributes:
        Params: frozen dataclass of hyperparameters (the YAML keys beside ``name``).
        privacy_unit: ``"record"``, ``"client"`` or ``"none"``.
        is_dp: whether the defense has an ε (only then may it be called DP).
        hides_updates: the server sees only the sum of the updates.
        replaces_aggregation: implements :meth:`aggregate`.
        uniform_weights: aggregation weights are 1/m instead of by sample count
            (client-level DP needs bounded per-client influence).
    """

    Params: ClassVar[type]
    name: ClassVar[str] = "defense"
    privacy_unit: ClassVar[str] = "none"
    is_dp: ClassVar[bool] = False
    hides_updates: ClassVar[bool] = False
    replaces_aggregation: ClassVar[bool] = False
    uniform_weights: ClassVar[bool] = False

    def __init__(self, params: Any) -> None:
        self.params = params

    # ---- load time
    @classmethod
    def check(cls, params: Any, cfg: Any) -> None:
        """Raise ``ConfigError`` if the defense cannot work with ``cfg``."""

    @classmethod
    def label(cls, params: Any) -> str:
        """Short readable label for run names, e.g. ``dp_sgd(z=1.0)``."""
        return cls.name

    # ---- run time
    def setup(self, facts: FederationFacts) -> None:
        """Called once per run before the first round."""

    def wrap_local_training(self, trainer: Any, site: str) -> Any:
        """Return the trainer a hospital uses (called once per hospital per run)."""
        return trainer

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """Client side: return a new update; never mutate ``update``."""
        return update

    def stacks_updates(self) -> bool:
        """Whether :meth:`transform_update` maps a (K, P) stack of updates row by row, with the
        same result as K separate calls, no per-call state and no dependence on the round or
        the generator (the identity does): the canary clients' fixed updates then go through it
        once per run."""
        return type(self).transform_update is Defense.transform_update

    def aggregate(
        self, updates: Mapping[str, torch.Tensor], weights: Mapping[str, float], ctx: ServerContext
    ) -> torch.Tensor:
        """Server side: the weighted sum Σ wᵢ uᵢ (only for ``replaces_aggregation``)."""
        raise NotImplementedError

    def transform_aggregate(self, aggregate: torch.Tensor, ctx: ServerContext) -> torch.Tensor:
        """Server side: return a new aggregate; never mutate the input."""
        return aggregate

    def dp_events(self) -> tuple[DPEvent, ...]:
        """What the mechanism did, for the accountant (after training)."""
        return ()

    def tags(self) -> dict[str, str]:
        """Run tags (e.g. a warning that the guarantee is weak)."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Cost or diagnostic metrics after training (``cost/...``)."""
        return {}


def weighted_sum(updates: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Plain aggregation Σ wᵢ uᵢ (what the server computes without secure aggregation)."""
    names = list(updates)
    out = torch.zeros_like(updates[names[0]])
    for n in names:
        out = out + weights[n] * updates[n]
    return out
