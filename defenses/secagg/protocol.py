"""The secure-aggregation protocol of Bonawitz et al. (CCS 2017), run in one process.

Every party's computation is real: X25519 key agreement, HKDF-SHA256, AES-256-CTR mask
expansion, t-of-n Shamir sharing over GF(2^521 − 1) of each client's self-mask seed
b_u and mask secret key s_u, AES-256-GCM authenticated encryption of the shares (the
server only routes ciphertexts). What is simulated is the network: messages are Python
objects handed over in one process, and their sizes are counted.

Rounds (honest-but-curious server: the signatures of the malicious-server variant are left
out, so round 3 carries no message; it is the point where the server learns who is still
online before it asks for shares). U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 are the clients whose message of
rounds 0, 1, 2, 3 and 4 arrived; each round aborts when fewer than t remain.

0. AdvertiseKeys — each client u publishes two X25519 public keys (c_u for encryption,
   s_u for masking).
1. ShareKeys — u draws b_u, Shamir-shares b_u and s_u^SK among its neighbours (and
   itself), sends each neighbour v its shares encrypted under HKDF(c_u·c_v), and a hash
   commitment to b_u (an addition to the paper: it lets the server tell a corrupted share
   from a valid one; s_u^SK is checked against s_u's public key). Clients that drop here
   (``dropouts["share_keys"]``) never share: nobody masks with them.
2. MaskedInputCollection — u ∈ U2 sends y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
   in Z_{2^k} over its neighbours v ∈ U2, with s_uv = HKDF(s_u·s_v). Clients that drop here
   (``dropouts["masked_input"]``) are not in the sum.
3. ConsistencyCheck — clients that sent y_u but are gone before the unmasking request
   (``dropouts["consistency_check"]``) are in the sum.
4. Unmasking — each client of U4 decrypts the shares it holds and reveals, for every
   neighbour u, *either* its share of b_u (u ∈ U3) *or* of s_u^SK (u ∈ U2 \\ U3) — never
   both. Clients that drop here (``dropouts["unmasking"]``) send no shares; their input is in
   the sum. With ≥ t shares per secret the server removes the self masks of the inputs it
   received and the dangling pairwise masks of clients that never sent one.

Every failure raises :class:`bench.types.ProtocolAbort` with one line naming the round, the
party and what failed: too few clients (< t) at any round, a ciphertext that fails AES-GCM
authentication, a revealed share that is inconsistent with the others or does not open the
committed secret, an unknown or duplicate party id. Nothing is swallowed into a wrong sum.

SecAgg+ (Bell et al., CCS 2020): with ``neighbors = k`` each client masks with and
shares among only its k neighbours on a random Harary-style ring graph.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Sequence, get_args

import numpy as np
from cryptography.exceptions import InvalidTag
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
COMMITMENT_BYTES = 32
SERVER = -1  # the receiver id of messages to the server (``tamper``'s third argument)
_HEADER = struct.Struct(">II")  # (sender, receiver) inside every encrypted share; (owner, holder) of a revealed share
_REVEALED = _HEADER.size + shamir.SHARE_BYTES

ROUNDS: dict[str, str] = {
    "advertise_keys": "round 0 (AdvertiseKeys)",
    "share_keys": "round 1 (ShareKeys)",
    "masked_input": "round 2 (MaskedInputCollection)",
    "consistency_check": "round 3 (ConsistencyCheck)",
    "unmasking": "round 4 (Unmasking)",
}
DropoutRound = Literal["share_keys", "masked_input", "consistency_check", "unmasking"]
DROPOUT_ROUNDS: tuple[str, ...] = get_args(DropoutRound)  # the rounds at which a client can drop, in order

Tamper = Callable[[str, int, int, bytes], bytes]
"""An active network adversary (tests): ``tamper(round, sender, receiver, payload)`` returns
what is delivered instead of ``payload``. It sees each encrypted share (round ``share_keys``,
client → client, nonce ‖ ciphertext) and each client's unmasking reply (round ``unmasking``,
client → :data:`SERVER`, records of (owner, holder) ‖ share)."""


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


def _commit(session: bytes, u: int, seed: bytes) -> bytes:
    return hashlib.sha256(b"secagg-commit|" + session + u.to_bytes(4, "big") + seed).digest()


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
        included: clients whose input is in the sum (U3: those that sent a masked input).
        survivors: clients that sent their shares in the unmasking round (U5).
        dropped: for each round of :data:`DROPOUT_ROUNDS`, the clients that dropped there.
        bytes_sent: bytes each client sent (keys, commitment, encrypted shares, masked input,
            shares revealed).
        seconds: wall time of the whole simulated protocol (all clients and the server).
        masked_inputs: what the server received in round 2, for tests of hiding.
    """

    total: np.ndarray
    included: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
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
    dropouts: Optional[Mapping[str, Sequence[int]]] = None,
    session: bytes = b"",
    party_names: Optional[Sequence[str]] = None,
    tamper: Optional[Tamper] = None,
) -> SecureSumResult:
    """Run the protocol on ring vectors ``inputs`` (one per client) and return the server's sum.

    Args:
        inputs: encoded inputs in Z_{2^bits}, all of the same length.
        threshold: t, shares needed to recover a secret (per neighbourhood).
        bits: 32 or 64.
        graph: neighbours of each client (default: complete graph).
        dropouts: round (one of :data:`DROPOUT_ROUNDS`) -> clients that are online when it
            starts but never send their message of that round. ``share_keys`` and
            ``masked_input`` dropouts are not in the sum; ``consistency_check`` and
            ``unmasking`` dropouts are.
        session: bound into key derivation and the ciphertexts' associated data (round id).
        party_names: a name per client for error messages (e.g. the hospital).
        tamper: see :data:`Tamper` (tests of the named errors).

    Raises:
        ProtocolAbort: fewer than ``threshold`` clients (or share holders) at some round, a
            ciphertext or revealed share that does not verify, an unknown or duplicate party id.
        ValueError: malformed arguments (inputs of different lengths, an unknown round name,
            an asymmetric graph).
    """
    t0 = time.perf_counter()
    n = len(inputs)
    d = int(inputs[0].shape[0])
    if any(x.shape != (d,) for x in inputs):
        raise ValueError("secure_sum: every input must be a vector of the same length")
    dtype = RING_DTYPES[bits]

    def who(u: int) -> str:
        return f"client {u}" + (f" ({party_names[u]})" if party_names is not None else "")

    def abort(rnd: str, party: str, what: str) -> ProtocolAbort:
        return ProtocolAbort(f"secure aggregation aborted in {ROUNDS[rnd]}: {party}: {what}")

    def too_few(rnd: str, count: int, what: str, then: str = "") -> ProtocolAbort:
        return abort(rnd, "server", f"only {count} of {n} clients {what}, below the threshold t={threshold}{then}")

    if graph is None:
        graph = complete_graph(n)
    else:
        if set(graph) != set(range(n)):
            raise abort("advertise_keys", "server", f"the neighbour graph's parties {sorted(graph)} are not the clients 0..{n - 1}")
        graph = {u: tuple(int(v) for v in graph[u]) for u in range(n)}
        for u, nb in graph.items():
            bad = [v for v in nb if not 0 <= v < n or v == u]
            if bad or len(set(nb)) != len(nb):
                raise abort("advertise_keys", "server", f"the neighbour list of {who(u)} has unknown, duplicate or self ids {list(nb)}")
            if any(u not in graph[v] for v in nb):
                raise ValueError(f"secure_sum: the neighbour graph is not symmetric at client {u}")
    dropouts = dropouts or {}
    unknown_rounds = set(dropouts) - set(DROPOUT_ROUNDS)
    if unknown_rounds:
        raise ValueError(f"secure_sum: unknown dropout round {sorted(unknown_rounds)[0]!r}; allowed: {', '.join(DROPOUT_ROUNDS)}")
    drop: dict[str, set[int]] = {}
    seen: dict[int, str] = {}
    for rnd in DROPOUT_ROUNDS:
        drop[rnd] = set()
        for u in dropouts.get(rnd, ()):
            if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or not 0 <= u < n:
                raise abort(rnd, "server", f"unknown party id {u!r} in the dropouts (parties are 0..{n - 1})")
            if int(u) in seen:
                raise abort(rnd, "server", f"duplicate party id {int(u)}: it already dropped in {ROUNDS[seen[int(u)]]}")
            seen[int(u)] = rnd
            drop[rnd].add(int(u))

    sent = {u: 0 for u in range(n)}
    info_mask, info_enc = b"secagg-mask|" + session, b"secagg-enc|" + session

    # ---- round 0: AdvertiseKeys (U1: everyone)
    clients = [_Client(u, X25519PrivateKey.generate(), X25519PrivateKey.generate()) for u in range(n)]
    c_pk = {u: X25519PublicKey.from_public_bytes(_raw_public(c.c_sk)) for u, c in enumerate(clients)}
    s_pk_raw = {u: _raw_public(c.s_sk) for u, c in enumerate(clients)}
    s_pk = {u: X25519PublicKey.from_public_bytes(raw) for u, raw in s_pk_raw.items()}
    for u in range(n):
        sent[u] += 2 * PUBLIC_KEY_BYTES

    # ---- round 1: ShareKeys (the server routes ciphertexts it cannot read)
    u2 = [u for u in range(n) if u not in drop["share_keys"]]
    if len(u2) < threshold:
        raise too_few("share_keys", len(u2), "sent their encrypted shares")
    u2_set = set(u2)
    mailbox: dict[int, dict[int, bytes]] = {v: {} for v in range(n)}
    commitment: dict[int, bytes] = {}
    for u in u2:
        c = clients[u]
        holders = sorted({u, *graph[u]})
        if threshold > len(holders):
            raise abort(
                "share_keys", who(u),
                f"threshold {threshold} exceeds its {len(holders)} share holders; lower the threshold or raise the neighbour count",
            )
        c.b_seed = os.urandom(32)
        commitment[u] = _commit(session, u, c.b_seed)
        sent[u] += COMMITMENT_BYTES
        s_sh = shamir.split(int.from_bytes(_raw_private(c.s_sk), "big"), threshold, [h + 1 for h in holders])
        b_sh = shamir.split(int.from_bytes(c.b_seed, "big"), threshold, [h + 1 for h in holders])
        c.own_shares[u] = (s_sh[u + 1], b_sh[u + 1])
        for v in graph[u]:
            key = _hkdf(c.c_sk.exchange(c_pk[v]), info_enc)
            nonce = os.urandom(NONCE_BYTES)
            plain = _HEADER.pack(u, v) + shamir.to_bytes(s_sh[v + 1]) + shamir.to_bytes(b_sh[v + 1])
            blob = nonce + AESGCM(key).encrypt(nonce, plain, session)
            sent[u] += len(blob)
            if v in u2_set:  # the server forwards only to clients still in the protocol
                mailbox[v][u] = blob if tamper is None else tamper("share_keys", u, v, blob)

    # ---- round 2: MaskedInputCollection (U3)
    u3 = [u for u in u2 if u not in drop["masked_input"]]
    if len(u3) < threshold:
        raise too_few("masked_input", len(u3), "sent a masked input")
    masked: dict[int, np.ndarray] = {}
    for u in u3:
        c = clients[u]
        y = np.array(inputs[u], dtype=dtype, copy=True)
        y += expand(c.b_seed, d, bits)
        for v in graph[u]:
            if v not in u2_set:
                continue  # v never shared its keys: no mask with it
            p = expand(_hkdf(c.s_sk.exchange(s_pk[v]), info_mask), d, bits)
            if _pair_sign(u, v) > 0:
                y += p
            else:
                y -= p
        masked[u] = y
        sent[u] += d * (bits // 8)

    # ---- round 3: ConsistencyCheck (U4: still online when the server asks for shares)
    u3_set = set(u3)
    u4 = [u for u in u3 if u not in drop["consistency_check"]]
    if len(u4) < threshold:
        raise too_few("consistency_check", len(u4), "are still online after sending their masked input")

    # ---- round 4: Unmasking (U5: the clients whose shares arrive)
    u5 = [u for u in u4 if u not in drop["unmasking"]]
    if len(u5) < threshold:
        raise too_few("unmasking", len(u5), "sent their unmasking shares", "; the sum cannot be recovered")
    revealed: dict[int, dict[int, int]] = {u: {} for u in u2}  # owner -> {holder x: share}
    for v in u5:
        c = clients[v]
        held = dict(c.own_shares)
        for u, blob in mailbox[v].items():
            key = _hkdf(c.c_sk.exchange(c_pk[u]), info_enc)
            try:
                plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], session)  # authenticates
            except (InvalidTag, ValueError) as exc:
                raise abort(
                    "unmasking", who(v),
                    f"the encrypted share (ciphertext) from {who(u)} failed AES-GCM authentication: tampered in transit or not encrypted for it",
                ) from exc
            if len(plain) != _HEADER.size + 2 * shamir.SHARE_BYTES or _HEADER.unpack_from(plain) != (u, v):
                raise abort("unmasking", who(v), f"the decrypted share from {who(u)} is malformed or carries the wrong party ids")
            off = _HEADER.size
            held[u] = (
                shamir.from_bytes(plain[off : off + shamir.SHARE_BYTES]),
                shamir.from_bytes(plain[off + shamir.SHARE_BYTES :]),
            )
        # reveal the self-mask share of a client whose input arrived, the key share of one
        # whose input did not — never both, or the server could unmask x_u
        reply = b"".join(
            _HEADER.pack(u, v) + shamir.to_bytes(b_share if u in u3_set else s_share)
            for u, (s_share, b_share) in sorted(held.items())
        )
        sent[v] += len(reply)
        if tamper is not None:
            reply = tamper("unmasking", v, SERVER, reply)
        # the server parses what arrived: whose share, from whom, once each
        if len(reply) % _REVEALED:
            raise abort("unmasking", who(v), f"its unmasking reply is malformed ({len(reply)} bytes)")
        mine = {v, *graph[v]} & u2_set
        for i in range(0, len(reply), _REVEALED):
            owner, holder = _HEADER.unpack_from(reply, i)
            if holder != v or owner not in mine:
                raise abort("unmasking", who(v), f"its reply carries a share with unknown party ids (owner {owner}, holder {holder})")
            if v + 1 in revealed[owner]:
                raise abort("unmasking", who(v), f"its reply carries a duplicate share of {who(owner)}'s secret")
            value = shamir.from_bytes(reply[i + _HEADER.size : i + _REVEALED])
            if value >= shamir.PRIME:
                raise abort("unmasking", who(v), f"its share of {who(owner)}'s secret lies outside the field")
            revealed[owner][v + 1] = value

    # ---- server: reconstruct and verify each secret, remove self masks and dangling pairwise masks
    weights_cache: dict[tuple[int, ...], list[list[int]]] = {}

    def reconstruct(u: int, what: str, verify: Callable[[int], bool]) -> int:
        """The secret of ``u`` from the first t of its revealed shares, verified by ``verify``
        (its commitment or public key); every further share must lie on the same polynomial."""
        shares = revealed[u]
        if len(shares) < threshold:
            raise abort("unmasking", who(u), f"its {what} has {len(shares)} revealed shares, below the threshold t={threshold}")
        xs = tuple(sorted(shares))
        base, extra = xs[:threshold], xs[threshold:]
        weights = weights_cache.get(xs)
        if weights is None:  # one set of Lagrange weights per holder set (the same for all secrets in the complete graph)
            weights = weights_cache[xs] = shamir.interpolation_weights(base, (0, *extra))
        ys = [shares[x] for x in base]
        secret = sum(a * y for a, y in zip(weights[0], ys)) % shamir.PRIME
        if not verify(secret):
            raise abort(
                "unmasking", who(u),
                f"its {what} reconstructed from the shares of clients {[x - 1 for x in base]} does not verify: one of them is corrupted",
            )
        off = [x - 1 for w, x in zip(weights[1:], extra) if sum(a * y for a, y in zip(w, ys)) % shamir.PRIME != shares[x]]
        if off:
            raise abort("unmasking", who(off[0]), f"its share of {who(u)}'s {what} is inconsistent with the others (not on the sharing polynomial)")
        return secret

    def seed_of(secret: int) -> bytes:
        return secret.to_bytes(32, "big") if secret < 1 << 256 else b""

    total = np.zeros(d, dtype=dtype)
    for u in u3:
        total += masked[u]
    for u in u3:
        secret = reconstruct(u, "self-mask seed", lambda x, u=u: _commit(session, u, seed_of(x)) == commitment[u])
        total -= expand(seed_of(secret), d, bits)
    for u in sorted(drop["masked_input"]):

        def matches_public_key(x: int, u: int = u) -> bool:
            return x < 1 << 256 and _raw_public(X25519PrivateKey.from_private_bytes(seed_of(x))) == s_pk_raw[u]

        sk = X25519PrivateKey.from_private_bytes(seed_of(reconstruct(u, "mask key", matches_public_key)))
        for v in graph[u]:
            if v in u3_set:
                p = expand(_hkdf(sk.exchange(s_pk[v]), info_mask), d, bits)
                # v added sign(v, u)·p for its pair with u; take it out
                if _pair_sign(v, u) > 0:
                    total -= p
                else:
                    total += p
    return SecureSumResult(
        total=total,
        included=tuple(u3),
        survivors=tuple(u5),
        dropped={rnd: tuple(sorted(drop[rnd])) for rnd in DROPOUT_ROUNDS},
        bytes_sent=sent,
        seconds=time.perf_counter() - t0,
        masked_inputs=masked,
    )
