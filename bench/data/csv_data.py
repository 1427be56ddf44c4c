"""``csv``: the user's own table, with a site (hospital) column and a label column.

Columns other than site and label are features. Text columns and the columns named in
``data.categorical_columns`` are categorical; empty cells are missing and are imputed
(median / mode) from the training records only.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError

log = logging.getLogger(__name__)


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_PLAIN = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _file(cfg) -> Path:
    if not cfg.path:
        raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: {cfg.path!r} is not a file; give the path of your CSV")
    return path


def _read(cfg) -> tuple[Path, bytes]:
    path = _file(cfg)
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"data.path: {cfg.path!r} cannot be read ({exc.strerror or exc}); check the file's permissions") from None


def _digest(resolved: str) -> str:
    h = hashlib.sha256()
    try:
        with open(resolved, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ConfigError(f"data.path: {resolved!r} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    return "sha256:" + h.hexdigest()


_cached_digest = functools.lru_cache(maxsize=256)(lambda resolved, *version: _digest(resolved))
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within one mtime tick


def fingerprint(cfg) -> str:
    """``sha256:<hex>`` of the CSV file's bytes (what ``sha256sum`` prints), read once per file
    version: cached on its path, size, modification and change times and inode. A file
    modified in the last two seconds is read again each time (as git treats "racily clean"
    files: a second edit within one timestamp tick would keep the same times).

    Raises:
        ConfigError: no path, not a file, or unreadable (the same line :func:`load_csv` gives).
    """
    path = _file(cfg)
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"data.path: {cfg.path!r} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    resolved = str(path.resolve())
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
        return _digest(resolved)
    return _cached_digest(resolved, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _check_shape(cfg, path: Path, data: bytes) -> None:
    """Refuse a file that is not one table: empty, not UTF-8, or ragged (a row with more or
    fewer fields than the header; pandas would shift such a row into an index or fill it
    with missing values, and report something else entirely)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.path: {cfg.path!r} is not a readable CSV (not UTF-8 text: {exc.reason} at byte {exc.start}); save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    try:
        for row in reader:
            if not row:
                continue  # a blank line (pandas skips those too)
            if header is None:
                header = row
                continue
            if len(row) != len(header):
                raise ConfigError(
                    f"data.path: {path.name} is ragged: line {reader.line_num} has {len(row)} fields, the header has "
                    f"{len(header)}; give every row one value per column (an empty field for a missing value)"
                )
    except csv.Error as exc:
        raise ConfigError(f"data.path: {cfg.path!r} is not a readable CSV (line {reader.line_num}: {exc})") from None
    if header is None:
        raise ConfigError(f"data.path: {path.name} is empty; it needs a header line and one row per patient")


def _thousands(s) -> Optional[str]:
    """The first value with a thousands separator, if every value of ``s`` is a number
    written with or without them (``"12,500"``): such a column would be read as text."""
    values = s.dropna().astype(str).str.strip()
    if values.empty or not values.map(lambda v: bool(_THOUSANDS.match(v) or _PLAIN.match(v))).all():
        return None
    marked = values[values.map(lambda v: bool(_THOUSANDS.match(v)))]
    return None if marked.empty else str(marked.iloc[0])


def load_csv(cfg) -> RawData:
    import pandas as pd

    path, data = _read(cfg)
    _check_shape(cfg, path, data)
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.path: {cfg.path!r} is not a readable CSV ({str(exc).splitlines()[0]})") from None
    if cfg.site_column == cfg.label_column:
        raise ConfigError(_same_column(cfg))
    for key, col in (("site_column", cfg.site_column), ("label_column", cfg.label_column)):
        if col not in df.columns:
            raise ConfigError(f"data.{key}: column {col!r} is not in {path.name}; columns: {', '.join(map(str, df.columns))}")
    unknown = [c for c in cfg.categorical_columns if c not in df.columns]
    if unknown:
        raise ConfigError(f"data.categorical_columns: {unknown[0]!r} is not a column of {path.name}")
    if df.empty:
        raise ConfigError(f"data.path: {path.name} has a header but no rows; add one row per patient")
    kept = df.dropna(subset=[cfg.label_column, cfg.site_column])
    if kept.empty:
        raise ConfigError(
            f"data.path: no row of {path.name} has both a {cfg.site_column!r} and a {cfg.label_column!r} value; fill them in"
        )
    if len(kept) < len(df):
        log.warning("data.path: %d of %d rows of %s have no %s or no %s and are left out", len(df) - len(kept), len(df), path.name, cfg.site_column, cfg.label_column)
    df = kept
    labels = sorted(df[cfg.label_column].astype(str).unique())
    if len(labels) < 2:
        raise ConfigError(f"data.label_column: {cfg.label_column!r} has fewer than 2 classes; a classifier needs at least 2")
    if len(labels) > max(2, len(df) // 2):
        many = "as many distinct values as rows" if len(labels) == len(df) else f"{len(labels)} distinct values in {len(df)} rows"
        raise ConfigError(
            f"data.label_column: {cfg.label_column!r} has {many}, so it is not a class label (an ID or a measurement?); "
            "name the outcome column, whose classes many records share"
        )
    y = df[cfg.label_column].astype(str).map({v: i for i, v in enumerate(labels)}).to_numpy(np.int64)
    site_names = tuple(sorted(df[cfg.site_column].astype(str).unique()))
    site = df[cfg.site_column].astype(str).map({v: i for i, v in enumerate(site_names)}).to_numpy(np.int64)
    columns, blocks = [], []
    for name in df.columns:
        if name in (cfg.site_column, cfg.label_column):
            continue
        s = df[name]
        if s.isna().all():
            raise ConfigError(f"data.path: column {name!r} of {path.name} has no values (every cell is empty); drop the column")
        textual = s.dtype == object or str(s.dtype) in ("string", "str", "category")
        if textual and name not in cfg.categorical_columns:
            sample = _thousands(s)
            if sample is not None:
                raise ConfigError(
                    f"data.path: column {name!r} writes numbers with thousands separators (e.g. {sample!r}); "
                    "write them without separators (12500), or list the column in data.categorical_columns"
                )
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
                values = pd.to_numeric(s).to_numpy(np.float64)
            except (ValueError, TypeError):
                raise ConfigError(f"data.path: column {name!r} mixes numbers and text; list it in data.categorical_columns") from None
            bad = np.flatnonzero(np.isinf(values))
            if bad.size:
                row = int(df.index[bad[0]]) + 1
                raise ConfigError(
                    f"data.path: column {name!r} of {path.name} holds {values[bad[0]]} in data row {row}; "
                    "a feature must be a finite number (leave the cell empty for a missing value)"
                )
            blocks.append(values)
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


def _same_column(d) -> str:
    return (
        f"data.label_column: got {d.label_column!r}, the same column as data.site_column; the label must be "
        "another column (the outcome), the site column says which hospital holds each record"
    )


def _register():
    from bench.data import DATASETS

    @DATASETS.register("csv")
    class CsvDataset:
        """Your own CSV: one row per patient, a site column, a label column, feature columns."""

        modality = "tabular"

        @staticmethod
        def check(cfg) -> None:
            d = cfg.data
            if not d.path:
                raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")
            if d.site_column == d.label_column:
                raise ConfigError(_same_column(d))
            special = [c for c in d.categorical_columns if c in (d.site_column, d.label_column)]
            if special:
                raise ConfigError(
                    f"data.categorical_columns: {special[0]!r} is the site or label column, not a feature; remove it from the list"
                )

        @staticmethod
        def load(cfg) -> RawData:
            return load_csv(cfg)

        @staticmethod
        def fingerprint(cfg) -> str:
            return fingerprint(cfg)

        @staticmethod
        def site_names(cfg) -> None:
            return None  # the site column's values: known once the file is read


_register()
