"""Heavy libraries (torch, scipy) imported when first used, not when a module is imported.

``privbench list``, ``list NAME``, ``schema`` and ``validate`` (without ``--data``) load every
component class (its ``Params``, ``threat_model``, ``check`` ...) but run none of its code, so
the component modules must import without torch or scipy (issue 26: torch alone is ~1.1 s of
start-up). A module names its heavy libraries at the top as usual, through :func:`lazy`::

    torch = lazy("torch", globals())
    nn = lazy("torch.nn", globals())                          # from torch import nn
    F = lazy("torch.nn.functional", globals(), "F")           # import torch.nn.functional as F
    stats = lazy("scipy.stats", globals())                    # from scipy import stats
    vmap = lazy("torch.func:vmap", globals())                 # from torch.func import vmap

The name stands for the module (or the attribute after ``:``) everywhere in the module's code;
the first attribute access or call imports it and rebinds the module's global to the real object,
so from then on the code runs exactly as with a top-level import (no proxy in the hot path).
What a module needs *while it is being imported* (a base class, a decorator applied at
definition time such as ``@torch.no_grad()``) cannot be lazy: use :func:`no_grad` for the
decorator and build such classes inside a function. ``tests/test_imports.py`` reads these calls
as imports (the family import rule still applies to them), and ``tests/test_startup.py`` checks
that the commands above import neither torch nor scipy.

This module is a leaf: the standard library only.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, MutableMapping, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Lazy:
    """A stand-in for a module (or one of its attributes) that imports it on first use.

    Args:
        target: ``"package.module"`` or ``"package.module:attr"``.
        namespace: the ``globals()`` of the module that holds the stand-in; its ``name`` is
            rebound to the real object on first use.
        name: the global's name in ``namespace``.
    """

    __slots__ = ("_target", "_namespace", "_name", "_obj")

    def __init__(self, target: str, namespace: MutableMapping[str, Any], name: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_namespace", namespace)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_obj", None)

    def _load(self) -> Any:
        obj = self._obj
        if obj is None:
            module, _, attr = self._target.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            object.__setattr__(self, "_obj", obj)
            if self._namespace.get(self._name) is self:
                self._namespace[self._name] = obj
        return obj

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._load(), attr, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._load()(*args, **kwargs)

    def __repr__(self) -> str:
        state = "loaded" if self._obj is not None else "not imported yet"
        return f"<lazy {self._target} ({state})>"


def lazy(target: str, namespace: MutableMapping[str, Any], name: Optional[str] = None) -> Any:
    """A stand-in for ``target`` (``"module"`` or ``"module:attr"``) bound as ``name`` in
    ``namespace`` (by default the last part of ``target``: ``torch.nn`` -> ``nn``,
    ``scipy.stats:norm`` -> ``norm``); imported on first use, see the module docstring."""
    if name is None:
        module, _, attr = target.partition(":")
        name = (attr or module).rsplit(".", 1)[-1]
    return Lazy(target, namespace, name)


def no_grad(fn: F) -> F:
    """``@torch.no_grad()`` for a function defined at import time: torch is imported at the first call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
