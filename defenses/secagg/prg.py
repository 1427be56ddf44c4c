"""Mask expansion: a 32-byte seed → a vector in Z_{2^k} with AES-256 in counter mode.

The keystream of AES-CTR under key = seed (fixed zero nonce: each seed keys one mask
only) is a cryptographic PRG; numpy only reinterprets its bytes, so expanding 10⁶
coordinates is one C call, not a Python loop (and never numpy's Mersenne Twister).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RING_DTYPES = {32: np.uint32, 64: np.uint64}


def expand(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` uniform elements of Z_{2^bits} (bits ∈ {32, 64}) from ``seed`` (32 bytes).

    The result is read-only (a view on the keystream bytes).
    """
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(length * (bits // 8)))
    return np.frombuffer(stream, dtype=RING_DTYPES[bits])
