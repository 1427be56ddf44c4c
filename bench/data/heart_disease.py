"""UCI Heart Disease with its four real hospitals as the federation's sites.

Source: Janosi, Steinbrunn, Pfisterer, Detrano (1988), UCI Machine Learning Repository
(CC BY 4.0). Files ``processed.{cleveland,hungarian,switzerland,va}.data``; 14 columns,
``?`` = missing. Label: ``num > 0`` (any angiographic disease).

Where the files come from, in order:

1. ``data.data_dir`` in the config;
2. the ``PRIVBENCH_DATA_DIR`` environment variable (the files directly in it, or in
   ``uci-heart-disease/`` below it); once set, it must hold all four files (a folder with
   some of them is refused, naming the missing ones, rather than passed over for the cache);
3. the cache ``$PRIVBENCH_CACHE`` (default ``~/.cache/privbench/uci-heart-disease``);
4. a one-time download from the UCI archive into that cache (``data.download: true``).

Every file is checked against its published SHA-256 before use; so the data's fingerprint
(:func:`fingerprint`, part of each cell's ``run_key``) follows from those digests alone.

Missing values, as a clinician would read them:

* ``?`` is missing;
* ``chol == 0`` (all of Switzerland, part of VA) and ``trestbps == 0`` are physiologically
  impossible and mean "not measured": treated as missing;
* continuous features are imputed with the median, categorical ones with the mode, both
  fit on the *training (member) records only*, then standardised / one-hot encoded.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError

UCI_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/"
HOSPITALS = (
    ("cleveland", "processed.cleveland.data"),
    ("hungary", "processed.hungarian.data"),
    ("switzerland", "processed.switzerland.data"),
    ("va_long_beach", "processed.va.data"),
)
SHA256 = {
    "processed.cleveland.data": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "processed.hungarian.data": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "processed.switzerland.data": "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    "processed.va.data": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
}
COLUMNS = (
    Column("age", "continuous"),
    Column("sex", "categorical", (0.0, 1.0), ("female", "male")),
    Column("cp", "categorical", (1.0, 2.0, 3.0, 4.0), ("typical_angina", "atypical_angina", "non_anginal", "asymptomatic")),
    Column("trestbps", "continuous"),
    Column("chol", "continuous"),
    Column("fbs", "categorical", (0.0, 1.0), ("fbs<=120", "fbs>120")),
    Column("restecg", "categorical", (0.0, 1.0, 2.0), ("normal", "st_t_abnormal", "lv_hypertrophy")),
    Column("thalach", "continuous"),
    Column("exang", "categorical", (0.0, 1.0), ("no", "yes")),
    Column("oldpeak", "continuous"),
    Column("slope", "categorical", (1.0, 2.0, 3.0), ("up", "flat", "down")),
    Column("ca", "categorical", (0.0, 1.0, 2.0, 3.0), ("0", "1", "2", "3")),
    Column("thal", "categorical", (3.0, 6.0, 7.0), ("normal", "fixed_defect", "reversible_defect")),
)
ZERO_MEANS_MISSING = ("trestbps", "chol")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc}); check the file's permissions") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _missing(folder: Path) -> list[str]:
    """The four files' names that ``folder`` does not hold."""
    return [f for _, f in HOSPITALS if not (folder / f).is_file()]


def _complete(folder: Path) -> bool:
    return not _missing(folder)


def _verify(folder: Path) -> Path:
    for _, fname in HOSPITALS:
        if _sha256(folder / fname) != SHA256[fname]:
            raise ConfigError(
                f"{folder / fname}: checksum differs from UCI's published file; replace it with the original from {UCI_URL}"
            )
    return folder


def fingerprint() -> str:
    """The data's identity: SHA-256 over the four files' SHA-256 digests (``name=digest``
    lines). Every file is verified against exactly these digests before use, so this is the
    digest of whatever data a cell can load, known without reading the files."""
    lines = "".join(f"{fname}={SHA256[fname]}\n" for _, fname in HOSPITALS)
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("PRIVBENCH_CACHE") or os.path.join(Path.home(), ".cache", "privbench")
    return Path(root) / "uci-heart-disease"


def _download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for _, fname in HOSPITALS:
        tmp = dest / (fname + ".part")
        with urllib.request.urlopen(UCI_URL + fname, timeout=30) as resp:  # noqa: S310 (fixed https URL)
            tmp.write_bytes(resp.read())
        if _sha256(tmp) != SHA256[fname]:
            tmp.unlink()
            raise ConfigError(f"downloaded {fname} has the wrong checksum; download it by hand from {UCI_URL}")
        tmp.rename(dest / fname)


def locate(data_dir: str | None, download: bool) -> Path:
    """Find (or fetch once) the four files; raise a one-line ConfigError naming the fixes."""
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir).expanduser())
    env = os.environ.get("PRIVBENCH_DATA_DIR")
    if env:
        candidates += [Path(env).expanduser(), Path(env).expanduser() / "uci-heart-disease"]
    for folder in candidates:
        if _complete(folder):
            return _verify(folder)
    if data_dir:
        missing = _missing(candidates[0])
        what = "holds none of" if len(missing) == len(HOSPITALS) else "lacks"
        raise ConfigError(
            f"data.data_dir: {data_dir!r} {what} {', '.join(missing)}; point it at a folder with UCI's four "
            "processed.cleveland/hungarian/switzerland/va.data files"
        )
    if env:
        # set on purpose: an incomplete folder is an error, not a reason to use another copy
        folder = min(candidates, key=lambda c: len(_missing(c)))
        missing = _missing(folder)
        where = f"{str(folder)!r}" + ("" if folder == candidates[0] else f" (nor {env!r})")
        raise ConfigError(
            f"PRIVBENCH_DATA_DIR: {where} lacks {', '.join(missing)}; put UCI's four processed.*.data files there, "
            "or unset PRIVBENCH_DATA_DIR to use the cache"
        )
    cache = cache_dir()
    if _complete(cache):
        return _verify(cache)
    if download:
        try:
            _download(cache)
            return _verify(cache)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"heart_disease: files not found and the download from UCI failed ({reason}); "
                "set data.data_dir or PRIVBENCH_DATA_DIR to a folder holding UCI's processed.*.data files"
            ) from None
    raise ConfigError(
        "heart_disease: files not found; set data.data_dir or PRIVBENCH_DATA_DIR to a folder holding UCI's processed.*.data files, or allow data.download"
    )


def parse(path: Path) -> np.ndarray:
    """Read one processed file into a float array (NaN = missing)."""
    rows = []
    try:
        text = _read(path).decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; replace it with the original from {UCI_URL}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 14:
            raise ConfigError(f"{path}:{lineno}: expected 14 comma-separated values, got {len(fields)}")
        rows.append([np.nan if f.strip() == "?" else float(f) for f in fields])
    return np.asarray(rows, dtype=np.float64)


def load_table(folder: Path) -> RawData:
    blocks, sites = [], []
    for i, (_, fname) in enumerate(HOSPITALS):
        arr = parse(folder / fname)
        blocks.append(arr)
        sites.append(np.full(len(arr), i))
    data = np.concatenate(blocks)
    x, num = data[:, :13].copy(), data[:, 13]
    for name in ZERO_MEANS_MISSING:
        j = [c.name for c in COLUMNS].index(name)
        x[x[:, j] == 0, j] = np.nan
    return RawData(
        name="heart_disease",
        x=x,
        y=(num > 0).astype(np.int64),
        num_classes=2,
        columns=COLUMNS,
        site=np.concatenate(sites),
        site_names=tuple(h for h, _ in HOSPITALS),
        class_names=("no_disease", "disease"),
    )


def _register():
    from bench.registry import DATASETS

    @DATASETS.register("heart_disease")
    class HeartDisease:
        """UCI Heart Disease: 920 patients at 4 real hospitals; 5 continuous + 8 categorical features."""

        modality = "tabular"
        own_data_keys = ("data_dir", "download")  # the data.* keys only this dataset reads (`privbench list`)

        @staticmethod
        def check(cfg) -> None:
            from bench.data.sensitive import check_attributes

            check_attributes("heart_disease", COLUMNS, cfg.fairness)  # sex; age with bands
            if cfg.data.partition != "natural":
                return  # pooled and re-split into synthetic hospitals: allowed for ablations

        @staticmethod
        def load(cfg) -> RawData:
            return load_table(locate(cfg.data_dir, cfg.download))

        @staticmethod
        def fingerprint(cfg) -> str:
            return fingerprint()

        @staticmethod
        def site_names(cfg) -> tuple[str, ...]:
            return tuple(h for h, _ in HOSPITALS)


_register()
