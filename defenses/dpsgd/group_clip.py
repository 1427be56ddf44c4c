"""``group_clip``: group-aware clipping bounds, the static form of DPSGD-F.

Xu, Du, Wu, "Removing disparate impact on model accuracy in differentially private stochastic
gradient descent", KDD 2021: records of a listed subgroup are clipped to a larger bound, so
that their gradients lose less to clipping (:class:`defenses.dp_sgd.DPSGD` states the privacy
consequences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bench.lazy import lazy
from bench.types import ConfigError

torch = lazy("torch", globals())  # imported on first use (bench/lazy.py)


@dataclass(frozen=True)
class GroupClip:
    """dp_sgd's ``group_clip: {attribute: sex, scale: {female: 2.0}}``.

    Attributes:
        attribute: one of the cell's ``fairness.attributes``.
        scale: subgroup label -> factor s_g ≥ 1 on the clipping bound; subgroups not listed
            (and records whose value is missing) keep s = 1.
    """

    attribute: str
    scale: Any

    def __post_init__(self) -> None:
        where = "defenses.dp_sgd.group_clip.scale"
        if not isinstance(self.scale, dict) or not self.scale:
            raise ConfigError(f"{where}: got {self.scale!r}; expected a mapping of subgroup to a factor >= 1, e.g. {{female: 2.0}}")
        clean = {}
        for k, v in self.scale.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
                raise ConfigError(f"{where}.{k}: got {v!r}; expected a finite number >= 1 (subgroups not listed keep 1)")
            clean[str(k)] = float(v)
        object.__setattr__(self, "scale", clean)

    def __hash__(self) -> int:
        return hash((self.attribute, tuple(sorted(self.scale.items()))))

    @property
    def max_scale(self) -> float:
        """max_g s_g (at least 1): the clipped sum's sensitivity is C·max_scale."""
        return max([1.0, *self.scale.values()])

    def describe(self) -> str:
        return f"{self.attribute}:" + ",".join(f"{g}={v:g}" for g, v in sorted(self.scale.items()))

    def check_labels(self, labels: Sequence[str]) -> None:
        """Refuse subgroup names the data does not have (one line)."""
        unknown = [g for g in self.scale if g not in labels]
        if unknown:
            raise ConfigError(
                f"defenses.dp_sgd.group_clip.scale: {unknown[0]!r} is not a subgroup of {self.attribute!r}; "
                f"its subgroups: {', '.join(labels)}"
            )

    def row_scales(self, labels: Sequence[str], codes: np.ndarray) -> torch.Tensor:
        """s of each record with subgroup index ``codes`` (``-1``, missing: 1)."""
        self.check_labels(labels)
        per_group = np.array([self.scale.get(g, 1.0) for g in labels] or [1.0], dtype=np.float64)
        codes = np.asarray(codes, dtype=np.int64)
        return torch.from_numpy(np.where(codes >= 0, per_group[np.clip(codes, 0, None)], 1.0))
