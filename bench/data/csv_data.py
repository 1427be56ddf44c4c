"""``csv``: the user's own table: one row per patient, a label column, feature columns and
(for ``partition: natural``) a site (hospital) column. See docs/csv.md.

The loader decides nothing silently. What it would otherwise have to guess is either declared
in the config or refused with one line naming the fix:

* identifier columns (``data.id_columns``) and columns not to read (``data.drop_columns``)
  are never features; a column that looks like an identifier (named like ``patient_id`` and
  unique per row, a text column unique per row, or consecutive integers one per row) is
  refused until it is listed in one of the two;
* a label with more than two values needs ``data.positive_labels`` (binarise) or
  ``data.multiclass: true``; a two-valued label is mapped in sorted order;
* a text column whose every value is a number, some written with thousands separators
  (``"265,000"``, ``"1,234.5"``), is read as that number; a comma that is not a thousands
  separator (``"1,5"``, ``"1.234,5"``) is refused;
* the site column is needed only for ``partition: natural``; under ``iid`` / ``dirichlet``
  it may be absent, and when present it is not read (not a feature).

Text columns and the columns named in ``data.categorical_columns`` are categorical; empty cells
are missing and are imputed (median / mode) from the training records only. :func:`csv_report`
(:func:`describe_csv`) says how every column was read.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError

log = logging.getLogger(__name__)


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_PLAIN = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_COMMA_NUMBER = re.compile(r"^[+-]?[\d.,]*\d[\d.,]*$")  # digits with commas and points in some other arrangement
_ID_WORDS = {"id", "ids", "uuid", "guid", "mrn", "identifier"}
_ID_OWNERS = {"patient", "record", "subject", "case", "row", "sample", "person", "participant", "encounter", "visit", "admission"}
_ID_NUMBERS = {"no", "nr", "num", "number"}
_MIN_ROWS_FOR_UNIQUE = 10  # a handful of rows is unique by chance; from here on, unique per row means an identifier
_SHOWN = 8  # levels / values shown in messages and the report before "(+N more)"


# --------------------------------------------------------------------------- the file


def _where(cfg) -> str:
    """The configured path, with the absolute path it resolved to when it was relative."""
    given = Path(cfg.path).expanduser()
    if given.is_absolute() and str(given) == cfg.path:
        return repr(cfg.path)
    return f"{cfg.path!r} (resolved to {given.resolve()})"


def _file(cfg) -> Path:
    if not cfg.path:
        raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: {_where(cfg)} is not a file; give the path of your CSV")
    return path


def _read(cfg) -> tuple[Path, bytes]:
    path = _file(cfg)
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"data.path: {_where(cfg)} cannot be read ({exc.strerror or exc}); check the file's permissions") from None


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
        raise ConfigError(f"data.path: {_where(cfg)} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    resolved = str(path.resolve())
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
        return _digest(resolved)
    return _cached_digest(resolved, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def display_name(cfg) -> str:
    """``csv:<file stem>`` (``csv:patients`` for ``data/patients.csv``), as
    :func:`bench.mlflow_view.dataset_name` names it in MLflow; the prefix keeps a user's
    ``digits.csv`` from reading as (or being grouped with) the bundled ``digits``."""
    from bench.mlflow_view import dataset_name

    return dataset_name("csv", cfg.path)


def _check_shape(cfg, path: Path, data: bytes) -> None:
    """Refuse a file that is not one table: empty, not UTF-8, or ragged (a row with more or
    fewer fields than the header; pandas would shift such a row into an index or fill it
    with missing values, and report something else entirely)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.path: {_where(cfg)} is not a readable CSV (not UTF-8 text: {exc.reason} at byte {exc.start}); save it as UTF-8") from None
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
        raise ConfigError(f"data.path: {_where(cfg)} is not a readable CSV (line {reader.line_num}: {exc})") from None
    if header is None:
        raise ConfigError(f"data.path: {path.name} is empty; it needs a header line and one row per patient")
    names = [h.strip() for h in header]
    twice = sorted({h for h in names if names.count(h) > 1})
    if twice:  # pandas would rename the second one to 'age.1' and read both as features
        raise ConfigError(f"data.path: {path.name} has the column {twice[0]!r} {names.count(twice[0])} times in its header; "
                          "give each column one name")


# --------------------------------------------------------------------------- small helpers


def _site_codes(col) -> "pd.Series":
    """Site codes as text: integer codes stored as floats (a column with gaps reads 1.0, 11.0) as "1", "11"."""
    import pandas as pd

    num = pd.to_numeric(col, errors="coerce")
    if col.notna().all() and num.notna().all() and bool((num == num.round()).all()):
        return num.astype(np.int64).astype(str)
    return col.astype(str)


def _natural(name: str) -> list:
    """Sort key: "2" before "11", "site2" before "site11"."""
    import re

    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p != ""]


def _listing(values, limit: int = _SHOWN) -> str:
    """``a, b, c`` cut after ``limit`` with ``(+N more)``."""
    values = [str(v) for v in values]
    head = ", ".join(values[:limit])
    return head if len(values) <= limit else f"{head} (+{len(values) - limit} more)"


def _number(v: float) -> str:
    """A value as the report writes it: no thousands separators (they would read as lists)."""
    if math.isfinite(v) and float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _textual(s) -> bool:
    return s.dtype == object or str(s.dtype) in ("string", "str", "category")


def _looks_like_id_name(name: str) -> bool:
    """``id``, ``patient_id``, ``PatientID``, ``record-uuid``, ``mrn``, ``subject_no`` ..."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))  # PatientID -> Patient_ID
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    if not words:
        return False
    if words[-1] in _ID_WORDS or words[0] in _ID_WORDS:
        return True
    return len(words) >= 2 and words[-1] in _ID_NUMBERS and words[-2] in _ID_OWNERS


def _integral(values: np.ndarray) -> bool:
    return values.size > 0 and bool(np.all(np.isfinite(values))) and bool(np.all(values == np.round(values)))


def _id_reason(name, s, n_rows: int) -> Optional[str]:
    """Why column ``s`` looks like an identifier, or None. Values are never quoted (an
    identifier is never logged, and an error line ends up in logs)."""
    import pandas as pd

    obs = s.dropna()
    if len(obs) != n_rows or obs.nunique() != n_rows:
        return None  # not one distinct value per row
    textual = _textual(s)
    numbers = pd.to_numeric(obs, errors="coerce") if textual else obs.astype(float)
    integral = numbers.notna().all() and _integral(numbers.to_numpy(np.float64))
    if _looks_like_id_name(name) and (textual or integral):
        return "named like an identifier, a different value in every row"
    if n_rows < _MIN_ROWS_FOR_UNIQUE:
        return None
    if textual and not numbers.notna().all():
        return "a different text value in every row"
    if integral:
        v = numbers.to_numpy(np.float64)
        if v.max() - v.min() == n_rows - 1:
            return "consecutive integers, one per row (a row number?)"
    return None


def _comma_problem(s) -> Optional[tuple[str, bool]]:
    """For a text column: ``(example, True)`` when every value is a number and some are written
    with thousands separators (read as numbers); ``(example, False)`` when the values are
    digits with commas in another arrangement (a decimal comma ``"1,5"``, ``"1.234,5"``):
    ambiguous, refused. None for anything else."""
    values = s.dropna().astype(str).str.strip()
    if values.empty:
        return None
    thousands = values.map(lambda v: bool(_THOUSANDS.match(v)))
    plain = values.map(lambda v: bool(_PLAIN.match(v)))
    if (thousands | plain).all():
        return (str(values[thousands].iloc[0]), True) if thousands.any() else None
    commas = values.str.contains(",", regex=False)
    if commas.any() and values.map(lambda v: bool(_COMMA_NUMBER.match(v))).all():
        odd = values[~(thousands | plain)]
        return str(odd.iloc[0]), False
    return None


# --------------------------------------------------------------------------- the label


def _label_texts(s) -> tuple[Any, list[str]]:
    """The label column as text (integral numbers without ``.0``) and its values in sorted
    order (numerically for a numeric column)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(np.float64)
        if _integral(v):
            text = s.map(lambda x: str(int(x)))
        else:
            text = s.map(lambda x: repr(float(x)))
        order = [t for _, t in sorted({(float(x), t) for x, t in zip(v, text)})]
        return text, list(dict.fromkeys(order))
    text = s.astype(str)
    return text, sorted(text.unique())


def label_value_text(value: Any) -> str:
    """A ``data.positive_labels`` entry as the loader writes label values: ``3`` and ``3.0``
    are ``"3"``, text stays text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _map_label(cfg, name: str, text, found: list[str]) -> tuple[np.ndarray, tuple[str, ...], str]:
    """``(y, class_names, how)``: the label's mapping, refusing what would be a guess."""
    shown = _listing(found)
    col = cfg.label_column
    if cfg.positive_labels:
        wanted = [label_value_text(v) for v in cfg.positive_labels]
        missing = [w for w in wanted if w not in found]
        if missing:
            raise ConfigError(
                f"data.positive_labels: {missing[0]!r} is not a value of {col!r} in {name}; its values are {shown}"
            )
        negative = [v for v in found if v not in wanted]
        if not negative:
            raise ConfigError(
                f"data.positive_labels: lists every value of {col!r} ({shown}), which leaves no negative class; "
                "list only the values that count as positive"
            )
        positive = [v for v in found if v in wanted]
        y = text.isin(positive).to_numpy(np.int64)
        names = ("|".join(negative), "|".join(positive))
        how = f"binarised by data.positive_labels: [{_listing(positive)}] -> 1; [{_listing(negative)}] -> 0"
        return y, names, how
    if len(found) > 2 and not cfg.multiclass:
        raise ConfigError(
            f"data.label_column: {col!r} has {len(found)} values ({shown}); privbench does not guess what they mean: "
            f"you need a binary label (data.positive_labels: [{found[-1]}] maps those values to 1, the rest to 0) "
            "or a declared multi-class one (data.multiclass: true)"
        )
    index = {v: i for i, v in enumerate(found)}
    y = text.map(index).to_numpy(np.int64)
    pairs = _listing([f"{v} -> {i}" for v, i in index.items()])
    if cfg.multiclass:
        how = f"{len(found)} classes (data.multiclass): {pairs}"
    elif found == ["0", "1"]:
        how = "binary 0/1, used as is"
    else:
        how = f"binary, mapped in sorted order: {pairs} (data.positive_labels: [{found[0]}] would make {found[0]} the positive class)"
    return y, tuple(found), how


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ColumnReport:
    """How one column of the CSV was read.

    Attributes:
        name: the header.
        role: ``id``, ``dropped``, ``site``, ``unused site``, ``label``, ``continuous`` or
            ``categorical``.
        detail: what was done (range, levels, mapping, parsing), in words.
        missing: empty cells among the rows used.
    """

    name: str
    role: str
    detail: str
    missing: int = 0


@dataclass(frozen=True)
class HospitalReport:
    """One hospital of the partition: its rows and how many of them are in each class."""

    name: str
    rows: int
    per_class: tuple[int, ...]


@dataclass(frozen=True)
class _Parsed:
    raw: RawData
    columns: tuple[ColumnReport, ...]
    path: Path
    rows: int  # data rows in the file
    used: int  # rows kept (with a label, and a site where the site column is used)
    dropped_rows: str  # why rows were left out, in words ("" for none)


def _parse(cfg) -> _Parsed:
    import pandas as pd

    path, data = _read(cfg)
    _check_shape(cfg, path, data)
    try:
        df = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.path: {_where(cfg)} is not a readable CSV ({str(exc).splitlines()[0]})") from None
    if cfg.site_column == cfg.label_column:
        raise ConfigError(_same_column(cfg))
    names = ", ".join(map(str, df.columns))
    natural = cfg.partition == "natural"
    if cfg.label_column not in df.columns:
        raise ConfigError(f"data.label_column: column {cfg.label_column!r} is not in {path.name}; columns: {names}")
    if natural and cfg.site_column not in df.columns:
        raise ConfigError(
            f"data.site_column: column {cfg.site_column!r} is not in {path.name}; columns: {names} "
            "(partition iid or dirichlet needs no site column)"
        )
    for key in ("id_columns", "drop_columns", "categorical_columns"):
        unknown = [c for c in getattr(cfg, key) if c not in df.columns]
        if unknown:
            raise ConfigError(f"data.{key}: {unknown[0]!r} is not a column of {path.name}; columns: {names}")
    if df.empty:
        raise ConfigError(f"data.path: {path.name} has a header but no rows; add one row per patient")
    n_file = len(df)
    site_used = natural  # under iid / dirichlet the hospitals are a random split: the site column is not read
    need = [cfg.label_column] + ([cfg.site_column] if site_used else [])
    kept = df.dropna(subset=need)
    if kept.empty:
        what = f"both a {cfg.site_column!r} and a {cfg.label_column!r} value" if site_used else f"a {cfg.label_column!r} value"
        raise ConfigError(f"data.path: no row of {path.name} has {what}; fill them in")
    dropped_rows = ""
    if len(kept) < n_file:
        what = f"no {cfg.site_column} or no {cfg.label_column}" if site_used else f"no {cfg.label_column}"
        dropped_rows = f"{n_file - len(kept)} of {n_file} rows have {what} and are left out"
        log.warning("data.path: %s (%s)", dropped_rows, path.name)
    df = kept
    n = len(df)

    # the label: refuse a column that is not one, then map its values as declared
    text, found = _label_texts(df[cfg.label_column])
    if len(found) < 2:
        raise ConfigError(f"data.label_column: {cfg.label_column!r} has fewer than 2 classes; a classifier needs at least 2")
    if len(found) > max(2, n // 2):
        many = "as many distinct values as rows" if len(found) == n else f"{len(found)} distinct values in {n} rows"
        raise ConfigError(
            f"data.label_column: {cfg.label_column!r} has {many}, so it is not a class label (an ID or a measurement?); "
            "name the outcome column, whose classes many records share"
        )
    y, class_names, how = _map_label(cfg, path.name, text, found)

    reports: dict[str, ColumnReport] = {}
    reports[cfg.label_column] = ColumnReport(str(cfg.label_column), "label", how)
    site, site_names = None, ()
    if cfg.site_column in df.columns:
        if site_used:
            codes = _site_codes(df[cfg.site_column])
            site_names = tuple(sorted(codes.unique(), key=_natural))
            site = codes.map({v: i for i, v in enumerate(site_names)}).to_numpy(np.int64)
            reports[cfg.site_column] = ColumnReport(
                str(cfg.site_column), "site", f"{len(site_names)} hospitals: {_listing(site_names)} (partition natural)"
            )
        else:
            reports[cfg.site_column] = ColumnReport(
                str(cfg.site_column), "unused site",
                f"not read: partition {cfg.partition} splits the rows at random; not a feature",
            )
    for c in cfg.id_columns:
        distinct = int(df[c].nunique())
        repeat = "" if distinct == n else f"; {n - distinct} rows share an identifier with another row (one patient, several rows?)"
        reports[c] = ColumnReport(str(c), "id", f"data.id_columns: not a feature, values never logged; {distinct} distinct in {n} rows{repeat}")
    for c in cfg.drop_columns:
        reports[c] = ColumnReport(str(c), "dropped", "data.drop_columns: not read")

    columns, blocks = [], []
    for name in df.columns:
        if name in reports:
            continue
        s = df[name]
        if s.isna().all():
            raise ConfigError(
                f"data.path: column {name!r} of {path.name} has no values (every cell is empty); list it in data.drop_columns"
            )
        declared = name in cfg.categorical_columns
        textual = _textual(s)
        missing = int(s.isna().sum())
        note = ""
        if textual and not declared:
            commas = _comma_problem(s)
            if commas is not None and commas[1]:
                s = pd.to_numeric(s.astype(str).str.strip().str.replace(",", "", regex=False).where(s.notna()))
                textual = False
                note = f"thousands separators parsed (e.g. {commas[0]!r} -> {_number(float(commas[0].replace(',', '')))}); "
            elif commas is not None:
                raise ConfigError(
                    f"data.path: column {name!r} of {path.name} writes numbers with commas that are not thousands "
                    f"separators (e.g. {commas[0]!r}: a decimal comma?); write them with a decimal point and no "
                    "separators (1234.5), or list the column in data.categorical_columns or data.drop_columns"
                )
        if not declared:
            reason = _id_reason(name, s, n)
            if reason is not None:
                raise ConfigError(
                    f"data.id_columns: column {name!r} of {path.name} looks like an identifier ({reason}); list it in "
                    "data.id_columns (never a feature, never logged) or data.drop_columns, or, if it is a real "
                    "category, in data.categorical_columns"
                )
        if textual and not declared:
            # a numeric column with a stray text cell ("120 mmHg") is a data error, not a category
            as_number = pd.to_numeric(s, errors="coerce")
            bad = s.notna() & as_number.isna()
            if as_number.notna().any() and bad.any():
                raise ConfigError(
                    f"data.path: column {name!r} mixes numbers and text (e.g. {s[bad].iloc[0]!r}); "
                    "fix the value or list the column in data.categorical_columns"
                )
        if declared or textual:
            cats = sorted(s.dropna().astype(str).unique())
            codes = s.astype(str).map({v: float(i) for i, v in enumerate(cats)}).where(s.notna()).to_numpy(np.float64)
            columns.append(Column(str(name), "categorical", tuple(float(i) for i in range(len(cats))), tuple(cats)))
            blocks.append(codes)
            why = "data.categorical_columns" if declared else "text"
            quoted = any("," in c or c != c.strip() or not c for c in cats)  # "12,500" as a level would read as two
            detail = f"{why}, {len(cats)} levels: {_listing([repr(c) for c in cats] if quoted else cats)}"
            reports[name] = ColumnReport(str(name), "categorical", _with_missing(detail, missing, n, "mode"), missing)
            continue
        if pd.api.types.is_bool_dtype(s):
            note = "true/false read as 1/0; "
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
        obs = values[~np.isnan(values)]
        with np.errstate(over="ignore", invalid="ignore"):
            # standardisation squares the values: 1e200 is finite, its square is not, and the
            # cell would fail only after training (inf std, NaN features); float32 is what trains
            spread = float(np.std(obs)) if obs.size else 0.0
            if not (math.isfinite(spread) and np.all(np.abs(obs) < np.finfo(np.float32).max)):
                worst = float(obs[np.argmax(np.abs(obs))])
                raise ConfigError(
                    f"data.path: column {name!r} of {path.name} holds {worst:.4g}, too large to standardise (its spread overflows); "
                    "rescale the column (e.g. to other units) or list it in data.drop_columns"
                )
        blocks.append(values)
        columns.append(Column(str(name), "continuous"))
        detail = f"{note}range {_number(np.nanmin(values))} to {_number(np.nanmax(values))}"
        reports[name] = ColumnReport(str(name), "continuous", _with_missing(detail, missing, n, "median"), missing)
    if not columns:
        raise ConfigError(f"data.path: {path.name} has no feature columns besides site, label, id and dropped columns")
    raw = RawData(
        name="csv",
        x=np.stack(blocks, axis=1),
        y=y,
        num_classes=len(class_names),
        columns=tuple(columns),
        site=site,
        site_names=site_names,
        class_names=class_names,
    )
    ordered = tuple(reports[c] for c in df.columns if c in reports)
    return _Parsed(raw, ordered, path, n_file, n, dropped_rows)


def _with_missing(detail: str, missing: int, n: int, fill: str) -> str:
    if not missing:
        return f"{detail}; no missing values"
    return f"{detail}; missing {missing} of {n} ({100 * missing / n:.1f} %), filled with the training {fill}"


def load_csv(cfg) -> RawData:
    """Read ``cfg.path`` (a :class:`bench.config.DataConfig` of the ``csv`` dataset).

    Raises:
        ConfigError: one line naming the problem and the fix (see the module docstring).
    """
    return _parse(cfg).raw


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class CsvReport:
    """How a CSV was read and split: what ``privbench validate --data`` prints for csv data.

    Attributes:
        dataset: :func:`display_name` (``csv:patients``).
        path: the file, resolved.
        fingerprint: ``sha256:<hex>`` of its bytes (part of every cell's ``run_key``).
        rows: data rows in the file; ``used``: those kept; ``left_out``: why the rest were not.
        columns: every column, in file order.
        class_names: the model's classes in order (class 0 first).
        inputs: the model's input width (a categorical column is one input per level).
        partition: how the rows became hospitals, in words.
        hospitals: each hospital's rows and class counts, before the member / non-member /
            test split (and before ``max_records_per_site``).
    """

    dataset: str
    path: str
    fingerprint: str
    rows: int
    used: int
    left_out: str
    columns: tuple[ColumnReport, ...]
    class_names: tuple[str, ...]
    inputs: int
    partition: str
    hospitals: tuple[HospitalReport, ...]

    def render(self) -> str:
        """The report as plain text, one column or hospital per line."""
        features = sum(c.role in ("continuous", "categorical") for c in self.columns)
        lines = [
            f"{self.dataset}: {self.path} ({self.fingerprint[:19]}...)",
            f"{self.rows} rows, {len(self.columns)} columns; {self.used} rows used" + (f" ({self.left_out})" if self.left_out else ""),
            "columns:",
        ]
        wn = max(len(c.name) for c in self.columns)
        wr = max(len(c.role) for c in self.columns)
        lines += [f"  {c.name:<{wn}}  {c.role:<{wr}}  {c.detail}" for c in self.columns]
        lines.append(f"model: {features} feature columns -> {self.inputs} inputs; {len(self.class_names)} classes: "
                     + _listing([f"{i} = {n}" for i, n in enumerate(self.class_names)]))
        lines.append(f"hospitals ({self.partition}):")
        wh = max([len(h.name) for h in self.hospitals] + [len("hospital")])
        head = "  ".join(f"class {i}" for i in range(len(self.class_names)))
        lines.append(f"  {'hospital':<{wh}}  {'rows':>5}  {head}")
        for h in self.hospitals:
            counts = "  ".join(f"{c:>{len(f'class {i}')}}" for i, c in enumerate(h.per_class))
            share = f"  ({100 * h.per_class[1] / h.rows:.0f} % class 1)" if len(h.per_class) == 2 and h.rows else ""
            lines.append(f"  {h.name:<{wh}}  {h.rows:>5}  {counts}{share}")
        return "\n".join(lines)


def csv_report(cfg, seed: int = 0) -> CsvReport:
    """Read the CSV of ``cfg`` (a :class:`bench.config.DataConfig`) and say how: every column's
    role and treatment, the label mapping, and each hospital's rows and class balance.

    Args:
        cfg: the data config of a csv cell.
        seed: the cell's seed; under ``iid`` / ``dirichlet`` the hospitals are the split this
            seed makes (the same one :func:`bench.data.build_federation` makes).

    Raises:
        ConfigError: whatever loading the file would refuse, with the same line.
    """
    from bench.data.sites import _site_indices
    from bench.seeding import Seeds

    parsed = _parse(cfg)
    raw = parsed.raw
    parts, names = _site_indices(raw, cfg, Seeds(seed).rng("data"))
    k = raw.num_classes
    hospitals = tuple(
        HospitalReport(str(nm), len(p), tuple(int(c) for c in np.bincount(raw.y[p], minlength=k))) for nm, p in zip(names, parts)
    )
    if cfg.partition == "natural":
        partition = f"partition natural, site column {cfg.site_column!r}"
    elif cfg.partition == "iid":
        partition = f"partition iid, {cfg.num_sites} hospitals, the split of seed {seed}"
    else:
        partition = f"partition dirichlet (alpha {cfg.alpha:g}), {cfg.num_sites} hospitals, the split of seed {seed}"
    if cfg.max_records_per_site is not None:
        partition += f"; each later capped at {cfg.max_records_per_site} rows (data.max_records_per_site)"
    inputs = sum(1 if c.kind == "continuous" else len(c.codes) for c in raw.columns)
    return CsvReport(
        dataset=display_name(cfg),
        path=str(parsed.path.resolve()),
        fingerprint=fingerprint(cfg),
        rows=parsed.rows,
        used=parsed.used,
        left_out=parsed.dropped_rows,
        columns=parsed.columns,
        class_names=raw.class_names,
        inputs=inputs,
        partition=partition,
        hospitals=hospitals,
    )


def describe_csv(cfg, seed: int = 0) -> str:
    """:func:`csv_report` rendered as text (what ``privbench validate --data`` prints)."""
    return csv_report(cfg, seed).render()


# --------------------------------------------------------------------------- config checks


def _same_column(d) -> str:
    return (
        f"data.label_column: got {d.label_column!r}, the same column as data.site_column; the label must be "
        "another column (the outcome), the site column says which hospital holds each record"
    )


def check_config(d) -> None:
    """What the csv keys of ``d`` (a ``DataConfig``) get wrong before the file is read."""
    if not d.path:
        raise ConfigError("data.path: the csv dataset needs a file; set data.path to your CSV")
    if d.site_column == d.label_column:
        raise ConfigError(_same_column(d))
    special = {d.label_column: "the label column"}
    if d.partition == "natural":
        special[d.site_column] = "the site column"
    lists = ("id_columns", "drop_columns", "categorical_columns")
    for key in lists:
        values = getattr(d, key)
        for c in values:
            if c in special:
                raise ConfigError(f"data.{key}: {c!r} is {special[c]}, not a feature; remove it from the list")
            if values.count(c) > 1:
                raise ConfigError(f"data.{key}: {c!r} is listed twice; list each column once")
    if d.site_column in d.categorical_columns:
        raise ConfigError(
            f"data.categorical_columns: {d.site_column!r} is the site column, which is never a feature; remove it from the list"
        )
    for i, a in enumerate(lists):
        for b in lists[i + 1:]:
            both = [c for c in getattr(d, a) if c in getattr(d, b)]
            if both:
                raise ConfigError(f"data.{b}: {both[0]!r} is also in data.{a}; a column has one role, keep it in one list")
    if d.positive_labels and d.multiclass:
        raise ConfigError(
            "data.multiclass: true together with data.positive_labels; use one: positive_labels makes the label "
            "binary (those values -> 1), multiclass keeps every value as its own class"
        )
    texts = []
    for i, v in enumerate(d.positive_labels):
        if isinstance(v, bool):
            raise ConfigError(
                f"data.positive_labels[{i}]: got {str(v).lower()}, which YAML reads from yes/no/true/false/on/off; "
                "quote the label as the CSV writes it, e.g. positive_labels: ['yes']"
            )
        if not isinstance(v, (str, int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"data.positive_labels[{i}]: got {v!r}; expected a label value as the CSV writes it (text or a number)")
        text = label_value_text(v)
        if text in texts:
            raise ConfigError(f"data.positive_labels: {v!r} is listed twice; list each value once")
        texts.append(text)


def _register():
    from bench.registry import DATASETS

    @DATASETS.register("csv")
    class CsvDataset:
        """Your own CSV: one row per patient, a label column, feature columns, and a site column
        for ``partition: natural`` (docs/csv.md)."""

        modality = "tabular"
        # the data.* keys only this dataset reads (`privbench list`)
        own_data_keys = ("path", "site_column", "label_column", "categorical_columns", "id_columns", "drop_columns",
                         "positive_labels", "multiclass")

        @staticmethod
        def check(cfg) -> None:
            check_config(cfg.data)

        @staticmethod
        def load(cfg) -> RawData:
            return load_csv(cfg)

        @staticmethod
        def fingerprint(cfg) -> str:
            return fingerprint(cfg)

        @staticmethod
        def display_name(cfg) -> str:
            return display_name(cfg)

        @staticmethod
        def describe(cfg, seed: int = 0) -> str:
            return describe_csv(cfg, seed)

        @staticmethod
        def site_names(cfg) -> None:
            return None  # the site column's values: known once the file is read


_register()
