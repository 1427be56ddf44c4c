"""What a hospital sends: dense updates cost 4 bytes a coordinate, sparse ones (index, value) pairs."""

import torch

from bench.federated import payload_bytes
from defenses.sparsify import top_k


def test_dense_update_costs_its_float32_size():
    assert payload_bytes(torch.randn(1000)) == 4000.0


def test_top_k_update_costs_index_value_pairs():
    u = top_k(torch.randn(1000, generator=torch.Generator().manual_seed(0)), 0.1)
    assert int(torch.count_nonzero(u)) == 100
    assert payload_bytes(u) == 100 * 8.0


def test_sparse_encoding_is_never_more_than_dense():
    u = torch.ones(10)
    u[0] = 0.0  # 9 non-zeros: 72 bytes sparse > 40 dense
    assert payload_bytes(u) == 40.0
