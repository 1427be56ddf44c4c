"""Secure aggregation: exact sums, dropout recovery and abort, hiding, cost accounting, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model
from bench.runner import run_in_memory
from bench.seeding import Seeds
from bench.types import ProtocolAbort
from bench.views import server_view
from defenses.base import ServerContext, weighted_sum
from defenses.dp_sgd import DPSGD
from defenses.secagg import shamir
from defenses.secagg.prg import expand
from defenses.secagg.protocol import NONCE_BYTES, TAG_BYTES, complete_graph, harary_graph, secure_sum
from defenses.secagg.quantization import Quantizer
from defenses.secure_aggregation import SecureAggregation
from conftest import tiny_raw


def _ring_inputs(n: int, d: int, bits: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.uint32 if bits == 32 else np.uint64
    return [rng.integers(0, 2**bits, d, dtype=dtype) for _ in range(n)]


def _ring_sum(xs, bits=32) -> np.ndarray:
    out = np.zeros_like(xs[0])
    for x in xs:
        out += x  # wraps mod 2^bits
    return out


def _updates(n: int, d: int, seed: int = 0, scale: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    ups = {f"h{i}": torch.randn(d, generator=g) * scale for i in range(n)}
    w = torch.rand(n, generator=g) + 0.5
    weights = {f"h{i}": float(w[i] / w.sum()) for i in range(n)}
    return ups, weights


def _ctx(seed: int = 0, n: int = 4) -> ServerContext:
    return ServerContext(round=1, participants=tuple(f"h{i}" for i in range(n)), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the protocol


@pytest.mark.parametrize("bits", [32, 64])
def test_protocol_sum_is_exact_in_the_ring(bits):
    xs = _ring_inputs(6, 500, bits)
    res = secure_sum(xs, threshold=4, bits=bits)
    assert np.array_equal(res.total, _ring_sum(xs))
    assert res.included == tuple(range(6))


def test_dropouts_after_masking_still_give_the_full_sum():
    xs = _ring_inputs(7, 300)
    res = secure_sum(xs, threshold=4, bits=32, drop_after=[0, 3, 5])
    assert np.array_equal(res.total, _ring_sum(xs))
    assert res.survivors == (1, 2, 4, 6)


def test_dropouts_before_masking_recover_dangling_pairwise_masks():
    xs = _ring_inputs(7, 300)
    res = secure_sum(xs, threshold=4, bits=32, drop_before=[2, 6])
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if i not in (2, 6)]))


def test_secagg_plus_neighbour_graph_with_dropouts():
    n = 12
    graph = harary_graph(n, 4, np.random.default_rng(0).permutation(n))
    assert all(len(nb) == 4 for nb in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])  # symmetric
    xs = _ring_inputs(n, 200)
    res = secure_sum(xs, threshold=3, bits=32, graph=graph, drop_before=[1], drop_after=[7])
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if i != 1]))


@pytest.mark.parametrize("kw", [{"drop_after": [0, 1, 2]}, {"drop_before": [1, 2, 3]}, {"drop_before": [0], "drop_after": [1, 2]}])
def test_too_many_dropouts_abort_cleanly(kw):
    with pytest.raises(ProtocolAbort, match="below the threshold t=3"):
        secure_sum(_ring_inputs(5, 50), threshold=3, bits=32, **kw)


def test_a_single_masked_input_looks_uniform():
    """The server's view of one client: chi-square on the top 4 bits of y_u is uniform.

    The unmasked encoding of the same (small, structured) update is far from uniform, so
    the test can tell the two apart.
    """
    d = 200_000
    q = Quantizer(bits=32, clip_range=4.0, num_inputs=3)
    x = q.encode(np.random.default_rng(0).normal(0, 0.1, d))
    res = secure_sum([x, x, x], threshold=2, bits=32)
    for y in (res.masked_inputs[0], res.masked_inputs[2]):
        counts = np.bincount((y >> 28).astype(np.int64), minlength=16)
        assert chisquare(counts).pvalue > 1e-5
    raw = np.bincount((x >> 28).astype(np.int64), minlength=16)
    assert chisquare(raw).pvalue < 1e-12
    # and two clients with identical inputs send unrelated vectors
    assert np.mean(res.masked_inputs[0] == res.masked_inputs[1]) < 1e-3


def test_prg_is_deterministic_per_seed_and_uniform():
    a, b = expand(bytes(32), 100_000, 32), expand(bytes(32), 100_000, 32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, expand(bytes(31) + b"\x01", 100_000, 32))
    assert chisquare(np.bincount((a >> 28).astype(np.int64), minlength=16)).pvalue > 1e-5


def test_shamir_threshold():
    secret = int.from_bytes(b"\x07" * 32, "big")
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for pick in ([1, 2, 3], [2, 4, 5], [1, 3, 5]):
        assert shamir.combine({x: shares[x] for x in pick}) == secret
    assert shamir.combine({x: shares[x] for x in (1, 2)}) != secret  # t − 1 shares say nothing


def test_bytes_sent_per_client_known_answer():
    n, d = 5, 1000
    res = secure_sum(_ring_inputs(n, d), threshold=3, bits=32)
    share_ct = NONCE_BYTES + 8 + 2 * shamir.SHARE_BYTES + TAG_BYTES
    reveal = n * (8 + shamir.SHARE_BYTES)  # one share per client it holds (incl. its own)
    expected = 2 * 32 + (n - 1) * share_ct + d * 4 + reveal
    assert all(b == expected for b in res.bytes_sent.values())


def test_mask_expansion_is_vectorised_for_a_million_parameters():
    xs = _ring_inputs(4, 1_000_000)
    t = time.perf_counter()
    res = secure_sum(xs, threshold=3, bits=32)
    assert time.perf_counter() - t < 5.0  # about 0.1 s here; a per-coordinate Python loop takes minutes
    assert np.array_equal(res.total, _ring_sum(xs))


# ------------------------------------------------------------------ the defense


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"bits": 64},
        {"dropout_fraction": 0.25},
        {"neighbors": 4, "dropout_fraction": 0.1},
    ],
)
def test_defense_sum_equals_plain_weighted_sum_within_quantization_error(params):
    n = 8
    ups, w = _updates(n, 2000)
    d = SecureAggregation(SecureAggregation.Params(**params))
    got = d.aggregate(ups, w, _ctx(n=n))
    bound = Quantizer(d.params.bits, d.params.clip_range, n).max_sum_error
    err = float((got - weighted_sum(ups, w)).abs().max())
    assert err <= bound + 1e-6  # float32 output rounding on top of the fixed-point bound
    m = d.metrics()
    assert m["cost/bytes_per_client"] > m["cost/plain_bytes_per_client"] == 2000 * 4
    assert m["defense/secure_aggregation/dropped_per_round"] == round(params.get("dropout_fraction", 0) * n)


def test_dropouts_before_masking_give_the_weighted_mean_of_those_that_sent():
    n = 8
    ups, w = _updates(n, 500)
    d = SecureAggregation(SecureAggregation.Params(dropout_fraction=0.25, dropout_phase="before_masked_input"))
    got = d.aggregate(ups, w, _ctx(seed=3, n=n))
    dropped = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()[:2]
    keep = {k: v for i, (k, v) in enumerate(ups.items()) if i not in dropped}
    total = sum(w[k] for k in keep)
    expected = weighted_sum(keep, {k: w[k] / total for k in keep})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_defense_aborts_below_threshold():
    ups, w = _updates(4, 100)
    d = SecureAggregation(SecureAggregation.Params(dropout_fraction=0.5))  # 2 of 4 survive, t = 3
    with pytest.raises(ProtocolAbort, match="threshold"):
        d.aggregate(ups, w, _ctx())


def test_cell_fails_with_protocol_abort():
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "secure_aggregation", "dropout_fraction": 0.67}], attacks=[]))
    with pytest.raises(ProtocolAbort, match="secure aggregation aborted"):
        run_in_memory(cfg)


def test_server_view_has_only_the_aggregate(tiny_cfg):
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "secure_aggregation"}], attacks=[]))
    seeds = Seeds(0)
    fed, _ = build_federation(cfg.data, seeds)
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [SecureAggregation(cfg.defenses[0].params)], cfg.train, cfg.privacy, Seeds(0), evaluate=False)
    view = server_view(rec, fed, lambda: None)
    assert view.updates_hidden and all(r.updates is None for r in view.rounds)
    assert all(r.bytes_per_client > 4 * r.aggregate.numel() for r in rec.rounds)


def test_dp_sgd_with_secure_aggregation_trains_the_same_model_as_dp_sgd_alone(tiny_cfg):
    """Masks cancel exactly: composing secure aggregation changes only quantization (≤ 1e-6)."""
    seeds = Seeds(0)
    fed, _ = build_federation(tiny_cfg.data, seeds)
    initial = build_model(fed.info, tiny_cfg.model, seeds.torch("init"))
    p = DPSGD.Params(noise_multiplier=1.0)
    a = run_federated(fed, initial, [DPSGD(p)], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    b = run_federated(fed, initial, [DPSGD(p), SecureAggregation(SecureAggregation.Params())], tiny_cfg.train, tiny_cfg.privacy, Seeds(0), evaluate=False)
    torch.testing.assert_close(b.final_params, a.final_params, rtol=0, atol=1e-6)
    assert [e.steps for e in a.dp_events] == [e.steps for e in b.dp_events]
