"""The attack interface and its registry.

An attack declares the threat model (and so the view type) it needs and returns either
membership scores, source guesses or reconstructions. Constructors store hyperparameters
only; randomness arrives as an argument. Attacks never see ground truth: scoring lives in
``bench.metrics``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from bench.registry import ATTACKS, Registry  # noqa: F401  (the registry is a leaf of bench)
from bench.lazy import lazy, no_grad

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


class Attack:
    """Base class.

    Class attributes:
        Params: frozen dataclass of hyperparameters.
        threat_model: ``"outsider"`` (gets an ``OutsiderView``) or ``"server"`` (``ServerView``).
        needs_individual_updates: refused at load time when a defense hides updates.
        kind: ``"membership"``, ``"source"``, ``"reconstruction"``, ``"audit"`` or ``"attribute"``.
    """

    Params: ClassVar[type]
    name: ClassVar[str] = "attack"
    threat_model: ClassVar[str] = "outsider"
    needs_individual_updates: ClassVar[bool] = False
    kind: ClassVar[str] = "membership"

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def check(cls, params: Any, cfg: Any) -> None:
        """Raise ``ConfigError`` if the attack cannot run on ``cfg``."""

    @classmethod
    def label(cls, params: Any) -> str:
        return cls.name

    def run(self, view: Any, rng: np.random.Generator) -> Any:
        raise NotImplementedError


@no_grad  # torch.no_grad(), torch imported at the first call
def per_example_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Cross-entropy loss of each example under ``model`` (evaluation mode)."""
    model.eval()
    out = []
    for s in range(0, len(x), batch):
        logits = model(x[s : s + batch])
        out.append(torch.nn.functional.cross_entropy(logits, y[s : s + batch], reduction="none"))
    return torch.cat(out) if out else torch.empty(0)


def reference_signals(view, attack: str, k: int, design: str = "paired"):
    """The outsider view's per-record signals of ``k`` reference federations (LiRA, RMIA),
    their training sets drawn with ``design`` (``bench.reference.reference_splits``)."""
    from bench.types import ConfigError

    if view.reference_signals is None:
        raise ConfigError(f"attacks.{attack}: this outsider view cannot train reference federations")
    return view.reference_signals(k) if design == "paired" else view.reference_signals(k, design)


def candidate_scores(sig, scores: np.ndarray, view, extras: dict):
    """``MembershipScores`` for the view's candidates from per-record ``scores`` in ``sig.ids`` order."""
    from bench.types import MembershipScores

    pos = {int(i): k for k, i in enumerate(sig.ids)}
    idx = np.asarray([pos[int(i)] for i in view.candidates.ids])
    return MembershipScores(ids=view.candidates.ids.copy(), scores=scores[idx], extras={**extras, "reference_seconds": sig.seconds})
