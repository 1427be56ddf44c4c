"""``images``: your own image collection (PNG/JPEG), from a folder or a manifest; docs/images.md.

Two ways to say which image is what:

* a **folder**: ``<root>/<label>/<file>`` (no hospitals: ``partition: iid`` or ``dirichlet``) or
  ``<root>/<site>/<label>/<file>`` (the first level are hospitals, for ``partition: natural``);
* a **manifest** (``.csv`` or ``.parquet``): one row per image with the columns ``data.path_column``
  (the file, relative to the manifest's folder), ``data.label_column``, optionally
  ``data.site_column`` (the hospital) and any other columns, which become subgroup attributes
  (``fairness.attributes``) and never model inputs.

Every image is read in ``data.image_mode`` (``gray``: 1 channel, ``rgb``: 3), resized to
``data.image_size`` (``[height, width]``, bilinear) when given, else all must share one size, and
its pixel values are scaled to [0, 1] (8-bit by 255, 16-bit by 65535): the range the models,
the gradient-inversion dummies and their image metrics assume. ``privbench validate --data``
prints all of this (:func:`describe_images`). The images' paths and file names are never logged
(``data.path`` itself is a run parameter, as a CSV's path is); the fingerprint is a digest over the
files' contents and their relative paths.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from bench.data.table import Column, RawData
from bench.types import ConfigError

SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_SUFFIXES = (".csv", ".parquet")
MAX_VALUES = 1 << 30  # pixel values held in memory as float32 (4 GiB): more is refused, not swapped
MAX_SIDE = 1024
_SHOWN = 5
_MAX_META_LEVELS = 20  # an integer column with more distinct values is continuous (bands), else categorical


@dataclass(frozen=True)
class Listing:
    """Which file is which image, before any pixel is read.

    Attributes:
        source: ``"folder <label>/<file>"``, ``"folder <site>/<label>/<file>"`` or ``"manifest <name>"``.
        root: the folder relative paths resolve against.
        files: each image's path relative to ``root`` (sorted for a folder, manifest order otherwise).
        labels: each image's label as text.
        sites: each image's hospital as text, or None.
        meta: the manifest's other columns, name -> values (text or numbers; NaN/None missing).
    """

    source: str
    root: Path
    files: tuple[str, ...]
    labels: tuple[str, ...]
    sites: Optional[tuple[str, ...]]
    meta: tuple[tuple[str, tuple], ...] = ()


def _where(cfg) -> str:
    given = Path(cfg.path).expanduser()
    return repr(cfg.path) if given.is_absolute() else f"{cfg.path!r} (resolved to {given.resolve()})"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _natural_key(text: str):
    """Numbers in numeric order (2 before 10), then text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _listed(items, limit: int = _SHOWN) -> str:
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def _folder(cfg, root: Path) -> Listing:
    tops = _subdirs(root)
    loose = _images_in(root)
    if loose or not tops:
        what = f"{len(loose)} image(s) directly in it" if loose else "no sub-folders"
        raise ConfigError(f"data.path: folder {_where(cfg)} has {what}; put images in one folder per label "
                          "(<label>/<file>, or <site>/<label>/<file> for hospitals), or give a manifest CSV")
    nested = [bool(_subdirs(t)) for t in tops]
    if any(nested) and not all(nested):
        flat = [t.name for t, n in zip(tops, nested) if not n]
        raise ConfigError(f"data.path: folder {_where(cfg)} mixes label folders ({_listed(flat)}) with site folders; "
                          "use one layout: <label>/<file> or <site>/<label>/<file>")
    files, labels, sites = [], [], []
    for top in tops:
        for label_dir in (_subdirs(top) if all(nested) else [top]):
            for f in _images_in(label_dir):
                files.append(str(f.relative_to(root)))
                labels.append(label_dir.name)
                sites.append(top.name)
    if not files:
        raise ConfigError(f"data.path: folder {_where(cfg)} holds no {'/'.join(s[1:] for s in SUFFIXES)} images; "
                          "point data.path at the image folder")
    layout = "<site>/<label>/<file>" if all(nested) else "<label>/<file>"
    return Listing(f"folder {layout}", root, tuple(files), tuple(labels), tuple(sites) if all(nested) else None)


def _read_table(cfg, path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except ImportError as exc:  # parquet without pyarrow/fastparquet
        raise ConfigError(f"data.path: reading {path.name} needs a Parquet engine ({exc}); pip install pyarrow, or use a CSV manifest") from None
    except Exception as exc:  # pandas raises many types for a broken file; the line names the file and the reason
        raise ConfigError(f"data.path: manifest {_where(cfg)} cannot be read ({str(exc).splitlines()[0]}); give a CSV or Parquet table") from None


def _text(v) -> Optional[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip() or None


def _manifest(cfg, path: Path) -> Listing:
    df = _read_table(cfg, path)
    d = cfg
    need = [d.path_column, d.label_column]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"data.{'path_column' if missing[0] == d.path_column else 'label_column'}: manifest {path.name} has no "
                          f"column {missing[0]!r}; columns: {_listed(df.columns, 12)} (set data.path_column / data.label_column)")
    if len(df) == 0:
        raise ConfigError(f"data.path: manifest {path.name} has no rows; list one image per row")
    files = [_text(v) for v in df[d.path_column]]
    labels = [_text(v) for v in df[d.label_column]]
    empty = [i + 2 for i, (f, y) in enumerate(zip(files, labels)) if f is None or y is None]
    if empty:
        raise ConfigError(f"data.path: manifest {path.name} rows {_listed(empty)} lack a file or a label "
                          f"({d.path_column!r}, {d.label_column!r}); fill them or drop those rows")
    root = path.parent
    absent = [f for f in files if not (root / f).is_file()]
    if absent:
        raise ConfigError(f"data.path: {len(absent)} image file(s) of manifest {path.name} not found: {_listed(absent)}; "
                          f"paths are read relative to {root} (fix {d.path_column!r} or move the files)")
    odd = [f for f in files if Path(f).suffix.lower() not in SUFFIXES]
    if odd:
        raise ConfigError(f"data.path: {len(odd)} file(s) of manifest {path.name} are not PNG/JPEG: {_listed(odd)}; convert them or drop those rows")
    sites = None
    if d.site_column in df.columns:
        sites = [_text(v) for v in df[d.site_column]]
        if any(s is None for s in sites):
            raise ConfigError(f"data.site_column: {d.site_column!r} is empty in {sum(s is None for s in sites)} row(s) of "
                              f"manifest {path.name}; name every image's hospital")
    elif d.partition == "natural":
        raise ConfigError(f"data.site_column: manifest {path.name} has no column {d.site_column!r}, which partition: natural "
                          f"reads; columns: {_listed(df.columns, 12)} (set data.site_column, or use partition: iid)")
    skip = {d.path_column, d.label_column, d.site_column}
    meta = tuple((c, tuple(df[c].tolist())) for c in df.columns if c not in skip)
    return Listing(f"manifest {path.name}", root, tuple(files), tuple(labels), None if sites is None else tuple(sites), meta)


def listing(cfg) -> Listing:
    """Which image is which (reads the folder tree or the manifest, no pixels).

    Raises:
        ConfigError: one line naming what is wrong and the fix.
    """
    if not cfg.path:
        raise ConfigError("data.path: the images dataset needs a folder of images or a manifest (CSV/Parquet); set data.path")
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        return _folder(cfg, path)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return _manifest(cfg, path)
    if path.is_file():
        raise ConfigError(f"data.path: {_where(cfg)} is neither a folder nor a .csv/.parquet manifest; give one of them")
    raise ConfigError(f"data.path: {_where(cfg)} does not exist; give the image folder or the manifest's path")


# --------------------------------------------------------------------------- pixels


def _open(root: Path, rel: str, mode: str, size: Optional[tuple[int, int]]) -> np.ndarray:
    """One image as float32 ``(C, H, W)`` in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(root / rel) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale by its own range
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                arr = np.clip(arr, 0.0, 1.0)
                if size is not None:
                    arr = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR))
                arr = arr[None] if mode == "gray" else np.repeat(arr[None], 3, axis=0)
                return arr.astype(np.float32)
            im = im.convert("L" if mode == "gray" else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"data.path: image {rel!r} cannot be read ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); "
                          "replace or drop the file") from None
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _sizes(lst: Listing) -> dict[tuple[int, int], int]:
    """(height, width) -> count, from the files' headers only."""
    from PIL import Image, UnidentifiedImageError

    out: dict[tuple[int, int], int] = {}
    for rel in lst.files:
        try:
            with Image.open(lst.root / rel) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise ConfigError(f"data.path: image {rel!r} cannot be read ({exc.__class__.__name__}); replace or drop the file") from None
        out[(h, w)] = out.get((h, w), 0) + 1
    return out


def _target_size(cfg, lst: Listing) -> tuple[tuple[int, int], dict]:
    sizes = _sizes(lst)
    if cfg.image_size:
        return (int(cfg.image_size[0]), int(cfg.image_size[1])), sizes
    if len(sizes) > 1:
        common = sorted(sizes.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{h}x{w} ({n})" for (h, w), n in common[:_SHOWN])
        h, w = common[0][0]
        raise ConfigError(f"data.image_size: the images have {len(sizes)} sizes ({shown}); set data.image_size: [{h}, {w}] "
                          "to resize them all")
    return next(iter(sizes)), sizes


def _classes(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(labels), key=_natural_key))


def _meta_columns(meta) -> tuple[tuple[Column, ...], Optional[np.ndarray]]:
    """The manifest's other columns as subgroup attributes: text or few integer values are
    categorical (codes 0..k-1, the values as labels), other numbers continuous (bands)."""
    if not meta:
        return (), None
    cols, out = [], []
    for name, values in meta:
        texts = [_text(v) for v in values]
        seen = [t for t in texts if t is not None]
        try:
            nums = np.array([np.nan if t is None else float(t) for t in texts], dtype=np.float64)
            numeric = True
        except ValueError:
            numeric = False
        levels = sorted(set(seen), key=_natural_key)
        if numeric and not (np.all(np.isnan(nums) | (nums == np.round(nums))) and len(levels) <= _MAX_META_LEVELS):
            cols.append(Column(str(name), "continuous"))
            out.append(nums)
            continue
        index = {t: float(k) for k, t in enumerate(levels)}
        cols.append(Column(str(name), "categorical", codes=tuple(float(k) for k in range(len(levels))), labels=tuple(levels)))
        out.append(np.array([np.nan if t is None else index[t] for t in texts], dtype=np.float64))
    return tuple(cols), np.stack(out, axis=1)


def load_images(cfg) -> RawData:
    """Read every image (``cfg`` a ``DataConfig``) into ``RawData`` (pixels in [0, 1]).

    Raises:
        ConfigError: a missing, unreadable or odd-sized file, too few classes, too many pixels.
    """
    lst = listing(cfg)
    size, _ = _target_size(cfg, lst)
    channels = 1 if cfg.image_mode == "gray" else 3
    values = len(lst.files) * channels * size[0] * size[1]
    if values > MAX_VALUES:
        raise ConfigError(f"data.image_size: {len(lst.files):,} images of {channels}x{size[0]}x{size[1]} are {values * 4 / 2**30:.1f} GiB "
                          f"as float32, more than privbench holds in memory ({MAX_VALUES * 4 / 2**30:.0f} GiB); set a smaller data.image_size")
    classes = _classes(lst.labels)
    if len(classes) < 2:
        raise ConfigError(f"data.label_column: every image has the label {classes[0]!r}; a classifier needs at least two labels")
    resize = None if not cfg.image_size else size
    x = np.empty((len(lst.files), channels, *size), dtype=np.float32)
    for i, rel in enumerate(lst.files):
        x[i] = _open(lst.root, rel, cfg.image_mode, resize)
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[t] for t in lst.labels], dtype=np.int64)
    site, site_names = None, ()
    if lst.sites is not None:
        site_names = _classes(lst.sites)
        where = {s: k for k, s in enumerate(site_names)}
        site = np.array([where[s] for s in lst.sites], dtype=np.int64)
    meta_columns, meta = _meta_columns(lst.meta)
    return RawData(name="images", x=x, y=y, num_classes=len(classes), image_shape=(channels, *size), site=site,
                   site_names=site_names, class_names=classes, image_scale=1.0, meta_columns=meta_columns, meta=meta)


# --------------------------------------------------------------------------- identity and description


def _digest(root: str, files: tuple[str, ...], manifest: Optional[str]) -> str:
    h = hashlib.sha256()
    if manifest is not None:
        h.update(Path(manifest).read_bytes())
    for rel in files:
        h.update(rel.encode("utf-8") + b"\0")
        with open(os.path.join(root, rel), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(hashlib.sha256(chunk).digest())
    return "sha256:" + h.hexdigest()


_cached_digest = functools.lru_cache(maxsize=64)(lambda root, files, manifest, versions: _digest(root, files, manifest))


def fingerprint(cfg) -> str:
    """``sha256:<hex>`` over the manifest's bytes (if any) and every image's relative path and
    content, cached on the files' sizes and times (one read per version of the collection)."""
    lst = listing(cfg)
    path = Path(cfg.path).expanduser()
    manifest = str(path.resolve()) if path.is_file() else None
    try:
        stats = [(lst.root / f).stat() for f in lst.files] + ([path.stat()] if manifest else [])
    except OSError as exc:
        raise ConfigError(f"data.path: {_where(cfg)} cannot be read ({exc.strerror or exc}); check the files' permissions") from None
    versions = tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)
    return _cached_digest(str(lst.root.resolve()), lst.files, manifest, versions)


def display_name(cfg) -> str:
    """``images:<folder>`` for a folder, ``images:<manifest stem>`` for a manifest, its folder's
    name when the stem says nothing (``manifest.csv``, ``index.csv``, ``labels.csv``)."""
    path = Path(cfg.path).expanduser()
    stem = path.stem if path.suffix.lower() in MANIFEST_SUFFIXES else path.name
    if stem.lower() in ("manifest", "index", "labels", "metadata") and path.resolve().parent.name:
        stem = path.resolve().parent.name
    return f"images:{stem}"


def _counts(values) -> str:
    names = _classes(tuple(values))
    return ", ".join(f"{n}: {sum(v == n for v in values)}" for n in names)


def describe_images(cfg, seed: int = 0) -> str:
    """What ``privbench validate --data`` says about an image collection: layout, counts per
    hospital and label, stored sizes, what is read (mode, size, scaling), subgroup columns.
    ``seed`` is unused (the description does not depend on the split)."""
    d = cfg
    lst = listing(d)
    size, sizes = _target_size(d, lst)
    channels = 1 if d.image_mode == "gray" else 3
    stored = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(sizes.items(), key=lambda kv: -kv[1])[:_SHOWN])
    lines = [f"data {display_name(d)}: {len(lst.files)} images, {lst.source}"]
    if lst.sites is not None:
        lines.append(f"  hospitals ({len(set(lst.sites))}): {_counts(lst.sites)}")
    else:
        lines.append("  hospitals: none in the data (partition: iid or dirichlet makes them)")
    lines.append(f"  labels ({len(set(lst.labels))}): {_counts(lst.labels)}")
    how = f"resized (bilinear) to {size[0]}x{size[1]}" if d.image_size else "kept at their size"
    lines.append(f"  stored sizes (HxW): {stored}; read as {d.image_mode} {channels}x{size[0]}x{size[1]}, {how}")
    lines.append("  pixel values scaled to [0, 1] (8-bit / 255, 16-bit / 65535); no other normalisation")
    cols, _ = _meta_columns(lst.meta)
    if cols:
        kinds = "; ".join(f"{c.name} ({'categories ' + _listed(c.labels) if c.kind == 'categorical' else 'numeric: needs bands'})" for c in cols)
        lines.append(f"  subgroup columns (fairness.attributes; never model inputs): {kinds}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- config checks and registration


def check_config(d) -> None:
    """What the image keys of ``d`` (a ``DataConfig``) get wrong before a file is read."""
    if not d.path:
        raise ConfigError("data.path: the images dataset needs a folder of images or a manifest (CSV/Parquet); set data.path")
    if d.image_size is not None:
        if len(d.image_size) != 2 or any(int(v) != v or not 1 <= v <= MAX_SIDE for v in d.image_size):
            raise ConfigError(f"data.image_size: got {list(d.image_size)}; expected [height, width], each 1..{MAX_SIDE}")
    roles = {"path_column": d.path_column, "label_column": d.label_column, "site_column": d.site_column}
    for a, b in (("path_column", "label_column"), ("path_column", "site_column"), ("label_column", "site_column")):
        if roles[a] == roles[b]:
            raise ConfigError(f"data.{b}: got {roles[b]!r}, the same column as data.{a}; each role needs its own column")


def placeholder_shape(d) -> tuple[int, int, int]:
    """``(C, H, W)`` for checks made before the pixels are read (one image's header when no
    ``image_size`` is set; (C, 8, 8) when the collection cannot be listed yet)."""
    channels = 1 if d.image_mode == "gray" else 3
    if d.image_size:
        return (channels, int(d.image_size[0]), int(d.image_size[1]))
    try:
        lst = listing(d)
        from PIL import Image

        with Image.open(lst.root / lst.files[0]) as im:
            w, h = im.size
        return (channels, h, w)
    except (ConfigError, OSError):
        return (channels, 8, 8)


class ImageCollection:
    """Your own images (PNG/JPEG): a folder (<label>/<file> or <site>/<label>/<file>) or a manifest
    CSV/Parquet (path, label, optional site and subgroup columns); pixels scaled to [0, 1] (docs/images.md)."""

    modality = "image"
    own_data_keys = ("path", "site_column", "label_column", "path_column", "image_size", "image_mode")

    @staticmethod
    def check(cfg) -> None:
        check_config(cfg.data)

    @staticmethod
    def load(cfg) -> RawData:
        return load_images(cfg)

    @staticmethod
    def fingerprint(cfg) -> str:
        return fingerprint(cfg)

    @staticmethod
    def display_name(cfg) -> str:
        return display_name(cfg)

    @staticmethod
    def describe(cfg, seed: int = 0) -> str:
        return describe_images(cfg, seed)

    @staticmethod
    def site_names(cfg) -> None:
        return None  # the folder's or manifest's hospitals: known once it is read

    @staticmethod
    def image_shape_of(cfg) -> tuple[int, int, int]:
        return placeholder_shape(cfg)


def _register():
    from bench.registry import DATASETS

    DATASETS.register("images")(ImageCollection)


_register()
