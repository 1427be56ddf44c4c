"""Defenses: one module each, registered in :data:`DEFENSES` (``bench.registry``).

Importing this package loads no defense: each is imported when a suite (or ``privbench
list``) first names it, through its ``module:attr`` entry in :data:`bench.registry.BUILTIN_DEFENSES`.
"""

from bench.registry import DEFENSES  # noqa: F401


def __getattr__(name):  # ``from defenses import Defense`` without importing torch up front
    if name == "Defense":
        from defenses.base import Defense

        return Defense
    raise AttributeError(f"module 'defenses' has no attribute {name!r}")


__all__ = ["DEFENSES", "Defense"]
