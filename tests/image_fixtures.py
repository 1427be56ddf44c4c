"""Small synthetic image collections written as real PNG files (tests and docs/images.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit greyscale image whose bright half says its label (0: left, 1: right), with noise."""
    img = rng.integers(0, 80, size=(size, size)).astype(np.uint8)
    half = size // 2
    if label == 0:
        img[:, :half] += 120
    else:
        img[:, half:] += 120
    return img


def write_collection(root: Path, sites: int = 3, per_site: int = 100, size: int = 16, layout: str = "manifest",
                     seed: int = 0, sizes_vary: bool = False) -> Path:
    """Write ``sites * per_site`` PNGs under ``root``; return the manifest (``layout="manifest"``,
    columns path, label, site, sex) or the folder (``"folder"``: <site>/<label>/<file>;
    ``"labels"``: <label>/<file>)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for s in range(sites):
        for i in range(per_site):
            label = int(rng.integers(0, 2))
            side = size + (i % 2) * 4 if sizes_vary else size
            name = ["benign", "malignant"][label]
            if layout == "folder":
                rel = Path(f"hospital_{s}") / name / f"img{i:04d}.png"
            elif layout == "labels":
                rel = Path(name) / f"s{s}_img{i:04d}.png"
            else:
                rel = Path("img") / f"s{s}_img{i:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(label, side, rng), mode="L").save(root / rel)
            rows.append({"path": rel.as_posix(), "label": name, "site": f"hospital_{s}", "sex": ["F", "M"][int(rng.integers(0, 2))]})
    if layout != "manifest":
        return root
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "site", "sex"])
        w.writeheader()
        w.writerows(rows)
    return manifest
