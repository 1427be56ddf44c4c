"""Which hospitals a configuration makes: their names before the data is read, and each
hospital's rows once it is (a leaf of ``bench.data``: the dataset modules and
``bench.components`` import it without importing the package's federation code)."""

from __future__ import annotations

import numpy as np

from bench.data.partition import dirichlet_partition, iid_partition
from bench.data.table import RawData
from bench.registry import DATASETS
from bench.types import ConfigError


def site_names(cfg) -> tuple[str, ...] | None:
    """The hospitals' names a federation of ``cfg`` (a ``DataConfig``) will have, when known
    without loading the data: ``site0..`` for iid/dirichlet, the real hospitals for natural
    partitions of data with a fixed roster (heart disease); ``None`` for a csv's site column."""
    if cfg.partition != "natural":
        return tuple(f"site{i}" for i in range(cfg.num_sites))
    names = getattr(DATASETS.get(cfg.name), "site_names", None)
    return None if names is None else names(cfg)


def _site_indices(raw: RawData, cfg, rng: np.random.Generator) -> tuple[list[np.ndarray], tuple[str, ...]]:
    if cfg.partition == "natural":
        if raw.site is None:
            raise ConfigError(f"data.partition: 'natural' needs a dataset with real sites; {raw.name!r} has none (use iid or dirichlet)")
        parts = [np.flatnonzero(raw.site == s) for s in range(len(raw.site_names))]
        return parts, raw.site_names
    n = len(raw.y)
    if cfg.partition == "iid":
        parts = iid_partition(n, cfg.num_sites, rng)
    else:
        parts = dirichlet_partition(raw.y, cfg.num_sites, cfg.alpha, rng)
    return parts, site_names(cfg)
