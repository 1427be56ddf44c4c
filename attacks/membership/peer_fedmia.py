"""``peer_fedmia``: a curious peer hospital's membership inference from the global models it receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from attacks.base import ATTACKS, Attack, per_example_loss
from bench.models import load_flat
from bench.types import MembershipScores, PeerView
from bench.lazy import lazy

# scipy imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
stats = lazy("scipy.stats", globals())


_MIN_STD = 1e-6


def loss_trajectories(view: PeerView, x, y) -> np.ndarray:
    """Per-record loss under each model the peer received and the released one, ``(R + 1, n)``."""
    out = []
    for params in (*view.received, view.final_params):
        out.append(per_example_loss(load_flat(view.model_fn(), params), x, y).numpy().astype(np.float64))
    return np.stack(out)


def standardised(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row by row (one row per round), how far below the known non-members' mean a target's
    value lies, in units of their spread: ``(μ_ref − v) / σ_ref``, ``(T, n)`` -> ``(T, n)``.
    Large where the target looks trained on (lower loss, or a larger fall)."""
    mu = reference.mean(axis=1, keepdims=True)
    sd = np.maximum(reference.std(axis=1, keepdims=True), _MIN_STD)
    return (mu - target) / sd


def temporal_z(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The multi-temporal evidence: the loss under each model received after an aggregation
    (rounds 2..R and the released model) and each round-to-round change of the loss, both
    standardised against the known non-members of the same round, ``(2R, n)`` z-scores."""
    levels = standardised(target[1:], reference[1:])
    drops = standardised(np.diff(target, axis=0), np.diff(reference, axis=0))
    return np.concatenate([levels, drops])


@ATTACKS.register("peer_fedmia")
class PeerFedMIA(Attack):
    """Multi-temporal membership inference by a curious peer hospital.

    Zhu et al. (2025), "FedMIA: An Effective Membership Inference Attack Exploiting 'All for One'
    Principle in Federated Learning" (CVPR): a record's evidence across *all* rounds,
    tested one-tailed against a non-member reference, beats a single snapshot. A peer sees no
    individual update, only the global model each round, so its evidence is the record's loss
    trajectory under the models it received: the loss after each aggregation and each
    round-to-round change, each standardised against the peer's own held-out records (known
    non-members, its test split) at the same round, combined by Fisher's method on the
    one-tailed p-values (``combine: fisher``) or by the mean z (``mean_z``). FedMIA's
    per-record non-member distribution from *other clients' updates* needs a server's view; a
    peer has only this population reference (from its own hospital, whose records may differ
    from the others': a bias toward calling out-of-distribution records non-members).

    Threat model: ``peer`` (a hospital that participates honestly: ``PeerView``). Disclosure
    needed: none beyond what the protocol sends every hospital. Targets: the candidates
    without the peer's own training records (it knows those). Its own held-out records stay
    among the candidates the federation lists, as for every attack: a real peer would also
    drop them, which changes the non-member pool, not the scoring.
    """

    name = "peer_fedmia"
    threat_model = "peer"

    @dataclass(frozen=True)
    class Params:
        site: Optional[str] = None  # the curious hospital (default: the first of the roster)
        combine: Literal["fisher", "mean_z"] = "fisher"

    def run(self, view: PeerView, rng: np.random.Generator) -> MembershipScores:
        from bench.types import ConfigError

        ref = view.own_holdout
        if len(ref) < 3:
            raise ConfigError(
                f"attacks.peer_fedmia: hospital {view.site!r} has {len(ref)} held-out records; the non-member reference needs "
                "at least 3 (raise data.test_fraction)"
            )
        tgt = loss_trajectories(view, view.candidates.x, view.candidates.y)
        z = temporal_z(tgt, loss_trajectories(view, ref.x, ref.y))
        if self.params.combine == "fisher":
            # −Σ log p with p = P(a non-member's value is at least this far out) = Φ(−z); logsf keeps the tail
            score = -stats.norm.logsf(z).sum(0)
        else:
            score = z.mean(0)
        return MembershipScores(
            ids=view.candidates.ids.copy(), scores=score.astype(np.float64),
            extras={"models": float(tgt.shape[0]), "reference_records": float(len(ref))},
        )
