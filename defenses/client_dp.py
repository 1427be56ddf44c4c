"""``client_dp``: client-level DP-FedAvg with fixed or adaptive clipping.

McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018 (DP-FedAvg); Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021 (quantile-based adaptive clipping).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

from bench.types import ConfigError, DPEvent
from defenses.base import DEFENSES, ClientContext, Defense, FederationFacts, ServerContext, on_rows
from defenses.clipping import clip_l2
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


log = logging.getLogger(__name__)

# Below this many hospitals client-level DP is weak: either the noise sigma*C/m swamps the
# mean of m updates or epsilon is large (McMahan et al. used ~10^5 users per run).
WEAK_BELOW_SITES = 100


def update_noise_multiplier(z: float, clip_count_stddev: float) -> float:
    """Noise multiplier of the update sum so that the *pair* (update sum, clipped-count sum)
    has effective noise multiplier ``z`` (Andrew et al. 2021, Thm. 1).

    The clipped-count query releases Σ(bᵢ − ½) (sensitivity ½) with noise σ_b, i.e. a
    Gaussian mechanism of noise multiplier 2σ_b; composing two Gaussian mechanisms adds
    their inverse squared multipliers: z⁻² = z_Δ⁻² + (2σ_b)⁻².
    """
    if z == 0:
        return 0.0
    rest = z**-2 - (2.0 * clip_count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"defenses.client_dp.clip_count_stddev: got {clip_count_stddev:g}; must exceed noise_multiplier/2 "
            f"({z / 2:g}) so the update noise stays finite"
        )
    return rest**-0.5


def next_clip(clip: float, noisy_fraction_unclipped: float, target_quantile: float, lr: float) -> float:
    """Geometric update C ← C·exp(−η(b̃ − γ)) (Andrew et al. 2021, Alg. 1)."""
    return clip * math.exp(-lr * (noisy_fraction_unclipped - target_quantile))


def _refuse_partial_participation(per_round: Optional[int], num_sites: int) -> None:
    # The accountant models Poisson sampling of hospitals; the engine picks exactly m of them
    # without replacement, whose replace-one sensitivity is 2C/m: the ε would be wrong.
    if per_round is not None and per_round < num_sites:
        raise ConfigError(
            f"train.sites_per_round: got {per_round} of {num_sites} hospitals; client_dp accounts Poisson sampling "
            "of hospitals, which the engine does not do; let every hospital join every round (remove train.sites_per_round)"
        )


@DEFENSES.register("client_dp")
class ClientDP(Defense):
    """Client-level DP-FedAvg: each hospital's update is clipped, Gaussian noise is added to the mean.

    Runs on both sides: ``transform_update`` (client) clips the update to L2 norm C — on the
    client so that it composes with secure aggregation — and ``transform_aggregate``
    (server) adds N(0, (σ·C/m)²) to the uniform-weight mean of the m updates
    (``uniform_weights``: each hospital's influence is bounded by C/m). Privacy unit: one
    whole *hospital* (client). DP events: one ``poisson_gaussian`` event for the federation,
    q = sites_per_round / num_sites = 1, one step per round, population = num_sites,
    neighbouring ``replace_one``. Every hospital joins every round: partial participation is
    refused at load time, because the engine picks exactly m hospitals without replacement,
    which the Poisson-sampling accountant does not model.

    Neighbouring relation: the roster of hospitals is public and every hospital always
    participates, so the natural neighbour of a federation is the same roster with one
    hospital's data *replaced* — its clipped update can move the sum by up to 2C (not C, as
    when a hospital is added or removed). The accountant therefore states ε at σ/2 by
    default (81 vs 30 under add/remove for 4 hospitals, σ = 1, 20 rounds, δ = 1e-5); with
    adaptive clipping too, since replacement also doubles the clipped-count query's
    sensitivity. ``privacy.neighbouring: add_remove`` states the add/remove ε instead.
    Hides nothing: the server sees each clipped (un-noised) update unless secure
    aggregation is also used — central DP trusts the server to add the noise.

    Adaptive clipping (``adaptive: true``) tracks the ``target_quantile`` of update norms:
    each hospital also reports whether its norm was ≤ C, the server adds N(0, σ_b²) to the
    count and updates C geometrically with rate ``clip_lr``. ``noise_multiplier`` is then
    the *effective* multiplier of both queries together (what the accountant uses); the
    update itself gets the larger z_Δ of Andrew et al.

    With few hospitals the guarantee is weak; the run logs a warning and the tags
    ``dp_weak_guarantee=true`` and ``dp_weak_guarantee_reason``.
    """

    name = "client_dp"
    privacy_unit = "client"
    is_dp = True
    uniform_weights = True

    @dataclass(frozen=True)
    class Params:
        noise_multiplier: float = field(default=1.0, metadata={"ge": 0})
        clip_norm: float = field(default=1.0, metadata={"gt": 0})
        adaptive: bool = False
        target_quantile: float = field(default=0.5, metadata={"gt": 0, "lt": 1})
        clip_lr: float = field(default=0.2, metadata={"gt": 0})
        clip_count_stddev: Optional[float] = field(default=None, metadata={"gt": 0})

    @classmethod
    def check(cls, params, cfg) -> None:
        if math.isinf(params.clip_norm):
            raise ConfigError("defenses.client_dp.clip_norm: got inf; client-level DP needs a finite clipping bound")
        if params.adaptive and params.clip_count_stddev is not None:
            update_noise_multiplier(params.noise_multiplier, params.clip_count_stddev)
        if cfg.data.partition != "natural":  # (natural sites are counted once the data is loaded: check_against)
            cls._check_roster(params, cfg.train.sites_per_round, cfg.data.num_sites)

    @classmethod
    def check_against(cls, params, cfg, fed) -> None:
        """Once the data is loaded, before training: what :meth:`setup` would refuse for this
        many hospitals (a natural partition's roster is known only now)."""
        cls._check_roster(params, cfg.train.sites_per_round, len(fed.sites))

    @staticmethod
    def _check_roster(params, per_round: Optional[int], num_sites: int) -> None:
        _refuse_partial_participation(per_round, num_sites)
        if params.adaptive and params.clip_count_stddev is None:  # setup's default: expected clients / 20
            m = min(per_round or num_sites, num_sites)
            update_noise_multiplier(params.noise_multiplier, m / 20.0)

    @classmethod
    def label(cls, params) -> str:
        mode = f"adaptive q={params.target_quantile:g}" if params.adaptive else f"C={params.clip_norm:g}"
        return f"client_dp(z={params.noise_multiplier:g},{mode})"

    def __init__(self, params) -> None:
        super().__init__(params)
        self.clip = float(params.clip_norm)
        self.clip_history: list[float] = []
        self.bits: dict[tuple[int, str], float] = {}
        self.rounds_done = 0
        self.facts: Optional[FederationFacts] = None
        self.count_stddev = params.clip_count_stddev
        self.update_z = float(params.noise_multiplier)
        self._tags: dict[str, str] = {}

    def setup(self, facts: FederationFacts) -> None:
        _refuse_partial_participation(facts.sites_per_round, len(facts.site_names))
        self.facts = facts
        m = facts.sites_per_round
        if self.params.adaptive:
            if self.count_stddev is None:
                self.count_stddev = m / 20.0  # Andrew et al.'s recommendation: expected clients / 20
            self.update_z = update_noise_multiplier(self.params.noise_multiplier, self.count_stddev)
        n = len(facts.site_names)
        if n < WEAK_BELOW_SITES:
            reason = (
                f"only {n} hospitals ({m} per round): client-level DP hides a whole hospital, so the noise "
                f"sigma*C/m with m={m} is large next to the signal or epsilon is large; "
                f"this guarantee is weak below {WEAK_BELOW_SITES} hospitals"
            )
            log.warning("client_dp: %s", reason)
            self._tags = {"dp_weak_guarantee": "true", "dp_weak_guarantee_reason": reason}

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        if self.params.adaptive:
            # the client's clipped-count bit, centred: b - 1/2 has sensitivity 1/2
            norm = float(torch.linalg.vector_norm(update))
            self.bits[(ctx.round, ctx.site)] = (1.0 if norm <= self.clip else 0.0) - 0.5
        return on_rows(self.update_stack, update, ctx.generator)

    def stacks_updates(self) -> bool:
        return not self.params.adaptive  # adaptive clipping records one bit per call

    # ---- the math, on a stack of K federations (the target: K = 1)
    has_stacked_form = True

    @classmethod
    def stacked_unsupported(cls, params) -> Optional[str]:
        # adaptive clipping: C moves with a noisy count, a per-federation state not stacked here
        return "client_dp with adaptive clipping" if params.adaptive else None

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        """Each row clipped to L2 norm C (the current C)."""
        return clip_l2(updates, self.clip)

    def aggregate_noise_stack(self, aggregate: torch.Tensor, num_participants, generators) -> torch.Tensor:
        """Row k plus N(0, (σ·C/m_k)²) per coordinate, drawn from ``generators[k]``."""
        rows = []
        for a, m, g in zip(aggregate, num_participants, generators):
            std = self.update_z * self.clip / int(m)
            rows.append(a + torch.normal(0.0, 1.0, size=a.shape, generator=g, dtype=a.dtype) * std)
        return torch.stack(rows)

    def transform_aggregate(self, aggregate: torch.Tensor, ctx: ServerContext) -> torch.Tensor:
        m = len(ctx.participants)
        out = self.aggregate_noise_stack(aggregate.unsqueeze(0), [m], [ctx.generator])[0]
        self.clip_history.append(self.clip)
        if self.params.adaptive:
            total = sum(self.bits.pop((ctx.round, s)) for s in ctx.participants)
            noisy = total + float(torch.normal(0.0, self.count_stddev, size=(1,), generator=ctx.generator)[0])
            frac = noisy / m + 0.5
            self.clip = next_clip(self.clip, frac, self.params.target_quantile, self.params.clip_lr)
        self.rounds_done += 1
        return out

    def dp_events(self) -> tuple[DPEvent, ...]:
        if self.facts is None or self.rounds_done == 0:
            return ()
        n = len(self.facts.site_names)
        return (
            DPEvent(
                kind="poisson_gaussian",
                unit="client",
                party="federation",
                noise_multiplier=float(self.params.noise_multiplier),
                sample_rate=self.facts.sites_per_round / n,
                steps=self.rounds_done,
                population=n,
                source=self.name,
                # q = 1 with a fixed public roster: replacing a hospital's data is the neighbour
                # (privacy.neighbouring may restate it as add/remove; bench.accounting)
                neighbouring="replace_one",
            ),
        )

    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    def metrics(self) -> dict[str, float]:
        out = {"defense/client_dp/update_noise_multiplier": self.update_z}
        if self.clip_history:
            out["defense/client_dp/final_clip_norm"] = self.clip_history[-1]
        return out
