"""Attribute inference (issue 24): known answers on planted federations, the imputation
baseline, the hidden attribute, and scoring's signal with its interval.

The planted federation: records with a binary attribute ``s`` (one-hot), ``d`` Gaussian noise
features and a random label, all independent, for members and non-members alike, so no
population correlation lets imputation (or the attack on non-members) beat chance. An MLP
trained long on the members memorises each member's (features, s) -> label, so the released
model answers most confidently for a member's true ``s``: the attack beats imputation on
members only. In the "independent" federation the members trained with an ``s`` drawn afresh
(the ``s`` of the candidates is independent of everything the model saw): no signal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import ATTACKS
from attacks.attribute.common import Target, hide
from bench.config import parse_experiment
from bench.federated import run_federated
from bench.metrics import score
from bench.metrics.attribute import signal_metrics
from bench.models import build_model
from bench.runner import make_defenses
from bench.seeding import Seeds
from bench.types import (
    AttributeInferences, ConfigError, DatasetInfo, Federation, Feature, GroundTruth, Records, Site,
)
from bench.views import derive_views


def planted(n: int = 240, d: int = 6, seed: int = 0, independent: bool = False):
    """``n`` members and ``n`` non-members of the planted population (see the module doc)."""
    rng = np.random.default_rng(seed)
    m = 2 * n
    s = rng.integers(0, 2, m)
    z = rng.normal(size=(m, d))
    y = rng.integers(0, 2, m)
    x = np.hstack([np.eye(2)[s], z]).astype(np.float32)
    feats = (Feature("s", "categorical", (0, 2), ("a", "b")),) + tuple(Feature(f"z{j}", "continuous", (2 + j, 3 + j)) for j in range(d))
    info = DatasetInfo(name="planted", input_shape=(2 + d,), num_classes=2, features=feats)
    ids = np.arange(m, dtype=np.int64)
    rec = Records(ids=ids, x=torch.from_numpy(x), y=torch.from_numpy(y))
    member = np.zeros(m, bool)
    member[rng.permutation(m)[:n]] = True
    train = rec.take(np.flatnonzero(member))
    if independent:  # the model trains on another draw of s: the candidates' s is independent of all it saw
        s2 = rng.integers(0, 2, n)
        xt = train.x.clone()
        xt[:, :2] = torch.from_numpy(np.eye(2, dtype=np.float32)[s2])
        train = Records(ids=train.ids, x=xt, y=train.y)
    empty = rec.take(np.zeros(0, np.int64))
    fed = Federation(info=info, sites=(Site("h0", train, rec.take(np.flatnonzero(~member)[:20])),), test=rec.take(np.flatnonzero(~member)[:20]),
                     candidates=rec, population=rec)
    truth = GroundTruth(candidate_ids=ids, candidate_is_member=member, candidate_site=np.zeros(m, np.int64), site_names=("h0",),
                        site_train={"h0": train}, info=info, candidates=rec)
    del empty
    return fed, truth


def train_and_attack(fed, truth, defenses=(), attack="attribute_inference", rounds=30, seed=0, **params):
    raw = {"data": {"name": "breast_cancer"}, "model": {"name": "mlp", "hidden": [64]},
           "train": {"rounds": rounds, "local_epochs": 4, "batch_size": 16, "lr": 0.2},
           "defenses": list(defenses), "attacks": [{"name": attack, "attributes": [{"name": "s"}], **params}], "seed": seed}
    cfg = parse_experiment(raw)
    seeds = Seeds(seed)
    initial = build_model(fed.info, cfg.model, seeds.torch("init"))
    model_fn = lambda: build_model(fed.info, cfg.model, seeds.torch("init"))  # noqa: E731
    record = run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False)
    cls = ATTACKS.get(attack)
    views = derive_views(record, fed, model_fn, [cls.threat_model])
    out = cls(cfg.attacks[0].params).run(views[cls.threat_model], seeds.rng("attack", attack))
    return out, score(out, truth)


KEYS = ("attack_accuracy_members", "attack_accuracy_nonmembers", "imputation_accuracy_members", "imputation_accuracy_nonmembers")


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["attribute_inference", "attribute_inference_server"])
def test_planted_memorised_attribute_gives_a_signal_whose_interval_excludes_zero(attack):
    fed, truth = planted()
    _, m = train_and_attack(fed, truth, attack=attack)
    assert m["s/signal_ci_low"] > 0, m
    assert m["s/signal_verdict"] == 1.0
    assert m["s/advantage_members_ci_low"] > 0, m  # the attack beats imputation on members
    # nothing in the population predicts s: imputation is near chance on both sides
    assert abs(m["s/imputation_accuracy_members"] - 0.5) < 0.12 and abs(m["s/imputation_accuracy_nonmembers"] - 0.5) < 0.12


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["attribute_inference", "attribute_inference_server"])
def test_attribute_independent_of_what_the_model_saw_gives_no_signal(attack):
    fed, truth = planted(independent=True)
    _, m = train_and_attack(fed, truth, attack=attack)
    assert m["s/signal_ci_low"] <= 0 <= m["s/signal_ci_high"], m
    assert m["s/signal_verdict"] == 0.0


@pytest.mark.slow
def test_dp_sgd_at_epsilon_one_removes_the_planted_signal():
    fed, truth = planted()
    _, m = train_and_attack(fed, truth, defenses=[{"name": "dp_sgd", "target_epsilon": 1.0, "max_grad_norm": 1.0}])
    assert m["s/signal_ci_low"] <= 0 <= m["s/signal_ci_high"], m


def test_the_targets_own_attribute_never_informs_its_guess():
    """Flipping the candidates' own attribute columns changes nothing the attack returns for
    them: the columns are hidden first and every auxiliary fit is cross-fitted. Here the
    auxiliary data is a separate copy, so that only the targets' own columns change."""
    fed, truth = planted(n=60)
    from dataclasses import replace

    from bench.types import OutsiderView

    seeds = Seeds(0)
    cfg = parse_experiment({"data": {"name": "breast_cancer"}, "model": {"name": "mlp", "hidden": [8]},
                            "attacks": [{"name": "attribute_inference", "attributes": [{"name": "s"}], "prior": "imputation"}]})
    model = build_model(fed.info, cfg.model, seeds.torch("init"))
    from bench.models import flatten

    aux = Records(ids=fed.candidates.ids + 10_000, x=fed.candidates.x, y=fed.candidates.y)  # not the targets
    view = OutsiderView(info=fed.info, model_fn=lambda: build_model(fed.info, cfg.model, seeds.torch("init")), final_params=flatten(model),
                        candidates=fed.candidates, population=aux, site_sizes={"h0": 60})
    flipped = fed.candidates.x.clone()
    flipped[:, :2] = 1 - flipped[:, :2]
    view2 = replace(view, candidates=Records(ids=fed.candidates.ids, x=flipped, y=fed.candidates.y))
    attack = ATTACKS.get("attribute_inference")(cfg.attacks[0].params)
    a = attack.run(view, np.random.default_rng(0)).items[0]
    b = attack.run(view2, np.random.default_rng(0)).items[0]
    np.testing.assert_array_equal(a.attack, b.attack)
    np.testing.assert_array_equal(a.imputation, b.imputation)
    assert torch.equal(hide(flipped, fed.info.features[0]), hide(fed.candidates.x, fed.info.features[0]))


def test_signal_metrics_known_answer_and_intervals():
    member = np.array([True] * 200 + [False] * 200)
    att = np.r_[np.ones(150), np.zeros(50), np.ones(100), np.zeros(100)].astype(bool)  # 0.75 members, 0.5 non-members
    imp = np.r_[np.ones(100), np.zeros(100), np.ones(100), np.zeros(100)].astype(bool)  # 0.5 both
    m = signal_metrics(att, imp, member)
    assert m["attack_accuracy_members"] == 0.75 and m["imputation_accuracy_nonmembers"] == 0.5
    assert m["advantage_members"] == pytest.approx(0.25) and m["advantage_nonmembers"] == 0.0
    assert m["signal"] == pytest.approx(0.25)
    assert m["signal_ci_low"] < 0.25 < m["signal_ci_high"] and m["signal_ci_low"] > 0 and m["signal_verdict"] == 1.0
    assert m == signal_metrics(att, imp, member)  # deterministic
    same = signal_metrics(imp, imp, member)  # an attack that is imputation: signal exactly 0
    assert same["signal"] == 0.0 and same["signal_ci_low"] == 0.0 == same["signal_ci_high"] and same["signal_verdict"] == 0.0


def test_dont_know_rule_abstains_on_ties_and_scores_answered_records_only():
    from attacks.attribute.common import unique_max

    s = np.array([[0.2, 0.2], [0.1, 0.5], [0.6, 0.3]])
    np.testing.assert_array_equal(unique_max(s), [False, True, True])
    np.testing.assert_array_equal(unique_max(np.log(s), threshold=np.log(0.55)), [False, False, True])


@pytest.mark.parametrize("attrs, pattern", [
    ([{"name": "sx"}], "not a feature"),
    ([{"name": "s", "bands": [1.0]}], "categorical"),
    ([{"name": "z0"}], "continuous; give cut points"),
])
def test_bad_attributes_are_refused_in_one_line(attrs, pattern):
    fed, truth = planted(n=20)
    cls = ATTACKS.get("attribute_inference")
    cfg = parse_experiment({"data": {"name": "breast_cancer"}, "model": {"name": "logreg"},
                            "attacks": [{"name": "attribute_inference", "attributes": attrs, "folds": 2}]})
    view = derive_views(run_federated(fed, build_model(fed.info, cfg.model, Seeds(0).torch("init")), [], cfg.train, cfg.privacy, Seeds(0),
                                      evaluate=False), fed, lambda: build_model(fed.info, cfg.model, Seeds(0).torch("init")), ["outsider"])
    with pytest.raises(ConfigError, match=pattern) as info:
        cls(cfg.attacks[0].params).run(view["outsider"], np.random.default_rng(0))
    assert "\n" not in str(info.value)


def test_duplicate_attributes_are_refused_at_load_time():
    with pytest.raises(ConfigError, match="listed twice"):
        ATTACKS.get("attribute_inference").check(ATTACKS.get("attribute_inference").Params(attributes=(Target("sex"), Target("sex"))), None)


def test_an_attribute_the_data_lacks_is_refused_when_the_data_is_loaded(tmp_path):
    """``validate --data`` (and ``run``, before it logs anything) names the missing feature, the
    closest one, and exits 2 without a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "suite: attrbad\nbase:\n  data: {name: breast_cancer, partition: iid, num_sites: 2}\n  model: {name: mlp, hidden: [16]}\n"
        "  train: {rounds: 1}\n  attacks: [{name: attribute_inference_server, attributes: [{name: mean_radiuss, bands: [10]}]}]\n"
        "variants:\n  - {defenses: []}\nseeds: [0]\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "bench", "validate", str(suite), "--data"], capture_output=True, text=True,
                         cwd=repo, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "attacks.attribute_inference_server.attributes[0].name: 'mean_radiuss' is not a feature of breast_cancer " \
           "(did you mean 'mean_radius'?)" in out.stderr
