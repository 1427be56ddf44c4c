"""White-box audit canaries: crafted directions in parameter space, inserted into a mechanism.

Two kinds (DESIGN.md, "audits are attacks that can fail"):

* **gradient canaries** (Nasr et al. 2023, "Tight auditing of differentially private machine
  learning"; Steinke, Nasr, Jagielski 2023, white-box setting): inside one hospital's DP-SGD,
  each included canary is an extra row of the hospital's training data whose per-sample
  gradient is ``scale·C·dᵢ``: the records' own sampler, batching, clipping and noise act on it;
* **canary clients** (Andrew et al., ICLR 2024, "One-shot empirical privacy estimation for
  federated learning"): each included canary is a client whose update, every round, is
  ``C·dᵢ`` with C the client-level clip.

Each canary is included independently with probability ½; which ones went in is ground
truth only (``GroundTruth.canary_included``): the federation carries it for the mechanism,
attacks receive only the directions.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from bench.types import CanaryDirections, ConfigError, Federation, InsertedCanaries
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def make_directions(kind: str, m: int, num_params: int, first_id: int, rng: np.random.Generator) -> CanaryDirections:
    """``m`` orthonormal unit directions in a ``num_params``-dimensional space
    (``dirac`` or ``random``; see :class:`bench.types.CanaryDirections`)."""
    if m > num_params:
        raise ConfigError(
            f"audit: {m} canaries need a model with at least {m} parameters (this one has {num_params}); "
            "lower num_canaries or use a wider model (e.g. model.hidden: [256])"
        )
    ids = np.arange(first_id, first_id + m, dtype=np.int64)
    coords = rng.choice(num_params, m, replace=False)
    signs = rng.choice(np.array([-1.0, 1.0]), num_params) if kind == "random" else None
    return CanaryDirections(ids=ids, kind=kind, num_params=num_params, coordinates=coords, signs=signs)


def _first_free_id(fed: Federation) -> int:
    parts = [fed.candidates.ids, fed.test.ids, *[s.train.ids for s in fed.sites]]
    if fed.canaries is not None:
        parts.append(fed.canaries.ids)
    return int(max(int(p.max()) for p in parts if len(p))) + 1


def insert_audit_canaries(
    fed: Federation,
    kind: str,
    m: int,
    num_params: int,
    rng: np.random.Generator,
    directions: str = "dirac",
    site: Optional[str] = None,
    scale: float = 1.0,
    clip: Optional[float] = None,
) -> tuple[Federation, dict]:
    """Return a federation that carries ``m`` canaries of ``kind`` (``gradient`` or ``client``),
    each included with probability ½, and the ground-truth fields (for
    ``dataclasses.replace(truth, **fields)``). The input is not modified."""
    if fed.audit_canaries is not None:
        raise ConfigError("attacks: two white-box audits in one cell; run each audit in its own cell")
    if kind == "gradient" and site not in fed.site_names:
        raise ConfigError(f"audit site: got {site!r}; allowed: {', '.join(fed.site_names)}")
    dirs = make_directions(directions, m, num_params, _first_free_id(fed), rng)
    included = rng.random(m) < 0.5
    inserted = InsertedCanaries(
        kind=kind, directions=dirs, included=included, site=site, scale=float(scale), seed=int(rng.integers(2**62)),
        clip=None if clip is None else float(clip),
    )
    new_fed = dataclasses.replace(fed, audit_canaries=inserted)
    return new_fed, {"canary_ids": dirs.ids.copy(), "canary_included": included.copy()}


class GradientCanaryRows:
    """The included gradient canaries of one hospital, as extra rows of its training data.

    Canary ``j`` (the j-th included one) is row ``n + j`` of the hospital's DP-SGD: the
    records' own sampler draws it (the same Poisson mask, the same batches, whatever bug that
    code has), and at the one place per-sample gradients are formed its gradient is the
    crafted row ``scale·C·d_j`` instead of a loss gradient; clipping, summing and noise then
    treat it exactly as a record. So a bug in sampling, batch assembly, clipping or noise acts
    on the canaries as it acts on the records (DESIGN.md: canaries travel the records' path).
    """

    def __init__(self, canaries: InsertedCanaries, clip: float, shapes: list[torch.Size]) -> None:
        self.canaries = canaries
        self.index = canaries.included_index()
        self.value = float(canaries.scale) * float(clip)
        self.table = canaries.directions.rows(self.index) * self.value  # built once: (included, P)
        self.shapes = shapes
        self.sizes = [int(np.prod(s)) if len(s) else 1 for s in shapes]
        if sum(self.sizes) != canaries.directions.num_params:
            raise ValueError(f"gradient canaries built for {canaries.directions.num_params} parameters; the model has {sum(self.sizes)}")

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, positions: torch.Tensor) -> list[torch.Tensor]:
        """The per-sample gradient rows of the canaries at ``positions`` (0-based among the
        included canaries), split per parameter: ``[(k, *shape) for each parameter]``."""
        flat = self.table[positions]
        return [chunk.reshape(len(positions), *shape) for chunk, shape in zip(torch.split(flat, self.sizes, dim=1), self.shapes)]


def client_canary_updates(canaries: InsertedCanaries) -> tuple[tuple[str, ...], torch.Tensor]:
    """The included canary clients' names (``canary:<id>``) and updates ``scale·dᵢ`` as one
    (K, P) stack."""
    idx = canaries.included_index()
    names = tuple(f"canary:{int(canaries.directions.ids[i])}" for i in idx)
    return names, canaries.directions.rows(idx) * float(canaries.scale)
