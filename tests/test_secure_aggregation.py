"""Secure aggregation: exact sums, dropout recovery at every round and abort, named protocol
errors, hiding, cost accounting, speed."""

from __future__ import annotations

import re
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
from bench.types import ConfigError, ProtocolAbort
from bench.views import server_view
from defenses.base import ServerContext, weighted_sum
from defenses.dp_sgd import DPSGD
from defenses.secagg import shamir
from defenses.secagg.prg import expand
from defenses.secagg.protocol import (
    COMMITMENT_BYTES, DROPOUT_ROUNDS, NONCE_BYTES, ROUNDS, SERVER, TAG_BYTES, complete_graph, harary_graph, secure_sum,
)
from defenses.secagg.quantization import Quantizer
from defenses.secure_aggregation import EXCLUDING_ROUNDS, SecureAggregation
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


@pytest.mark.parametrize("rnd", DROPOUT_ROUNDS)
def test_dropouts_at_each_round_give_the_sum_over_the_protocols_survivor_set(rnd):
    """Dropped at ShareKeys or MaskedInputCollection: not in the sum (for masked_input the
    dangling pairwise masks are rebuilt from the mask-key shares); dropped after sending y_u
    (ConsistencyCheck, Unmasking): in the sum, the self mask removed with the others' shares."""
    xs = _ring_inputs(7, 300)
    res = secure_sum(xs, threshold=4, bits=32, dropouts={rnd: [2, 6]})
    excluded = rnd in EXCLUDING_ROUNDS
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if not (excluded and i in (2, 6))]))
    assert res.included == ((0, 1, 3, 4, 5) if excluded else tuple(range(7)))
    assert res.survivors == (0, 1, 3, 4, 5)
    assert res.dropped == {r: ((2, 6) if r == rnd else ()) for r in DROPOUT_ROUNDS}


def test_dropouts_at_every_round_at_once():
    xs = _ring_inputs(9, 200)
    drops = {"share_keys": [0], "masked_input": [5], "consistency_check": [2], "unmasking": [8]}
    res = secure_sum(xs, threshold=5, bits=32, dropouts=drops)
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if i not in (0, 5)]))
    assert res.included == (1, 2, 3, 4, 6, 7, 8) and res.survivors == (1, 3, 4, 6, 7)
    # a client that dropped at ShareKeys sent only its keys
    assert res.bytes_sent[0] == 2 * 32 and res.bytes_sent[5] < res.bytes_sent[1]


def test_secagg_plus_neighbour_graph_with_dropouts():
    n = 12
    graph = harary_graph(n, 4, np.random.default_rng(0).permutation(n))
    assert all(len(nb) == 4 for nb in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])  # symmetric
    xs = _ring_inputs(n, 200)
    res = secure_sum(xs, threshold=3, bits=32, graph=graph, dropouts={"masked_input": [1], "consistency_check": [7]})
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if i != 1]))
    res = secure_sum(xs, threshold=3, bits=32, graph=graph, dropouts={"share_keys": [4], "unmasking": [9]})
    assert np.array_equal(res.total, _ring_sum([x for i, x in enumerate(xs) if i != 4]))


@pytest.mark.parametrize(
    "drops,rnd",
    [
        ({"share_keys": [0, 1, 2]}, "share_keys"),
        ({"masked_input": [1, 2, 3]}, "masked_input"),
        ({"consistency_check": [0, 1, 2]}, "consistency_check"),
        ({"unmasking": [0, 1, 2]}, "unmasking"),
        ({"share_keys": [0], "consistency_check": [1], "unmasking": [2]}, "unmasking"),
    ],
)
def test_too_many_dropouts_abort_naming_the_round(drops, rnd):
    with pytest.raises(ProtocolAbort, match=rf"aborted in {re.escape(ROUNDS[rnd])}: server: only 2 of 5 clients .* below the threshold t=3") as exc:
        secure_sum(_ring_inputs(5, 50), threshold=3, bits=32, dropouts=drops)
    assert "\n" not in str(exc.value)


def _flip(round_name: str, sender: int, receiver: int, offset: int, delta: int = 1):
    """A network adversary that changes one byte of one message."""

    def tamper(rnd: str, u: int, v: int, payload: bytes) -> bytes:
        if (rnd, u, v) != (round_name, sender, receiver):
            return payload
        b = bytearray(payload)
        b[offset] = (b[offset] + delta) % 256
        return bytes(b)

    return tamper


def test_identity_tamper_changes_nothing():
    xs = _ring_inputs(5, 50)
    res = secure_sum(xs, threshold=3, bits=32, dropouts={"masked_input": [4]}, tamper=lambda r, u, v, p: p)
    assert np.array_equal(res.total, _ring_sum(xs[:4]))


@pytest.mark.parametrize("offset", [0, NONCE_BYTES + 3, -1])  # the nonce, the ciphertext body, the GCM tag
def test_a_flipped_ciphertext_byte_aborts_naming_the_ciphertext_and_parties(offset):
    names = [f"h{i}" for i in range(5)]
    with pytest.raises(ProtocolAbort, match=r"round 4 \(Unmasking\): client 3 \(h3\): the encrypted share \(ciphertext\) from client 1 \(h1\) failed AES-GCM authentication") as exc:
        secure_sum(_ring_inputs(5, 50), threshold=3, bits=32, party_names=names, tamper=_flip("share_keys", 1, 3, offset))
    assert str(exc.value) and "\n" not in str(exc.value)


def _corrupt_share(holder: int, owner: int, delta: int = 1):
    """``holder`` reveals a wrong share of ``owner``'s secret (its share + ``delta``, still in the field)."""

    def tamper(rnd: str, u: int, v: int, payload: bytes) -> bytes:
        if (rnd, u, v) != ("unmasking", holder, SERVER):
            return payload
        size = 8 + shamir.SHARE_BYTES
        b = bytearray(payload)
        for i in range(0, len(b), size):
            if int.from_bytes(b[i : i + 4], "big") == owner:
                value = (shamir.from_bytes(bytes(b[i + 8 : i + size])) + delta) % shamir.PRIME
                b[i + 8 : i + size] = shamir.to_bytes(value)
        return bytes(b)

    return tamper


@pytest.mark.parametrize(
    "holder,drops,match",
    [
        # among the t shares the server interpolates: the seed fails its commitment
        (0, {}, r"round 4 \(Unmasking\): client 2: its self-mask seed reconstructed from the shares of clients \[0, 1, 2, 3\] does not verify"),
        # a further share: off the polynomial, and the server names who sent it
        (5, {}, r"round 4 \(Unmasking\): client 5: its share of client 2's self-mask seed is inconsistent"),
        # the mask key of a client that never sent y_u: checked against its public key
        (1, {"masked_input": [2]}, r"round 4 \(Unmasking\): client 2: its mask key reconstructed .* does not verify"),
    ],
)
def test_a_corrupted_share_aborts_instead_of_a_wrong_sum(holder, drops, match):
    with pytest.raises(ProtocolAbort, match=match):
        secure_sum(_ring_inputs(7, 50), threshold=4, bits=32, dropouts=drops, tamper=_corrupt_share(holder, owner=2))


def test_malformed_unmasking_replies_abort():
    xs = _ring_inputs(5, 50)
    size = 8 + shamir.SHARE_BYTES

    def reply(edit):
        return lambda r, u, v, p: edit(p) if (r, u, v) == ("unmasking", 1, SERVER) else p

    with pytest.raises(ProtocolAbort, match=r"client 1: its reply carries a duplicate share of client 0"):
        secure_sum(xs, threshold=3, bits=32, tamper=reply(lambda p: p[:size] + p))
    with pytest.raises(ProtocolAbort, match=r"client 1: its reply carries a share with unknown party ids \(owner 99"):
        secure_sum(xs, threshold=3, bits=32, tamper=reply(lambda p: (99).to_bytes(4, "big") + p[4:]))
    with pytest.raises(ProtocolAbort, match=r"client 1: its unmasking reply is malformed"):
        secure_sum(xs, threshold=3, bits=32, tamper=reply(lambda p: p[:-1]))
    with pytest.raises(ProtocolAbort, match=r"client 1: its share of client 0's secret lies outside the field"):
        secure_sum(xs, threshold=3, bits=32, tamper=reply(lambda p: p[:8] + b"\xff" * shamir.SHARE_BYTES + p[size:]))


@pytest.mark.parametrize(
    "drops,match",
    [
        ({"masked_input": [7]}, r"round 2 \(MaskedInputCollection\): server: unknown party id 7"),
        ({"unmasking": [-1]}, r"round 4 \(Unmasking\): server: unknown party id -1"),
        ({"masked_input": [1], "unmasking": [1]}, r"round 4 \(Unmasking\): server: duplicate party id 1: it already dropped in round 2"),
    ],
)
def test_unknown_or_duplicate_party_ids_abort(drops, match):
    with pytest.raises(ProtocolAbort, match=match):
        secure_sum(_ring_inputs(5, 20), threshold=3, bits=32, dropouts=drops)


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
    expected = 2 * 32 + COMMITMENT_BYTES + (n - 1) * share_ct + d * 4 + reveal
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


# ------------------------------------------------------------------ dropouts at every round (the defense)


def _server_ctx(seed: int, names) -> ServerContext:
    return ServerContext(round=1, participants=tuple(names), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rnd,seed", zip(DROPOUT_ROUNDS, (0, 5, 0, 1)))  # seeds at which two of the eight drop
def test_defense_with_dropouts_at_each_round_equals_the_plain_aggregate_of_the_survivor_set(rnd, seed):
    """The sum the server recovers is the plain weighted sum over the protocol's survivor set
    (re-weighted when inputs were left out), within the fixed-point bound."""
    n = 8
    ups, w = _updates(n, 400)
    d = SecureAggregation(SecureAggregation.Params(dropout={"round": rnd, "rate": 0.3}))
    got = d.aggregate(ups, w, _server_ctx(seed, ups))
    dropped = d.dropped[-1]
    assert len(dropped[rnd]) == 2 and all(not v for r, v in dropped.items() if r != rnd)
    keep = {k: v for k, v in ups.items() if rnd not in EXCLUDING_ROUNDS or k not in dropped[rnd]}
    total = sum(w[k] for k in keep)
    expected = weighted_sum(keep, {k: w[k] / total for k in keep})
    bound = Quantizer(32, 4.0, n).max_sum_error / total
    assert float((got - expected).abs().max()) <= bound + 1e-6
    m = d.metrics()
    assert m[f"defense/secure_aggregation/dropped_at_{rnd}_per_round"] == 2 == m["defense/secure_aggregation/dropped_per_round"]
    assert m["defense/secure_aggregation/survivors_per_round"] == n - 2
    assert m["defense/secure_aggregation/inputs_in_sum_per_round"] == len(keep)
    assert d.tags() == {"secure_aggregation_dropouts": f"1:{rnd}={'+'.join(dropped[rnd])}"}


def test_seeded_dropouts_are_reproducible_and_leave_the_server_stream_alone():
    ups, w = _updates(8, 50)
    params = SecureAggregation.Params(dropout=[{"round": "share_keys", "rate": 0.1}, {"round": "unmasking", "rate": 0.15}])
    runs = []
    for _ in range(2):
        d = SecureAggregation(params)
        outs = [d.aggregate(ups, w, _server_ctx(s, ups)) for s in range(5)]  # seeds at which ≥ t = 5 of 8 remain
        runs.append((d.dropped, outs))
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert len({tuple(map(tuple, r.values())) for r in runs[0][0]}) > 1  # the seeds differ, and so do the dropouts
    # the draws come from a child stream: the server generator's next draw (client_dp's noise) is unchanged
    ctx = _server_ctx(3, ups)
    SecureAggregation(params).aggregate(ups, w, ctx)
    assert torch.equal(torch.randn(4, generator=ctx.generator), torch.randn(4, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("rnd", DROPOUT_ROUNDS)
def test_defense_aborts_below_threshold_naming_the_round(rnd):
    ups, w = _updates(4, 20)  # t = 3: any two dropouts abort
    d = SecureAggregation(SecureAggregation.Params(dropout={"round": rnd, "rate": 0.6}))
    with pytest.raises(ProtocolAbort, match=rf"aborted in {re.escape(ROUNDS[rnd])}: server: only \d of 4 clients .*below the threshold t=3"):
        d.aggregate(ups, w, _server_ctx(2, ups))  # seed 2: at least two drop at every round
    assert not d.rounds  # nothing recorded as if it had succeeded


def test_defense_refuses_unknown_and_duplicate_parties():
    ups, w = _updates(3, 10)
    d = SecureAggregation(SecureAggregation.Params())
    with pytest.raises(ProtocolAbort, match=r"round 0 \(AdvertiseKeys\): server: duplicate party id 'h1'"):
        d.aggregate(ups, w, _server_ctx(0, ["h0", "h1", "h1", "h2"]))
    with pytest.raises(ProtocolAbort, match=r"round 0 \(AdvertiseKeys\): server: unknown party id 'h2'"):
        d.aggregate(ups, w, _server_ctx(0, ["h0", "h1"]))


def _params(**kw):
    return parse_experiment(tiny_raw(defenses=[{"name": "secure_aggregation", **kw}], attacks=[])).defenses[0].params


def test_dropout_config_forms():
    one = _params(dropout={"round": "masked_input", "rate": 0.2})
    assert one.dropout_rates == {"masked_input": 0.2} and one.excludes_inputs
    many = _params(dropout=[{"round": "unmasking", "rate": 0.1}, {"round": "share_keys", "rate": 0.05}])
    assert list(many.dropout_rates) == ["share_keys", "unmasking"]  # protocol order
    assert SecureAggregation.label(many) == "secure_aggregation(drop@share_keys=0.05,drop@unmasking=0.1)"
    assert not _params(dropout={"round": "consistency_check", "rate": 0.3}).excludes_inputs
    # configs without the key keep their run_key: it is omitted, not null
    cfg = parse_experiment(tiny_raw(defenses=[{"name": "secure_aggregation"}], attacks=[]))
    assert "dropout" not in cfg.to_dict()["defenses"][0]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"dropout": {"round": "masked_inputs", "rate": 0.2}}, r"dropout\.round: got 'masked_inputs'; .*did you mean 'masked_input'"),
        ({"dropout": {"round": "unmasking", "rate": 1.0}}, r"dropout\.rate: got 1.0; expected a probability in \[0, 1\)"),
        ({"dropout": [{"round": "unmasking", "rate": 0.1}, {"round": "unmasking", "rat": 0.2}]}, r"dropout\[1\]\.rat: unknown key \(did you mean 'rate'\?\)"),
        ({"dropout": [{"round": "unmasking"}]}, r"dropout\[0\]\.rate: missing required key"),
        ({"dropout": [{"round": "unmasking", "rate": 0.1}, {"round": "unmasking", "rate": 0.2}]}, "'unmasking' is listed twice"),
        ({"dropout": 0.2}, r"dropout: got 0.2; expected \{round: masked_input, rate: 0.2\}"),
        ({"dropout": {"round": "unmasking", "rate": 0.1}, "dropout_fraction": 0.2}, "not both"),
    ],
)
def test_bad_dropout_config_is_refused_in_one_line(kw, match):
    with pytest.raises(ConfigError, match=match) as exc:
        _params(**kw)
    assert "\n" not in str(exc.value) and "secure_aggregation" in str(exc.value)


def test_client_dp_refuses_dropouts_that_reweight():
    client_dp = {"name": "client_dp", "noise_multiplier": 1.0}
    with pytest.raises(ConfigError, match="share_keys or masked_input re-weight .*client_dp"):
        parse_experiment(tiny_raw(defenses=[client_dp, {"name": "secure_aggregation", "dropout": {"round": "share_keys", "rate": 0.1}}], attacks=[]))
    ok = {"name": "secure_aggregation", "dropout": [{"round": "consistency_check", "rate": 0.1}, {"round": "unmasking", "rate": 0.1}]}
    assert len(parse_experiment(tiny_raw(defenses=[client_dp, ok], attacks=[])).defenses) == 2
