"""Scoring: utility, membership (``bench.metrics.membership``), source inference and
reconstruction (``bench.metrics.reconstruction``). Only here does ground truth meet attack
outputs.

:func:`score` dispatches on the type of an attack's output.

Source inference is scored against the *non-member baseline*: the same attack's accuracy on
held-out records of the same hospitals. An attack that recognises a hospital's population
(its case mix, its label skew) is as accurate on records the model never saw as on training
records; only the difference, ``lift_over_nonmembers``, is evidence that training records
leaked their source. It carries a 95 % Newcombe (Wilson-score) interval and a verdict code
``lift_over_nonmembers_verdict``: +1 members higher, 0 no detectable difference, −1 members
lower (:data:`VERDICT_WORDS`).
"""

from __future__ import annotations

from typing import Mapping

import math

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from bench.metrics.membership import CONFIDENCE_ALPHA, FPR_LEVELS, membership_metrics, roc_points  # noqa: F401
from bench.models import load_flat
from bench.metrics.dispatch import align, score  # noqa: F401  (the leaf every scorer registers with)
from bench.types import Federation, GroundTruth, MembershipScores, Records, SourceGuesses

VERDICT_WORDS = {1.0: "higher", 0.0: "no detectable difference", -1.0: "lower"}

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


def majority_baseline(y: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent label of ``y`` (the best constant guess)."""
    y = np.asarray(y)
    if y.size == 0:
        return float("nan")
    return float(np.unique(y, return_counts=True)[1].max() / y.size)


#: a hospital with fewer test records than this gets its count, never an accuracy (FairnessConfig.min_count's default)
SITE_MIN_COUNT = 10


def utility_metrics(model: torch.nn.Module, params: torch.Tensor, fed: Federation, min_count: int = SITE_MIN_COUNT) -> dict[str, float]:
    """``utility/...`` metrics of ``params`` on the global and each hospital's test set.

    ``utility/majority_baseline`` is the test accuracy of always answering the test set's most
    frequent class: a test accuracy is a result only above it.

    Per hospital: ``utility/site/<name>/count`` (its test records) always; its ``accuracy`` with a
    95 % Clopper–Pearson interval (``accuracy_ci_low``/``_ci_high``) only from ``min_count`` test
    records, else ``too_few = 1``: an accuracy of 0.0 or 1.0 from two patients is not a number.
    ``utility/worst_site_accuracy`` (with the worst hospital's interval) and ``site_accuracy_gap``
    consider only the hospitals that pass; ``utility/sites_below_min_count`` counts the others.
    """
    from bench.metrics.membership import clopper_pearson

    load_flat(model, params)
    proba = predict_proba(model, fed.test.x)
    y = fed.test.y.numpy()
    glob = classification_metrics(proba, y)
    out = {
        "utility/test_accuracy": glob["accuracy"],
        "utility/majority_baseline": majority_baseline(y),
        "utility/test_balanced_accuracy": glob["balanced_accuracy"],
        "utility/test_auroc": glob["auroc"],
    }
    offset, accs, below = 0, [], 0
    for site in fed.sites:
        n = len(site.test)
        right = int((proba[offset : offset + n].argmax(1) == y[offset : offset + n]).sum())
        offset += n
        out[f"utility/site/{site.name}/count"] = float(n)
        if n < min_count:
            out[f"utility/site/{site.name}/too_few"] = 1.0
            below += 1
            continue
        low, high = clopper_pearson(right, n)
        out[f"utility/site/{site.name}/accuracy"] = right / n
        out[f"utility/site/{site.name}/accuracy_ci_low"] = low
        out[f"utility/site/{site.name}/accuracy_ci_high"] = high
        accs.append((right / n, low, high))
    out["utility/sites_below_min_count"] = float(below)
    if accs:
        worst = min(accs)
        out["utility/worst_site_accuracy"] = worst[0]
        out["utility/worst_site_accuracy_ci_low"], out["utility/worst_site_accuracy_ci_high"] = worst[1], worst[2]
    if len(accs) >= 2:
        out["utility/site_accuracy_gap"] = max(accs)[0] - worst[0]
    return out


@score.register
def _(output: MembershipScores, truth: GroundTruth) -> dict[str, float]:
    idx = align(output.ids, truth)
    return membership_metrics(output.scores, truth.candidate_is_member[idx])


def wilson_interval(k: int, n: int, alpha: float = CONFIDENCE_ALPHA) -> tuple[float, float]:
    """Wilson score ``1 − alpha`` interval of a binomial proportion ``k/n``."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n and n > 0; got k={k}, n={n}")
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k2: int, n2: int, alpha: float = CONFIDENCE_ALPHA) -> tuple[float, float, float]:
    """``k1/n1 − k2/n2`` of two independent proportions with Newcombe's hybrid score interval.

    Newcombe (1998), method 10: the Wilson intervals of both proportions combined; it keeps
    close to nominal coverage down to small counts and at proportions near 0 or 1, where the
    Wald interval does not.

    Returns:
        ``(difference, low, high)``.
    """
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, alpha)
    l2, u2 = wilson_interval(k2, n2, alpha)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def verdict(low: float, high: float) -> float:
    """+1 if an interval of a difference lies above 0, −1 if below, 0 if it contains 0."""
    return 1.0 if low > 0 else -1.0 if high < 0 else 0.0


def source_metrics(correct: np.ndarray, member: np.ndarray, num_sites: int) -> dict[str, float]:
    """Source-inference accuracy on members, on non-members, and the lift of the former.

    Args:
        correct: per candidate, whether the guessed hospital is the record's hospital (a
            member's training hospital, a non-member's hospital of origin).
        member: per candidate, whether it is a training record.
        num_sites: number of hospitals K (chance is 1/K).

    Returns:
        ``accuracy`` (members: Hu et al.'s headline, for records known to be training records),
        ``chance`` = 1/K, ``lift`` = accuracy / chance (its long-standing meaning; it credits
        the attack with what it knows of each hospital's population), ``accuracy_nonmembers``,
        and, when both groups are present, ``lift_over_nonmembers`` = accuracy −
        accuracy_nonmembers with its 95 % interval (``_ci_low``/``_ci_high``) and
        ``lift_over_nonmembers_verdict`` (+1 / 0 / −1, :data:`VERDICT_WORDS`).
    """
    correct, member = np.asarray(correct, bool), np.asarray(member, bool)
    chance = 1.0 / num_sites
    k1, n1 = int(correct[member].sum()), int(member.sum())
    k2, n2 = int(correct[~member].sum()), int((~member).sum())
    acc = k1 / n1 if n1 else float("nan")
    out = {
        "accuracy": acc,
        "chance": chance,
        "lift": acc / chance,
        "accuracy_nonmembers": k2 / n2 if n2 else float("nan"),
    }
    if n1 and n2:
        d, low, high = difference_interval(k1, n1, k2, n2)
        out["lift_over_nonmembers"] = d
        out["lift_over_nonmembers_ci_low"] = low
        out["lift_over_nonmembers_ci_high"] = high
        out["lift_over_nonmembers_verdict"] = verdict(low, high)
    return out


@score.register
def _(output: SourceGuesses, truth: GroundTruth) -> dict[str, float]:
    idx = align(output.ids, truth)
    correct = output.site_index == truth.candidate_site[idx]
    # Hu et al. (2021) ask about records known to be training records; the non-members of the
    # same hospitals are the control that separates "recognises the hospital's population"
    # from "recognises its training records"
    return source_metrics(correct, truth.candidate_is_member[idx], len(truth.site_names))


def records_to_numpy(records: Records) -> Mapping[str, np.ndarray]:
    return {"ids": records.ids, "x": records.x.numpy(), "y": records.y.numpy()}


from bench.metrics import reconstruction  # noqa: E402,F401  (registers scoring of Reconstructions)
from bench.metrics import attribute  # noqa: E402,F401  (registers scoring of AttributeInferences)
