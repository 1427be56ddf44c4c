"""Splitting records into hospitals (IID or Dirichlet label skew) and each hospital's
records into members, non-members and test records."""

from __future__ import annotations

import numpy as np

from bench.types import ConfigError


def iid_partition(n: int, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_sites`` near-equal parts."""
    if n < num_sites * 8:
        raise ConfigError(f"data.num_sites: {num_sites} hospitals leave fewer than 8 records each ({n} records); use fewer hospitals")
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_sites)]


def dirichlet_partition(
    y: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator, min_size: int = 8, tries: int = 100
) -> list[np.ndarray]:
    """Label skew: for each class, hospital shares ~ Dirichlet(alpha) (Hsu et al. 2019).

    Smaller ``alpha`` means more skew. Redraws until every hospital holds ``min_size`` records.
    """
    classes = np.unique(y)
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"data.alpha: {alpha} leaves some of {num_sites} hospitals with fewer than {min_size} records; raise alpha or use fewer hospitals"
    )


def split_site(
    index: np.ndarray, y: np.ndarray, test_fraction: float, member_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one hospital's records into (members, non-members, test), stratified by label.

    Members and non-members come from the same distribution, so a membership attack can
    only succeed through what training revealed.
    """
    members, nonmembers, test = [], [], []
    for c in np.unique(y[index]):
        idx = rng.permutation(index[y[index] == c])
        n_test = int(round(len(idx) * test_fraction))
        rest = idx[n_test:]
        n_mem = int(round(len(rest) * member_fraction))
        test.append(idx[:n_test])
        members.append(rest[:n_mem])
        nonmembers.append(rest[n_mem:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (members, nonmembers, test))  # type: ignore[return-value]
