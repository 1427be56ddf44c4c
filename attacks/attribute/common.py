"""What every attribute inference attack shares: the target attribute, hiding it, candidate
inputs, and the adversary's auxiliary knowledge (prior and imputation model), cross-fitted.

The adversary knows every feature of a record except the sensitive one (and, optionally, its
label). It also holds auxiliary data of the same population (``OutsiderView.population``),
attribute included. Here that population *is* the candidates, so every quantity fit on it is
cross-fitted: a record's prior, band representatives and imputation come from the folds that do
not contain it, and its own attribute never informs its own guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bench.types import ConfigError, DatasetInfo, Feature, Records, safe_label
from bench.lazy import lazy

# scipy and torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without them
torch = lazy("torch", globals())
optimize = lazy("scipy.optimize", globals())


@dataclass(frozen=True)
class Target:
    """A sensitive attribute to infer.

    Attributes:
        name: a feature of the dataset (heart disease: ``sex``, ``age``, ``cp`` ...; csv: any column).
        bands: cut points on the raw scale for a continuous feature (``[55]``: ``under_55`` and
            ``55_and_over``, each band ``[low, high)``); empty for a categorical feature.
    """

    name: str
    bands: tuple[float, ...] = ()


def band_labels(bands) -> tuple[str, ...]:
    """``[55]`` -> ``under_55``, ``55_and_over`` (as ``fairness.attributes`` names them)."""

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    mids = [f"{num(a)}_to_{num(b)}" for a, b in zip(bands, bands[1:])]
    return tuple([f"under_{num(bands[0])}", *mids, f"{num(bands[-1])}_and_over"])


def feature_of(info: DatasetInfo, target: Target, where: str) -> Feature:
    """The dataset feature ``target`` names, checked against its kind."""
    by_name = {f.name: f for f in info.features}
    if target.name not in by_name:
        import difflib

        close = difflib.get_close_matches(str(target.name), list(by_name), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.name: {target.name!r} is not a feature of {info.name}{hint}; "
                          f"features: {', '.join(by_name) or 'none (not tabular)'}")
    feat = by_name[target.name]
    if feat.kind == "continuous" and not target.bands:
        raise ConfigError(f"{where}.bands: {target.name!r} is continuous; give cut points, e.g. {{name: {target.name}, bands: [55]}}")
    if feat.kind == "categorical" and target.bands:
        raise ConfigError(f"{where}.bands: {target.name!r} is categorical (its categories are the values); drop bands")
    b = target.bands
    if any(not np.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
        raise ConfigError(f"{where}.bands: got {list(b)}; expected finite, strictly increasing cut points, e.g. [45, 60]")
    return feat


def groups_of(feat: Feature, bands) -> tuple[str, ...]:
    return band_labels(bands) if feat.kind == "continuous" else tuple(safe_label(c) for c in feat.categories)


def codes_of(x: torch.Tensor, feat: Feature, bands) -> np.ndarray:
    """The attribute's value index of each encoded record (category, or band of the raw value).

    The adversary uses it on its auxiliary data only; scoring uses the same decoding on the
    candidates (``bench.metrics.attribute``).
    """
    a, b = feat.columns
    cols = x.reshape(len(x), -1)[:, a:b].detach().numpy().astype(np.float64)
    if feat.kind == "categorical":
        return cols.argmax(axis=1).astype(np.int64)
    raw = cols[:, 0] * feat.std + feat.mean
    return np.searchsorted(np.asarray(bands, np.float64), raw, side="right").astype(np.int64)


def hide(x: torch.Tensor, feat: Feature) -> torch.Tensor:
    """``x`` with the attribute's columns zeroed: what the adversary knows of a target."""
    a, b = feat.columns
    out = x.reshape(len(x), -1).clone()
    out[:, a:b] = 0.0
    return out


def with_value(x_hidden: torch.Tensor, feat: Feature, value: np.ndarray) -> torch.Tensor:
    """``x_hidden`` with the attribute set to ``value`` (per record: a one-hot index for a
    categorical feature, an encoded number for a continuous one)."""
    a, b = feat.columns
    out = x_hidden.clone()
    if feat.kind == "categorical":
        out[:, a:b] = torch.nn.functional.one_hot(torch.as_tensor(value, dtype=torch.int64), b - a).to(out.dtype)
    else:
        out[:, a] = torch.as_tensor(value, dtype=out.dtype)
    return out


# --------------------------------------------------------------------------- the adversary's auxiliary model


def fit_softmax(z: np.ndarray, t: np.ndarray, classes: int, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression (L2, L-BFGS): weights (d + 1, classes) for ``[z, 1]``."""
    n, d = z.shape
    zb = np.hstack([z, np.ones((n, 1))])
    onehot = np.eye(classes)[t]

    def loss(w):
        w = w.reshape(d + 1, classes)
        logits = zb @ w
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        reg = 0.5 * l2 * float((w[:-1] ** 2).sum())
        grad = zb.T @ (np.exp(logp) - onehot) / n
        grad[:-1] += l2 * w[:-1]
        return -float((onehot * logp).sum()) / n + reg, grad.ravel()

    res = optimize.minimize(loss, np.zeros((d + 1) * classes), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(d + 1, classes)


def softmax_log_proba(w: np.ndarray, z: np.ndarray) -> np.ndarray:
    logits = np.hstack([z, np.ones((len(z), 1))]) @ w
    logits -= logits.max(1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


@dataclass(frozen=True)
class Auxiliary:
    """What the adversary learnt from auxiliary records (never the targets' own attribute).

    Attributes:
        log_prior: (V,) log marginal frequency of each value (Laplace-smoothed).
        values: (V,) the value each candidate input takes (a one-hot index, or the encoded
            median of the band's auxiliary records).
        weights: the imputation model (see :func:`fit_softmax`) on the hidden features (and
            the label when known).
    """

    log_prior: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    weights_unlabelled: np.ndarray  # the same model without the label (``weights`` when the label is unknown)


def imputation_inputs(x_hidden: torch.Tensor, y: torch.Tensor, num_classes: int, use_label: bool) -> np.ndarray:
    z = x_hidden.detach().numpy().astype(np.float64)
    if use_label:
        z = np.hstack([z, np.eye(num_classes)[y.numpy()]])
    return z


def fit_auxiliary(aux: Records, feat: Feature, bands, groups: tuple[str, ...], num_classes: int, use_label: bool) -> Auxiliary:
    """The prior, band representatives and imputation model from auxiliary records ``aux``."""
    v = len(groups)
    codes = codes_of(aux.x, feat, bands)
    counts = np.bincount(codes, minlength=v).astype(np.float64)
    log_prior = np.log((counts + 1.0) / (counts.sum() + v))
    if feat.kind == "categorical":
        values = np.arange(v, dtype=np.float64)
    else:
        enc = aux.x.reshape(len(aux), -1)[:, feat.columns[0]].numpy().astype(np.float64)
        # a band without auxiliary records falls back to its cut point (encoded)
        edges = (np.asarray(bands, np.float64) - feat.mean) / feat.std
        fallback = np.concatenate([[edges[0] - 1.0], edges])
        values = np.asarray([np.median(enc[codes == k]) if (codes == k).any() else fallback[k] for k in range(v)])
    hidden = hide(aux.x, feat)
    w = fit_softmax(imputation_inputs(hidden, aux.y, num_classes, use_label), codes, v)
    w0 = fit_softmax(imputation_inputs(hidden, aux.y, num_classes, False), codes, v) if use_label else w
    return Auxiliary(log_prior=log_prior, values=values, weights=w, weights_unlabelled=w0)


@dataclass(frozen=True)
class CrossFit:
    """Which auxiliary fit applies to each target: targets that are auxiliary records get the
    fit of the folds without them; the others the fit on all auxiliary records."""

    fits: tuple[Auxiliary, ...]
    index: np.ndarray  # per target, the index into ``fits``
    extras: dict = field(default_factory=dict)


def cross_fit(aux: Records, targets: Records, feat: Feature, bands, groups, num_classes: int, use_label: bool,
              folds: int, rng: np.random.Generator) -> CrossFit:
    """Fit :class:`Auxiliary` per fold (``folds`` of the auxiliary records) and assign each target."""
    if len(aux) < 2 * folds:
        raise ConfigError(f"attacks.attribute_inference: {len(aux)} auxiliary records are too few for {folds} folds; lower folds")
    fold = rng.permutation(len(aux)) % folds
    fits = [fit_auxiliary(aux.take(np.flatnonzero(fold != f)), feat, bands, groups, num_classes, use_label) for f in range(folds)]
    fits.append(fit_auxiliary(aux, feat, bands, groups, num_classes, use_label))
    where = {int(i): int(f) for i, f in zip(aux.ids, fold)}
    index = np.asarray([where.get(int(i), folds) for i in targets.ids], dtype=np.int64)
    return CrossFit(fits=tuple(fits), index=index)


def imputation_scores(cf: CrossFit, hidden: torch.Tensor, y: torch.Tensor, num_classes: int, use_label: bool) -> np.ndarray:
    """(n, V) log-probabilities of the imputation baseline (no access to the target model)."""
    z = imputation_inputs(hidden, y, num_classes, use_label)
    out = np.empty((len(z), len(cf.fits[0].log_prior)))
    for k, fit in enumerate(cf.fits):
        sel = cf.index == k
        if sel.any():
            w = fit.weights if use_label or fit.weights is fit.weights_unlabelled else fit.weights_unlabelled
            out[sel] = softmax_log_proba(w, z[sel])
    return out


def candidate_values(cf: CrossFit) -> np.ndarray:
    """(n, V) the input value of each candidate value for each target."""
    return np.stack([cf.fits[k].values for k in cf.index]) if len(cf.index) else np.zeros((0, len(cf.fits[0].values)))


def log_priors(cf: CrossFit) -> np.ndarray:
    return np.stack([cf.fits[k].log_prior for k in cf.index]) if len(cf.index) else np.zeros((0, len(cf.fits[0].log_prior)))


def unique_max(scores: np.ndarray, threshold: Optional[float] = None, tol: float = 1e-9) -> np.ndarray:
    """SACRO-ML's "don't know" rule: answer only where one value's score is the unique maximum
    (ties within ``tol`` abstain) and, with ``threshold``, where that maximum reaches it."""
    top = np.sort(scores, axis=1)
    ok = (top[:, -1] - top[:, -2] > tol) if scores.shape[1] > 1 else np.ones(len(scores), bool)
    if threshold is not None:
        ok &= top[:, -1] >= threshold
    return ok
