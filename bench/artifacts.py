"""Artifacts of attack outputs (score arrays, figures), rendered next to scoring.

``render(output, truth, info)`` dispatches on the output type and returns
``{artifact path: bytes}``; the runner logs whatever it returns. Like scoring, it may see
ground truth (e.g. to mark members in a score file), because it runs after the attack.
"""

from __future__ import annotations

import io
from functools import singledispatch

import numpy as np

from bench.metrics import align
from bench.types import DatasetInfo, GroundTruth, MembershipScores


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


@singledispatch
def render(output, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    """No artifacts for output types without a renderer."""
    return {}


@render.register
def _(output: MembershipScores, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    idx = align(output.ids, truth)
    return {f"attacks/{name}/scores.npz": npz_bytes(ids=output.ids, scores=output.scores, is_member=truth.candidate_is_member[idx])}
