"""``secure_aggregation``: the server learns only the sum of the hospitals' updates.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017; optional SecAgg+
neighbour graph of Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020. Protocol: :mod:`defenses.secagg`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional

import numpy as np
import torch

from bench.types import ConfigError
from defenses.base import DEFENSES, Defense, ServerContext, weighted_sum
from defenses.secagg.protocol import harary_graph, secure_sum
from defenses.secagg.quantization import Quantizer

log = logging.getLogger(__name__)


def threshold_for(group_size: int, fraction: float) -> int:
    """t = ⌊fraction·group⌋ + 1 (default fraction ½: a strict majority), at most the group size."""
    return max(1, min(group_size, math.floor(fraction * group_size) + 1))


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

    Dropouts: ``dropout_fraction`` of each round's hospitals (chosen with the round's seeded
    generator) go offline after sending their masked input (``dropout_phase:
    after_masked_input``: their update is still in the sum) or before (``before_masked_input``:
    it is not, and the sum is re-weighted over the hospitals that sent one). The sum is
    recovered while ≥ t hospitals survive; otherwise :class:`bench.types.ProtocolAbort`
    ends the cell as FAILED. Keys, seeds and Shamir coefficients come from the OS CSPRNG, as
    in a deployment; the result does not depend on them (masks cancel exactly).

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

    @classmethod
    def check(cls, params, cfg) -> None:
        if params.neighbors is not None and params.neighbors % 2:
            raise ConfigError(
                f"defenses.secure_aggregation.neighbors: got {params.neighbors}; the SecAgg+ ring graph needs an even degree"
            )
        if params.dropout_fraction > 0 and params.dropout_phase == "before_masked_input":
            # re-weighting over fewer hospitals raises each one's influence above the C/m that
            # client-level DP calibrated its noise to: the accounted epsilon would be wrong
            client_dp = [s.name for s in cfg.defenses if DEFENSES.get(s.name).privacy_unit == "client"]
            if client_dp:
                raise ConfigError(
                    f"defenses.secure_aggregation.dropout_phase: 'before_masked_input' re-weights the sum over fewer "
                    f"hospitals, which breaks {client_dp[0]!r}'s noise calibration; use dropout_phase: after_masked_input"
                )

    @classmethod
    def label(cls, params) -> str:
        parts = []
        if params.neighbors is not None:
            parts.append(f"k={params.neighbors}")
        if params.dropout_fraction:
            parts.append(f"drop={params.dropout_fraction:g}")
        return "secure_aggregation" + (f"({','.join(parts)})" if parts else "")

    def __init__(self, params) -> None:
        super().__init__(params)
        self.rounds: list[dict[str, float]] = []

    def aggregate(
        self, updates: Mapping[str, torch.Tensor], weights: Mapping[str, float], ctx: ServerContext
    ) -> torch.Tensor:
        p = self.params
        names = list(updates)
        n = len(names)
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

        # draw from the round's server generator only when needed, so that without dropouts
        # a later server hook (client_dp's noise) sees the same stream as without this defense
        order = torch.randperm(n, generator=ctx.generator).tolist() if p.dropout_fraction > 0 else []
        graph = None
        group = n
        if p.neighbors is not None and p.neighbors < n - 1:
            graph = harary_graph(n, p.neighbors, torch.randperm(n, generator=ctx.generator).tolist())
            group = p.neighbors + 1
        t = threshold_for(group, p.threshold_fraction)
        dropped = order[: int(round(p.dropout_fraction * n))]
        before = dropped if p.dropout_phase == "before_masked_input" else []
        after = dropped if p.dropout_phase == "after_masked_input" else []
        res = secure_sum(
            encoded, threshold=t, bits=p.bits, graph=graph, drop_before=before, drop_after=after,
            session=f"round-{ctx.round}".encode(),
        )
        total = quant.decode(res.total)
        if before:
            # FedAvg over the hospitals whose input arrived: re-normalise their weights
            total = total / sum(weights[names[u]] for u in res.included)
        self.rounds.append(
            {
                "bytes": float(np.mean(list(res.bytes_sent.values()))),
                # everything every party computes (encoding, the protocol, decoding), one after
                # the other in this process; in a deployment the clients' shares run in parallel
                "seconds": time.perf_counter() - t_start,
                "protocol_seconds": res.seconds,
                "plain_seconds": plain_seconds,
                "plain_bytes": float(updates[names[0]].numel() * updates[names[0]].element_size()),
                "dropped": float(len(dropped)),
                "threshold": float(t),
                "clipped": float(clipped),
                "max_error": quant.max_sum_error,
            }
        )
        return torch.as_tensor(total, dtype=updates[names[0]].dtype)

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
            "defense/secure_aggregation/threshold": mean("threshold"),
            "defense/secure_aggregation/clipped_entries": float(sum(r["clipped"] for r in self.rounds)),
            "defense/secure_aggregation/max_quantization_error": max(r["max_error"] for r in self.rounds),
        }
