"""A raw table before splitting and encoding, and the encoder fit on training records only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from bench.types import Feature


@dataclass(frozen=True)
class Column:
    """A raw column: continuous, or categorical with its category codes (as floats)."""

    name: str
    kind: Literal["continuous", "categorical"]
    codes: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawData:
    """What a dataset loader returns.

    Attributes:
        x: raw values, ``(n, n_columns)`` for tables (NaN = missing) or ``(n, *image_shape)``.
        y: integer class labels.
        site: hospital index per record for datasets with natural sites, else ``None``.
        site_names: names of the natural sites.
        meta_columns, meta: per-record attributes that are not model inputs (an image manifest's
            subgroup columns, ``(n, len(meta_columns))``, NaN = missing); read only as sensitive
            attributes (``fairness.attributes``).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    columns: tuple[Column, ...] = ()
    image_shape: Optional[tuple[int, ...]] = None
    site: Optional[np.ndarray] = None
    site_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    image_scale: float = 1.0
    meta_columns: tuple[Column, ...] = ()
    meta: Optional[np.ndarray] = None


@dataclass(frozen=True)
class TableEncoder:
    """Imputation + standardisation + one-hot encoding, fit on training (member) records only.

    Continuous columns: missing -> training median, then (x - mean) / std.
    Categorical columns: missing -> training mode, then one-hot over the declared codes.
    """

    columns: tuple[Column, ...]
    fill: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def fit(columns: tuple[Column, ...], x_train: np.ndarray) -> "TableEncoder":
        fill, mean, std = [], [], []
        for j, col in enumerate(columns):
            v = x_train[:, j]
            obs = v[~np.isnan(v)]
            if col.kind == "continuous":
                f = float(np.median(obs)) if obs.size else 0.0
                filled = np.where(np.isnan(v), f, v)
                m, s = float(filled.mean()), float(filled.std())
                fill.append(f)
                mean.append(m)
                std.append(s if s > 1e-12 else 1.0)
            else:
                if obs.size:
                    vals, counts = np.unique(obs, return_counts=True)
                    f = float(vals[np.argmax(counts)])
                else:
                    f = float(col.codes[0])
                fill.append(f)
                mean.append(0.0)
                std.append(1.0)
        return TableEncoder(columns, tuple(fill), tuple(mean), tuple(std))

    def features(self) -> tuple[Feature, ...]:
        out, start = [], 0
        for j, col in enumerate(self.columns):
            width = 1 if col.kind == "continuous" else len(col.codes)
            out.append(
                Feature(
                    name=col.name,
                    kind=col.kind,
                    columns=(start, start + width),
                    categories=col.labels or tuple(str(c) for c in col.codes),
                    mean=self.mean[j],
                    std=self.std[j],
                )
            )
            start += width
        return tuple(out)

    def transform(self, x: np.ndarray) -> np.ndarray:
        blocks = []
        for j, col in enumerate(self.columns):
            v = np.where(np.isnan(x[:, j]), self.fill[j], x[:, j])
            if col.kind == "continuous":
                blocks.append(((v - self.mean[j]) / self.std[j])[:, None])
            else:
                codes = np.asarray(col.codes)
                # values outside the declared codes (data entry errors) fall back to the mode
                v = np.where(np.isin(v, codes), v, self.fill[j])
                blocks.append((v[:, None] == codes[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)
