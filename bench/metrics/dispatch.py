"""The scoring entry point every metrics module registers with (a leaf: no import circle).

:func:`score` dispatches on the attack output's type; ``bench.metrics`` (membership, source),
``bench.metrics.reconstruction`` and ``bench.metrics.attribute`` register their types with
``@score.register``. :func:`align` maps an output's record ids to ground truth's candidates.
"""

from __future__ import annotations

from functools import singledispatch

import numpy as np

from bench.types import GroundTruth


def align(ids: np.ndarray, truth: GroundTruth) -> np.ndarray:
    """Positions of ``ids`` among ``truth.candidate_ids``; an id that is no candidate is an error."""
    pos = {int(i): k for k, i in enumerate(truth.candidate_ids)}
    try:
        return np.asarray([pos[int(i)] for i in ids], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"attack scored record id {exc} that is not a candidate") from None


@singledispatch
def score(output, truth: GroundTruth) -> dict[str, float]:
    """Score an attack output against the truth; dispatches on the output type."""
    raise TypeError(f"no scoring for {type(output).__name__}")
