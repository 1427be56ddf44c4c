"""Issue 22, item 8: bootstrap intervals in blocks of resamples give the same numbers as all at
once (memory flat in the number of records, benchmarks/bench_csv_memory.py measures it)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.metrics import membership as m


@pytest.mark.parametrize("n", [1, 5, 300, 4099])
@pytest.mark.parametrize("step", [1, 7, 999, 1000])
def test_count_blocks_are_the_full_count_matrix(n, step):
    full = m.bootstrap_counts(n)
    blocks = list(m.bootstrap_count_chunks(n, step=step))
    assert all(len(b) <= step for b in blocks)
    assert np.array_equal(np.concatenate(blocks), full)


def test_auc_and_mean_intervals_do_not_depend_on_the_block_size(monkeypatch):
    rng = np.random.default_rng(3)
    scores, members = rng.normal(size=2500), rng.random(2500) < 0.4
    values = rng.random(400)
    big = (m.bootstrap_auc_ci(scores, members), m.bootstrap_mean_ci(values))
    monkeypatch.setattr(m, "BOOTSTRAP_CHUNK_CELLS", 5_000)  # blocks of 2 resamples
    assert (m.bootstrap_auc_ci(scores, members), m.bootstrap_mean_ci(values)) == big
