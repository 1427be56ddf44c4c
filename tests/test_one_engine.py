"""One DP-SGD implementation, one implementation of each defense (issue 15).

* ``DPTrainer`` through ``bench.engine`` (the default) equals ``DPTrainer`` through Opacus
  expanded weights: at σ = 0 (the clipping), and at σ > 0 with the same seed (the same
  Poisson batches and the same noise draws, hence the same parameters), for logreg, MLP, CNN;
* a reference federation of ``bench.reference.train_many`` with K = 1 is the target pipeline
  ``run_federated`` with the same seed, for every defense the references support (noise on);
* K = 16 federations in one call equal 16 separate K = 1 calls;
* the audit's broken mechanisms (tests/mutants.py) stay broken under the engine, exactly as
  under Opacus; a model the engine cannot compile falls back visibly (auto) or is refused.
"""

from __future__ import annotations

import copy
import logging
import types

import numpy as np
import pytest
import torch

from bench.config import ModelConfig, parse_experiment
from bench.federated import run_federated
from bench.models import build_model, flatten
from bench.reference import train_many
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer
from bench.types import ConfigError, DatasetInfo, Federation, Records, Site
from conftest import tiny_raw
from defenses.dp_sgd import DPSGD, DPTrainer
from mutants import HalfNoiseDPSGD, NoClipDPSGD, NoNoiseDPSGD, _sum_without_clipping

TABULAR = DatasetInfo(name="noise", input_shape=(30,), num_classes=2)
IMAGES = DatasetInfo(name="noise-images", input_shape=(1, 8, 8), num_classes=10)

MODELS = {
    "logreg": (TABULAR, ModelConfig(name="logreg")),
    "mlp": (TABULAR, ModelConfig(name="mlp", hidden=(64,))),
    "cnn": (IMAGES, ModelConfig(name="cnn", channels=8)),
}


def _data(info: DatasetInfo, n: int, seed: int) -> Records:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *info.input_shape, generator=g)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return Records(ids=np.arange(n, dtype=np.int64), x=x, y=y)


def _trainer(model: str, sigma: float, clip: float, mode: str, n: int = 48, momentum: float = 0.9) -> DPTrainer:
    info, cfg = MODELS[model]
    net = build_model(info, cfg, torch.Generator().manual_seed(1))
    settings = LocalSettings(epochs=2, batch_size=8, optimizer="sgd", lr=0.2, momentum=momentum)
    return DPTrainer(PlainTrainer(net, _data(info, n, 2), settings), sigma, clip, "poisson", mode)


def _round(trainer: DPTrainer, seed: int = 5) -> tuple[torch.Tensor, torch.Generator]:
    start = flatten(trainer.model).clone()
    g = torch.Generator().manual_seed(seed)
    return trainer.train(start, g).params, g


# --------------------------------------------------------------------------- engine == Opacus ew


@pytest.mark.parametrize("model", list(MODELS))
def test_engine_equals_opacus_at_zero_noise(model):
    """σ = 0, C small enough that most rows are clipped: the clipped sums, hence a whole local
    round (12 steps, momentum), equal Opacus's to 1e-5."""
    engine, ew = _trainer(model, 0.0, 0.3, "engine"), _trainer(model, 0.0, 0.3, "ew")
    assert engine.grad_sample_mode == "engine" and ew.grad_sample_mode == "ew"
    a, _ = _round(engine)
    b, _ = _round(ew)
    start = flatten(_trainer(model, 0.0, 0.3, "ew").model)
    assert not torch.allclose(a, start, atol=1e-4)  # it trained
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", list(MODELS))
def test_engine_equals_opacus_with_noise_draw_for_draw(model):
    """σ = 1.3: the same seed gives the same Poisson batches and the same noise draws — the
    parameters agree to 1e-5 and both generators end in the same state (same number of draws)."""
    engine, ew = _trainer(model, 1.3, 0.5, "engine"), _trainer(model, 1.3, 0.5, "ew")
    a, ga = _round(engine)
    b, gb = _round(ew)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ga.get_state(), gb.get_state())
    c, _ = _round(_trainer(model, 1.3, 0.5, "engine"), seed=6)
    assert not torch.allclose(a, c, atol=1e-3)  # the noise is really there


def test_auto_is_the_default_and_runs_the_engine():
    assert DPSGD.Params(noise_multiplier=1.0).grad_sample_mode == "auto"
    t = _trainer("mlp", 1.0, 1.0, "auto")
    assert t.grad_sample_mode == "engine" and t.program is not None and t.fallback_reason is None


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(30, 30), torch.nn.ReLU())

    def forward(self, x):
        return x + self.inner(x)


def _odd_model_trainer(mode: str) -> DPTrainer:
    net = torch.nn.Sequential(torch.nn.Flatten(), _Residual(), torch.nn.Linear(30, 2))
    settings = LocalSettings(epochs=1, batch_size=8, optimizer="sgd", lr=0.1)
    return DPTrainer(PlainTrainer(net, _data(TABULAR, 32, 0), settings), 1.0, 1.0, "poisson", mode)


def test_a_model_the_engine_cannot_compile_falls_back_visibly_or_is_refused(caplog):
    import defenses.dp_sgd

    defenses.dp_sgd._FALLBACKS_TOLD.clear()  # warned once per process and reason: forget earlier tests' warnings
    with caplog.at_level(logging.WARNING, logger="defenses.dp_sgd"):
        t = _odd_model_trainer("auto")
    assert t.grad_sample_mode == "ew" and "_Residual" in t.fallback_reason and "Opacus" in caplog.text
    d = DPSGD(DPSGD.Params(noise_multiplier=1.0))
    d.trainers["a"] = t
    assert "_Residual" in d.tags()["dp_sgd_engine_fallback"] and d.tags()["dp_sgd_per_sample"] == "opacus ew"
    with caplog.at_level(logging.WARNING, logger="defenses.dp_sgd"):
        caplog.clear()
        _odd_model_trainer("auto")  # a second hospital (or reference) with the same model: no second warning
    assert "Opacus" not in caplog.text
    with pytest.raises(ConfigError, match="_Residual"):
        _odd_model_trainer("engine")


# --------------------------------------------------------------------------- the audit's mutants


@pytest.mark.parametrize("mutant", [HalfNoiseDPSGD, NoNoiseDPSGD, NoClipDPSGD], ids=lambda c: c.__name__)
def test_each_mechanism_mutant_is_as_broken_under_the_engine_as_under_opacus(mutant):
    """The mutants patch the trainer's optimizer (noise_multiplier, clip_and_accumulate) as they
    would Opacus's DPOptimizer: under the engine the result must change exactly as under ew."""
    info, cfg = MODELS["mlp"]

    def run(cls, mode):
        net = build_model(info, cfg, torch.Generator().manual_seed(1))
        settings = LocalSettings(epochs=2, batch_size=8, optimizer="sgd", lr=0.2)
        d = cls(DPSGD.Params(noise_multiplier=1.0, max_grad_norm=0.3, grad_sample_mode=mode))
        t = d.wrap_local_training(PlainTrainer(net, _data(info, 48, 2), settings), "a")
        return _round(t)[0]

    honest = run(DPSGD, "auto")
    engine, ew = run(mutant, "auto"), run(mutant, "ew")
    assert not torch.allclose(engine, honest, atol=1e-3)
    torch.testing.assert_close(engine, ew, rtol=1e-5, atol=1e-5)


def test_a_replaced_clip_runs_on_explicit_rows_and_otherwise_equals_the_closed_form():
    """A clip_and_accumulate replaced on the instance gets explicit per-sample rows (CNN: conv,
    GroupNorm and Linear rows); replaced by the honest method itself, that path equals the
    closed form; replaced by the no-clipping mutant, it does not."""
    t, u = _trainer("cnn", 0.7, 0.3, "engine"), _trainer("cnn", 0.7, 0.3, "engine")
    u.optimizer.clip_and_accumulate = types.MethodType(type(u.optimizer).clip_and_accumulate, u.optimizer)
    torch.testing.assert_close(_round(u)[0], _round(t)[0], rtol=1e-5, atol=1e-5)
    v = _trainer("cnn", 0.7, 0.3, "engine")
    v.optimizer.clip_and_accumulate = types.MethodType(_sum_without_clipping, v.optimizer)
    assert not torch.allclose(_round(v)[0], _round(t)[0], atol=1e-3)


# --------------------------------------------------------------------------- references == target

INFO = DatasetInfo(name="noise", input_shape=(12,), num_classes=2)


def _records(n: int, seed: int, first_id: int = 0) -> Records:
    g = torch.Generator().manual_seed(seed)
    return Records(ids=np.arange(first_id, first_id + n, dtype=np.int64), x=torch.randn(n, 12, generator=g),
                   y=torch.randint(0, 2, (n,), generator=g))


def _fed(site_records: dict) -> Federation:
    empty = next(iter(site_records.values())).take(np.zeros(0, np.int64))
    return Federation(info=INFO, sites=tuple(Site(n, r, empty) for n, r in site_records.items()), test=empty,
                      candidates=empty, population=empty)


def _cfg(defenses, **over):
    raw = tiny_raw(**{"model__name": "mlp", "model__hidden": [16], "train__rounds": 3, "train__batch_size": 8,
                      "train__momentum": 0.5, **over})
    raw["attacks"], raw["defenses"] = [], defenses
    return parse_experiment(raw)


SITES = {"a": _records(30, 1), "b": _records(23, 2, 100), "c": _records(41, 3, 200)}

# every defense bench.reference supports, with its noise on
REFERENCE_DEFENSES = {
    "none": [],
    "clipping": [{"name": "clipping", "max_norm": 0.05}],
    "client_dp": [{"name": "client_dp", "noise_multiplier": 0.5, "clip_norm": 0.05}],
    "secure_aggregation": [{"name": "secure_aggregation"}],
    "sparsify": [{"name": "sparsify", "keep_fraction": 0.3}],
    "dp_sgd": [{"name": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 0.5}],
    "dp_sgd+secure_aggregation": [{"name": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 0.5}, {"name": "secure_aggregation"}],
    "clipping+client_dp": [{"name": "clipping", "max_norm": 0.1}, {"name": "client_dp", "noise_multiplier": 0.5, "clip_norm": 0.05}],
}


def _defenses(cfg):
    from bench.runner import make_defenses

    return [(s.name, d) for s, d in zip(cfg.defenses, make_defenses(cfg))]


@pytest.mark.parametrize("name", list(REFERENCE_DEFENSES))
def test_k1_reference_equals_the_target_with_the_same_seed(name):
    """Reference k is the target pipeline with seed k: same batches, same noise, same defense
    code, so K = 1 reproduces run_federated to float tolerance with every noise source on."""
    cfg = _cfg(REFERENCE_DEFENSES[name])
    seeds = Seeds(11)
    initial = build_model(INFO, cfg.model, seeds.torch("init"))
    want = run_federated(_fed(SITES), initial, [d for _, d in _defenses(cfg)], cfg.train, cfg.privacy, seeds, evaluate=False)
    got = train_many([SITES], [11], INFO, cfg.model, cfg.train, cfg.privacy, _defenses(cfg))
    torch.testing.assert_close(got[0], want.final_params, rtol=1e-4, atol=1e-5)
    other = train_many([SITES], [12], INFO, cfg.model, cfg.train, cfg.privacy, _defenses(cfg))
    assert not torch.allclose(other[0], want.final_params, atol=1e-4)  # the seed matters


@pytest.mark.parametrize("name", ["dp_sgd", "clipping+client_dp", "sparsify"])
def test_k16_batched_equals_16_separate_runs(name):
    cfg = _cfg(REFERENCE_DEFENSES[name], train__rounds=2)
    rng = np.random.default_rng(0)
    feds = []
    for k in range(16):  # 16 different federations of the same sizes
        feds.append({s: _records(len(r), 1000 + 10 * k + i, 300 * i) for i, (s, r) in enumerate(SITES.items())})
    seeds = [int(s) for s in rng.integers(0, 2**31, 16)]
    batched = train_many(feds, seeds, INFO, cfg.model, cfg.train, cfg.privacy, _defenses(cfg))
    separate = torch.cat([train_many([f], [s], INFO, cfg.model, cfg.train, cfg.privacy, _defenses(cfg)) for f, s in zip(feds, seeds)])
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)


IMAGES = DatasetInfo(name="noise-images", input_shape=(1, 8, 8), num_classes=3, modality="image")


def _image_records(n: int, seed: int, first_id: int = 0) -> Records:
    g = torch.Generator().manual_seed(seed)
    return Records(ids=np.arange(first_id, first_id + n, dtype=np.int64), x=torch.randn(n, 1, 8, 8, generator=g),
                   y=torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("name", ["none", "dp_sgd"])
def test_cnn_references_run_by_hand_equal_the_target_and_batch_exactly(name):
    """The CNN's references (plain steps: summed_gradient over grouped convolutions; DP-SGD:
    the grouped hand-written pass) equal the target at K = 1, and K = 3 equals 3 × K = 1."""
    cfg = _cfg(REFERENCE_DEFENSES[name], data__name="digits", model__name="cnn", model__channels=4, train__rounds=2)
    sites = {"a": _image_records(20, 1), "b": _image_records(13, 2, 100)}
    empty = sites["a"].take(np.zeros(0, np.int64))
    fed = Federation(info=IMAGES, sites=tuple(Site(n, r, empty) for n, r in sites.items()), test=empty, candidates=empty, population=empty)
    seeds = Seeds(5)
    want = run_federated(fed, build_model(IMAGES, cfg.model, seeds.torch("init")), [d for _, d in _defenses(cfg)], cfg.train,
                         cfg.privacy, seeds, evaluate=False)
    got = train_many([sites], [5], IMAGES, cfg.model, cfg.train, cfg.privacy, _defenses(cfg))
    torch.testing.assert_close(got[0], want.final_params, rtol=1e-4, atol=1e-5)
    feds = [{s: _image_records(len(r), 50 + 10 * k + i, 300 * i) for i, (s, r) in enumerate(sites.items())} for k in range(3)]
    batched = train_many(feds, [1, 2, 3], IMAGES, cfg.model, cfg.train, cfg.privacy, _defenses(cfg))
    separate = torch.cat([train_many([f], [s], IMAGES, cfg.model, cfg.train, cfg.privacy, _defenses(cfg)) for f, s in zip(feds, [1, 2, 3])])
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
