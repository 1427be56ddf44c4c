"""Contract of every registered defense: pure hooks, documented, refuses bad input, honest about DP.

Adding a defense to the registry without an entry in ``VALID`` and ``INVALID`` fails here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer
from bench.types import ConfigError, Records
from defenses import DEFENSES
from defenses.base import ClientContext, FederationFacts, ServerContext
from conftest import tiny_raw

# one working configuration of each defense
VALID = {
    "clipping": {"max_norm": 0.5},
    "sparsify": {"keep_fraction": 0.2},
    "dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "client_dp": {"noise_multiplier": 0.5, "clip_norm": 0.5, "adaptive": True, "clip_count_stddev": 1.0},
    "secure_aggregation": {"dropout_fraction": 0.3},
    "distributed_dp": {"noise_multiplier": 0.5, "clip_norm": 0.5, "min_contributors": 2},
    "model_check": {"allowed_architectures": ["0123456789abcdef"]},
}
# settings each must refuse at load time (one-line ConfigError naming the defense)
INVALID = {
    "clipping": [{"max_norm": 0}, {"max_norm": -1}],
    "sparsify": [{"keep_fraction": 0}, {"keep_fraction": 1.5}],
    "dp_sgd": [{}, {"noise_multiplier": 1, "target_epsilon": 1}, {"noise_multiplier": 1, "max_grad_norm": "inf"}],
    "client_dp": [{"clip_norm": "inf"}, {"adaptive": True, "clip_count_stddev": 0.1}],
    "secure_aggregation": [{"neighbors": 3}, {"bits": 16}, {"dropout_fraction": 1.0}],
    "distributed_dp": [{"clip_norm": "inf"}, {"min_contributors": 0}, {"min_contributors": 4}],
    "model_check": [{"allowed_architectures": ["not-a-fingerprint"]}],
}


def test_every_registered_defense_is_covered():
    assert set(VALID) == set(DEFENSES.names()) == set(INVALID)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_docstring_and_label(name):
    cls = DEFENSES.get(name)
    doc = " ".join((cls.__doc__ or "").split())
    for phrase in ("Runs on", "Privacy unit", "DP events"):
        assert phrase in doc, f"{name}: docstring must state {phrase!r}"
    assert "hide" in doc.lower(), f"{name}: docstring must say what it hides"
    cfg = parse_experiment(tiny_raw(defenses=[{"name": name, **VALID[name]}]))
    label = cls.label(cfg.defenses[0].params)
    assert label.startswith(name) and label == label.strip()
    assert name in cfg.label()


@pytest.mark.parametrize("name,params", [(n, p) for n, ps in INVALID.items() for p in ps])
def test_bad_settings_are_refused_at_load_time(name, params):
    with pytest.raises(ConfigError, match=name) as exc:
        parse_experiment(tiny_raw(defenses=[{"name": name, **params}]))
    assert "\n" not in str(exc.value)


def test_client_dp_with_reweighting_dropouts_is_refused():
    bad = [
        {"name": "client_dp", "noise_multiplier": 1.0},
        {"name": "secure_aggregation", "dropout_fraction": 0.2, "dropout_phase": "before_masked_input"},
    ]
    with pytest.raises(ConfigError, match="client_dp"):
        parse_experiment(tiny_raw(defenses=bad))
    ok = [bad[0], {"name": "secure_aggregation", "dropout_fraction": 0.2}]
    assert len(parse_experiment(tiny_raw(defenses=ok)).defenses) == 2


def test_incompatible_combinations_are_refused():
    # two defenses that replace aggregation, and a duplicate entry
    from defenses.base import Defense

    with pytest.raises(ConfigError, match="listed twice"):
        parse_experiment(tiny_raw(defenses=[{"name": "sparsify"}, {"name": "sparsify"}]))
    assert sum(DEFENSES.get(n).replaces_aggregation for n in DEFENSES.names()) >= 1
    assert not Defense.replaces_aggregation


def _facts() -> FederationFacts:
    names = ("a", "b", "c")
    return FederationFacts(site_names=names, site_sizes={n: 30 for n in names}, sites_per_round=3, rounds=2,
                           num_params=12, local_epochs=1, batch_size=8, accountant="rdp", delta=None)


def _make(name):
    cfg = parse_experiment(tiny_raw(defenses=[{"name": name, **VALID[name]}]))
    d = DEFENSES.get(name)(cfg.defenses[0].params)
    d.setup(_facts())
    return d


@pytest.mark.parametrize("name", DEFENSES.names())
def test_hooks_never_mutate_their_inputs(name):
    d = _make(name)
    g = torch.Generator().manual_seed(0)
    # local training: global params and the hospital's records stay as they were
    x = torch.randn(30, 5, generator=g)
    data = Records(ids=np.arange(30), x=x, y=(x[:, 0] > 0).long())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 2))
    trainer = d.wrap_local_training(PlainTrainer(model, data, LocalSettings(1, 8, "sgd", 0.1)), "a")
    start = torch.randn(12, generator=g)
    copies = (start.clone(), data.x.clone(), data.y.clone())
    res = trainer.train(start, torch.Generator().manual_seed(1))
    assert torch.equal(start, copies[0]) and torch.equal(data.x, copies[1]) and torch.equal(data.y, copies[2])
    assert not torch.equal(res.params, start)
    # client and server hooks
    updates = {s: torch.randn(12, generator=g) * 3 for s in ("a", "b", "c")}
    saved = {s: u.clone() for s, u in updates.items()}
    sent = {s: d.transform_update(u, ClientContext(s, 1, 30, torch.Generator().manual_seed(2))) for s, u in updates.items()}
    assert all(torch.equal(updates[s], saved[s]) for s in updates)
    weights = {s: 1 / 3 for s in updates}
    ctx = ServerContext(1, ("a", "b", "c"), torch.Generator().manual_seed(3))
    if d.replaces_aggregation:
        sent_copy = {s: u.clone() for s, u in sent.items()}
        agg = d.aggregate(sent, weights, ctx)
        assert all(torch.equal(sent[s], sent_copy[s]) for s in sent)
    else:
        agg = sum(weights[s] * sent[s] for s in sent)
    agg_copy = agg.clone()
    d.transform_aggregate(agg, ctx)
    assert torch.equal(agg, agg_copy)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_dp_claim_matches_events_and_runs_in_a_federation(name, tiny_cfg):
    """A defense that says it is DP emits events (→ ε); one that does not, emits none."""
    cfg = parse_experiment(tiny_raw(defenses=[{"name": name, **VALID[name]}], attacks=[]))
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    d = DEFENSES.get(name)(cfg.defenses[0].params)
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [d], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    assert bool(rec.dp_events) == d.is_dp
    assert all(e.unit == d.privacy_unit for e in rec.dp_events)
    assert all(r.updates_hidden == d.hides_updates for r in rec.rounds)
    assert torch.isfinite(rec.final_params).all()


STACK_CASES = [(n, VALID[n]) for n in DEFENSES.names()] + [("client_dp", {"noise_multiplier": 0.5, "clip_norm": 0.5})]


@pytest.mark.parametrize("name,params", STACK_CASES)
def test_a_defense_that_stacks_updates_maps_rows_like_separate_calls(name, params):
    """Canary clients reach the client hooks as one (K, P) stack when every defense says it
    can take one: the result must equal K separate calls."""
    cls = DEFENSES.get(name)
    d = cls(cls.Params(**params))
    if not d.stacks_updates():
        pytest.skip(f"{name} with {params} takes one update at a time")
    facts = FederationFacts(("a", "b"), {"a": 10, "b": 10}, 2, 1, 50, 1, 4, "rdp", None)
    d.setup(facts)
    stack = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1], [3], [0.5], [10], [0.01]])
    ctx = lambda: ClientContext(site="a", round=1, num_samples=10, generator=torch.Generator().manual_seed(1))  # noqa: E731
    before = stack.clone()
    together = d.transform_update(stack, ctx())
    one_by_one = torch.stack([d.transform_update(row, ctx()) for row in stack])
    assert torch.allclose(together, one_by_one, atol=1e-6)
    assert torch.equal(stack, before)  # pure: the input is not modified


@pytest.mark.parametrize("name,params", STACK_CASES)
def test_a_stacked_form_is_the_defense_itself_on_k_federations(name, params):
    """Written once, on stacks: the stacked hooks that LiRA/RMIA's references use (K = 6) equal
    the per-hospital hooks the target uses, federation by federation, each with its own
    generator; a defense without one says why (references then fall back, visibly)."""
    cls = DEFENSES.get(name)
    why = cls.stacked_unsupported(cls.Params(**params))
    if why is not None:
        assert name in why
        return
    facts = FederationFacts(("a", "b"), {"a": 10, "b": 10}, 2, 1, 50, 1, 4, "rdp", None)
    d = cls(cls.Params(**params))
    d.setup(facts)
    stack = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1], [3], [0.5], [10], [0.01]])
    gens = lambda: [torch.Generator().manual_seed(10 + k) for k in range(6)]  # noqa: E731
    before = stack.clone()
    together = d.update_stack(stack, gens())
    one_by_one = torch.stack([d.transform_update(row, ClientContext("a", 1, 10, g)) for row, g in zip(stack, gens())])
    assert torch.allclose(together, one_by_one, atol=1e-6) and torch.equal(stack, before)
    noisy = d.aggregate_noise_stack(stack, [2] * 6, gens())
    ref = cls(cls.Params(**params))
    ref.setup(facts)
    each = torch.stack([ref.transform_aggregate(row, ServerContext(1, ("a", "b"), g)) for row, g in zip(stack, gens())])
    assert torch.allclose(noisy, each, atol=1e-6) and torch.equal(stack, before)
