"""Shamir t-of-n secret sharing over the prime field GF(2^521 − 1).

The field is larger than any 32-byte secret (an X25519 private key, a PRG seed), so a
secret is one field element. Coefficients come from :mod:`secrets` (the OS CSPRNG).
"""

from __future__ import annotations

import secrets
from typing import Mapping, Sequence

PRIME = (1 << 521) - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: int, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for the nonzero points ``xs``; any ``threshold`` of them recover it.

    Args:
        secret: an integer in [0, PRIME).
        threshold: t, the number of shares needed (degree of f is t − 1).
        xs: distinct nonzero evaluation points (one per share holder).
    """
    if not 0 <= secret < PRIME:
        raise ValueError("secret must lie in [0, PRIME)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares {len(xs)}")
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise ValueError("share points must be distinct and nonzero")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def interpolation_weights(xs: Sequence[int], points: Sequence[int]) -> list[list[int]]:
    """Lagrange weights of the shares at ``xs`` for evaluating their polynomial at each of ``points``.

    ``f(z) = Σᵢ w[z][i]·f(xs[i]) mod PRIME`` for every polynomial of degree < ``len(xs)``; one
    set of weights serves every secret shared among the same holders (the server reuses them).
    """
    t = len(xs)
    inv = []
    for i, xi in enumerate(xs):
        den = 1
        for k, xk in enumerate(xs):
            if k != i:
                den = den * (xi - xk) % PRIME
        inv.append(pow(den, -1, PRIME))  # extended Euclid: far cheaper than den^(p−2)
    out = []
    for z in points:
        diffs = [(z - xk) % PRIME for xk in xs]
        prefix, suffix = [1] * (t + 1), [1] * (t + 1)
        for k in range(t):
            prefix[k + 1] = prefix[k] * diffs[k] % PRIME
            suffix[t - k - 1] = suffix[t - k] * diffs[t - k - 1] % PRIME
        out.append([inv[i] * prefix[i] % PRIME * suffix[i + 1] % PRIME for i in range(t)])
    return out


def combine(shares: Mapping[int, int]) -> int:
    """Lagrange interpolation at 0 of the given ``{x: y}`` shares (pass exactly t of them)."""
    xs = list(shares)
    weights = interpolation_weights(xs, [0])[0]
    return sum(w * shares[x] for w, x in zip(weights, xs)) % PRIME


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "big")
