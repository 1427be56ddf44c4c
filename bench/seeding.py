"""Named child generators derived from one root seed.

``Seeds(7).rng("train", "cleveland", 3)`` always returns the same stream for the same
names, independent of the order in which other streams were drawn. Library code never
touches the global ``np.random`` or ``torch.manual_seed`` state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


def _words(names: tuple[object, ...]) -> list[int]:
    digest = hashlib.sha256("\x1f".join(map(str, names)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


@dataclass(frozen=True)
class Seeds:
    """Root seed of one experiment cell.

    Args:
        root: the experiment's seed (logged as ``seed``).
    """

    root: int

    def sequence(self, *names: object) -> np.random.SeedSequence:
        return np.random.SeedSequence([int(self.root) & 0xFFFFFFFF, *_words(names)])

    def rng(self, *names: object) -> np.random.Generator:
        """A numpy generator for the stream called ``names``."""
        return np.random.default_rng(self.sequence(*names))

    def int_seed(self, *names: object) -> int:
        return int(self.sequence(*names).generate_state(1, np.uint64)[0] >> 1)

    def torch(self, *names: object) -> torch.Generator:
        """A CPU torch generator for the stream called ``names``."""
        g = torch.Generator()
        g.manual_seed(self.int_seed(*names))
        return g
