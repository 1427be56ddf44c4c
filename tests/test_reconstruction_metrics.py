"""Scoring of reconstructions: known answers for PSNR/SSIM, matching invariance, TabLeak's
tolerance, the prior baseline, oracle bounds and the opt-in rule for record CSVs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.artifacts import render
from bench.metrics import score
from bench.metrics.reconstruction import (
    CONTINUOUS_TOLERANCE, decode_table, feature_hits, image_metrics, prior_sample, psnr, ssim, tabular_metrics,
)
from bench.types import DatasetInfo, Feature, GroundTruth, Reconstruction, Reconstructions, Records

IMG = DatasetInfo("digits", (1, 8, 8), 10, modality="image")
TAB = DatasetInfo(
    "heart_disease", (4,), 2,
    features=(Feature("sex", "categorical", (0, 2), ("f", "m")), Feature("age", "continuous", (2, 3), mean=50.0, std=10.0),
              Feature("chol", "continuous", (3, 4), mean=200.0, std=40.0)),
)


def records(x, y) -> Records:
    return Records(ids=np.arange(len(x), dtype=np.int64), x=torch.as_tensor(x, dtype=torch.float32), y=torch.as_tensor(y))


def truth_of(site_records: dict, info: DatasetInfo, population: Records | None = None) -> GroundTruth:
    return GroundTruth(
        candidate_ids=np.zeros(0, np.int64), candidate_is_member=np.zeros(0, bool), candidate_site=np.zeros(0, np.int64),
        site_names=tuple(site_records), site_train=site_records, info=info, population=population,
    )


def test_psnr_and_ssim_known_answers():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1e-4) == pytest.approx(40.0)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 8, 8, generator=g).numpy().astype(np.float64)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + 0.3 * torch.randn(1, 8, 8, generator=g).numpy(), 0, 1)
    assert ssim(a, noisy) < 0.9
    assert ssim(a, 1 - a) < 0.0  # anti-correlated structure


def test_image_scores_do_not_depend_on_batch_order():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 8, 8, generator=g)
    y = torch.tensor([3, 1, 4, 1, 5])
    perm = torch.tensor([4, 2, 0, 3, 1])
    m = image_metrics(x[perm], y[perm], records(x, y))
    assert m["mse"] == 0.0 and m["psnr"] == 100.0 and m["ssim"] == pytest.approx(1.0) and m["label_accuracy"] == 1.0
    # a known amount of error: a constant offset of 0.1 on every pixel -> 20 dB
    off = image_metrics((x * 0.5 + 0.1)[perm], None, records(x * 0.5, y))
    assert off["psnr"] == pytest.approx(20.0, abs=1e-4)


def test_reconstructions_are_clipped_to_the_data_range():
    x = torch.full((1, 1, 8, 8), 0.5)
    assert image_metrics(torch.full((1, 1, 8, 8), 7.0), None, records(x, [0]))["mse"] == pytest.approx(0.25)


def test_tabular_tolerance_is_0_319_std():
    true = decode_table(np.array([[1, 0, 0.0, 0.0]], np.float32), TAB)
    near = decode_table(np.array([[1, 0, CONTINUOUS_TOLERANCE - 1e-3, -0.3]], np.float32), TAB)
    far = decode_table(np.array([[0.4, 0.6, CONTINUOUS_TOLERANCE + 1e-3, 0.0]], np.float32), TAB)
    assert feature_hits(near, true, TAB)[0, 0].tolist() == [True, True, True]
    assert feature_hits(far, true, TAB)[0, 0].tolist() == [False, False, True]


def test_tabular_scores_and_prior_baseline():
    g = torch.Generator().manual_seed(2)
    n = 200
    sex = torch.nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2).float()
    pop = records(torch.cat([sex, torch.randn(n, 2, generator=g)], 1), torch.randint(0, 2, (n,), generator=g))
    true = pop.take(np.arange(6))
    perfect = tabular_metrics(true.x[[5, 4, 3, 2, 1, 0]], true.y[[5, 4, 3, 2, 1, 0]], true, TAB, pop)
    assert perfect["feature_accuracy"] == 1.0 and perfect["record_exact_match"] == 1.0 and perfect["label_accuracy"] == 1.0
    # the prior baseline: sex right about half the time, each continuous feature within
    # ±0.319 std about a quarter of the time (more after matching picks the best pairs)
    assert 0.2 < perfect["baseline_feature_accuracy"] < 0.7
    assert perfect["feature_accuracy_gain"] == pytest.approx(1.0 - perfect["baseline_feature_accuracy"])
    # a reconstruction that *is* a prior draw gains nothing on average
    decoded = decode_table(pop.x.numpy(), TAB)

    def encoded_draw(seed):
        d = prior_sample(decoded, 6, np.random.default_rng(seed))
        return torch.as_tensor(np.concatenate([np.eye(2)[d[:, 0].astype(int)], d[:, 1:]], axis=1), dtype=torch.float32)

    draws = [tabular_metrics(encoded_draw(s), None, true, TAB, pop) for s in range(30)]
    assert abs(np.mean([d["feature_accuracy_gain"] for d in draws])) < 0.05


def test_prior_sample_keeps_each_marginal():
    pop = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    s = prior_sample(pop, 500, np.random.default_rng(0))
    assert np.all(s[:, 0] == 0.0) and set(np.unique(s[:, 1])) == {1.0, 2.0, 3.0}


def test_score_uses_all_participants_for_the_aggregate_and_reports_an_oracle_bound():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 8, 8, generator=g), torch.rand(1, 1, 8, 8, generator=g)
    truth = truth_of({"h1": records(a, [1]), "h2": records(b, [2])}, IMG)
    rec = torch.cat([b, a])
    restarts = torch.stack([rec * 0.5, rec])  # the attacker picked the worse restart
    out = Reconstructions(items=(Reconstruction(1, "aggregate", rec * 0.5, torch.tensor([2, 1]), 0.3, sites=("h1", "h2"), restarts=restarts),))
    s = score(out, truth)
    assert s["records_per_target"] == 2 and s["label_accuracy"] == 1.0
    assert s["oracle_psnr"] == 100.0 and s["psnr"] < 20.0


def test_record_csv_only_for_public_data_or_on_opt_in():
    x = torch.tensor([[1.0, 0.0, 0.5, -1.0]])
    item = Reconstruction(1, "h1", x.clone(), torch.tensor([1]), 0.0, sites=("h1",))
    for info, opt_in, expect in [(TAB, False, True), (DatasetInfo("csv", (4,), 2, features=TAB.features), False, False),
                                 (DatasetInfo("csv", (4,), 2, features=TAB.features), True, True)]:
        truth = truth_of({"h1": records(x, [1])}, info)
        files = render(Reconstructions(items=(item,), write_records=opt_in), truth, info, "tableak")
        assert ("attacks/tableak/round1_h1.csv" in files) is expect
        assert "attacks/tableak/disclosure.json" in files
    text = render(Reconstructions(items=(item,)), truth_of({"h1": records(x, [1])}, TAB), TAB, "tableak")["attacks/tableak/round1_h1.csv"].decode()
    assert "true" in text and "reconstructed" in text and ",f," in text and "55" in text  # age = 0.5·10 + 50


def test_image_grid_is_a_png():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    item = Reconstruction(1, "h1", x, torch.tensor([0, 1]), 0.0, sites=("h1",))
    files = render(Reconstructions(items=(item,)), truth_of({"h1": records(x, [0, 1])}, IMG), IMG, "ig")
    assert files["attacks/ig/round1_h1.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isfinite(score(Reconstructions(items=(item,)), truth_of({"h1": records(x, [0, 1])}, IMG))["psnr"])


def test_headline_intervals_bracket_the_headline_and_weight_targets_equally():
    # two targets: h1 rebuilt exactly from 1 record (100 dB), h2's 3 records each off by a
    # known constant (20, 30, 40 dB); the headline is the mean over targets of per-target
    # means, (100 + 30) / 2 = 65, and the weighted bootstrap must centre on it, not on the
    # pooled record mean (100 + 20 + 30 + 40) / 4 = 47.5
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(1, 1, 8, 8, generator=g) * 0.5, torch.rand(3, 1, 8, 8, generator=g) * 0.5
    off = torch.tensor([0.1, 10 ** -1.5, 0.01]).view(3, 1, 1, 1)  # RMSE -> 20, 30, 40 dB
    truth = truth_of({"h1": records(a, [0]), "h2": records(b, [0, 1, 2])}, IMG)
    out = Reconstructions(items=(Reconstruction(1, "h1", a.clone(), None, 0.0, sites=("h1",)),
                                 Reconstruction(1, "h2", b + off, None, 0.0, sites=("h2",))))
    s = score(out, truth)
    assert s["psnr"] == pytest.approx(65.0, abs=1e-3)
    assert s["psnr_ci_low"] <= s["psnr"] <= s["psnr_ci_high"]
    assert 20.0 <= s["psnr_ci_low"] < 65.0 < s["psnr_ci_high"] <= 100.0
    assert s["ssim_ci_low"] <= s["ssim"] <= s["ssim_ci_high"]


def test_exact_tabular_reconstruction_has_a_degenerate_interval_at_one():
    # the analytic attack's exact recovery must read 100 % [100 %, 100 %], not a range
    g = torch.Generator().manual_seed(6)
    sex = torch.nn.functional.one_hot(torch.randint(0, 2, (4,), generator=g), 2).float()
    recs = records(torch.cat([sex, torch.randn(4, 2, generator=g)], 1), [0, 1, 0, 1])
    truth = truth_of({f"h{i}": recs.take(np.array([i])) for i in range(4)}, TAB, population=recs)
    out = Reconstructions(items=tuple(Reconstruction(1, f"h{i}", recs.x[i : i + 1].clone(), None, 0.0, sites=(f"h{i}",))
                                      for i in range(4)))
    s = score(out, truth)
    assert s["feature_accuracy"] == s["feature_accuracy_ci_low"] == s["feature_accuracy_ci_high"] == 1.0
