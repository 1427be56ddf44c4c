"""``sparsify``: top-k magnitude sparsification of each hospital's update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from defenses.base import DEFENSES, ClientContext, Defense, FederationFacts, on_rows
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


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

    Logs, over the hospitals' updates (every round, every participant):
    ``defense/sparsify/kept_fraction``, the mean share of coordinates sent (``ceil(keep_fraction·P)/P``);
    ``defense/sparsify/kept_norm_fraction``, the mean share of an update's squared L2 norm that
    survives (1: nothing of substance was dropped); ``defense/sparsify/changed_fraction``, the
    share of updates with more non-zero coordinates than were kept (so changed by it).
    """

    name = "sparsify"

    @dataclass(frozen=True)
    class Params:
        keep_fraction: float = field(default=0.1, metadata={"gt": 0, "le": 1})

    @classmethod
    def label(cls, params) -> str:
        return f"sparsify(keep={params.keep_fraction:g})"

    has_stacked_form = True

    def __init__(self, params) -> None:
        super().__init__(params)
        self._sites: frozenset[str] = frozenset()
        self._kept: list[tuple[float, float, bool]] = []  # per hospital update: coordinates kept, norm² kept, changed

    def setup(self, facts: FederationFacts) -> None:
        self._sites, self._kept = frozenset(facts.site_names), []

    def update_stack(self, updates: torch.Tensor, generators) -> torch.Tensor:
        return top_k_rows(updates, self.params.keep_fraction)

    def transform_update(self, update: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        out = on_rows(self.update_stack, update, ctx.generator)
        if update.dim() == 1 and ctx.site in self._sites and update.numel():  # a hospital's update (not a canary's)
            k = min(update.numel(), max(1, math.ceil(self.params.keep_fraction * update.numel())))
            total = float(update.double().square().sum())
            kept = float(out.double().square().sum()) / total if total > 0 else 1.0
            self._kept.append((k / update.numel(), kept, int(torch.count_nonzero(update)) > k))
        return out

    def metrics(self) -> dict[str, float]:
        """The shares above, averaged over the run's hospital updates (none without any)."""
        if not self._kept:
            return {}
        n = len(self._kept)
        return {
            "defense/sparsify/kept_fraction": sum(c for c, _, _ in self._kept) / n,
            "defense/sparsify/kept_norm_fraction": sum(e for _, e, _ in self._kept) / n,
            "defense/sparsify/changed_fraction": sum(ch for _, _, ch in self._kept) / n,
        }

    def stacks_updates(self) -> bool:
        return True  # top_k_rows keeps k entries of each row, with no state
