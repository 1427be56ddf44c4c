"""Named child generators derived from one root seed.

``Seeds(7).rng("train", "cleveland", 3)`` always returns the same stream for the same
names, independent of the order in which other streams were drawn. Library code never
touches the global ``np.random`` or ``torch.manual_seed`` state.

A root seed is any non-negative integer, however large: NumPy's ``SeedSequence`` takes
the whole integer as entropy, so ``2**32 + 5`` and ``5`` are different experiments (an
earlier version kept only the low 32 bits, and such seeds silently repeated smaller ones).
Roots below 2**32 give the same streams as before.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass

import numpy as np

from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def _words(names: tuple[object, ...]) -> list[int]:
    digest = hashlib.sha256("\x1f".join(map(str, names)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def check_seed(value: object, where: str = "seed") -> int:
    """``value`` as a root seed, or ``ValueError`` naming ``where``: a non-negative integer
    (bools, floats and negative numbers are refused, never truncated or wrapped)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{where}: got {value!r}; expected a non-negative integer, e.g. 0")
    return int(value)


@dataclass(frozen=True)
class Seeds:
    """Root seed of one experiment cell.

    Args:
        root: the experiment's seed (logged as ``seed``): a non-negative integer of any size.

    Raises:
        ValueError: ``root`` is negative or not an integer.
    """

    root: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", check_seed(self.root, "Seeds.root"))

    def sequence(self, *names: object) -> np.random.SeedSequence:
        # the root first, whole (NumPy splits it into 32-bit words): a root of more than 32 bits
        # gives a longer entropy list than a smaller root's, equal to it only if SHA-256 name
        # words coincided with the root's high words
        return np.random.SeedSequence([self.root, *_words(names)])

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
