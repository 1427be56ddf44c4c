"""``update_cosine``: the curious server compares a record's gradient with each hospital's update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from attacks.base import ATTACKS, Attack
from bench.types import ConfigError, MembershipScores, Records, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
functional_call = lazy("torch.func:functional_call", globals())
grad = lazy("torch.func:grad", globals())
vmap = lazy("torch.func:vmap", globals())


def per_record_gradients(model: torch.nn.Module, flat: torch.Tensor, records: Records, chunk: int = 2048) -> torch.Tensor:
    """Gradient of each record's cross-entropy loss at the flat parameters ``flat``, shape (N, P)."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [int(np.prod(s)) for s in shapes]

    def loss(f: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(f, sizes), shapes)}
        logits = functional_call(model, params, (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(logits, y.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    model.eval()
    return torch.cat([g(flat, records.x[s : s + chunk], records.y[s : s + chunk]) for s in range(0, len(records), chunk)])


def cosine_matrix(grads: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """cos(−∇ℓ(x), Δ_h) for every record (rows) and update (columns): a member's gradient
    step points along the update of the hospital that trained on it."""
    g = torch.nn.functional.normalize(-grads, dim=1)
    u = torch.nn.functional.normalize(updates, dim=1)
    return g @ u.T


@ATTACKS.register("update_cosine")
class UpdateCosine(Attack):
    """Li, Li, Yang, Tang, Qian (2023), "Effective passive membership inference attacks in
    federated learning against overparameterized models" (ICLR; Grad-Cosine), aggregated
    across rounds and hospitals in the spirit of FedMIA (Zhu et al. 2024).

    Threat model: the honest-but-curious server. View needed: the global model it sent each
    round and each hospital's individual update (``ServerView.rounds[*].updates``), so it is
    refused at load time under secure aggregation. Disclosure: none beyond the protocol.

    For each round and participating hospital the score is the cosine between the negative
    gradient of the record's loss at that round's global model and the hospital's update.
    Per round a record keeps its best hospital; with ``contrast`` the mean over the other
    hospitals is subtracted (a non-member aligns with all updates alike, a member with its
    own hospital's). Rounds are averaged (``mean``) or the best round is kept (``max``).
    """

    name = "update_cosine"
    threat_model = "server"
    needs_individual_updates = True

    @dataclass(frozen=True)
    class Params:
        contrast: bool = False
        rounds: Literal["mean", "max"] = "mean"

    def run(self, view: ServerView, rng: np.random.Generator) -> MembershipScores:
        model = view.model_fn()
        records = view.known_records
        per_round = []
        for rnd in view.rounds:
            if rnd.updates is None:
                raise ConfigError("attacks.update_cosine: the server saw no individual updates (secure aggregation)")
            names = list(rnd.updates)
            cos = cosine_matrix(per_record_gradients(model, rnd.global_params, records), torch.stack([rnd.updates[n] for n in names]))
            best = cos.max(dim=1).values
            if self.params.contrast and len(names) > 1:
                rest = (cos.sum(dim=1) - best) / (len(names) - 1)
                best = best - rest
            per_round.append(best.numpy().astype(np.float64))
        stack = np.stack(per_round)
        scores = stack.mean(0) if self.params.rounds == "mean" else stack.max(0)
        return MembershipScores(ids=records.ids.copy(), scores=scores)
