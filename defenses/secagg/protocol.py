"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017), run in one process.

Every party's computation is real: X25519 key agreement, HKDF-SHA256, AES-256-CTR mask
expansion, t-of-n Shamir sharing over GF(2^521 − 1) of each client's self-mask seed
b_u and mask secret key s_u, AES-256-GCM authenticated encryption of the shares (the
server only routes ciphertexts). What is simulated is the network: messages are Python
objects handed over in one process, and their sizes are counted.

Rounds (honest-but-curious server, so the signature and consistency-check round of the
malicious-server variant are left out):

0. AdvertiseKeys — each client u publishes two X25519 public keys (c_u for encryption,
   s_u for masking).
1. ShareKeys — u draws b_u, Shamir-shares b_u and s_u^SK among its neighbours (and
   itself) and sends each neighbour v its shares encrypted under HKDF(c_u·c_v).
2. MaskedInputCollection — u sends y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
   in Z_{2^k}, with s_uv = HKDF(s_u·s_v). Clients may drop before (``drop_before``) or
   after (``drop_after``) this round.
3. Unmasking — each surviving client decrypts the shares it holds and reveals, for every
   neighbour u, *either* its share of b_u (u sent y_u) *or* of s_u^SK (u did not) — never
   both. With ≥ t shares per secret the server removes the self masks of the inputs it
   received and the dangling pairwise masks of clients that never sent one; fewer than t
   survivors raise :class:`bench.types.ProtocolAbort`.

SecAgg+ (Bell et al., CCS 2020): with ``neighbors = k`` each client masks with and
shares among only its k neighbours on a random Harary-style ring graph.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench.types import ProtocolAbort
from defenses.secagg import shamir
from defenses.secagg.prg import RING_DTYPES, expand

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(">II")  # (sender, receiver) inside every encrypted share


def complete_graph(n: int) -> dict[int, tuple[int, ...]]:
    """Everyone is everyone's neighbour (the original protocol)."""
    return {u: tuple(v for v in range(n) if v != u) for u in range(n)}


def harary_graph(n: int, k: int, permutation: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """SecAgg+ graph: clients on a ring in ``permutation`` order, each joined to k/2 on each side.

    ``k`` is rounded up to even; k ≥ n − 1 gives the complete graph.
    """
    if k >= n - 1:
        return complete_graph(n)
    half = (k + 1) // 2
    pos = {int(u): i for i, u in enumerate(permutation)}
    order = [int(u) for u in permutation]
    out = {}
    for u in range(n):
        i = pos[u]
        nb = {order[(i + j) % n] for j in range(1, half + 1)} | {order[(i - j) % n] for j in range(1, half + 1)}
        out[u] = tuple(sorted(nb))
    return out


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


@dataclass
class _Client:
    """One client's secrets (kept here; the server object below never reads them)."""

    index: int
    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    b_seed: bytes = b""
    own_shares: dict[int, tuple[int, int]] = field(default_factory=dict)  # sender -> (s share, b share)


@dataclass(frozen=True)
class SecureSumResult:
    """What the server obtains, and what the protocol cost.

    Attributes:
        total: Σ_{u ∈ included} x_u in Z_{2^k} (the only thing the server learns).
        included: clients whose input is in the sum (those that sent a masked input).
        survivors: clients still online in the unmasking round.
        bytes_sent: bytes each client sent (keys, encrypted shares, masked input, shares revealed).
        seconds: wall time of the whole simulated protocol (all clients and the server).
        masked_inputs: what the server received in round 2, for tests of hiding.
    """

    total: np.ndarray
    included: tuple[int, ...]
    survivors: tuple[int, ...]
    bytes_sent: Mapping[int, int]
    seconds: float
    masked_inputs: Mapping[int, np.ndarray]


def _pair_sign(u: int, v: int) -> int:
    return 1 if u < v else -1


def secure_sum(
    inputs: Sequence[np.ndarray],
    threshold: int,
    bits: int,
    graph: Optional[Mapping[int, Sequence[int]]] = None,
    drop_before: Sequence[int] = (),
    drop_after: Sequence[int] = (),
    session: bytes = b"",
) -> SecureSumResult:
    """Run the protocol on ring vectors ``inputs`` (one per client) and return the server's sum.

    Args:
        inputs: encoded inputs in Z_{2^bits}, all of the same length.
        threshold: t, shares needed to recover a secret (per neighbourhood).
        bits: 32 or 64.
        graph: neighbours of each client (default: complete graph).
        drop_before: clients that go offline after sharing keys, before sending y_u.
        drop_after: clients that go offline after sending y_u (their input still counts).
        session: bound into key derivation and the ciphertexts' associated data (round id).

    Raises:
        ProtocolAbort: fewer than ``threshold`` clients (or neighbours) survive.
    """
    t0 = time.perf_counter()
    n = len(inputs)
    d = int(inputs[0].shape[0])
    dtype = RING_DTYPES[bits]
    graph = complete_graph(n) if graph is None else {u: tuple(graph[u]) for u in range(n)}
    sent = {u: 0 for u in range(n)}
    info_mask, info_enc = b"secagg-mask|" + session, b"secagg-enc|" + session

    # ---- round 0: AdvertiseKeys
    clients = [_Client(u, X25519PrivateKey.generate(), X25519PrivateKey.generate()) for u in range(n)]
    c_pk = {u: X25519PublicKey.from_public_bytes(_raw_public(c.c_sk)) for u, c in enumerate(clients)}
    s_pk = {u: X25519PublicKey.from_public_bytes(_raw_public(c.s_sk)) for u, c in enumerate(clients)}
    for u in range(n):
        sent[u] += 2 * PUBLIC_KEY_BYTES

    # ---- round 1: ShareKeys (the server routes ciphertexts it cannot read)
    mailbox: dict[int, dict[int, bytes]] = {v: {} for v in range(n)}
    for u, c in enumerate(clients):
        holders = sorted({u, *graph[u]})
        if threshold > len(holders):
            raise ProtocolAbort(
                f"secure aggregation: threshold {threshold} exceeds the {len(holders)} share holders of client {u}; "
                "lower the threshold or raise the neighbour count"
            )
        c.b_seed = os.urandom(32)
        s_sh = shamir.split(int.from_bytes(_raw_private(c.s_sk), "big"), threshold, [h + 1 for h in holders])
        b_sh = shamir.split(int.from_bytes(c.b_seed, "big"), threshold, [h + 1 for h in holders])
        c.own_shares[u] = (s_sh[u + 1], b_sh[u + 1])
        for v in graph[u]:
            key = _hkdf(c.c_sk.exchange(c_pk[v]), info_enc)
            nonce = os.urandom(NONCE_BYTES)
            plain = _HEADER.pack(u, v) + shamir.to_bytes(s_sh[v + 1]) + shamir.to_bytes(b_sh[v + 1])
            ct = AESGCM(key).encrypt(nonce, plain, session)
            mailbox[v][u] = nonce + ct
            sent[u] += NONCE_BYTES + len(ct)

    # ---- round 2: MaskedInputCollection
    dropped_before = set(int(u) for u in drop_before)
    u2 = [u for u in range(n) if u not in dropped_before]
    if len(u2) < threshold:
        raise ProtocolAbort(
            f"secure aggregation aborted: only {len(u2)} of {n} clients sent a masked input, below the threshold t={threshold}"
        )
    masked: dict[int, np.ndarray] = {}
    for u in u2:
        c = clients[u]
        y = np.array(inputs[u], dtype=dtype, copy=True)
        y += expand(c.b_seed, d, bits)
        for v in graph[u]:
            p = expand(_hkdf(c.s_sk.exchange(s_pk[v]), info_mask), d, bits)
            if _pair_sign(u, v) > 0:
                y += p
            else:
                y -= p
        masked[u] = y
        sent[u] += d * (bits // 8)

    # ---- round 3: Unmasking
    dropped_after = set(int(u) for u in drop_after)
    u3 = [u for u in u2 if u not in dropped_after]
    if len(u3) < threshold:
        raise ProtocolAbort(
            f"secure aggregation aborted: only {len(u3)} of {n} clients survived to the unmasking round, "
            f"below the threshold t={threshold}; the sum cannot be recovered"
        )
    u2_set = set(u2)
    revealed_b: dict[int, dict[int, int]] = {u: {} for u in range(n)}
    revealed_s: dict[int, dict[int, int]] = {u: {} for u in range(n)}
    for v in u3:
        c = clients[v]
        held = dict(c.own_shares)
        for u, blob in mailbox[v].items():
            key = _hkdf(c.c_sk.exchange(c_pk[u]), info_enc)
            plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], session)  # authenticates
            su, sv = _HEADER.unpack_from(plain)
            if (su, sv) != (u, v):
                raise ProtocolAbort(f"secure aggregation: share from {u} to {v} carries ids {(su, sv)}")
            off = _HEADER.size
            held[u] = (
                shamir.from_bytes(plain[off : off + shamir.SHARE_BYTES]),
                shamir.from_bytes(plain[off + shamir.SHARE_BYTES :]),
            )
        for u, (s_share, b_share) in held.items():
            # reveal the self-mask share of a client whose input arrived, the key share of
            # one whose input did not — never both, or the server could unmask x_u
            if u in u2_set:
                revealed_b[u][v + 1] = b_share
            else:
                revealed_s[u][v + 1] = s_share
            sent[v] += _HEADER.size + shamir.SHARE_BYTES

    # ---- server: sum, remove self masks and dangling pairwise masks
    total = np.zeros(d, dtype=dtype)
    for u in u2:
        total += masked[u]
    for u in u2:
        shares = revealed_b[u]
        if len(shares) < threshold:
            raise ProtocolAbort(
                f"secure aggregation aborted: client {u}'s self mask has {len(shares)} surviving share holders, "
                f"below the threshold t={threshold}"
            )
        seed = shamir.combine(dict(list(shares.items())[:threshold])).to_bytes(32, "big")
        total -= expand(seed, d, bits)
    for u in sorted(dropped_before):
        shares = revealed_s[u]
        if len(shares) < threshold:
            raise ProtocolAbort(
                f"secure aggregation aborted: dropped client {u}'s mask key has {len(shares)} surviving share holders, "
                f"below the threshold t={threshold}"
            )
        sk = X25519PrivateKey.from_private_bytes(shamir.combine(dict(list(shares.items())[:threshold])).to_bytes(32, "big"))
        for v in graph[u]:
            if v in u2_set:
                p = expand(_hkdf(sk.exchange(s_pk[v]), info_mask), d, bits)
                # v added sign(v, u)·p for its pair with u; take it out
                if _pair_sign(v, u) > 0:
                    total -= p
                else:
                    total += p
    return SecureSumResult(
        total=total,
        included=tuple(u2),
        survivors=tuple(u3),
        bytes_sent=sent,
        seconds=time.perf_counter() - t0,
        masked_inputs=masked,
    )
