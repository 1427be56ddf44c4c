"""``inverting_gradients``: cosine-similarity gradient inversion with total variation."""

from __future__ import annotations

from dataclasses import dataclass, field

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import (
    FlatModel, InversionParams, Problem, Solved, OptimisationAttack, cosine_distance, objective_fn, optimise_adam,
    random_inputs, stack_problem,
)
from bench.types import DatasetInfo
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def image_box(info: DatasetInfo):
    """Projection onto the data's box: images are scaled to [0, 1] (public preprocessing)."""
    if info.modality == "image":
        return lambda z: z.clamp(0.0, 1.0)
    return None


@ATTACKS.register("inverting_gradients")
class InvertingGradients(OptimisationAttack, Attack):
    """Geiping, Bauermeister, Dröge, Moeller (2020), "Inverting Gradients — How easy is it to
    break privacy in federated learning?" (NeurIPS).

    Threat model: honest-but-curious server. View: :class:`~bench.types.ServerView` — the
    global model it sent and each hospital's update (under secure aggregation only their
    sum, attacked as one batch of every participant's records). Disclosure needed: the
    number of local records, local steps, batch size and learning rate (the protocol's
    ``Disclosure``, overridable by parameters). Labels are recovered from the head's bias
    (iDLG / LLG), not disclosed.

    A batch of dummy records is optimised so that the *replayed* local training (unrolled
    SGD over the disclosed steps: the paper's FedAvg variant, Sec. 6; a single step is the
    FedSGD case) produces an update with maximal cosine similarity to the observed one, plus
    a total-variation prior; Adam on signed gradients, step decay, projection onto [0, 1].
    Restarts and targets run as one batch; each target's reconstruction is the restart with
    the lowest attack objective.
    """

    name = "inverting_gradients"

    @dataclass(frozen=True)
    class Params(InversionParams):
        iterations: int = field(default=2000, metadata={"ge": 1})
        restarts: int = field(default=4, metadata={"ge": 1})
        step_size: float = field(default=0.1, metadata={"gt": 0})
        tv: float = field(default=1e-3, metadata={"ge": 0})
        signed: bool = True
        mask_zeros: bool = True

    def solve(self, fm: FlatModel, info: DatasetInfo, prob: Problem, gen: torch.Generator) -> Solved:
        p = self.params
        t, r, b = len(prob.targets), p.restarts, prob.batch
        f = objective_fn(fm, prob.targets[0].disclosure, cosine_distance, lambda z: z, p.tv)
        z0 = random_inputs(info, (t * r, b), gen)
        consts = stack_problem(prob, r, p.mask_zeros)
        z, obj = optimise_adam(f, z0, consts, p.iterations, p.step_size, p.signed, image_box(info))
        return Solved(x=z.reshape(t, r, b, *info.input_shape), objective=obj.reshape(t, r), iterations=p.iterations)
