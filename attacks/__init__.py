"""Attacks: membership inference, gradient inversion, audits; registered in :data:`ATTACKS` (``bench.registry``).

Importing this package loads no attack: each is imported when a suite (or ``privbench list``)
first names it, through its ``module:attr`` entry in :data:`bench.registry.BUILTIN_ATTACKS`.
"""

from bench.registry import ATTACKS  # noqa: F401


def __getattr__(name):  # ``from attacks import Attack`` without importing torch up front
    if name == "Attack":
        from attacks.base import Attack

        return Attack
    raise AttributeError(f"module 'attacks' has no attribute {name!r}")


__all__ = ["ATTACKS", "Attack"]
