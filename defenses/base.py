"""The defense interface and its registry.

A defense implements any of the hooks below. A list of defenses composes: client hooks
(``wrap_local_training``, ``transform_update``) run in list order, server hooks
(``transform_aggregate``) in reverse order; at most one defense replaces ``aggregate``.

Each defense's math is written once, on a stack of K federations' updates ``(K, P)``
(:meth:`Defense.update_stack`, :meth:`Defense.aggregate_stack`,
:meth:`Defense.aggregate_noise_stack`, and for dp_sgd ``private_gradient_stack``): its per-hospital hooks call them with K = 1, and LiRA/RMIA's
reference federations (``bench.reference``) with K > 1. A defense without a stacked form
(``has_stacked_form = False``, or :meth:`Defense.stacked_unsupported` says why) makes the
references fall back to sequential target runs, visibly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

from bench.registry import DEFENSES, Registry  # noqa: F401  (the registry is a leaf of bench)
from bench.types import DPEvent
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


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

    def check_received(
        self, received: Mapping[str, torch.Tensor], architectures: Mapping[str, str], configured: str, round: int
    ) -> Optional[str]:
        """Client side, before local training: each hospital's received parameters and the
        fingerprint of the architecture it received (``bench.federated.architecture_of``),
        beside the configured architecture's. Return why the hospitals refuse the round (they
        then do not train; logged as ``RoundRecord.aborted``), or None to go on."""
        return None

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

    # ---- the same math on a stack of K federations (the target is K = 1)
    #: the hooks below (with ``private_gradient_stack`` where local training is wrapped) are
    #: this defense's whole math; a defense that overrides no hook (the identity) needs none
    has_stacked_form: ClassVar[bool] = False

    @classmethod
    def stacked_unsupported(cls, params: Any) -> Optional[str]:
        """Why these parameters have no stacked form (None when they have one)."""
        if cls.has_stacked_form:
            return None
        hooks = ("wrap_local_training", "transform_update", "aggregate", "transform_aggregate")
        if any(getattr(cls, h) is not getattr(Defense, h) for h in hooks):
            return f"defense {cls.name!r} has no vectorised form"
        return None

    def update_stack(self, updates: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Client side on K federations' updates of one hospital, ``(K, P)`` -> ``(K, P)``;
        ``generators``: one per federation (its ``transform_update`` stream)."""
        return updates

    def aggregate_stack(self, updates: torch.Tensor, weights: torch.Tensor) -> Optional[torch.Tensor]:
        """Server side, for a defense that ``replaces_aggregation``: what the server learns
        from K federations' updates ``(S, K, P)`` with FedAvg weights ``(K, S)``, as ``(K, P)``;
        None: the plain weighted sum."""
        return None

    def aggregate_noise_stack(
        self, aggregate: torch.Tensor, num_participants: Sequence[int], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Server side on K aggregates ``(K, P)``: federation k had ``num_participants[k]``
        hospitals this round and draws from ``generators[k]`` (its ``("server", r)`` stream)."""
        return aggregate

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


def on_rows(stacked: Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor], update: torch.Tensor,
            generator: torch.Generator) -> torch.Tensor:
    """A client hook from its stacked form: one update ``(P,)`` as a stack of one, or a
    ``(K, P)`` stack as it is (``bench.federated.canary_client_sum`` passes stacks)."""
    if update.dim() == 2:
        return stacked(update, [generator] * update.shape[0])
    return stacked(update.unsqueeze(0), [generator])[0]
