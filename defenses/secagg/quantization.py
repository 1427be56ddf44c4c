"""Fixed-point encoding of real vectors into the ring Z_{2^k} with headroom for a sum.

Each client encodes its (weighted) update clipped to [−R, R] with scale s; the sum of n
encodings lies in [−nRs, nRs] ⊂ (−2^{k−1}, 2^{k−1}) by the choice of s, so the modular
sum decodes to the real sum with error at most n/(2s) per coordinate (rounding only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses.secagg.prg import RING_DTYPES


@dataclass(frozen=True)
class Quantizer:
    """Fixed point for a sum of ``num_inputs`` vectors with entries in [−clip_range, clip_range].

    Attributes:
        bits: k, the ring is Z_{2^k} (32 or 64).
        clip_range: R; larger entries are clipped (counted by :meth:`clipped`).
        num_inputs: n, how many encodings will be summed.
    """

    bits: int
    clip_range: float
    num_inputs: int

    @property
    def scale(self) -> float:
        # Leave one bit for the sign and one more so float rounding at the edge cannot wrap;
        # for k = 64 float64 has only 53 significant bits anyway.
        return float(2 ** (min(self.bits, 53) - 2)) / (self.num_inputs * self.clip_range)

    @property
    def max_sum_error(self) -> float:
        """Worst-case absolute error of a decoded sum, per coordinate."""
        return self.num_inputs * 0.5 / self.scale

    def clipped(self, x: np.ndarray) -> int:
        return int(np.count_nonzero(np.abs(x) > self.clip_range))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Real vector → ring elements (two's complement representatives mod 2^k)."""
        q = np.rint(np.clip(np.asarray(x, dtype=np.float64), -self.clip_range, self.clip_range) * self.scale)
        return q.astype(np.int64).astype(RING_DTYPES[self.bits])  # wraps negatives mod 2^k

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements (a sum of ≤ n encodings) → real vector."""
        signed = ring.view(np.int32 if self.bits == 32 else np.int64)
        return signed.astype(np.float64) / self.scale
