"""``distributed_dp``: client-level DP whose noise is added by the hospitals, under secure aggregation.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021, discuss the *discrete* Gaussian shares a deployment
needs (secure aggregation works in a finite group). privbench adds **continuous Gaussian
shares** before the fixed-point encoding of ``secure_aggregation``: a sum of independent
Gaussians is exactly Gaussian, so the accountant is the ordinary Gaussian mechanism (the
same one as ``client_dp``); the fixed-point rounding of the protocol (≤ ~1e-9 per entry at 32
bits, logged as ``defense/secure_aggregation/max_quantization_error``) is post-processing of
values that already carry the noise, and modular wrap-around is excluded by
``secure_aggregation``'s ``clip_range`` (clipped entries are logged). The discrete-Gaussian
accounting of Kairouz et al. (which adds a small term for the sum of discrete Gaussians not
being a discrete Gaussian) is therefore not needed, and not used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from bench.types import ConfigError, DPEvent
from defenses.base import DEFENSES, ClientContext, Defense, FederationFacts, on_rows
from defenses.clipping import clip_l2
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


log = logging.getLogger(__name__)

WEAK_BELOW_SITES = 100  # as client_dp: client-level DP over a handful of hospitals is weak


def share_std(noise_multiplier: float, clip_norm: float, min_contributors: int) -> float:
    """Standard deviation of one hospital's noise share: σ·C/√t, so that any t shares sum to
    N(0, σ²C²), the noise of central ``client_dp`` on the sum of t clipped updates."""
    return noise_multiplier * clip_norm / math.sqrt(min_contributors)


def effective_multiplier(noise_multiplier: float, shares: int, min_contributors: int) -> float:
    """Noise multiplier of a sum that holds ``shares`` noise shares of variance σ²C²/t each:
    σ·√(shares/t) (0 when no share is left)."""
    return noise_multiplier * math.sqrt(max(shares, 0) / min_contributors)


@DEFENSES.register("distributed_dp")
class DistributedDP(Defense):
    """Distributed client-level DP: each hospital clips its update and adds its share of the noise.

    Runs on the client only (``transform_update``): the update is clipped to L2 norm C and
    N(0, σ²C²/t) is added to every coordinate *before* the update enters secure aggregation's
    masking, so no single party is trusted to add the noise — not the server (as central
    ``client_dp`` must be), and not any one hospital. Aggregation weights are uniform
    (``uniform_weights``). Privacy unit: one whole *hospital* (client). DP events: one
    ``poisson_gaussian`` event per distinct number of noise shares in the sum, q = 1, one step
    per round, population = number of hospitals, neighbouring ``replace_one`` (as ``client_dp``),
    at noise multiplier σ·√(k/t) for a round whose sum holds k shares.

    **Design choice — the threshold t (``min_contributors``).** Every hospital adds variance
    σ²C²/t, so the noise the accountant needs (σ) is present whenever at least t honest shares
    are in the sum. With t = the number of hospitals (the default) and no dropouts the sum holds
    exactly N(0, σ²C²): the ε equals central ``client_dp``'s at the same σ (a test checks it). A
    dropout at secure aggregation's ``share_keys`` or ``masked_input`` takes that hospital's
    share out of the sum (it is re-weighted over the k inputs that arrived: the sensitivity
    2C/k and the noise σC√(k/t)/k scale together, so the multiplier is σ√(k/t)); the realised
    ε is accounted from the real k of each round. A *malicious server* can claim dropouts that
    did not happen, but secure aggregation reveals no sum of fewer than its threshold t_s
    inputs, so the ε that survives claimed dropouts is that at σ·√(min(k, t_s)/t) each round
    (``privacy/epsilon_after_claimed_dropouts``); choose t ≤ t_s (e.g. t = t_s = 3 of 4) and
    it is at least the configured σ: the noise holds as long as ≥ t honest hospitals
    contribute, at the price of σ√(n/t) noise when all n do. A *peer* hospital knows its own
    share and subtracts it: k − 1 shares protect the others against it.

    Hides nothing by itself: without ``secure_aggregation`` the server sees each hospital's
    noisy update, protected only by its own share (multiplier σ/√t, logged as the ε against
    the server); with it, the server sees only the noisy sum. Malicious hospitals (sybils that
    withhold their shares) are not modelled: they count as dropouts against the threshold.
    With few hospitals the guarantee is weak (tags ``dp_weak_guarantee``), as for ``client_dp``.
    """

    name = "distributed_dp"
    privacy_unit = "client"
    is_dp = True
    uniform_weights = True
    #: the noise travels inside each hospital's input: dropouts that re-weight the secure sum
    #: remove shares and sensitivity together, which the accounting below follows round by round
    noise_in_inputs = True

    @dataclass(frozen=True)
    class Params:
        noise_multiplier: float = field(default=1.0, metadata={"ge": 0})
        clip_norm: float = field(default=1.0, metadata={"gt": 0})
        min_contributors: Optional[int] = field(default=None, metadata={"ge": 1})

    @classmethod
    def check(cls, params, cfg) -> None:
        if math.isinf(params.clip_norm):
            raise ConfigError("defenses.distributed_dp.clip_norm: got inf; client-level DP needs a finite clipping bound")
        if cfg.data.partition != "natural":
            cls._check_roster(params, cfg.train.sites_per_round, cfg.data.num_sites)

    @classmethod
    def check_against(cls, params, cfg, fed) -> None:
        """Once the data is loaded (a natural partition's roster is known only now)."""
        cls._check_roster(params, cfg.train.sites_per_round, len(fed.sites))

    @staticmethod
    def _check_roster(params, per_round: Optional[int], num_sites: int) -> None:
        if per_round is not None and per_round < num_sites:
            raise ConfigError(
                f"train.sites_per_round: got {per_round} of {num_sites} hospitals; distributed_dp accounts every hospital "
                "in every round (q = 1); remove train.sites_per_round"
            )
        if params.min_contributors is not None and params.min_contributors > num_sites:
            raise ConfigError(
                f"defenses.distributed_dp.min_contributors: got {params.min_contributors} with {num_sites} hospitals; "
                f"use at most {num_sites} (e.g. secure aggregation's threshold)"
            )

    @classmethod
    def label(cls, params) -> str:
        t = f",t={params.min_contributors}" if params.min_contributors is not None else ""
        return f"distributed_dp(z={params.noise_multiplier:g},C={params.clip_norm:g}{t})"

    def __init__(self, params) -> None:
        super().__init__(params)
        self.facts: Optional[FederationFacts] = None
        self.t = params.min_contributors
        self._rounds: set[int] = set()
        self.aggregator: Optional[Defense] = None  # the defense that replaces aggregation (secure_aggregation)
        self._tags: dict[str, str] = {}

    def see_defenses(self, defenses: Sequence[Defense]) -> None:
        """Told the cell's defenses (``bench.runner.make_defenses``): the one that replaces
        aggregation records, per round, how many inputs reached the sum and its threshold."""
        self.aggregator = next((d for d in defenses if d.replaces_aggregation), None)

    def setup(self, facts: FederationFacts) -> None:
        n = len(facts.site_names)
        if facts.sites_per_round < n:
            raise ConfigError(f"train.sites_per_round: distributed_dp needs every hospital in every round; got {facts.sites_per_round} of {n}")
        self.facts = facts
        self.t = self.params.min_contributors or facts.sites_per_round
        if n < WEAK_BELOW_SITES:
            reason = (
                f"only {n} hospitals: client-level DP hides a whole hospital, so the noise is large next to the "
                f"signal or epsilon is large; this guarantee is weak below {WEAK_BELOW_SITES} hospitals"
            )
            log.warning("distributed_dp: %s", reason)
            self._tags = {"dp_weak_guarantee": "true", "dp_weak_guarantee_reason": reason}

    def _std(self) -> float:
        t = self.t or (self.facts.sites_per_round if self.facts is not None else 1)
        return share_std(self.params.noise_multiplier, self.params.clip_norm, t)

    @property
    def rounds_done(self) -> int:
        """Rounds in which hospitals added shares (no server hook: nothing here runs on the server,
        so a server that withholds its own noise has nothing of this defense to withhold)."""
        return len(self._rounds)

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        self._rounds.add(ctx.round)
        return on_rows(self.update_stack, update, ctx.generator)

    # ---- the math, on a stack of K federations (the target: K = 1)
    has_stacked_form = True

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        """Row k clipped to L2 norm C plus its noise share N(0, σ²C²/t), drawn from ``generators[k]``."""
        clipped = clip_l2(updates, self.params.clip_norm)
        std = self._std()
        rows = [
            c + torch.normal(0.0, 1.0, size=c.shape, generator=g, dtype=c.dtype) * std for c, g in zip(clipped, generators)
        ]
        return torch.stack(rows)

    # ---- accounting
    def shares_per_round(self) -> list[tuple[int, int]]:
        """(shares in the sum, aggregation threshold) per round: from the aggregator's own
        record where it keeps one (secure aggregation: ``included``, ``threshold``), else every
        participant and no threshold (plain summation reveals every update)."""
        m = self.facts.sites_per_round if self.facts is not None else 0
        rounds = list(getattr(self.aggregator, "rounds", None) or [])
        if rounds and all("included" in r for r in rounds):
            return [(int(r["included"]), int(r.get("threshold", 1))) for r in rounds[: self.rounds_done]]
        return [(m, m)] * self.rounds_done

    def _events(self, multipliers: Sequence[float], what: str) -> tuple[DPEvent, ...]:
        n = len(self.facts.site_names)
        counts: dict[float, int] = {}
        for z in multipliers:
            counts[z] = counts.get(z, 0) + 1
        return tuple(
            DPEvent(kind="poisson_gaussian", unit="client", party="federation", noise_multiplier=float(z), sample_rate=1.0,
                    steps=k, population=n, source=f"{self.name}{what}", neighbouring="replace_one")
            for z, k in sorted(counts.items())
        )

    def dp_events(self) -> tuple[DPEvent, ...]:
        """The realised mechanism: round by round, σ·√(k/t) for the k shares that reached the sum."""
        if self.facts is None or self.rounds_done == 0:
            return ()
        z, t = float(self.params.noise_multiplier), self.t
        return self._events([effective_multiplier(z, k, t) for k, _ in self.shares_per_round()], "")

    def dp_events_against(self, adversary: str) -> Optional[tuple[DPEvent, ...]]:
        """The events that hold against ``adversary`` (``bench.types.ADVERSARIES``); None: no guarantee.

        outsider: the released model holds every share (:meth:`dp_events`). server: under
        secure aggregation the same; without it, each update with its own share only (σ/√t).
        malicious_server: as server, but each round's sum may be cut to the protocol's
        threshold by claimed dropouts (σ·√(min(k, t_s)/t)). peer: k − 1 shares (its own is known).
        """
        if self.facts is None or self.rounds_done == 0:
            return ()
        z, t = float(self.params.noise_multiplier), self.t
        rounds = self.shares_per_round()
        hidden = self.aggregator is not None and self.aggregator.hides_updates
        if adversary == "outsider":
            return self.dp_events()
        if adversary in ("server", "malicious_server") and not hidden:
            return self._events([effective_multiplier(z, 1, t)] * len(rounds), "/own_share_only")
        if adversary == "server":
            return self.dp_events()
        if adversary == "malicious_server":
            return self._events([effective_multiplier(z, min(k, ts), t) for k, ts in rounds], "/claimed_dropouts")
        if adversary == "peer":
            return self._events([effective_multiplier(z, k - 1, t) for k, _ in rounds], "/peer_knows_own_share")
        raise ValueError(f"distributed_dp: unknown adversary {adversary!r}")

    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    def metrics(self) -> dict[str, float]:
        out = {"defense/distributed_dp/share_std": self._std(), "defense/distributed_dp/min_contributors": float(self.t or 0)}
        rounds = self.shares_per_round() if self.facts is not None else []
        if rounds:
            out["defense/distributed_dp/min_shares_in_sum"] = float(min(k for k, _ in rounds))
        return out
