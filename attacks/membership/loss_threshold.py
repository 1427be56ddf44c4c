"""``loss_threshold``: membership inference from the released model's loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import ATTACKS, Attack, per_example_loss
from bench.models import load_flat
from bench.types import MembershipScores, OutsiderView


@ATTACKS.register("loss_threshold")
class LossThreshold(Attack):
    """Yeom, Giacomelli, Fredrikson, Jha (2018), "Privacy Risk in Machine Learning:
    Analyzing the Connection to Overfitting" (CSF).

    Threat model: outsider with query access to the final global model (its loss on a
    labelled record). Disclosure needed: none beyond the released model. A record's score
    is its negative loss; thresholding it at any value gives the attack, so the scores are
    evaluated threshold-free (ROC). No reference models: the weakest published baseline.
    """

    name = "loss_threshold"
    threat_model = "outsider"

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, view: OutsiderView, rng: np.random.Generator) -> MembershipScores:
        model = load_flat(view.model_fn(), view.final_params)
        loss = per_example_loss(model, view.candidates.x, view.candidates.y).numpy()
        return MembershipScores(ids=view.candidates.ids.copy(), scores=-loss.astype(np.float64))
