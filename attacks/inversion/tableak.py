"""``tableak``: gradient inversion of tabular records (mixed categorical / continuous)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import (
    FlatModel, InversionParams, Problem, Solved, OptimisationAttack, cosine_distance, objective_fn, optimise_adam,
    run_inversion, stack_problem,
)
from bench.types import ConfigError, DatasetInfo, Reconstructions, ServerView
from bench.lazy import lazy

# scipy and torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without them
torch = lazy("torch", globals())
linear_sum_assignment = lazy("scipy.optimize:linear_sum_assignment", globals())


def softmax_decoder(info: DatasetInfo, temperature: float):
    """z -> x: each categorical feature's one-hot block relaxed to a softmax (TabLeak, Sec. 4.1)."""
    blocks = [(f.columns, f.kind == "categorical") for f in info.features]

    def decode(z: torch.Tensor) -> torch.Tensor:
        parts = []
        for (s, e), cat in blocks:
            parts.append(torch.softmax(z[..., s:e] / temperature, dim=-1) if cat else z[..., s:e])
        return torch.cat(parts, dim=-1)

    return decode


def pool_restarts(x: torch.Tensor, objective: torch.Tensor, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """TabLeak's ensemble (Sec. 4.2): match every restart's records to the lowest-objective
    restart (Hungarian, L2), then take the median of continuous features and a soft vote
    (mean softmax, argmax, one-hot) of categorical ones. ``x`` is (T, R, B, W) decoded."""
    out = []
    for xt, ot in zip(x, objective):
        ref = xt[int(torch.argmin(ot))]
        aligned = []
        for xr in xt:
            cost = torch.cdist(ref.double(), xr.double()).numpy()
            _, cols = linear_sum_assignment(cost)
            aligned.append(xr[torch.as_tensor(cols)])
        stack = torch.stack(aligned)  # (R, B, W)
        rec = torch.empty_like(ref)
        for f in info.features:
            s, e = f.columns
            if f.kind == "categorical":
                vote = stack[..., s:e].mean(0)
                rec[:, s:e] = torch.nn.functional.one_hot(vote.argmax(-1), e - s).to(rec.dtype)
            else:
                rec[:, s:e] = stack[..., s:e].median(0).values
        out.append(rec)
    return torch.stack(out), objective.min(dim=1).values


@ATTACKS.register("tableak")
class TabLeak(OptimisationAttack, Attack):
    """Vero, Balunović, Dimitrov, Vechev (2023), "TabLeak: Tabular Data Leakage in Federated
    Learning" (ICML).

    Threat model: honest-but-curious server. View: :class:`~bench.types.ServerView` (each
    hospital's update, or their sum under secure aggregation as one batch). Disclosure
    needed: number of local records, local steps, batch size, learning rate; the feature
    encoding (which columns one-hot encode which feature) is public model metadata.

    Categorical one-hot blocks are relaxed to softmaxes, the relaxed batch is optimised with
    Adam to maximise the cosine similarity between its replayed update and the observed one,
    and the restarts are pooled into one reconstruction (median for continuous features,
    soft vote for categorical ones) with the lowest-objective restart as the reference —
    the attacker's own choice, never the truth.
    """

    name = "tableak"
    modalities = ("tabular",)  # refused before training on image data (bench.components)

    @dataclass(frozen=True)
    class Params(InversionParams):
        iterations: int = field(default=1500, metadata={"ge": 1})
        restarts: int = field(default=10, metadata={"ge": 1})
        step_size: float = field(default=0.06, metadata={"gt": 0})
        temperature: float = field(default=1.0, metadata={"gt": 0})
        mask_zeros: bool = True

    def solve(self, fm: FlatModel, info: DatasetInfo, prob: Problem, gen: torch.Generator) -> Solved:
        p = self.params
        t, r, b = len(prob.targets), p.restarts, prob.batch
        decode = softmax_decoder(info, p.temperature)
        f = objective_fn(fm, prob.targets[0].disclosure, cosine_distance, decode, 0.0)
        z0 = torch.randn((t * r, b, info.num_inputs), generator=gen)
        z, obj = optimise_adam(f, z0, stack_problem(prob, r, p.mask_zeros), p.iterations, p.step_size, signed=False)
        x = decode(z)
        return Solved(x=x.reshape(t, r, b, *info.input_shape), objective=obj.reshape(t, r), iterations=p.iterations)

    def run(self, view: ServerView, rng: np.random.Generator) -> Reconstructions:
        if view.info.modality != "tabular" or not view.info.features:
            raise ConfigError(f"attacks.tableak: {view.info.name!r} is not tabular; use inverting_gradients for images")
        return run_inversion(view, rng, self.params, self.solve, combine=pool_restarts)
