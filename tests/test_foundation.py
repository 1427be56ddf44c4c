"""Foundations every number in the benchmark rests on.

* reproducibility: same config + seed -> the same metrics and model; another seed -> others;
* the split: members, non-members and test records never overlap;
* clipping bounds the update norm and leaves its input alone;
* the loss-threshold attack is at chance on a model that never saw the members and near
  perfect on one that memorised them;
* FedAvg weights each hospital's update by its sample count;
* a cell that crashes mid-training ends FAILED in MLflow and runs again next time.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.config import ModelConfig, parse_experiment
from bench.data import build_federation
from bench.federated import local_settings, run_federated
from bench.metrics import score
from bench.models import MODELS, build_model, flatten
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.training import PlainTrainer
from bench.types import DatasetInfo, GroundTruth, Records, OutsiderView
from attacks import ATTACKS
from defenses import DEFENSES
from defenses.base import ClientContext, weighted_sum
from conftest import tiny_raw


def _is_timing(key: str) -> bool:
    return "seconds" in key or key.endswith("per_second")


def _comparable(metrics) -> dict:
    """Final metrics without wall-clock timings (the only numbers allowed to differ)."""
    timing = {k for k in metrics if _is_timing(k)}
    assert all(k.startswith("cost/") for k in timing), timing  # never drop a real metric
    return {k: v for k, v in metrics.items() if k not in timing}


# --------------------------------------------------------------------------- reproducibility


@pytest.fixture(scope="module")
def three_runs():
    """The tiny federation run twice with seed 0 and once with seed 1 (clipping on, so a
    defense hook is part of what must reproduce)."""
    raw = tiny_raw(defenses=[{"name": "clipping", "max_norm": 0.5}])
    cfg0 = parse_experiment(raw)
    cfg1 = parse_experiment({**raw, "seed": 1})
    return run_in_memory(cfg0), run_in_memory(cfg0), run_in_memory(cfg1)


def test_same_config_and_seed_give_identical_results(three_runs):
    a, b, _ = three_runs
    assert a.run_key == b.run_key
    assert _comparable(a.metrics) == _comparable(b.metrics)
    assert "utility/test_accuracy" in a.metrics and "attack/loss_threshold/auc" in a.metrics
    assert torch.equal(a.record.final_params, b.record.final_params)
    for ra, rb in zip(a.record.rounds, b.record.rounds):
        assert torch.equal(ra.global_params, rb.global_params)
        assert ra.updates.keys() == rb.updates.keys()
        assert all(torch.equal(ra.updates[k], rb.updates[k]) for k in ra.updates)
        assert dict(ra.utility) == dict(rb.utility)


def test_another_seed_gives_other_results(three_runs):
    a, _, c = three_runs
    assert a.run_key != c.run_key
    assert not torch.equal(a.record.final_params, c.record.final_params)
    assert _comparable(a.metrics) != _comparable(c.metrics)
    assert a.metrics["attack/loss_threshold/auc"] != c.metrics["attack/loss_threshold/auc"]


# --------------------------------------------------------------------------- seeds


def test_large_seeds_do_not_repeat_small_ones_and_small_ones_keep_their_streams():
    """Issue 14: ``root & 0xFFFFFFFF`` made seed 2**32 + 5 the same experiment as seed 5."""
    from bench.seeding import _words

    for root in (0, 5, 2**32 - 1):  # below 2**32: the same streams as before the fix
        legacy = np.random.default_rng(np.random.SeedSequence([root & 0xFFFFFFFF, *_words(("data",))]))
        assert np.array_equal(Seeds(root).rng("data").integers(0, 2**62, 8), legacy.integers(0, 2**62, 8))
    draws = {root: tuple(Seeds(root).rng("data").integers(0, 2**62, 4)) for root in (5, 2**32 + 5, 2**64 + 5, 2**200 + 5)}
    assert len(set(draws.values())) == len(draws)
    assert Seeds(2**40).int_seed("x") == Seeds(2**40).int_seed("x")  # still deterministic
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="non-negative integer"):
            Seeds(bad)


# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_members_nonmembers_and_test_are_disjoint(partition):
    cfg = parse_experiment(tiny_raw(data__partition=partition))
    fed, truth = build_federation(cfg.data, Seeds(0))
    n_records = 569  # breast cancer
    # the truth is aligned with the candidates the attacker sees
    assert np.array_equal(truth.candidate_ids, fed.candidates.ids)
    assert truth.site_names == fed.site_names
    assert len(np.unique(fed.candidates.ids)) == len(fed.candidates)
    seen: list[set] = []
    for i, site in enumerate(fed.sites):
        members = set(site.train.ids.tolist())
        at_site = truth.candidate_site == i
        cand_members = set(truth.candidate_ids[at_site & truth.candidate_is_member].tolist())
        nonmembers = set(truth.candidate_ids[at_site & ~truth.candidate_is_member].tolist())
        test = set(site.test.ids.tolist())
        assert members == cand_members, "the truth's members of a site are the records it trains on"
        assert np.array_equal(truth.site_train[site.name].ids, site.train.ids)
        assert members and nonmembers and test
        assert not members & nonmembers and not members & test and not nonmembers & test
        seen += [members, nonmembers, test]
    everything = [i for s in seen for i in s]
    assert len(everything) == len(set(everything)), "a record is in two places (within or across sites)"
    assert sorted(everything) == list(range(n_records)), "every record is used exactly once"
    global_test = set(fed.test.ids.tolist())
    assert global_test == set().union(*(set(s.test.ids.tolist()) for s in fed.sites))
    assert not global_test & set(fed.candidates.ids.tolist())
    # a record is the same record wherever it appears
    pos = {int(k): j for j, k in enumerate(fed.candidates.ids)}
    for site in fed.sites:
        j = [pos[int(k)] for k in site.train.ids]
        assert torch.equal(fed.candidates.x[j], site.train.x) and torch.equal(fed.candidates.y[j], site.train.y)


# --------------------------------------------------------------------------- clipping


def test_clipping_bounds_the_norm_and_is_pure():
    cls = DEFENSES.get("clipping")
    g = torch.Generator().manual_seed(0)
    for c in (1e-3, 0.5, 1.0, 10.0):
        defense = cls(cls.Params(max_norm=c))
        for dim in (1, 7, 10_000):
            direction = torch.randn(dim, generator=g)
            direction = direction / torch.linalg.vector_norm(direction)
            for norm in (0.0, 1e-8, 0.5 * c, c, 2 * c, 1e6):
                update = direction * norm
                before = update.clone()
                ctx = ClientContext(site="a", round=1, num_samples=10, generator=torch.Generator().manual_seed(1))
                out = defense.transform_update(update, ctx)
                got = float(torch.linalg.vector_norm(out))
                assert got <= c + 1e-6 * max(1.0, c), (c, dim, norm, got)
                assert torch.equal(update, before), "clipping mutated its input"
                assert out.data_ptr() != update.data_ptr(), "clipping must return a new tensor"
                if norm <= c:
                    torch.testing.assert_close(out, update, rtol=1e-6, atol=0)  # inside the ball: unchanged
                else:
                    torch.testing.assert_close(got, c, rtol=1e-5, atol=0)  # outside: on the sphere
                    cos = float(torch.dot(out, update) / (torch.linalg.vector_norm(out) * norm))
                    assert cos == pytest.approx(1.0, abs=1e-5)  # same direction
                out.add_(1.0)
                assert torch.equal(update, before), "the output aliases the input"


def test_every_update_the_server_receives_is_clipped():
    """In a federation: each update after the clipping defense has norm <= C, although the
    plain updates of the same round (same seeds) are longer."""
    c = 0.05
    plain_cfg = parse_experiment(tiny_raw(train__rounds=2, attacks=[]))
    clip_cfg = parse_experiment(tiny_raw(train__rounds=2, attacks=[], defenses=[{"name": "clipping", "max_norm": c}]))
    seeds = Seeds(0)
    fed, _ = build_federation(plain_cfg.data, seeds)
    records = {}
    for name, cfg in (("plain", plain_cfg), ("clip", clip_cfg)):
        defenses = [DEFENSES.get(s.name)(s.params) for s in cfg.defenses]
        initial = build_model(fed.info, cfg.model, seeds.torch("init"))
        records[name] = run_federated(fed, initial, defenses, cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    first_plain = records["plain"].rounds[0].updates
    assert min(float(torch.linalg.vector_norm(u)) for u in first_plain.values()) > 2 * c  # precondition
    for r in records["clip"].rounds:
        for u in r.updates.values():
            assert float(torch.linalg.vector_norm(u)) <= c + 1e-6
    for site, u in records["clip"].rounds[0].updates.items():  # round 1 starts from the same model
        p = first_plain[site]
        torch.testing.assert_close(u, p * (c / torch.linalg.vector_norm(p)), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- loss threshold


def _loss_threshold_auc(trained_on: str) -> tuple[float, float]:
    """AUC of the loss-threshold attack on 300 members vs 300 non-members of a synthetic set
    with random labels (10 classes), against an MLP trained to 100% accuracy on ``trained_on``.

    Returns (attack AUC, training accuracy of the model).
    """
    n, d, k = 300, 20, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, d, generator=g)
    y = torch.randint(0, k, (3 * n,), generator=g)
    ids = np.arange(3 * n, dtype=np.int64)
    members = slice(0, n)  # ids [0, n) are members, [n, 2n) non-members, [2n, 3n) other records
    train = members if trained_on == "members" else slice(2 * n, 3 * n)
    info = DatasetInfo(name="synthetic", input_shape=(d,), num_classes=k)
    mcfg = ModelConfig(name="mlp", hidden=(256,))
    model = build_model(info, mcfg, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(250):  # full batch until it has memorised every (random) label
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        train_acc = float((model(x[train]).argmax(1) == y[train]).float().mean())

    order = np.random.default_rng(0).permutation(2 * n)
    cand = Records(ids=ids[: 2 * n][order], x=x[: 2 * n][order], y=y[: 2 * n][order])
    view = OutsiderView(
        info=info,
        model_fn=lambda: MODELS.get("mlp").build(info, mcfg),
        final_params=flatten(model),
        candidates=cand,
        population=cand,
        site_sizes={"a": n},
    )
    attack_cls = ATTACKS.get("loss_threshold")
    output = attack_cls(attack_cls.Params()).run(view, np.random.default_rng(0))
    truth = GroundTruth(
        candidate_ids=cand.ids,
        candidate_is_member=cand.ids < n,
        candidate_site=np.zeros(2 * n, dtype=np.int64),
        site_names=("a",),
        site_train={"a": Records(ids=ids[members], x=x[members], y=y[members])},
    )
    return score(output, truth)["auc"], train_acc


def test_loss_threshold_is_at_chance_against_a_model_that_never_saw_the_members():
    auc, train_acc = _loss_threshold_auc("other")
    assert train_acc == 1.0  # as overfit as the memorising model: only membership differs
    assert auc == pytest.approx(0.5, abs=0.1)


def test_loss_threshold_finds_members_a_model_memorised():
    # a non-member's random label is predicted right by chance 1 time in 10, so AUC ~ 0.95
    auc, train_acc = _loss_threshold_auc("members")
    assert train_acc == 1.0
    assert auc > 0.9


# --------------------------------------------------------------------------- FedAvg weights


def test_weighted_sum_known_answer():
    updates = {"a": torch.tensor([1.0, 0.0, 2.0]), "b": torch.tensor([0.0, 1.0, -2.0])}
    out = weighted_sum(updates, {"a": 0.25, "b": 0.75})
    torch.testing.assert_close(out, torch.tensor([0.25, 0.75, -1.0]))
    assert torch.equal(updates["a"], torch.tensor([1.0, 0.0, 2.0]))  # inputs untouched


def test_fedavg_weights_updates_by_sample_count():
    """One round on hospitals of very different sizes: the aggregate equals Σ (n_i/N) u_i of
    client updates recomputed here independently, and not their plain mean."""
    cfg = parse_experiment(tiny_raw(data__partition="dirichlet", data__alpha=0.3, train__rounds=1, attacks=[]))
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    sizes = {s.name: len(s.train) for s in fed.sites}
    assert max(sizes.values()) >= 2 * min(sizes.values()), sizes  # precondition: unequal sites
    initial = build_model(fed.info, cfg.model, seeds.torch("init"))
    start = flatten(initial)
    rec = run_federated(fed, initial, [], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    r1 = rec.rounds[0]
    total = sum(sizes.values())
    assert set(r1.participants) == set(sizes)
    assert dict(r1.weights) == pytest.approx({n: sizes[n] / total for n in sizes})

    # each hospital's update, recomputed outside the engine from its own data and seed stream
    mine = {}
    for site in fed.sites:
        trainer = PlainTrainer(copy.deepcopy(initial), site.train, local_settings(cfg.train))
        res = trainer.train(start, seeds.torch("train", site.name, 1))
        assert res.num_samples == sizes[site.name]
        mine[site.name] = res.params - start
        torch.testing.assert_close(r1.updates[site.name], mine[site.name], rtol=0, atol=1e-6)

    expected = sum((sizes[n] / total) * mine[n].double() for n in mine).float()
    torch.testing.assert_close(r1.aggregate, expected, rtol=0, atol=1e-6)
    uniform = sum(mine.values()) / len(mine)
    assert float((expected - uniform).abs().max()) > 1e-3, "sizes too similar to tell weighting apart"
    torch.testing.assert_close(rec.final_params, start + cfg.train.server_lr * r1.aggregate, rtol=0, atol=1e-6)


def test_client_level_dp_uses_uniform_weights():
    """The one documented exception: defenses with ``uniform_weights`` (client-level DP) weight 1/m."""
    names = [n for n, c in DEFENSES.items() if c.uniform_weights]
    assert names, "no defense declares uniform weights any more: update this test"
    cfg = parse_experiment(tiny_raw(data__partition="dirichlet", data__alpha=0.3, train__rounds=1, attacks=[],
                                    defenses=[{"name": names[0], "noise_multiplier": 0.5, "clip_norm": 0.5}]))
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    d = [DEFENSES.get(s.name)(s.params) for s in cfg.defenses]
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), d, cfg.train, cfg.privacy, seeds, evaluate=False)
    m = len(rec.rounds[0].participants)
    assert dict(rec.rounds[0].weights) == pytest.approx({n: 1 / m for n in rec.rounds[0].participants})


# --------------------------------------------------------------------------- FAILED cells


def test_a_cell_that_crashes_mid_training_ends_failed_and_runs_again(tmp_path, tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.cli import main

    path = tmp_path / "crash.yaml"
    path.write_text(
        "suite: crash\n"
        "base:\n"
        "  data: {name: breast_cancer, partition: iid, num_sites: 3}\n"
        "  model: {name: logreg}\n"
        "  train: {rounds: 3, local_epochs: 1, batch_size: 16, lr: 0.1}\n"
        "  attacks: [{name: loss_threshold}]\n"
        "seeds: [0]\n",
        encoding="utf-8",
    )
    original = PlainTrainer.train
    calls = {"n": 0}

    def crash_in_round_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # 3 hospitals: round 1 trains, round 2 crashes
            raise RuntimeError("simulated crash in local training")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PlainTrainer, "train", crash_in_round_two)
    assert main(["run", str(path), "-q"]) == 1  # EXIT_FAILED_CELLS
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("crash")
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if r.data.tags.get("role") == "cell"]
    parents = [r for r in runs if r.data.tags.get("role") == "suite"]
    assert len(cells) == 1 and len(parents) == 1
    failed = cells[0]
    assert failed.info.status == "FAILED"
    assert parents[0].info.status == "FAILED"
    assert "simulated crash" in failed.data.tags.get("error", "")
    history = client.get_metric_history(failed.info.run_id, "utility/test_accuracy")
    assert [m.step for m in history] == [1], "round 1 streamed before the crash, nothing after"
    assert not any(k.startswith("attack/") for k in failed.data.metrics)

    monkeypatch.setattr(PlainTrainer, "train", original)
    assert main(["run", str(path), "-q"]) == 0  # resume: the FAILED cell is not "done"
    cells = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "cell"]
    assert sorted(r.info.status for r in cells) == ["FAILED", "FINISHED"]
    assert len({r.data.tags["run_key"] for r in cells}) == 1
    finished = next(r for r in cells if r.info.status == "FINISHED")
    assert "attack/loss_threshold/auc" in finished.data.metrics

    n_runs = len(client.search_runs([exp.experiment_id]))
    assert main(["run", str(path), "-q"]) == 0  # now it is done: nothing runs, nothing is logged
    assert len(client.search_runs([exp.experiment_id])) == n_runs


def test_options_added_later_keep_earlier_cells_run_keys():
    """A key added with a default that keeps the old behaviour (the image keys of ``data``, RMIA's
    ``reference_design: paired``) is left out of the run_key at that default: a store's finished
    cells are not run again after an upgrade. The keys below were computed before those options
    existed (commit e695145)."""
    from bench.config import parse_experiment

    rmia = {"data": {"name": "breast_cancer"}, "model": {"name": "mlp", "hidden": [16]},
            "attacks": [{"name": "rmia", "num_references": 4}], "defenses": []}
    assert parse_experiment(rmia).run_key == "640f451a2dbaa61c"
    changed = parse_experiment({**rmia, "attacks": [{"name": "rmia", "num_references": 4, "reference_design": "independent"}]})
    assert changed.run_key != "640f451a2dbaa61c"  # a non-default value is part of the key
