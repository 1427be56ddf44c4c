"""``sparsify``: top-k magnitude sparsification of each hospital's update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from defenses.base import DEFENSES, ClientContext, Defense


def top_k(update: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """A new tensor keeping the ``ceil(keep_fraction·d)`` largest-magnitude entries, zeros elsewhere.

    Ties at the threshold are broken by ``torch.topk`` (exactly k entries are kept).
    """
    d = update.numel()
    k = min(d, max(1, math.ceil(keep_fraction * d)))
    flat = update.reshape(-1)
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.reshape(update.shape)


@DEFENSES.register("sparsify")
class Sparsify(Defense):
    """Send only the ``keep_fraction`` largest-magnitude coordinates of each update.

    Runs on the client, after local training (the defense Zhu et al., "Deep Leakage from
    Gradients", NeurIPS 2019, found most effective against gradient inversion). Privacy
    unit: none. DP events: none — sparsification is **not** differential privacy (no ε,
    tag ``dp=false``). Hides nothing from the server: it sees every (sparse) update.
    """

    name = "sparsify"

    @dataclass(frozen=True)
    class Params:
        keep_fraction: float = field(default=0.1, metadata={"gt": 0, "le": 1})

    @classmethod
    def label(cls, params) -> str:
        return f"sparsify(keep={params.keep_fraction:g})"

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return top_k(update, self.params.keep_fraction)
