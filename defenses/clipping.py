"""``clipping``: L2 clipping of each hospital's whole update."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from defenses.base import DEFENSES, ClientContext, Defense, on_rows


def clip_l2(update: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Return ``update * min(1, max_norm / ||update||)`` as a new tensor; a (K, P) stack is
    clipped row by row (the K reference federations of ``bench.reference``)."""
    norm = torch.linalg.vector_norm(update, dim=-1, keepdim=True)
    scale = torch.clamp(max_norm / (norm + 1e-12), max=1.0)
    return update * scale


@DEFENSES.register("clipping")
class Clipping(Defense):
    """Bound each hospital's influence by clipping its update to L2 norm ``max_norm``.

    Runs on the client, after local training. Privacy unit: none. DP events: none — on its
    own clipping is **not** differential privacy (no ε); it only limits how much one update
    can move the model and weakens some attacks. Hides nothing from the server.
    """

    name = "clipping"

    @dataclass(frozen=True)
    class Params:
        max_norm: float = field(default=1.0, metadata={"gt": 0})

    @classmethod
    def label(cls, params) -> str:
        return f"clipping(C={params.max_norm:g})"

    has_stacked_form = True

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        return clip_l2(updates, self.params.max_norm)

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        return on_rows(self.update_stack, update, ctx.generator)

    def stacks_updates(self) -> bool:
        return True  # clip_l2 clips row by row
