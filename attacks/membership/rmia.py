"""``rmia``: Robust Membership Inference Attack with reference federations and z-samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from attacks.base import ATTACKS, Attack, candidate_scores, reference_signals
from bench.types import ConfigError, MembershipScores, OutsiderView, ReferenceSignals
from bench.lazy import lazy

# scipy imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
stats = lazy("scipy.stats", globals())


A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _sigmoid(phi: np.ndarray) -> np.ndarray:
    # φ = log(p/(1−p)) is stored; p = σ(φ) recovers the true-label probability
    return 1.0 / (1.0 + np.exp(-np.clip(phi, -700, 700)))


def marginal_prob(ref_p: np.ndarray, included: np.ndarray, online: bool, a: float) -> np.ndarray:
    """Pr(x): the mean of Pr(x|θ') over reference models θ'.

    Online: over all references (in and out). Offline: only the "out" references, and
    Pr(x) ≈ ½((1 + a)·Pr_out(x) + (1 − a)) (the paper's linear approximation of the
    missing "in" half). Records with no "out" reference use all references.
    """
    if online:
        return ref_p.mean(0)
    out = ~included
    n_out = out.sum(0)
    p_out = np.where(n_out > 0, np.where(out, ref_p, 0).sum(0) / np.maximum(n_out, 1), ref_p.mean(0))
    return 0.5 * ((1 + a) * p_out + (1 - a))


def rmia_scores(
    target_p: np.ndarray, ref_p: np.ndarray, included: np.ndarray, z_index: np.ndarray, gamma: float, online: bool, a: float
) -> np.ndarray:
    """Score(x) = fraction of z-samples with LR(x, z) = (p(x|θ)/p(x)) / (p(z|θ)/p(z)) ≥ γ.

    ``z_index`` indexes the z-samples among the records; a record is never its own z.
    """
    ratio = target_p / np.maximum(marginal_prob(ref_p, included, online, a), 1e-30)
    rz = np.sort(ratio[z_index])
    # count z with ratio_x / ratio_z >= γ  <=>  ratio_z <= ratio_x / γ
    count = np.searchsorted(rz, ratio / gamma, side="right").astype(np.float64)
    in_z = np.zeros(len(ratio), bool)
    in_z[z_index] = True
    self_counted = in_z & (1.0 >= gamma)  # LR(x, x) = 1
    count = count - self_counted
    return count / np.maximum(len(z_index) - in_z.astype(np.float64), 1)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney AUC (ties count ½)."""
    ranks = stats.rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibrate_a(sig: ReferenceSignals, z_index: np.ndarray, gamma: float) -> float:
    """Offline ``a``: play each reference model as a pseudo-target with the others as
    references and keep the ``a`` with the best mean AUC (the paper's procedure; only the
    references' own inclusion is used, never the target's truth)."""
    p = _sigmoid(sig.reference)
    k = p.shape[0]
    best, best_auc = 1.0, -1.0
    for a in A_GRID:
        aucs = []
        for t in range(min(k, 4)):
            rest = np.arange(k) != t
            s = rmia_scores(p[t], p[rest], sig.included[rest], z_index, gamma, online=False, a=a)
            aucs.append(_auc(s, sig.included[t]))
        if np.mean(aucs) > best_auc:
            best, best_auc = float(a), float(np.mean(aucs))
    return best


@ATTACKS.register("rmia")
class RMIA(Attack):
    """Zarifzadeh, Liu, Mittal, Shokri (2024), "Low-Cost High-Power Membership Inference
    Attacks" (ICML).

    Threat model: outsider with query access to the released global model (true-label
    probability of a record), population data, and the public FL protocol to train
    ``num_references`` reference federations (``view.reference_signals``, shared with
    ``lira``). Disclosure needed: the protocol's configuration and the hospitals' data sizes.

    The likelihood ratio of x against a population sample z, LR(x, z) =
    (p(x|θ)/p(x)) / (p(z|θ)/p(z)), is compared with γ; the score is the fraction of
    ``num_z`` z-samples (drawn from the population) it dominates. Offline mode (only "out"
    references) uses p(x) ≈ ½((1+a)·p_out(x) + (1−a)); ``a: null`` calibrates ``a`` on the
    reference models themselves.

    ``reference_design``: ``paired`` (default; complementary pairs, whose negatively correlated
    signals make the mean over all references, p(x), less noisy) or ``independent`` (the design
    ``lira`` uses by default; sharing it saves one set of reference federations per cell).
    """

    name = "rmia"
    threat_model = "outsider"

    @dataclass(frozen=True)
    class Params:
        num_references: int = field(default=16, metadata={"ge": 1, "le": 1024})
        mode: Literal["online", "offline"] = "online"
        gamma: float = field(default=1.0, metadata={"gt": 0})
        num_z: int = field(default=1000, metadata={"ge": 1})
        a: Optional[float] = field(default=None, metadata={"ge": 0, "le": 1})
        # left out of the run_key at its default: RMIA cells from before the option keep their keys (their numbers are unchanged)
        reference_design: Literal["paired", "independent"] = field(default="paired", metadata={"omit_if_default": True})

    @classmethod
    def check(cls, params, cfg) -> None:
        if params.mode == "online" and params.num_references < 2:
            raise ConfigError(f"attacks.rmia.num_references: got {params.num_references}; online RMIA needs >= 2")

    @classmethod
    def label(cls, params) -> str:
        return f"rmia({params.mode},K={params.num_references})"

    def run(self, view: OutsiderView, rng: np.random.Generator) -> MembershipScores:
        sig = reference_signals(view, "rmia", self.params.num_references, self.params.reference_design)
        n = len(sig.ids)
        z_index = np.sort(rng.choice(n, min(self.params.num_z, n), replace=False))
        online = self.params.mode == "online"
        a = 1.0 if online else (self.params.a if self.params.a is not None else calibrate_a(sig, z_index, self.params.gamma))
        scores = rmia_scores(_sigmoid(sig.target), _sigmoid(sig.reference), sig.included, z_index, self.params.gamma, online, a)
        return candidate_scores(sig, scores, view, {"num_references": float(self.params.num_references), "a": a})
