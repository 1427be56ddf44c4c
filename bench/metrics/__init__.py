"""Scoring: utility, membership (``bench.metrics.membership``) and reconstruction
(``bench.metrics.reconstruction``). Only here does ground truth meet attack outputs.

:func:`score` dispatches on the type of an attack's output.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Mapping

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from bench.metrics.membership import FPR_LEVELS, membership_metrics, roc_points  # noqa: F401
from bench.models import load_flat
from bench.types import Federation, GroundTruth, MembershipScores, Records, SourceGuesses



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
    # Source inference (Hu et al. 2021) asks about records known to be training records:
    # the headline accuracy is over members; non-members' "source" is only where they were held out.
    member = truth.candidate_is_member[idx]
    acc = float(correct[member].mean()) if member.any() else float("nan")
    return {
        "accuracy": acc,
        "chance": chance,
        "lift": acc / chance,
        "accuracy_nonmembers": float(correct[~member].mean()) if (~member).any() else float("nan"),
    }


def records_to_numpy(records: Records) -> Mapping[str, np.ndarray]:
    return {"ids": records.ids, "x": records.x.numpy(), "y": records.y.numpy()}


from bench.metrics import reconstruction  # noqa: E402,F401  (registers scoring of Reconstructions)
