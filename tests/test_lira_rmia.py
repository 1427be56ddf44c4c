"""Reference federations, LiRA and RMIA.

* the vectorised trainer is the same pipeline: K = 1 without defense reproduces
  ``run_federated`` (same seeds, same batches) to float precision, and K stacked
  federations equal K single ones;
* against a deliberately memorising model (random labels: members can only be fitted by
  memorising them) LiRA and RMIA reach AUC > 0.8; against a model trained on other
  records than the candidates they are at chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.membership.lira import LiRA
from attacks.membership.rmia import RMIA
from bench.config import parse_experiment
from bench.federated import run_federated
from bench.metrics import membership_metrics
from bench.models import build_model
from bench.reference import ReferenceCache, reference_splits, train_many
from bench.seeding import Seeds
from bench.types import ConfigError, DatasetInfo, Federation, OutsiderView, Records, Site
from conftest import tiny_raw

INFO = DatasetInfo(name="noise", input_shape=(12,), num_classes=2)


def _cfg(**over):
    raw = tiny_raw(**over)
    raw["attacks"] = []
    return parse_experiment(raw)


def _records(n: int, seed: int, first_id: int = 0) -> Records:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)  # random labels: only memorisation fits them
    return Records(ids=np.arange(first_id, first_id + n, dtype=np.int64), x=x, y=y)


def _fed(site_records: dict) -> Federation:
    any_r = next(iter(site_records.values()))
    empty = any_r.take(np.zeros(0, np.int64))
    sites = tuple(Site(n, r, empty) for n, r in site_records.items())
    return Federation(info=INFO, sites=sites, test=empty, candidates=empty, population=empty)


def test_vectorised_k1_equals_run_federated():
    cfg = _cfg(model__name="mlp", model__hidden=[16], train__rounds=3, train__local_epochs=2, train__batch_size=7,
               train__momentum=0.5, train__weight_decay=0.01, train__sites_per_round=2)
    sites = {"a": _records(30, 1), "b": _records(23, 2, 100), "c": _records(41, 3, 200)}
    seeds = Seeds(11)
    initial = build_model(INFO, cfg.model, seeds.torch("init"))
    want = run_federated(_fed(sites), initial, [], cfg.train, cfg.privacy, seeds, evaluate=False).final_params
    got = train_many([sites], [11], INFO, cfg.model, cfg.train, cfg.privacy, [])
    assert torch.allclose(got[0], want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, torch.nn.utils.parameters_to_vector(initial.parameters()))  # it trained


def test_stacked_federations_equal_single_ones():
    cfg = _cfg(train__rounds=2)
    fa = {"a": _records(20, 1), "b": _records(20, 2, 50)}
    fb = {"a": _records(20, 3), "b": _records(20, 4, 50)}
    both = train_many([fa, fb], [5, 6], INFO, cfg.model, cfg.train, cfg.privacy, [])
    one = train_many([fb], [6], INFO, cfg.model, cfg.train, cfg.privacy, [])
    assert torch.allclose(both[1], one[0], atol=1e-6)


def test_reference_splits_balance_membership():
    splits, inc = reference_splits(100, {"a": 30, "b": 20}, 8, np.random.default_rng(0))
    assert inc.sum(1).tolist() == [50] * 8
    assert (inc.sum(0) == 4).all()  # complementary pairs: each record "in" exactly half the time
    assert [len(s["a"]) for s in splits] == [30] * 8


def _view(target_members: Records, population: Records, cfg) -> OutsiderView:
    half = len(target_members) // 2
    target_sites = {"a": target_members.take(np.arange(half)), "b": target_members.take(np.arange(half, len(target_members)))}
    final = train_many([target_sites], [99], INFO, cfg.model, cfg.train, cfg.privacy, [])[0]
    sim_many = lambda srs, seeds: train_many(srs, seeds, INFO, cfg.model, cfg.train, cfg.privacy, [])  # noqa: E731
    model_fn = lambda: build_model(INFO, cfg.model, torch.Generator().manual_seed(0))  # noqa: E731
    sizes = {n: len(r) for n, r in target_sites.items()}
    cache = ReferenceCache(model_fn, final, population, sizes, seed=3, simulate_many=sim_many, simulate=None)
    return OutsiderView(info=INFO, model_fn=model_fn, final_params=final, candidates=population, population=population,
                        site_sizes=sizes, reference_signals=cache)


@pytest.fixture(scope="module")
def memorising():
    cfg = _cfg(model__name="mlp", model__hidden=[128], train__rounds=12, train__local_epochs=5, train__batch_size=10, train__lr=0.8)
    pop = _records(240, 0)
    member = np.zeros(240, bool)
    member[np.random.default_rng(1).permutation(240)[:120]] = True
    target = _view(pop.take(np.flatnonzero(member)), pop, cfg)
    outside = _view(_records(120, 7, 10_000), pop, cfg)  # trained on other records only
    return target, outside, member


@pytest.mark.parametrize("attack", [LiRA(LiRA.Params(num_references=16)), LiRA(LiRA.Params(num_references=16, mode="offline")),
                                    LiRA(LiRA.Params(num_references=16, fixed_variance=True)),
                                    RMIA(RMIA.Params(num_references=16)), RMIA(RMIA.Params(num_references=16, mode="offline"))])
def test_attacks_find_memorised_members_and_nothing_else(memorising, attack):
    target, outside, member = memorising
    auc = membership_metrics(attack.run(target, np.random.default_rng(0)).scores, member)["auc"]
    assert auc > 0.8, auc
    auc_out = membership_metrics(attack.run(outside, np.random.default_rng(0)).scores, member)["auc"]
    assert abs(auc_out - 0.5) < 0.1, auc_out  # AUC's std with 120+120 records is ~0.037


def test_reference_signals_are_computed_once_and_shared(memorising):
    target, _, _ = memorising
    a = target.reference_signals(16)
    assert target.reference_signals(16) is a
    assert a.reference.shape == (16, 240) and a.method == "vectorized"


def test_cell_logs_signals_once_and_roc_artifacts(caplog):
    from bench.runner import run_cell
    from bench.tracking import MemoryCellLog

    raw = tiny_raw(attacks=[{"name": "lira", "num_references": 4, "reference_design": "paired"}, {"name": "rmia", "num_references": 4}])
    out = MemoryCellLog("x", {})
    with caplog.at_level("INFO", logger="bench.reference"):
        m = run_cell(parse_experiment(raw), out).metrics
    assert caplog.text.count("reference models: K=4 federations") == 1  # trained once, shared by both attacks
    assert m["cost/reference/K4/vectorized"] == 1.0 and "cost/reference/K4_independent/seconds" not in m
    for name in ("lira", "rmia"):
        assert f"attacks/{name}/roc_loglog.png" in out.artifacts and f"attacks/{name}/scores.npz" in out.artifacts
        assert m[f"attack/{name}/tpr_at_fpr_0.01_ci_low"] <= m[f"attack/{name}/tpr_at_fpr_0.01"] <= m[f"attack/{name}/tpr_at_fpr_0.01_ci_high"]
    import io

    sig = np.load(io.BytesIO(out.artifacts["reference/signals_K4.npz"]))
    assert sig["reference"].shape == (4, len(sig["ids"])) and sig["included"].dtype == bool


def test_lira_defaults_to_independent_references_and_rmia_keeps_the_pairs(caplog):
    """LiRA's default design (independent halves) and RMIA's (complementary pairs) are two sets
    of references in one cell, each logged under its own name; the paired one keeps K<k>."""
    from bench.runner import run_cell
    from bench.tracking import MemoryCellLog

    raw = tiny_raw(attacks=[{"name": "lira", "num_references": 4}, {"name": "rmia", "num_references": 4}])
    out = MemoryCellLog("x", {})
    with caplog.at_level("INFO", logger="bench.reference"):
        m = run_cell(parse_experiment(raw), out).metrics
    assert caplog.text.count("reference models: K=4 federations (independent)") == 1
    assert caplog.text.count("reference models: K=4 federations (paired)") == 1
    assert m["cost/reference/K4/vectorized"] == 1.0 and m["cost/reference/K4_independent/vectorized"] == 1.0
    assert {"reference/signals_K4.npz", "reference/signals_K4_independent.npz"} <= set(out.artifacts)


def test_reference_designs_draw_what_they_claim():
    sizes = {"a": 30, "b": 20}
    paired, inc_p = reference_splits(100, sizes, 8, np.random.default_rng(0))
    again, inc_again = reference_splits(100, sizes, 8, np.random.default_rng(0), "paired")
    assert np.array_equal(inc_p, inc_again) and all(np.array_equal(x["a"], y["a"]) for x, y in zip(paired, again))  # the default
    assert (inc_p[0::2] == ~inc_p[1::2]).all()  # complementary pairs
    splits, inc = reference_splits(100, sizes, 64, np.random.default_rng(0), "independent")
    assert inc.sum(1).tolist() == [50] * 64 and [len(s["b"]) for s in splits] == [20] * 64  # the target's sizes
    assert not (inc[0::2] == ~inc[1::2]).all(axis=1).any()  # no reference is another's complement
    counts = inc.sum(0)  # Binomial(64, 1/2) per record: mean 32, sd 4
    assert counts.min() < 32 < counts.max() and abs(counts.mean() - 32) < 1e-9  # each reference holds exactly half
    assert 2.5 < counts.std() < 5.5
    # the references of different records are independent: no pair of references shares its split
    assert len({tuple(np.flatnonzero(r)) for r in inc}) == 64
    with pytest.raises(ConfigError, match="reference_design: got 'halves'"):
        reference_splits(100, sizes, 8, np.random.default_rng(0), "halves")


def _serial_and_parallel_signals(cfg, info, members, population, k, threads):
    from bench.reference import make_many_simulator

    model_fn = lambda: build_model(info, cfg.model, torch.Generator().manual_seed(0))  # noqa: E731
    final = train_many([{"a": members}], [99], info, cfg.model, cfg.train, cfg.privacy, [])[0]
    out = []
    for n in (1, threads):
        many, why = make_many_simulator(cfg, info, threads=n)
        assert why == ""
        cache = ReferenceCache(model_fn, final, population, {"a": len(members)}, seed=3, simulate_many=many, simulate=None)
        out.append([cache(k, design) for design in ("paired", "independent")])
    return out


@pytest.mark.parametrize("defense", [[], [{"name": "clipping", "max_norm": 0.5}], [{"name": "sparsify"}],
                                     [{"name": "client_dp", "noise_multiplier": 0.5, "clip_norm": 1.0}]])
@pytest.mark.parametrize("threads", [2, 3])
def test_references_in_parallel_blocks_equal_one_stack_exactly(defense, threads):
    """Blocks of the K references trained on threads give the one-stack signals bit for bit."""
    cfg = _cfg(model__name="mlp", model__hidden=[16], train__rounds=2, train__momentum=0.5, defenses=defense)
    pop = _records(60, 0)
    (one, many) = _serial_and_parallel_signals(cfg, INFO, pop.take(np.arange(30)), pop, 8, threads)
    for a, b in zip(one, many):
        assert np.array_equal(a.reference, b.reference) and np.array_equal(a.included, b.included)
        assert np.array_equal(a.target, b.target)


def test_cnn_references_split_only_into_blocks_of_eight_and_stay_exact():
    from bench.reference import block_count, blocks

    assert block_count(16, 2, True) == 2 and block_count(16, 4, True) == 2 and block_count(12, 2, True) == 1
    assert block_count(12, 2, False) == 2 and blocks(16, 3) == [(0, 5), (5, 11), (11, 16)]
    info = DatasetInfo(name="noise-images", input_shape=(1, 8, 8), num_classes=3, modality="image")
    g = torch.Generator().manual_seed(0)
    pop = Records(ids=np.arange(40, dtype=np.int64), x=torch.randn(40, 1, 8, 8, generator=g), y=torch.randint(0, 3, (40,), generator=g))
    cfg = _cfg(data__name="digits", model__name="cnn", model__channels=4, train__rounds=1)
    (one, many) = _serial_and_parallel_signals(cfg, info, pop.take(np.arange(20)), pop, 16, 2)
    for a, b in zip(one, many):
        assert np.array_equal(a.reference, b.reference)


def test_reference_threads_rules(monkeypatch):
    from bench.reference import reference_threads

    from bench.reference import macs_per_record

    import os

    monkeypatch.delenv("PRIVBENCH_REFERENCE_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.9, 0.9))  # only this process: both cores free
    assert reference_threads(["dp_sgd"], 16) == 1  # padded Poisson batches: one stack
    assert reference_threads([], 1) == 1
    assert reference_threads([], 16) == 2 and reference_threads([], 3) == 1
    assert reference_threads([], 16, macs=2048) == 1  # a tabular MLP: Python-bound, one stack
    assert reference_threads([], 16, macs=80_000) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 2.0, 2.0))  # the other core is busy
    assert reference_threads([], 16, macs=80_000) == 1
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    assert macs_per_record(mlp, (12,)) == 12 * 64 + 64 * 2
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 8, 3, padding=1, groups=2))
    assert macs_per_record(cnn, (1, 8, 8)) == 4 * 64 * 9 + 8 * 64 * 2 * 9
    monkeypatch.setenv("PRIVBENCH_REFERENCE_THREADS", "3")
    assert reference_threads(["clipping"], 16, macs=60) == 3 and reference_threads([], 2) == 2  # the override wins
    monkeypatch.setenv("PRIVBENCH_REFERENCE_THREADS", "two")
    with pytest.raises(ConfigError, match="PRIVBENCH_REFERENCE_THREADS: got 'two'"):
        reference_threads([], 16)


def test_unvectorisable_defense_falls_back_to_sequential(caplog):
    raw = tiny_raw(attacks=[{"name": "lira", "num_references": 2}], defenses=[{"name": "dp_sgd", "noise_multiplier": 1.0, "sampling": "shuffle"}])
    from bench.runner import run_in_memory

    with caplog.at_level("WARNING", logger="bench.reference"):
        m = run_in_memory(parse_experiment(raw)).metrics
    assert "sequentially (dp_sgd with sampling=shuffle)" in caplog.text
    assert m["cost/reference/K2_independent/vectorized"] == 0.0  # lira: independent references by default


def test_a_defense_class_without_a_stacked_form_is_refused_by_name():
    """A defense that overrides a hook but writes no stacked form cannot be vectorised."""
    from bench.reference import vectorizable
    from defenses.base import Defense

    class Odd(Defense):
        name = "odd"

        def transform_update(self, update, ctx):
            return update * 2

    assert Odd.stacked_unsupported(None) == "defense 'odd' has no vectorised form"
    assert Defense.stacked_unsupported(None) is None  # the identity needs none
    assert vectorizable([("sparsify", None), ("clipping", None)], "sgd") is None
    assert vectorizable([], "adam") == "optimizer 'adam' has no vectorised form (sgd only)"


def test_vectorised_dp_sgd_without_noise_or_clipping_is_plain_poisson_sgd():
    """σ = 0 and a huge clip bound: DP-SGD's private step is the plain mean gradient over
    a Poisson batch, divided by the expected batch size; with q = 1 (batch ≥ n) every record
    is in every step, so it equals full-batch plain SGD."""
    cfg = _cfg(train__rounds=2, train__batch_size=64)
    sites = {"a": _records(30, 1), "b": _records(30, 2, 100)}
    from defenses.dp_sgd import DPSGD

    dp = [("dp_sgd", DPSGD(DPSGD.Params(noise_multiplier=0.0, max_grad_norm=1e6)))]
    got = train_many([sites], [4], INFO, cfg.model, cfg.train, cfg.privacy, dp)
    want = train_many([sites], [4], INFO, cfg.model, cfg.train, cfg.privacy, [])
    assert torch.allclose(got, want, atol=1e-5)


def _own_cell(cls) -> bool:
    """Attacks that need a cell of their own (a malicious server changes the protocol for
    everyone in the cell): tests/test_malicious_server.py runs them."""
    return getattr(cls, "server_plan", None) is not None


def test_every_registered_attack_runs_in_a_cell_and_is_documented():
    """Contract for the membership, source and audit families: each attack names its threat
    model and paper, and runs end to end (reconstruction attacks have their own tests)."""
    mine = ("membership", "source", "audit")
    import re

    from attacks import ATTACKS
    from attacks.audit.whitebox import WHITE_BOX
    from bench.runner import run_in_memory

    specs = []
    for name, cls in ATTACKS.items():
        if cls.kind not in mine:
            continue
        doc = cls.__doc__ or ""
        assert re.search(r"\(20\d\d\)|20\d\d\)", doc), f"{name}: docstring must cite its paper"
        assert "Threat model" in doc, f"{name}: docstring must state its threat model"
        assert cls.threat_model in ("outsider", "server", "peer")
        if name in WHITE_BOX or _own_cell(cls):
            continue
        specs.append({"name": name, **({"num_references": 2} if name in ("lira", "rmia") else {})})
    m = run_in_memory(parse_experiment(tiny_raw(attacks=specs))).metrics
    for name, cls in ATTACKS.items():
        if cls.kind not in mine or name in WHITE_BOX or _own_cell(cls):
            continue
        if cls.kind == "membership":
            assert 0.0 <= m[f"attack/{name}/auc"] <= 1.0
        assert f"cost/attack/{name}/seconds" in m


def test_vectorised_dp_sgd_clips_like_opacus():
    """q = 1 (batch ≥ n: every record in every Poisson step) and σ = 0 make DP-SGD
    deterministic: the vectorised per-sample clipping must then equal Opacus's, step for step."""
    from defenses.dp_sgd import DPSGD

    cfg = _cfg(model__name="mlp", model__hidden=[8], train__rounds=2, train__local_epochs=2, train__batch_size=64)
    sites = {"a": _records(30, 1), "b": _records(25, 2, 100)}
    params = DPSGD.Params(noise_multiplier=0.0, max_grad_norm=0.05)  # small C: clipping binds
    seeds = Seeds(8)
    initial = build_model(INFO, cfg.model, seeds.torch("init"))
    want = run_federated(_fed(sites), initial, [DPSGD(params)], cfg.train, cfg.privacy, seeds, evaluate=False).final_params
    got = train_many([sites], [8], INFO, cfg.model, cfg.train, cfg.privacy, [("dp_sgd", DPSGD(params))])
    plain = train_many([sites], [8], INFO, cfg.model, cfg.train, cfg.privacy, [])
    assert torch.allclose(got[0], want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # clipping changed the result


def test_online_lira_with_one_reference_per_side_uses_the_pooled_variance():
    """K = 2: every record has one "in" and one "out" reference, so no per-record variance
    exists; the score must use the pooled one, not blow up on a 1e-4 floor."""
    from attacks.membership.lira import lira_scores
    from bench.types import ReferenceSignals

    rng = np.random.default_rng(0)
    n = 50
    inc = np.zeros((2, n), bool)
    inc[0, : n // 2] = inc[1, n // 2 :] = True
    ref = rng.normal(0.0, 1.0, (2, n)) + inc * 1.0
    sig = ReferenceSignals(ids=np.arange(n), target=rng.normal(0.5, 1.0, n), reference=ref, included=inc, seconds=0.0, method="test")
    per_record = lira_scores(sig, online=True, fixed_variance=False)
    pooled = lira_scores(sig, online=True, fixed_variance=True)
    np.testing.assert_allclose(per_record, pooled)  # one sample per side: the pooled σ is all there is
    assert np.abs(per_record).max() < 100


@pytest.mark.parametrize("spec", [
    {"name": "clipping", "max_norm": 0.05},
    {"name": "client_dp", "noise_multiplier": 0.0, "clip_norm": 0.05},
    {"name": "secure_aggregation"},
], ids=lambda s: s["name"])
def test_vectorised_defense_k1_equals_run_federated(spec):
    """Each vectorised defense form trains the same model as the real defense (noise off:
    the two draw their noise from different streams)."""
    from bench.runner import make_defenses

    cfg = _cfg(model__name="mlp", model__hidden=[16], train__rounds=3, train__batch_size=8, defenses=[spec])
    sites = {"a": _records(30, 1), "b": _records(23, 2, 100), "c": _records(41, 3, 200)}
    seeds = Seeds(11)
    initial = build_model(INFO, cfg.model, seeds.torch("init"))
    want = run_federated(_fed(sites), initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False).final_params
    got = train_many([sites], [11], INFO, cfg.model, cfg.train, cfg.privacy, [(s.name, d) for s, d in zip(cfg.defenses, make_defenses(cfg))])
    assert torch.allclose(got[0], want, atol=1e-5, rtol=1e-4)
    plain = run_federated(_fed(sites), build_model(INFO, cfg.model, Seeds(11).torch("init")), [], cfg.train, cfg.privacy, Seeds(11), evaluate=False).final_params
    if spec["name"] in ("clipping", "client_dp"):
        assert not torch.allclose(want, plain, atol=1e-4)  # the defense did change training
