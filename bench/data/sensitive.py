"""Sensitive attributes (``fairness.attributes``): which columns exist, their subgroups, and
holding a column out of the model's features.

The subgroups go to :class:`bench.types.GroundTruth` only (scoring's side), never to a view.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Optional, Sequence

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError, SensitiveAttribute, safe_label  # noqa: F401  (safe_label re-exported)

RESERVED = ("site", "exposure", "exposed")  # fairness/site/..., fairness/exposure/..., fairness/exposed/...


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def band_labels(bands: Sequence[float]) -> tuple[str, ...]:
    """``[55]`` -> ``under_55``, ``55_and_over``; ``[45, 60]`` -> ``under_45``, ``45_to_60``, ``60_and_over``."""
    if not bands:
        return ()
    mids = [f"{_num(a)}_to_{_num(b)}" for a, b in zip(bands, bands[1:])]
    return tuple([f"under_{_num(bands[0])}", *mids, f"{_num(bands[-1])}_and_over"])


def check_attributes(dataset: str, columns: Optional[Sequence[Column]], fairness) -> None:
    """Refuse attributes a dataset does not have, or bands that do not fit the column's kind.

    Args:
        dataset: the dataset name, for the message.
        columns: the dataset's columns; ``None``: it has no sensitive attributes at all.
        fairness: a :class:`bench.config.FairnessConfig` or None.

    Raises:
        ConfigError: one line naming the key, the value and the fix.
    """
    if fairness is None or not fairness.attributes:
        return
    if columns is None:
        raise ConfigError(
            f"fairness.attributes: {dataset!r} has no sensitive attributes (no patient demographics); "
            "drop the fairness key, or use heart_disease (sex, age) or csv (any column)"
        )
    by_name = {c.name: c for c in columns}
    for a in fairness.attributes:
        if a.name not in by_name:
            close = difflib.get_close_matches(a.name, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"fairness.attributes: {a.name!r} is not a column of {dataset}{hint}; columns: {', '.join(by_name)}")
        if safe_label(a.name) in RESERVED:
            raise ConfigError(f"fairness.attributes: {a.name!r} is a reserved metric family ({', '.join(RESERVED)}); rename the column")
        col = by_name[a.name]
        if col.kind == "continuous" and not a.bands:
            raise ConfigError(f"fairness.attributes.{a.name}: a continuous column needs bands; write {{{a.name}: {{bands: [55]}}}}")
        if col.kind == "categorical" and a.bands:
            raise ConfigError(f"fairness.attributes.{a.name}.bands: {a.name!r} is categorical (its categories are the subgroups); drop bands")


def sensitive_attributes(raw: RawData, fairness) -> tuple[SensitiveAttribute, ...]:
    """Each configured attribute's subgroup for every raw record (index = record id)."""
    if fairness is None:
        return ()
    if raw.num_classes != 2:
        raise ConfigError(
            f"fairness: {raw.name!r} has {raw.num_classes} classes; the fairness metrics (TPR, FPR, equalized odds) need a binary label"
        )
    image = raw.image_shape is not None  # an image's attributes are the manifest's columns, never model inputs
    columns, table = (raw.meta_columns, raw.meta) if image else (raw.columns, raw.x)
    check_attributes(raw.name, columns if columns else None, fairness)
    names = [c.name for c in columns]
    out = []
    for a in fairness.attributes:
        j = names.index(a.name)
        col, v = columns[j], table[:, j]
        codes = np.full(len(v), -1, dtype=np.int64)
        ok = ~np.isnan(v)
        if a.bands:
            labels = band_labels(a.bands)
            codes[ok] = np.searchsorted(np.asarray(a.bands, np.float64), v[ok], side="right")
        else:
            labels = tuple(safe_label(x) for x in (col.labels or [_num(c) for c in col.codes]))
            for k, c in enumerate(col.codes):
                codes[ok & (v == c)] = k
        if len(set(labels)) != len(labels):
            raise ConfigError(f"fairness.attributes.{a.name}: two categories read the same once made MLflow-safe ({labels}); rename them")
        out.append(SensitiveAttribute(name=safe_label(a.name), groups=labels, codes=codes, model_input=a.input and not image))
    return tuple(out)


def hold_out(raw: RawData, fairness) -> RawData:
    """``raw`` without the columns of attributes held out of the features (``input: false``)."""
    if fairness is None or raw.image_shape is not None:  # images: subgroup columns are never among the pixels
        return raw
    drop = {a.name for a in fairness.attributes if not a.input}
    if not drop:
        return raw
    keep = [j for j, c in enumerate(raw.columns) if c.name not in drop]
    if not keep:
        raise ConfigError("fairness.attributes: every feature column is held out (input: false); keep at least one model input")
    return dataclasses.replace(raw, x=raw.x[:, keep], columns=tuple(raw.columns[j] for j in keep))
