"""``csv``: the user's own table, with a site (hospital) column and a label column.

Columns other than site and label are features. Text columns and the columns named in
``data.categorical_columns`` are categorical; empty cells are missing and are imputed
(median / mode) from the training records only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError

log = logging.getLogger(__name__)


def load_csv(cfg) -> RawData:
    import pandas as pd

    if not cfg.path:
        raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: {cfg.path!r} is not a file; give the path of your CSV")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.path: {cfg.path!r} is not a readable CSV ({str(exc).splitlines()[0]})") from None
    for key, col in (("site_column", cfg.site_column), ("label_column", cfg.label_column)):
        if col not in df.columns:
            raise ConfigError(f"data.{key}: column {col!r} is not in {path.name}; columns: {', '.join(map(str, df.columns))}")
    unknown = [c for c in cfg.categorical_columns if c not in df.columns]
    if unknown:
        raise ConfigError(f"data.categorical_columns: {unknown[0]!r} is not a column of {path.name}")
    kept = df.dropna(subset=[cfg.label_column, cfg.site_column])
    if len(kept) < len(df):
        log.warning("data.path: %d of %d rows of %s have no %s or no %s and are left out", len(df) - len(kept), len(df), path.name, cfg.site_column, cfg.label_column)
    df = kept
    labels = sorted(df[cfg.label_column].astype(str).unique())
    if len(labels) < 2:
        raise ConfigError(f"data.label_column: {cfg.label_column!r} has fewer than 2 classes; a classifier needs at least 2")
    y = df[cfg.label_column].astype(str).map({v: i for i, v in enumerate(labels)}).to_numpy(np.int64)
    site_names = tuple(sorted(df[cfg.site_column].astype(str).unique()))
    site = df[cfg.site_column].astype(str).map({v: i for i, v in enumerate(site_names)}).to_numpy(np.int64)
    columns, blocks = [], []
    for name in df.columns:
        if name in (cfg.site_column, cfg.label_column):
            continue
        s = df[name]
        textual = s.dtype == object or str(s.dtype) in ("string", "str", "category")
        if textual and name not in cfg.categorical_columns:
            # a numeric column with a stray text cell ("120 mmHg") is a data error, not a category
            as_number = pd.to_numeric(s, errors="coerce")
            text = s.notna() & as_number.isna()
            if as_number.notna().any() and text.any():
                raise ConfigError(
                    f"data.path: column {name!r} mixes numbers and text (e.g. {s[text].iloc[0]!r}); "
                    "fix the value or list the column in data.categorical_columns"
                )
        if name in cfg.categorical_columns or textual:
            cats = sorted(s.dropna().astype(str).unique())
            codes = s.astype(str).map({v: float(i) for i, v in enumerate(cats)}).where(s.notna()).to_numpy(np.float64)
            columns.append(Column(str(name), "categorical", tuple(float(i) for i in range(len(cats))), tuple(cats)))
            blocks.append(codes)
        else:
            try:
                blocks.append(pd.to_numeric(s).to_numpy(np.float64))
            except (ValueError, TypeError):
                raise ConfigError(f"data.path: column {name!r} mixes numbers and text; list it in data.categorical_columns") from None
            columns.append(Column(str(name), "continuous"))
    if not columns:
        raise ConfigError(f"data.path: {path.name} has no feature columns besides site and label")
    return RawData(
        name="csv",
        x=np.stack(blocks, axis=1),
        y=y,
        num_classes=len(labels),
        columns=tuple(columns),
        site=site,
        site_names=site_names,
        class_names=tuple(labels),
    )


def _register():
    from bench.data import DATASETS

    @DATASETS.register("csv")
    class CsvDataset:
        """Your own CSV: one row per patient, a site column, a label column, feature columns."""

        modality = "tabular"

        @staticmethod
        def check(cfg) -> None:
            if not cfg.data.path:
                raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")

        @staticmethod
        def load(cfg) -> RawData:
            return load_csv(cfg)


_register()
