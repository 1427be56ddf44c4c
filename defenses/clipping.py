"""``clipping``: L2 clipping of each hospital's whole update."""

from __future__ import annotations

from dataclasses import dataclass, field

from defenses.base import DEFENSES, ClientContext, Defense, FederationFacts, on_rows
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


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

    Logs ``defense/clipping/clipped_fraction``: the share of the hospitals' updates (every
    round, every participant) whose L2 norm exceeded ``max_norm``, so were scaled down (0: the
    bound never acted; 1: it acted on every update).
    """

    name = "clipping"

    @dataclass(frozen=True)
    class Params:
        max_norm: float = field(default=1.0, metadata={"gt": 0})

    @classmethod
    def label(cls, params) -> str:
        return f"clipping(C={params.max_norm:g})"

    has_stacked_form = True

    def __init__(self, params) -> None:
        super().__init__(params)
        self._sites: frozenset[str] = frozenset()
        self._updates = 0  # hospital updates seen in this run
        self._clipped = 0  # of which norm > max_norm

    def setup(self, facts: FederationFacts) -> None:
        self._sites, self._updates, self._clipped = frozenset(facts.site_names), 0, 0

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        return clip_l2(updates, self.params.max_norm)

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        if update.dim() == 1 and ctx.site in self._sites:  # a hospital's update (not an audit's canary clients)
            self._updates += 1
            self._clipped += int(torch.linalg.vector_norm(update) > self.params.max_norm)
        return on_rows(self.update_stack, update, ctx.generator)

    def metrics(self) -> dict[str, float]:
        """``defense/clipping/clipped_fraction`` over the run's hospital updates (none without any)."""
        if not self._updates:
            return {}
        return {"defense/clipping/clipped_fraction": self._clipped / self._updates}

    def stacks_updates(self) -> bool:
        return True  # clip_l2 clips row by row
