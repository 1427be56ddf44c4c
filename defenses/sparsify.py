"""``sparsify``: top-k magnitude sparsification of each hospital's update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from defenses.base import DEFENSES, ClientContext, Defense, on_rows


def top_k_rows(updates: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """A new ``(K, P)`` stack keeping, in each row, its ``ceil(keep_fraction·P)``
    largest-magnitude entries, zeros elsewhere (ties at the threshold broken by ``torch.topk``:
    exactly k entries are kept per row)."""
    d = updates.shape[1]
    k = min(d, max(1, math.ceil(keep_fraction * d)))
    idx = torch.topk(updates.abs(), k, dim=1, sorted=False).indices
    return torch.zeros_like(updates).scatter_(1, idx, updates.gather(1, idx))


def top_k(update: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """:func:`top_k_rows` of one update of any shape (flattened), as a new tensor."""
    return top_k_rows(update.reshape(1, -1), keep_fraction).reshape(update.shape)


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

    has_stacked_form = True

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        return top_k_rows(updates, self.params.keep_fraction)

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return on_rows(self.update_stack, update, ctx.generator)

    def stacks_updates(self) -> bool:
        return True  # top_k_rows keeps k entries of each row, with no state
