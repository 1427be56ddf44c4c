"""``attribute_inference_server``: the curious server infers a sensitive attribute from the
hospitals' updates by gradient matching over the attribute's candidate values."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attacks.attribute.blackbox import AttributeInference
from attacks.attribute.common import Target, cross_fit, candidate_values, feature_of, groups_of, hide, imputation_scores, with_value
from attacks.base import ATTACKS, Attack
from attacks.membership.update_cosine import cosine_matrix, per_record_gradients
from bench.types import AttributeGuesses, AttributeInferences, ConfigError, Records, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


@ATTACKS.register("attribute_inference_server")
class ServerAttributeInference(Attack):
    """Gradient matching over candidate values, after the passive server attacks of
    Melis, Song, De Cristofaro, Shmatikov (2019), "Exploiting Unintended Feature Leakage in
    Collaborative Learning" (IEEE S&P) and the gradient-cosine membership signal of Li et al.
    (2023); scored against imputation as Jayaraman and Evans (2022) ask.

    Threat model: the honest-but-curious server. View needed: the global model it sent each
    round and each hospital's individual update (refused at load time under secure
    aggregation), the records it asks about with their labels and every feature except the
    sensitive one, and auxiliary data of the same population (the records it asks about,
    cross-fitted, as the outsider's). Disclosure: none beyond the protocol.

    A member's gradient step points along its hospital's update. For each candidate value v
    the server completes the record with v, takes the negative gradient of its loss at each
    round's global model and its cosine with each hospital's update; the best hospital counts
    per round and the rounds are averaged. The value whose gradient matches the updates best
    is the guess. The imputation baseline is the outsider attack's.
    """

    name = "attribute_inference_server"
    threat_model = "server"
    needs_individual_updates = True
    kind = "attribute"

    @dataclass(frozen=True)
    class Params:
        """Attributes:
            attributes: the sensitive attributes, each ``{name: sex}`` or ``{name: age, bands: [55]}``.
            folds: cross-fitting folds of the auxiliary data (the imputation baseline).
        """

        attributes: tuple[Target, ...] = ()
        folds: int = field(default=5, metadata={"ge": 2, "le": 50})

    @classmethod
    def check(cls, params, cfg) -> None:
        AttributeInference.check.__func__(cls, params, cfg)  # the same refusals, named after this attack

    @classmethod
    def check_against(cls, params, cfg, fed) -> None:
        AttributeInference.check_against.__func__(cls, params, cfg, fed)

    @classmethod
    def label(cls, params) -> str:
        return "attribute_inference_server(" + ",".join(t.name for t in params.attributes) + ")"

    def run(self, view: ServerView, rng: np.random.Generator) -> AttributeInferences:
        model = view.model_fn()
        records = view.known_records
        c = view.info.num_classes
        rounds = [r for r in view.rounds if r.aborted is None]
        if any(r.updates is None for r in rounds):
            raise ConfigError("attacks.attribute_inference_server: the server saw no individual updates (secure aggregation)")
        items = []
        for i, target in enumerate(self.params.attributes):
            feat = feature_of(view.info, target, f"attacks.attribute_inference_server.attributes[{i}]")
            groups = groups_of(feat, target.bands)
            hidden = hide(records.x, feat)  # the target's attribute is hidden first: nothing below can read it
            cf = cross_fit(records, records, feat, target.bands, groups, c, True, self.params.folds, rng)
            values = candidate_values(cf)
            scores = np.zeros((len(records), len(groups)))
            for k in range(len(groups)):
                completed = Records(ids=records.ids, x=with_value(hidden, feat, values[:, k]).reshape(records.x.shape), y=records.y)
                for rnd in rounds:
                    names = list(rnd.updates)
                    if not names:
                        continue
                    cos = cosine_matrix(per_record_gradients(model, rnd.global_params, completed),
                                        torch.stack([rnd.updates[n] for n in names]))
                    scores[:, k] += cos.max(dim=1).values.numpy().astype(np.float64) / len(rounds)
            items.append(AttributeGuesses(ids=records.ids.copy(), attribute=feat.name, groups=groups, bands=tuple(target.bands),
                                          attack=scores, imputation=imputation_scores(cf, hidden, records.y, c, True),
                                          answered=np.ones(len(records), bool), extras={"label_known": 1.0}))
        return AttributeInferences(items=tuple(items), adversary="server")
