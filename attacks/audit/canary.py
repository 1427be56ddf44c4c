"""``canary_audit``: a one-run empirical lower bound on ε from inserted canaries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from attacks.base import ATTACKS, Attack, per_example_loss
from bench.models import load_flat
from bench.types import AuditScores, ConfigError, DatasetInfo, Federation, OutsiderView, Records, Site
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def make_canaries(info: DatasetInfo, m: int, first_id: int, rng: np.random.Generator, scale: float = 1.0) -> Records:
    """``m`` synthetic records with uniformly random labels (mislabeled outliers are the
    easiest records to detect, so they make the audit strong).

    Tabular: standardised continuous features ~ N(0, scale²) and a random category one-hot
    per categorical feature (scale > 1 makes outliers, which a model isolates and memorises
    more easily). Images: uniform pixels in [0, 1].
    """
    d = info.num_inputs
    if info.features:
        x = np.zeros((m, d), np.float32)
        for f in info.features:
            a, b = f.columns
            if f.kind == "continuous":
                x[:, a] = scale * rng.normal(size=m)
            else:
                x[np.arange(m), a + rng.integers(0, b - a, size=m)] = 1.0
    else:
        x = rng.random((m, d)).astype(np.float32)
    x = torch.from_numpy(x).reshape(m, *info.input_shape)
    y = torch.from_numpy(rng.integers(0, info.num_classes, size=m).astype(np.int64))
    return Records(ids=np.arange(first_id, first_id + m, dtype=np.int64), x=x, y=y)


def insert_canaries(fed: Federation, m: int, rng: np.random.Generator, scale: float = 1.0) -> tuple[Federation, dict]:
    """Return a new federation whose hospitals also train on a random half of ``m`` canaries
    (each canary: a random hospital, included with probability ½), and the ground-truth
    fields that record which canaries went in (for ``dataclasses.replace(truth, **fields)``;
    the auditor never reads the truth). The input is not modified."""
    parts = [fed.candidates.ids, fed.test.ids, *[s.train.ids for s in fed.sites]]
    first = int(max(int(p.max()) for p in parts if len(p))) + 1
    can = make_canaries(fed.info, m, first, rng, scale)
    site_of = rng.integers(0, len(fed.sites), size=m)
    included = rng.random(m) < 0.5
    sites = []
    for i, s in enumerate(fed.sites):
        add = np.flatnonzero(included & (site_of == i))
        train = Records.concat([s.train, can.take(add)]) if len(add) else s.train
        sites.append(Site(name=s.name, train=train, test=s.test))
    new_fed = dataclasses.replace(fed, sites=tuple(sites), canaries=can)
    truth_fields = {"site_train": {s.name: s.train for s in sites}, "canary_ids": can.ids.copy(), "canary_included": included}
    return new_fed, truth_fields


@ATTACKS.register("canary_audit")
class CanaryAudit(Attack):
    """Steinke, Nasr, Jagielski (2023), "Privacy Auditing with One (1) Training Run"
    (NeurIPS): an empirical lower bound on ε from a single training run.

    Before training (``prepare``), ``num_canaries`` synthetic mislabeled outliers are
    inserted into hospitals' training data, each independently with probability ½; only
    ground truth keeps which. Threat model: outsider — query access to the released model
    plus knowledge of the canaries the auditor crafted (``OutsiderView.canaries``), not of
    which went in. After training the auditor scores every canary by its negative loss
    under the released model, guesses "in" for the top
    ``guess_fraction``·m, "out" for the bottom ``guess_fraction``·m and abstains on the
    rest (one rule, declared before the scores are seen). Scoring (``bench.auditing``)
    turns (guesses, correct) into a certified ε lower bound at confidence 1 − ``p_value``
    and δ = min(the accountant's δ, 1e-5), beside Steinke et al.'s own bound, a Gaussian-fit
    estimate and ``max_certifiable_epsilon`` — the most this m and guess count could ever
    certify (with 100 canaries about 3.5: a black-box audit this small cannot fail against a
    larger ε; the white-box ``dpsgd_audit`` / ``client_canary_audit`` can). Logged under
    ``audit/canary_audit/...``; a bound above the accountant's ε at that δ is a bug (tag
    ``audit_violation``). The cell's model trains on the inserted canaries.
    """

    name = "canary_audit"
    threat_model = "outsider"
    kind = "audit"

    @dataclass(frozen=True)
    class Params:
        num_canaries: int = field(default=100, metadata={"ge": 2})
        guess_fraction: float = field(default=0.25, metadata={"gt": 0, "le": 0.5})
        p_value: float = field(default=0.05, metadata={"gt": 0, "lt": 1})
        scale: float = field(default=2.0, metadata={"gt": 0})

    @classmethod
    def check(cls, params, cfg) -> None:
        if int(round(params.guess_fraction * params.num_canaries)) < 1:
            raise ConfigError(
                f"attacks.canary_audit.guess_fraction: {params.guess_fraction} of {params.num_canaries} canaries is no guess; raise either"
            )

    def prepare(self, fed: Federation, rng: np.random.Generator, **_) -> tuple[Federation, dict]:
        """Insert the canaries (called by the runner before training); returns the new
        federation and the ground-truth fields only scoring will see."""
        return insert_canaries(fed, self.params.num_canaries, rng, self.params.scale)

    def run(self, view: OutsiderView, rng: np.random.Generator) -> AuditScores:
        if view.canaries is None:
            raise ConfigError("attacks.canary_audit: no canaries in this federation (the prepare step did not run)")
        model = load_flat(view.model_fn(), view.final_params)
        loss = per_example_loss(model, view.canaries.x, view.canaries.y).numpy().astype(np.float64)
        k = int(round(self.params.guess_fraction * len(view.canaries)))
        return AuditScores(
            ids=view.canaries.ids.copy(), observations={"final_model": -loss}, unit="record", party=None,
            p_value=self.params.p_value, guess_counts=((k, k),),
        )
