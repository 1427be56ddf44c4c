"""Utility, membership and cost metrics. Only here does ground truth meet attack outputs."""

from __future__ import annotations

from functools import singledispatch
from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from bench.models import load_flat
from bench.types import Federation, GroundTruth, MembershipScores, Records, SourceGuesses

FPR_LEVELS = (0.01, 0.001)


# --------------------------------------------------------------------------- utility


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.softmax(model(x), dim=1).numpy().astype(np.float64)


def classification_metrics(proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and AUROC (one-vs-rest macro for >2 classes)."""
    pred = proba.argmax(axis=1)
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}
    labels = np.arange(proba.shape[1])
    present = np.unique(y)
    if len(present) < 2:
        out["auroc"] = float("nan")
    elif proba.shape[1] == 2:
        out["auroc"] = float(roc_auc_score(y, proba[:, 1]))
    else:
        p = proba[:, present] / proba[:, present].sum(axis=1, keepdims=True)
        out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=labels[present]))
    return out


def utility_metrics(model: torch.nn.Module, params: torch.Tensor, fed: Federation) -> dict[str, float]:
    """``utility/...`` metrics of ``params`` on the global and each hospital's test set."""
    load_flat(model, params)
    proba = predict_proba(model, fed.test.x)
    y = fed.test.y.numpy()
    glob = classification_metrics(proba, y)
    out = {
        "utility/test_accuracy": glob["accuracy"],
        "utility/test_balanced_accuracy": glob["balanced_accuracy"],
        "utility/test_auroc": glob["auroc"],
    }
    offset, accs = 0, []
    for site in fed.sites:
        n = len(site.test)
        acc = float((proba[offset : offset + n].argmax(1) == y[offset : offset + n]).mean())
        offset += n
        out[f"utility/site/{site.name}/accuracy"] = acc
        accs.append(acc)
    out["utility/worst_site_accuracy"] = min(accs)
    out["utility/site_accuracy_gap"] = max(accs) - min(accs)
    return out


# --------------------------------------------------------------------------- membership


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Largest TPR among ROC points with FPR <= ``level`` (0 if none)."""
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC, TPR at low FPR, best balanced accuracy and membership advantage (max TPR − FPR)."""
    is_member = np.asarray(is_member, bool)
    scores = np.asarray(scores, np.float64)
    if is_member.all() or (~is_member).all():
        raise ValueError("membership metrics need both members and non-members")
    scores = np.nan_to_num(scores, nan=-np.inf)
    scores = np.where(np.isneginf(scores), np.finfo(np.float64).min, scores)
    scores = np.where(np.isposinf(scores), np.finfo(np.float64).max, scores)
    fpr, tpr, _ = roc_curve(is_member, scores)
    out = {"auc": float(roc_auc_score(is_member, scores))}
    for level in FPR_LEVELS:
        out[f"tpr_at_fpr_{level:g}"] = tpr_at_fpr(fpr, tpr, level)
    adv = float(np.max(tpr - fpr))
    out["advantage"] = adv
    out["balanced_accuracy"] = 0.5 + adv / 2
    return out


def roc_points(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(is_member, bool), np.asarray(scores, np.float64))
    return fpr, tpr


def align(ids: np.ndarray, truth: GroundTruth) -> np.ndarray:
    pos = {int(i): k for k, i in enumerate(truth.candidate_ids)}
    try:
        return np.asarray([pos[int(i)] for i in ids], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"attack scored record id {exc} that is not a candidate") from None


@singledispatch
def score(output, truth: GroundTruth) -> dict[str, float]:
    """Score an attack output against the truth; dispatches on the output type."""
    raise TypeError(f"no scoring for {type(output).__name__}")


@score.register
def _(output: MembershipScores, truth: GroundTruth) -> dict[str, float]:
    idx = align(output.ids, truth)
    return membership_metrics(output.scores, truth.candidate_is_member[idx])


@score.register
def _(output: SourceGuesses, truth: GroundTruth) -> dict[str, float]:
    idx = align(output.ids, truth)
    correct = output.site_index == truth.candidate_site[idx]
    chance = 1.0 / len(truth.site_names)
    return {"accuracy": float(correct.mean()), "chance": chance, "lift": float(correct.mean() / chance)}


def records_to_numpy(records: Records) -> Mapping[str, np.ndarray]:
    return {"ids": records.ids, "x": records.x.numpy(), "y": records.y.numpy()}
