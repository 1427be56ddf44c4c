"""Scoring of gradient-inversion attacks (:class:`~bench.types.Reconstructions`).

Reconstructed records are matched to the attacked hospital's true records with the
Hungarian method (``scipy.optimize.linear_sum_assignment``) before anything is measured,
so a reconstruction is never penalised for the order of a batch.

* Images: MSE, PSNR (data range 1: images are scaled to [0, 1]; reconstructions are
  clipped to that range first, as any attacker knowing the preprocessing would), SSIM
  (Wang et al. 2004, Gaussian window σ = 1.5, at most 7×7 and never larger than the
  image), label accuracy.
* Tabular (TabLeak, Vero et al. 2023): per-feature accuracy — a categorical feature is
  right when its argmax category is, a continuous one when it is within 0.319·std of the
  truth — the whole-record exact-match rate, and the same for a *prior baseline*: records
  drawn feature by feature from the population's marginals. The gain over that baseline
  is what the updates leaked beyond what anyone knows about the population.
* ``oracle_*``: the best restart chosen *with* the truth — an upper bound on what the
  attack could pick, never its result.
* ``psnr``, ``ssim`` and ``feature_accuracy`` carry 95 % percentile bootstrap intervals
  (``_ci_low``/``_ci_high``) over the reconstructed records of all targets, each record
  weighted as in the headline (the mean over targets of each target's mean over its records).
  With few records the interval is crude (4 one-record targets: 4 values to resample) and it
  collapses to the value itself for one record; it describes the spread over *these* records,
  not over restarts or seeds.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.signal import convolve2d

from bench.metrics.dispatch import score
from bench.metrics.membership import bootstrap_mean_ci
from bench.types import DatasetInfo, GroundTruth, Reconstruction, Reconstructions, Records

CONTINUOUS_TOLERANCE = 0.319  # TabLeak: a continuous feature is recovered within 0.319 std
BASELINE_DRAWS = 20
BASELINE_SEED = 0
INTERVAL_METRICS = ("psnr", "ssim", "feature_accuracy")  # headline metrics that carry a bootstrap interval


# --------------------------------------------------------------------------- matching


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (reconstructions) and columns (true records) of the minimum-cost matching."""
    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=np.float64))
    return rows, cols


# --------------------------------------------------------------------------- images


def pairwise_mse(rec: np.ndarray, true: np.ndarray) -> np.ndarray:
    a = rec.reshape(len(rec), -1)
    b = true.reshape(len(true), -1)
    return ((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2)


def psnr(mse: float, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (capped at 100 dB for a perfect match)."""
    if mse <= 1e-10 * data_range**2:
        return 100.0
    return float(10.0 * math.log10(data_range**2 / mse))


def gaussian_window(size: int, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(ax**2) / (2 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two images (C, H, W), averaged over channels (Wang et al. 2004)."""
    size = min(7, a.shape[-1], a.shape[-2])
    w = gaussian_window(size)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for x, y in zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])):
        f = lambda z: convolve2d(z, w, mode="valid")  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(float(s.mean()))
    return float(np.mean(vals))


def image_record_metrics(rec: torch.Tensor, labels, truth: Records) -> dict[str, np.ndarray]:
    """Per matched (reconstruction, truth) pair: MSE, PSNR, SSIM and (with labels) label hit."""
    r = rec.detach().double().clamp(0.0, 1.0).numpy()
    t = truth.x.double().numpy()
    cost = pairwise_mse(r, t)
    rows, cols = hungarian(cost)
    mses = cost[rows, cols]
    out = {
        "mse": mses,
        "psnr": np.array([psnr(m) for m in mses]),
        "ssim": np.array([ssim(r[i], t[j]) for i, j in zip(rows, cols)]),
    }
    if labels is not None:
        out["label_accuracy"] = (labels.numpy()[rows] == truth.y.numpy()[cols]).astype(np.float64)
    return out


def image_metrics(rec: torch.Tensor, labels, truth: Records) -> dict[str, float]:
    """MSE, PSNR, SSIM and label accuracy of matched (reconstruction, truth) pairs."""
    return {k: float(v.mean()) for k, v in image_record_metrics(rec, labels, truth).items()}


# --------------------------------------------------------------------------- tables


def decode_table(x: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Encoded rows -> one value per feature: category index, or standardised value."""
    cols = []
    for f in info.features:
        s, e = f.columns
        cols.append(x[:, s:e].argmax(axis=1).astype(np.float64) if f.kind == "categorical" else x[:, s].astype(np.float64))
    return np.stack(cols, axis=1)


def feature_hits(rec: np.ndarray, true: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """``hits[i, j, f]``: feature f of decoded reconstruction i equals that of true record j.

    Continuous features are standardised by the encoder (value = x·std + mean), so
    "within 0.319·std" is a distance of 0.319 in encoded units.
    """
    cat = np.array([f.kind == "categorical" for f in info.features])
    diff = np.abs(rec[:, None, :] - true[None, :, :])
    return np.where(cat[None, None, :], diff < 0.5, diff <= CONTINUOUS_TOLERANCE)


def matched_table_hits(rec: np.ndarray, true: np.ndarray, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits (matched pair × feature), rows and columns after matching by fewest wrong features."""
    hits = feature_hits(rec, true, info)
    dist = np.abs(rec[:, None, :] - true[None, :, :]).sum(axis=2)
    cost = (~hits).sum(axis=2) + 1e-6 * dist  # tie-break by distance
    rows, cols = hungarian(cost)
    return hits[rows, cols], rows, cols


def matched_table_scores(rec: np.ndarray, true: np.ndarray, info: DatasetInfo) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Feature accuracy and exact-match rate after matching by fewest wrong features."""
    h, rows, cols = matched_table_hits(rec, true, info)
    return float(h.mean()), float(h.all(axis=1).mean()), rows, cols


def prior_sample(population: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` records drawn feature by feature from the population's empirical marginals."""
    idx = rng.integers(0, len(population), size=(n, population.shape[1]))
    return population[idx, np.arange(population.shape[1])[None, :]]


def tabular_record_accuracy(rec: torch.Tensor, truth: Records, info: DatasetInfo) -> np.ndarray:
    """Per matched reconstruction, the fraction of its features recovered (TabLeak's rule)."""
    h, _, _ = matched_table_hits(decode_table(rec.detach().numpy(), info), decode_table(truth.x.numpy(), info), info)
    return h.mean(axis=1)


def tabular_metrics(rec: torch.Tensor, labels, truth: Records, info: DatasetInfo, population: Records) -> dict[str, float]:
    """TabLeak's accuracies, the prior baseline's, and the gains over it."""
    r = decode_table(rec.detach().numpy(), info)
    t = decode_table(truth.x.numpy(), info)
    acc, exact, rows, cols = matched_table_scores(r, t, info)
    pop = decode_table(population.x.numpy(), info)
    rng = np.random.default_rng(BASELINE_SEED)
    base = [matched_table_scores(prior_sample(pop, len(r), rng), t, info)[:2] for _ in range(BASELINE_DRAWS)]
    b_acc, b_exact = (float(v) for v in np.mean(base, axis=0))
    out = {
        "feature_accuracy": acc,
        "baseline_feature_accuracy": b_acc,
        "feature_accuracy_gain": acc - b_acc,
        "record_exact_match": exact,
        "baseline_record_exact_match": b_exact,
        "record_exact_match_gain": exact - b_exact,
    }
    if labels is not None:
        out["label_accuracy"] = float((labels.numpy()[rows] == truth.y.numpy()[cols]).mean())
    return out


# --------------------------------------------------------------------------- dispatch


def true_records(item: Reconstruction, truth: GroundTruth) -> Records:
    """The records the target really held: one hospital's members, or every participant's."""
    sites = item.sites or (item.target,)
    return Records.concat([truth.site_train[s] for s in sites])


def item_scores(item: Reconstruction, truth: GroundTruth) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One target's metrics, and per reconstructed record the :data:`INTERVAL_METRICS` that apply."""
    info = truth.info
    if info is None:
        raise ValueError("GroundTruth.info is missing: build the federation with bench.data.build_federation")
    true = true_records(item, truth)
    if info.modality == "image":
        per = image_record_metrics(item.x, item.labels, true)
        out = {k: float(v.mean()) for k, v in per.items()}
        if item.restarts is not None:  # upper bound: the restart the truth would pick
            out["oracle_psnr"] = max(image_metrics(x, None, true)["psnr"] for x in item.restarts)
        return out, {k: per[k] for k in ("psnr", "ssim")}
    population = truth.population if truth.population is not None else Records.concat(list(truth.site_train.values()))
    out = tabular_metrics(item.x, item.labels, true, info, population)
    if item.restarts is not None:
        r = decode_table(true.x.numpy(), info)
        out["oracle_feature_accuracy"] = max(
            matched_table_scores(decode_table(x.detach().numpy(), info), r, info)[0] for x in item.restarts
        )
    return out, {"feature_accuracy": tabular_record_accuracy(item.x, true, info)}


def item_metrics(item: Reconstruction, truth: GroundTruth) -> dict[str, float]:
    """One target's metrics (see the module docstring)."""
    return item_scores(item, truth)[0]


def interval_metrics(per_record: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """95 % bootstrap intervals of the headline metrics over reconstructed records.

    Args:
        per_record: for each target, its per-record values (:func:`item_scores`).

    Returns:
        ``<metric>_ci_low`` / ``<metric>_ci_high`` for each of :data:`INTERVAL_METRICS` present.
        Each record is weighted ``1 / its target's records``, so the weighted mean equals the
        headline (the mean over targets of per-target means).
    """
    out: dict[str, float] = {}
    for key in INTERVAL_METRICS:
        parts = [p[key] for p in per_record if key in p and len(p[key])]
        if not parts:
            continue
        values = np.concatenate(parts)
        weights = np.concatenate([np.full(len(p), 1.0 / len(p)) for p in parts])
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = bootstrap_mean_ci(values, weights)
    return out


def reconstruction_metrics(output: Reconstructions, truth: GroundTruth) -> dict[str, float]:
    """Each target's metrics, averaged over targets (``targets`` counts them), with bootstrap
    intervals of the headline metrics (:func:`interval_metrics`)."""
    scored = [item_scores(item, truth) for item in output.items]
    per = [m for m, _ in scored]
    keys = sorted(set().union(*per))
    out = {k: float(np.mean([m[k] for m in per if k in m])) for k in keys}
    out.update(interval_metrics([r for _, r in scored]))
    out["targets"] = float(len(per))
    out["records_per_target"] = float(np.mean([len(true_records(i, truth)) for i in output.items]))
    if output.iterations and output.seconds > 0:
        out["iterations_per_second"] = output.iterations / output.seconds
    return out


@score.register
def _(output: Reconstructions, truth: GroundTruth) -> dict[str, float]:
    return reconstruction_metrics(output, truth)
