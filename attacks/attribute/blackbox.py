"""``attribute_inference``: the outsider infers a sensitive attribute from the released model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from attacks.attribute.common import (
    Target, cross_fit, candidate_values, feature_of, groups_of, hide, imputation_scores, log_priors, unique_max, with_value,
)
from attacks.base import ATTACKS, Attack
from bench.models import load_flat
from bench.types import AttributeGuesses, AttributeInferences, ConfigError, OutsiderView
from bench.lazy import lazy, no_grad

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


@no_grad  # torch.no_grad(), torch imported at the first call
def value_log_proba(model: torch.nn.Module, hidden: torch.Tensor, feat, values: np.ndarray) -> torch.Tensor:
    """(V, n, C) log-probabilities of the model on each record with the attribute set to each value."""
    model.eval()
    out = []
    for k in range(values.shape[1]):
        x = with_value(hidden, feat, values[:, k])
        out.append(torch.log_softmax(model(x), dim=1))
    return torch.stack(out)


@ATTACKS.register("attribute_inference")
class AttributeInference(Attack):
    """Fredrikson, Lantz, Jha, Lin, Page, Ristenpart (2014), "Privacy in Pharmacogenetics: An
    End-to-End Case Study of Personalized Warfarin Dosing" (USENIX Security), scored against
    imputation as Jayaraman and Evans (2022), "Are Attribute Inference Attacks Just
    Imputation?" (CCS) ask.

    Threat model: outsider with query access to the released global model (its class
    probabilities) and auxiliary data of the same population, sensitive attribute included
    (``OutsiderView.population``). It knows every feature of a target record except the
    sensitive one, and the record's label when ``label_known``. Disclosure needed: none beyond
    the released model.

    For each candidate value v of the attribute (a category, or a band represented by the
    median of its auxiliary records) it queries the model on the record completed with v and
    scores log p(y | x, v) + log prior(v) (label known), or the model's confidence
    max_c log p(c | x, v) + log prior(v) (label unknown). ``prior: imputation`` replaces the
    marginal prior by the imputation model's p(v | x): the Bayes combination of model and
    imputation. ``dont_know`` applies SACRO-ML's rule: answer only where one value gives the
    unique highest model confidence (optionally above ``confidence_threshold``).

    Beside its guesses it returns the imputation baseline: a multinomial logistic regression
    of the attribute on the other features (and the label when known), fit on the auxiliary
    data without any query to the model, cross-fitted so that no target's own attribute
    informs its guess.
    """

    name = "attribute_inference"
    threat_model = "outsider"
    kind = "attribute"

    @dataclass(frozen=True)
    class Params:
        """Attributes:
            attributes: the sensitive attributes, each ``{name: sex}`` or ``{name: age, bands: [55]}``.
            label_known: the adversary knows each target's label (Fredrikson et al.'s setting).
            prior: ``marginal`` (the paper's) or ``imputation`` (the imputation model's p(v | x)).
            dont_know: SACRO-ML's rule: answer only where one value gives the unique highest confidence.
            confidence_threshold: with ``dont_know``, also abstain below this model confidence.
            folds: cross-fitting folds of the auxiliary data.
        """

        attributes: tuple[Target, ...] = ()
        label_known: bool = True
        prior: Literal["marginal", "imputation"] = "marginal"
        dont_know: bool = False
        confidence_threshold: Optional[float] = field(default=None, metadata={"gt": 0, "le": 1})
        folds: int = field(default=5, metadata={"ge": 2, "le": 50})

    @classmethod
    def check(cls, params, cfg) -> None:
        if not params.attributes:
            raise ConfigError(f"attacks.{cls.name}.attributes: empty; name at least one feature, e.g. [{{name: sex}}, {{name: age, bands: [55]}}]")
        names = [t.name for t in params.attributes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"attacks.{cls.name}.attributes: {dupes[0]!r} listed twice; list each attribute once")
        if getattr(params, "confidence_threshold", None) is not None and not params.dont_know:
            raise ConfigError("attacks.attribute_inference.confidence_threshold: set only with dont_know: true (it is the rule's threshold)")

    @classmethod
    def check_against(cls, params, cfg, fed) -> None:
        """Once the data is loaded (``validate --data``, and ``run`` before it logs anything):
        every attribute is a feature of the data, with bands that fit its kind."""
        for i, target in enumerate(params.attributes):
            feature_of(fed.info, target, f"attacks.{cls.name}.attributes[{i}]")

    @classmethod
    def label(cls, params) -> str:
        return "attribute_inference(" + ",".join(t.name for t in params.attributes) + ")"

    def run(self, view: OutsiderView, rng: np.random.Generator) -> AttributeInferences:
        p = self.params
        model = load_flat(view.model_fn(), view.final_params)
        c = view.info.num_classes
        items = []
        for i, target in enumerate(p.attributes):
            feat = feature_of(view.info, target, f"attacks.attribute_inference.attributes[{i}]")
            groups = groups_of(feat, target.bands)
            # the target's attribute is hidden first: nothing below can read it
            hidden = hide(view.candidates.x, feat)
            y = view.candidates.y
            cf = cross_fit(view.population, view.candidates, feat, target.bands, groups, c, p.label_known, p.folds, rng)
            imputed = imputation_scores(cf, hidden, y, c, p.label_known)
            logp = value_log_proba(model, hidden, feat, candidate_values(cf)).numpy().astype(np.float64)  # (V, n, C)
            confidence = logp.max(axis=2).T  # (n, V)
            fit = logp[:, np.arange(len(y)), y.numpy()].T if p.label_known else confidence
            if p.prior == "marginal":
                prior = log_priors(cf)
            else:  # p(v | x) without the label: the label's evidence comes from the model
                prior = imputation_scores(cf, hidden, y, c, False) if p.label_known else imputed
            scores = fit + prior
            answered = (unique_max(confidence, np.log(p.confidence_threshold) if p.confidence_threshold else None)
                        if p.dont_know else np.ones(len(y), bool))
            items.append(AttributeGuesses(ids=view.candidates.ids.copy(), attribute=feat.name, groups=groups, bands=tuple(target.bands),
                                          attack=scores, imputation=imputed, answered=answered,
                                          extras={"label_known": float(p.label_known)}))
        return AttributeInferences(items=tuple(items), adversary="outsider")
