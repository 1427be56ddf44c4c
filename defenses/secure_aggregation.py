"""``secure_aggregation``: the server learns only the sum of the hospitals' updates.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017; optional SecAgg+
neighbour graph of Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020. Protocol: :mod:`defenses.secagg`.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

import numpy as np

from bench.types import ConfigError, ProtocolAbort
from defenses.base import DEFENSES, Defense, ServerContext, weighted_sum
from defenses.secagg.protocol import DROPOUT_ROUNDS, ROUNDS, DropoutRound, harary_graph, secure_sum
from defenses.secagg.quantization import Quantizer
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


log = logging.getLogger(__name__)

__all__ = ["Dropout", "ProtocolAbort", "SecureAggregation", "threshold_for"]

# rounds whose dropouts leave the client's input out of the sum (the rest only cost shares)
EXCLUDING_ROUNDS = ("share_keys", "masked_input")
_DROPOUT_STREAM = int.from_bytes(hashlib.sha256(b"secure_aggregation/dropout").digest()[:8], "big")
_TAG_LIMIT = 4000  # MLflow tag values hold 5000 characters


def threshold_for(group_size: int, fraction: float) -> int:
    """t = ⌊fraction·group⌋ + 1 (default fraction ½: a strict majority), at most the group size."""
    return max(1, min(group_size, math.floor(fraction * group_size) + 1))


@dataclass(frozen=True)
class Dropout:
    """One entry of ``secure_aggregation``'s ``dropout``: ``{round: masked_input, rate: 0.2}``.

    Attributes:
        round: the protocol round at which clients drop (one of
            :data:`defenses.secagg.protocol.DROPOUT_ROUNDS`): ``share_keys`` (round 1: they
            never share their keys) and ``masked_input`` (round 2: they never send y_u) leave
            their update out of the sum; ``consistency_check`` (round 3) and ``unmasking``
            (round 4: they send no shares) keep it in.
        rate: the probability that each hospital still in the protocol when ``round`` starts
            drops there (independently, from the round's seeded dropout stream).
    """

    round: DropoutRound
    rate: float

    def __post_init__(self) -> None:
        where = "defenses.secure_aggregation.dropout"
        if self.round not in DROPOUT_ROUNDS:
            close = difflib.get_close_matches(str(self.round), DROPOUT_ROUNDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.round: got {self.round!r}; allowed: {', '.join(DROPOUT_ROUNDS)}{hint}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise ConfigError(f"{where}.rate: got {self.rate!r}; expected a probability in [0, 1)")
        object.__setattr__(self, "rate", float(self.rate))


def _dropout_entry(item: Any, where: str) -> Dropout:
    if isinstance(item, Dropout):
        return item
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: got {item!r}; expected {{round: masked_input, rate: 0.2}}")
    for key in item:
        if key not in ("round", "rate"):
            close = difflib.get_close_matches(str(key), ("round", "rate"), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{key}: unknown key{hint}; allowed: round, rate")
    missing = [k for k in ("round", "rate") if k not in item]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: missing required key")
    return Dropout(**item)


def _parse_dropout(value: Any) -> Optional[tuple[Dropout, ...]]:
    """``dropout`` as written (a mapping, a list of mappings, or null) -> entries, or None."""
    where = "defenses.secure_aggregation.dropout"
    if value is None:
        return None
    if isinstance(value, (dict, Dropout)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: got {value!r}; expected {{round: masked_input, rate: 0.2}} or a list of them")
    entries = tuple(_dropout_entry(v, f"{where}[{i}]") for i, v in enumerate(value))
    rounds = [e.round for e in entries]
    twice = next((r for r in rounds if rounds.count(r) > 1), None)
    if twice is not None:
        raise ConfigError(f"{where}: round {twice!r} is listed twice; give each round one rate")
    # protocol order, so that equal settings written in another order have one run_key
    return tuple(sorted(entries, key=lambda e: DROPOUT_ROUNDS.index(e.round))) or None


@DEFENSES.register("secure_aggregation")
class SecureAggregation(Defense):
    """Replace plain summation by the Bonawitz et al. secure-aggregation protocol.

    Runs on clients and server (``aggregate``): each hospital encodes its weighted update
    wᵢuᵢ in fixed point (entries clipped to ±``clip_range``) into Z_{2^bits}, masks it with
    pairwise masks (X25519 + HKDF + AES-CTR) and a self mask, and Shamir-shares its secrets
    t-of-n (t = ⌊threshold_fraction·n⌋+1) under AES-GCM; the server recovers only the sum.
    Privacy unit: none, and no DP events — secure aggregation is **not** differential privacy
    (no ε); it *hides individual updates* (``hides_updates``): the server's view holds only
    the aggregate, and attacks that need single updates are refused at load time.

    Dropouts, at any round of the protocol: ``dropout: {round: masked_input, rate: 0.2}`` or a
    list with one entry per round (``share_keys``, ``masked_input``, ``consistency_check``,
    ``unmasking``); each hospital still in the protocol when a listed round starts drops there
    with probability ``rate``, drawn from a stream derived from the round's server seed (it
    does not shift the draws of a later server hook such as ``client_dp``'s noise). Hospitals
    that drop at ``share_keys`` or ``masked_input`` are not in the sum, which is re-weighted
    over the hospitals whose input arrived (FedAvg over those); those that drop later are in
    it, their self masks removed with the others' shares. The older ``dropout_fraction`` (an
    exact fraction of each round's hospitals, drawn from the server generator) with
    ``dropout_phase`` ``before_masked_input`` / ``after_masked_input`` is the same as
    ``masked_input`` / ``consistency_check``. The sum is recovered while ≥ t hospitals remain at
    every round; otherwise, and on any protocol failure (a ciphertext or share that does not
    verify, an unknown or duplicate party), :class:`bench.types.ProtocolAbort` ends the cell
    as FAILED with one line naming the round, the party and what failed. Keys, seeds and
    Shamir coefficients come from the OS CSPRNG, as in a deployment; the result does not
    depend on them (masks cancel exactly). Who dropped where goes to the tag
    ``secure_aggregation_dropouts`` and the ``defense/secure_aggregation/...`` metrics.

    Cost metrics: ``cost/bytes_per_client`` (bytes each hospital sends, mean),
    ``cost/secagg_seconds`` (one round: encoding, protocol and decoding of all parties, run one
    after the other in this process), ``cost/secagg_protocol_seconds`` (the protocol alone),
    ``cost/plain_aggregation_seconds`` and ``cost/plain_bytes_per_client`` beside it.
    """

    name = "secure_aggregation"
    hides_updates = True
    replaces_aggregation = True

    @dataclass(frozen=True)
    class Params:
        bits: Literal[32, 64] = 32
        clip_range: float = field(default=4.0, metadata={"gt": 0})
        threshold_fraction: float = field(default=0.5, metadata={"ge": 0, "lt": 1})
        dropout_fraction: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
        dropout_phase: Literal["after_masked_input", "before_masked_input"] = "after_masked_input"
        neighbors: Optional[int] = field(default=None, metadata={"ge": 2})
        dropout: Any = field(default=None, metadata={"omit_if_none": True})  # Optional[tuple[Dropout, ...]]

        def __post_init__(self) -> None:
            object.__setattr__(self, "dropout", _parse_dropout(self.dropout))
            if self.dropout is not None and self.dropout_fraction > 0:
                raise ConfigError(
                    "defenses.secure_aggregation.dropout: set either dropout or dropout_fraction/dropout_phase, not both"
                )

        @property
        def dropout_rates(self) -> dict[str, float]:
            """Round -> rate (the ``dropout`` entries; ``{}`` without them)."""
            return {e.round: e.rate for e in self.dropout or ()}

        @property
        def excludes_inputs(self) -> bool:
            """Whether some dropouts leave inputs out of the sum (it is then re-weighted)."""
            if self.dropout_fraction > 0 and self.dropout_phase == "before_masked_input":
                return True
            return any(self.dropout_rates.get(r, 0) > 0 for r in EXCLUDING_ROUNDS)

    @classmethod
    def check(cls, params, cfg) -> None:
        if params.neighbors is not None and params.neighbors % 2:
            raise ConfigError(
                f"defenses.secure_aggregation.neighbors: got {params.neighbors}; the SecAgg+ ring graph needs an even degree"
            )
        if params.excludes_inputs:
            # re-weighting over fewer hospitals raises each one's influence above the C/m that
            # client-level DP calibrated its noise to: the accounted epsilon would be wrong
            # (a defense whose noise travels inside each input, distributed_dp, accounts the shares that arrive)
            client_dp = [s.name for s in cfg.defenses if DEFENSES.get(s.name).privacy_unit == "client"
                         and not getattr(DEFENSES.get(s.name), "noise_in_inputs", False)]
            if client_dp:
                if params.dropout is None:
                    raise ConfigError(
                        f"defenses.secure_aggregation.dropout_phase: 'before_masked_input' re-weights the sum over fewer "
                        f"hospitals, which breaks {client_dp[0]!r}'s noise calibration; use dropout_phase: after_masked_input"
                    )
                raise ConfigError(
                    f"defenses.secure_aggregation.dropout: dropouts at {' or '.join(EXCLUDING_ROUNDS)} re-weight the sum over "
                    f"fewer hospitals, which breaks {client_dp[0]!r}'s noise calibration; use consistency_check or unmasking"
                )

    @classmethod
    def label(cls, params) -> str:
        parts = []
        if params.neighbors is not None:
            parts.append(f"k={params.neighbors}")
        if params.dropout_fraction:
            parts.append(f"drop={params.dropout_fraction:g}")
        parts += [f"drop@{r}={rate:g}" for r, rate in params.dropout_rates.items() if rate > 0]
        return "secure_aggregation" + (f"({','.join(parts)})" if parts else "")

    def __init__(self, params) -> None:
        super().__init__(params)
        self.rounds: list[dict[str, float]] = []
        # per FedAvg round: protocol round -> the hospitals that dropped there
        self.dropped: list[dict[str, tuple[str, ...]]] = []

    def _dropouts(self, n: int, ctx: ServerContext) -> dict[str, list[int]]:
        """Protocol round -> indices of the hospitals that drop there, for this FedAvg round."""
        p = self.params
        if p.dropout is None:
            if p.dropout_fraction <= 0:
                return {}
            # draw from the round's server generator only when needed, so that without dropouts
            # a later server hook (client_dp's noise) sees the same stream as without this defense
            order = torch.randperm(n, generator=ctx.generator).tolist()
            phase = "masked_input" if p.dropout_phase == "before_masked_input" else "consistency_check"
            return {phase: order[: int(round(p.dropout_fraction * n))]}
        # a child stream of the round's server seed (read, not drawn from): dropouts never shift
        # the server generator's later draws (client_dp's noise, the SecAgg+ graph)
        rng = np.random.default_rng(np.random.SeedSequence([ctx.generator.initial_seed(), _DROPOUT_STREAM]))
        # one uniform per hospital per protocol round, used or not: a round's draws do not
        # depend on the other rounds' rates
        u = rng.random((len(DROPOUT_ROUNDS), n))
        rates = p.dropout_rates
        online, out = set(range(n)), {}
        for i, rnd in enumerate(DROPOUT_ROUNDS):
            out[rnd] = [c for c in range(n) if c in online and u[i, c] < rates.get(rnd, 0.0)]
            online.difference_update(out[rnd])
        return out

    def aggregate(
        self, updates: Mapping[str, torch.Tensor], weights: Mapping[str, float], ctx: ServerContext
    ) -> torch.Tensor:
        p = self.params
        names = list(updates)
        n = len(names)
        # the server runs the protocol among the round's participants, each once
        if len(set(ctx.participants)) != len(ctx.participants) or set(names) != set(ctx.participants):
            dup = sorted({x for x in ctx.participants if ctx.participants.count(x) > 1})
            unknown = sorted(set(names) ^ set(ctx.participants))
            what = f"duplicate party id {dup[0]!r}" if dup else f"unknown party id {unknown[0]!r} (the round's participants: {', '.join(ctx.participants)})"
            raise ProtocolAbort(f"secure aggregation aborted in {ROUNDS['advertise_keys']}: server: {what}")
        t_plain = time.perf_counter()
        weighted_sum(updates, weights)  # the plain baseline, timed for comparison only
        plain_seconds = time.perf_counter() - t_plain

        t_start = time.perf_counter()
        quant = Quantizer(bits=p.bits, clip_range=p.clip_range, num_inputs=n)
        # each client encodes its own weighted update (the weights are public: sample counts)
        inputs = [weights[name] * updates[name].detach().double().numpy() for name in names]
        clipped = sum(quant.clipped(x) for x in inputs)
        if clipped:
            log.warning(
                "secure_aggregation: %d entries exceeded clip_range=%g and were clipped; raise clip_range", clipped, p.clip_range
            )
        encoded = [quant.encode(x) for x in inputs]

        dropouts = self._dropouts(n, ctx)
        graph = None
        group = n
        if p.neighbors is not None and p.neighbors < n - 1:
            graph = harary_graph(n, p.neighbors, torch.randperm(n, generator=ctx.generator).tolist())
            group = p.neighbors + 1
        t = threshold_for(group, p.threshold_fraction)
        res = secure_sum(
            encoded, threshold=t, bits=p.bits, graph=graph, dropouts=dropouts,
            session=f"round-{ctx.round}".encode(), party_names=names,
        )
        total = quant.decode(res.total)
        if len(res.included) < n:
            # FedAvg over the hospitals whose input arrived: re-normalise their weights
            total = total / sum(weights[names[u]] for u in res.included)
        dropped = {rnd: tuple(names[u] for u in res.dropped[rnd]) for rnd in DROPOUT_ROUNDS}
        self.dropped.append(dropped)
        self.rounds.append(
            {
                "bytes": float(np.mean(list(res.bytes_sent.values()))),
                # everything every party computes (encoding, the protocol, decoding), one after
                # the other in this process; in a deployment the clients' shares run in parallel
                "seconds": time.perf_counter() - t_start,
                "protocol_seconds": res.seconds,
                "plain_seconds": plain_seconds,
                "plain_bytes": float(updates[names[0]].numel() * updates[names[0]].element_size()),
                "round": float(ctx.round),
                "dropped": float(sum(len(v) for v in dropped.values())),
                **{f"dropped/{rnd}": float(len(dropped[rnd])) for rnd in DROPOUT_ROUNDS},
                "included": float(len(res.included)),
                "survivors": float(len(res.survivors)),
                "threshold": float(t),
                "clipped": float(clipped),
                "max_error": quant.max_sum_error,
            }
        )
        return torch.as_tensor(total, dtype=updates[names[0]].dtype)

    # ---- references (K federations at once): the sum the protocol reveals, without running it
    has_stacked_form = True

    @classmethod
    def stacked_unsupported(cls, params) -> Optional[str]:
        if params.excludes_inputs:  # dropouts before the masked input re-weight each round's sum
            return "secure_aggregation with dropouts before the masked input"
        return None

    def aggregate_stack(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """What :meth:`aggregate` reveals, for K federations: Σ_s clamp(w_ks·u_sk, ±clip_range)
        (the masks cancel; fixed-point quantization adds ≤ ~1e-9 at 32 bits), ``updates``
        ``(S, K, P)``, ``weights`` ``(K, S)`` -> ``(K, P)``. Dropouts after the masked input
        leave the sum unchanged. ``tests/test_one_engine.py`` checks it against the protocol."""
        return torch.clamp(weights.T.unsqueeze(-1) * updates, -self.params.clip_range, self.params.clip_range).sum(0)

    def metrics(self) -> dict[str, float]:
        if not self.rounds:
            return {}

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in self.rounds]))

        return {
            "cost/bytes_per_client": mean("bytes"),
            "cost/secagg_seconds": mean("seconds"),
            "cost/secagg_protocol_seconds": mean("protocol_seconds"),
            "cost/plain_aggregation_seconds": mean("plain_seconds"),
            "cost/plain_bytes_per_client": mean("plain_bytes"),
            "defense/secure_aggregation/dropped_per_round": mean("dropped"),
            **{f"defense/secure_aggregation/dropped_at_{rnd}_per_round": mean(f"dropped/{rnd}") for rnd in DROPOUT_ROUNDS},
            "defense/secure_aggregation/inputs_in_sum_per_round": mean("included"),
            "defense/secure_aggregation/survivors_per_round": mean("survivors"),
            "defense/secure_aggregation/min_survivors": min(r["survivors"] for r in self.rounds),
            "defense/secure_aggregation/threshold": mean("threshold"),
            "defense/secure_aggregation/clipped_entries": float(sum(r["clipped"] for r in self.rounds)),
            "defense/secure_aggregation/max_quantization_error": max(r["max_error"] for r in self.rounds),
        }

    def tags(self) -> dict[str, str]:
        """``secure_aggregation_dropouts``: ``<FedAvg round>:<protocol round>=<hospitals>,...; ...``."""
        if not self.rounds or not (self.params.dropout or self.params.dropout_fraction):
            return {}
        entries = [
            f"{int(r['round'])}:" + ",".join(f"{rnd}={'+'.join(who)}" for rnd, who in dropped.items() if who)
            for r, dropped in zip(self.rounds, self.dropped)
            if any(dropped.values())
        ]
        text = "; ".join(entries) or "none"
        if len(text) > _TAG_LIMIT:
            kept = text[:_TAG_LIMIT].rsplit("; ", 1)[0]
            text = f"{kept}; ... ({len(entries) - kept.count('; ') - 1} more rounds with dropouts)"
        return {"secure_aggregation_dropouts": text}
