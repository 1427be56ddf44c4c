"""Scoring attribute inference against imputation, on members and on non-members.

Jayaraman and Evans (2022) showed that most attribute inference is imputation: an adversary
who never queries the model guesses as well from the population's correlations. What the
model leaks about its *training* records is what the attack gains over imputation on members
beyond what it gains on non-members:

    signal = (attack − imputation on members) − (attack − imputation on non-members).

Every difference carries a 95 % percentile bootstrap interval (records resampled within
members and within non-members; attack and imputation paired on the same records), and a
verdict code (+1 above 0, 0 no detectable signal, −1 below). Where the attack says "don't
know" (SACRO-ML's rule) both attack and imputation are scored on the records it answered, and
``coverage`` says how many those were.

Metric names (under ``attack/<attack>/``): ``<attribute>/attack_accuracy_members``,
``.../imputation_accuracy_nonmembers``, ``.../advantage_members`` (with ``_ci_low`` /
``_ci_high``), ``.../signal`` (with its interval and ``signal_verdict``), for a binary attribute
the AUCs ``attack_auc_members`` etc., and per patient subgroup of ``fairness.attributes``
``<attribute>/group/<sensitive>/<group>/signal`` (with interval and counts; a subgroup with
fewer than ``MIN_COUNT`` members or non-members gives counts only).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.types import AttributeGuesses, AttributeInferences, Feature, GroundTruth, safe_label

BOOTSTRAP = 1000
MIN_COUNT = 10
ALPHA = 0.05


def true_codes(truth: GroundTruth, item: AttributeGuesses, idx: np.ndarray) -> np.ndarray:
    """The attribute's value index of each candidate ``idx``, decoded from its own features."""
    if truth.candidates is None or truth.info is None:
        raise ValueError("attribute scoring needs GroundTruth.candidates and .info (build_federation sets both)")
    feat: Optional[Feature] = next((f for f in truth.info.features if f.name == item.attribute), None)
    if feat is None:
        raise ValueError(f"attribute {item.attribute!r} is not a feature of {truth.info.name}")
    a, b = feat.columns
    x = truth.candidates.x.reshape(len(truth.candidates), -1)[idx, a:b].numpy().astype(np.float64)
    if feat.kind == "categorical":
        return x.argmax(axis=1).astype(np.int64)
    return np.searchsorted(np.asarray(item.bands, np.float64), x[:, 0] * feat.std + feat.mean, side="right").astype(np.int64)


def _interval(boot: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(boot, ALPHA / 2)), float(np.quantile(boot, 1 - ALPHA / 2))


def _verdict(low: float, high: float) -> float:
    return 1.0 if low > 0 else -1.0 if high < 0 else 0.0


def signal_metrics(att_ok: np.ndarray, imp_ok: np.ndarray, member: np.ndarray, seed: int = 0,
                   bootstrap: int = BOOTSTRAP) -> dict[str, float]:
    """Accuracies, advantages and the signal with bootstrap intervals (see the module doc).

    Args:
        att_ok, imp_ok: per record, whether the attack / the imputation guessed right.
        member: per record, whether it is a training record.
        seed: the bootstrap's seed (scoring is deterministic).
        bootstrap: resamples.
    """
    att_ok, imp_ok, member = (np.asarray(a, bool) for a in (att_ok, imp_ok, member))
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    boots = {}
    for name, sel in (("members", member), ("nonmembers", ~member)):
        d = att_ok[sel].astype(np.float64) - imp_ok[sel].astype(np.float64)
        n = int(sel.sum())
        out[f"n_{name}"] = float(n)
        if n == 0:
            continue
        out[f"attack_accuracy_{name}"] = float(att_ok[sel].mean())
        out[f"imputation_accuracy_{name}"] = float(imp_ok[sel].mean())
        out[f"advantage_{name}"] = float(d.mean())
        boots[name] = d[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1) if bootstrap else np.full(1, d.mean())
        out[f"advantage_{name}_ci_low"], out[f"advantage_{name}_ci_high"] = _interval(boots[name])
    if len(boots) == 2:
        out["signal"] = out["advantage_members"] - out["advantage_nonmembers"]
        low, high = _interval(boots["members"] - boots["nonmembers"])
        out["signal_ci_low"], out["signal_ci_high"] = low, high
        out["signal_verdict"] = _verdict(low, high)
    return out


def _auc(score: np.ndarray, positive: np.ndarray) -> Optional[float]:
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def guesses_metrics(item: AttributeGuesses, truth: GroundTruth) -> dict[str, float]:
    """The metrics of one attribute (names relative to ``<attribute>/``)."""
    from bench.metrics.dispatch import align

    idx = align(item.ids, truth)
    member = truth.candidate_is_member[idx]
    true = true_codes(truth, item, idx)
    answered = np.asarray(item.answered, bool)
    att_ok = item.attack.argmax(axis=1) == true
    imp_ok = item.imputation.argmax(axis=1) == true
    out = signal_metrics(att_ok[answered], imp_ok[answered], member[answered])
    for name, sel in (("members", member), ("nonmembers", ~member)):
        if sel.any():
            out[f"coverage_{name}"] = float(answered[sel].mean())
    if len(item.groups) == 2:  # binary attribute: threshold-free AUC of "value 1 rather than 0"
        for name, sel in (("members", member & answered), ("nonmembers", ~member & answered)):
            for who, s in (("attack", item.attack), ("imputation", item.imputation)):
                auc = _auc(s[sel, 1] - s[sel, 0], true[sel] == 1)
                if auc is not None:
                    out[f"{who}_auc_{name}"] = auc
    for attr in truth.sensitive:  # per patient subgroup (fairness.attributes)
        codes = attr.of_any(item.ids)
        for g, label in enumerate(attr.groups):
            sel = answered & (codes == g)
            nm, nn = int((sel & member).sum()), int((sel & ~member).sum())
            key = f"group/{attr.name}/{safe_label(label)}"
            out[f"{key}/n_members"], out[f"{key}/n_nonmembers"] = float(nm), float(nn)
            if min(nm, nn) < MIN_COUNT:
                continue  # too few: counts, never a number
            sub = signal_metrics(att_ok[sel], imp_ok[sel], member[sel], seed=1 + g)
            for k in ("signal", "signal_ci_low", "signal_ci_high", "signal_verdict", "advantage_members", "advantage_nonmembers"):
                out[f"{key}/{k}"] = sub[k]
    return out


def attribute_metrics(output: AttributeInferences, truth: GroundTruth) -> dict[str, float]:
    """Every attribute's metrics, named ``<attribute>/<metric>``."""
    out: dict[str, float] = {}
    for item in output.items:
        out.update({f"{safe_label(item.attribute)}/{k}": v for k, v in guesses_metrics(item, truth).items()})
    return out


def _register() -> None:
    from bench.metrics.dispatch import score

    @score.register
    def _(output: AttributeInferences, truth: GroundTruth) -> dict[str, float]:
        return attribute_metrics(output, truth)


_register()
