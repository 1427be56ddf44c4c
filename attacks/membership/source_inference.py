"""``source_inference``: the curious server guesses which hospital holds a training record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import ATTACKS, Attack, per_example_loss
from bench.models import load_flat
from bench.types import ConfigError, ServerView, SourceGuesses


@ATTACKS.register("source_inference")
class SourceInference(Attack):
    """Hu, Salcic, Sun, Dobbie, Chen, Zhang (2021), "Source Inference Attacks in Federated
    Learning" (ICDM).

    Threat model: the honest-but-curious server, which knows that a record was used in
    training and wants its source. View needed: the global model of each round and each
    hospital's individual update (refused at load time under secure aggregation).
    Disclosure: none beyond the protocol.

    Each hospital's local model θ_r + Δ_h is evaluated on the record; the hospital whose
    updates lowered the record's loss the most, summed over the rounds it took part in
    (averaged per participation), is the guess (the paper's Bayesian-optimal rule under
    its prediction-loss posterior). Scoring restricts accuracy to true members — the
    paper's assumption that the record is known to be a training record — and compares
    it with chance 1/K.
    """

    name = "source_inference"
    threat_model = "server"
    needs_individual_updates = True
    kind = "source"

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, view: ServerView, rng: np.random.Generator) -> SourceGuesses:
        model = view.model_fn()
        records = view.known_records
        sites = list(view.site_names)
        gain = np.zeros((len(records), len(sites)))
        count = np.zeros(len(sites))
        for rnd in view.rounds:
            if rnd.updates is None:
                raise ConfigError("attacks.source_inference: the server saw no individual updates (secure aggregation)")
            base = per_example_loss(load_flat(model, rnd.global_params), records.x, records.y).numpy()
            for name, upd in rnd.updates.items():
                j = sites.index(name)
                local = per_example_loss(load_flat(model, rnd.global_params + upd), records.x, records.y).numpy()
                gain[:, j] += base - local
                count[j] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_gain = np.where(count > 0, gain / np.maximum(count, 1), -np.inf)
        return SourceGuesses(ids=records.ids.copy(), site_index=mean_gain.argmax(axis=1).astype(np.int64))
