"""``dlg``: Deep Leakage from Gradients with iDLG label recovery."""

from __future__ import annotations

from dataclasses import dataclass, field

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import (
    FlatModel, InversionParams, Problem, Solved, OptimisationAttack, objective_fn, optimise_lbfgs, random_inputs,
    relative_l2, stack_problem,
)
from bench.types import DatasetInfo
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


@ATTACKS.register("dlg")
class DLG(OptimisationAttack, Attack):
    """Zhu, Liu, Han (2019), "Deep Leakage from Gradients" (NeurIPS), with the analytic
    label of Zhao, Mopuri, Bilen (2020), "iDLG: Improved Deep Leakage from Gradients", and
    the last-layer count estimate for batches (Wainakh et al. 2022).

    Threat model: honest-but-curious server. View: :class:`~bench.types.ServerView` (each
    hospital's update, or the sum under secure aggregation as one batch). Disclosure
    needed: number of local records, local steps, batch size, learning rate.

    Dummy records are optimised with L-BFGS to minimise the squared L2 distance between the
    replayed update and the observed one (divided by the observed update's squared norm so
    the objective does not depend on the learning rate). The labels are fixed to the
    recovered ones (iDLG) rather than optimised jointly. No image prior, no projection: the
    published attack. The restart with the lowest objective is reported.
    """

    name = "dlg"

    @dataclass(frozen=True)
    class Params(InversionParams):
        iterations: int = field(default=300, metadata={"ge": 1})
        restarts: int = field(default=4, metadata={"ge": 1})
        mask_zeros: bool = True

    def solve(self, fm: FlatModel, info: DatasetInfo, prob: Problem, gen: torch.Generator) -> Solved:
        p = self.params
        t, r, b = len(prob.targets), p.restarts, prob.batch
        f = objective_fn(fm, prob.targets[0].disclosure, relative_l2, lambda z: z, 0.0)
        z0 = random_inputs(info, (t * r, b), gen)
        z, obj = optimise_lbfgs(f, z0, stack_problem(prob, r, p.mask_zeros), p.iterations)
        return Solved(x=z.reshape(t, r, b, *info.input_shape), objective=obj.reshape(t, r), iterations=p.iterations)
