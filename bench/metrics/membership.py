"""Membership-inference metrics: ROC, AUC, TPR at low FPR, advantage."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPR_LEVELS = (0.01, 0.001)


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


