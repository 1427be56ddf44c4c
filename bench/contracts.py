"""What a component must be to enter a registry (built-ins and plug-ins alike).

:func:`check_component` is called once per component, when it is first loaded; a component
that breaks its family's contract is refused with a :class:`~bench.types.ConfigError` of one
line naming what is missing. The contracts, read from what the built-ins declare:

* **defense**: a subclass of :class:`defenses.base.Defense` with a ``Params`` dataclass (its YAML
  keys), ``privacy_unit`` one of ``record``/``client``/``none``, boolean ``is_dp``,
  ``hides_updates``, ``replaces_aggregation``; a DP defense (``is_dp``) overrides
  ``dp_events`` (the accountant's input) and one that replaces aggregation overrides ``aggregate``.
* **attack**: a subclass of :class:`attacks.base.Attack` with a ``Params`` dataclass, a
  ``threat_model`` from :data:`bench.types.THREAT_MODELS`, a ``kind`` (what its output is
  scored as) and its own ``run(self, view, rng)``.
* **dataset**: an object with ``check(cfg)``, ``fingerprint(cfg)`` and ``load(cfg)`` (returning
  :class:`bench.data.table.RawData`) and a ``modality`` (``tabular`` or ``image``).
* **model**: either a built-in style object with ``check(cfg)`` and ``build(info, cfg)``, or
  (the plug-in form, docs/own-model.md) a callable — a ``torch.nn.Module`` subclass or a
  function — whose first parameter is ``info`` (a :class:`bench.types.DatasetInfo`) and whose
  other parameters are keyword parameters (the YAML keys beside ``name:``; a parameter without
  a default is required). It is wrapped in :class:`ModuleModel`; what it builds must be a
  ``torch.nn.Module``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Any, Optional

from bench.types import THREAT_MODELS, ConfigError

ATTACK_KINDS = ("membership", "source", "reconstruction", "audit", "attribute")
PRIVACY_UNITS = ("record", "client", "none")
MODALITIES = ("tabular", "image")


def _what(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {getattr(obj, '__qualname__', repr(obj))}"


def _missing(family: str, name: str, obj: Any, what: str) -> ConfigError:
    return ConfigError(f"{family} {name!r} ({_what(obj)}) {what}")


def _params_dataclass(family: str, name: str, obj: Any) -> None:
    params = getattr(obj, "Params", None)
    if params is None or not (inspect.isclass(params) and dataclasses.is_dataclass(params)):
        raise _missing(family, name, obj, "has no Params dataclass (its YAML keys; an empty @dataclass(frozen=True) class Params: pass is fine)")
    try:
        typing.get_type_hints(params)
    except Exception as exc:
        raise _missing(family, name, obj, f"has a Params whose field types cannot be read ({type(exc).__name__}: {exc})") from None


def _overrides(obj: type, base: type, method: str) -> bool:
    return getattr(obj, method, None) is not getattr(base, method, None)


def check_defense(obj: Any, name: str) -> Any:
    from defenses.base import Defense

    if not (inspect.isclass(obj) and issubclass(obj, Defense)):
        raise _missing("defense", name, obj, "is not a subclass of defenses.base.Defense")
    _params_dataclass("defense", name, obj)
    if obj.privacy_unit not in PRIVACY_UNITS:
        raise _missing("defense", name, obj, f"declares privacy_unit {obj.privacy_unit!r}; expected one of {', '.join(PRIVACY_UNITS)}")
    for flag in ("is_dp", "hides_updates", "replaces_aggregation"):
        if not isinstance(getattr(obj, flag), bool):
            raise _missing("defense", name, obj, f"declares {flag} = {getattr(obj, flag)!r}; expected true or false")
    if obj.is_dp and not _overrides(obj, Defense, "dp_events"):
        raise _missing("defense", name, obj, "declares is_dp but has no dp_events() (the accountant needs what the mechanism did)")
    if obj.replaces_aggregation and not _overrides(obj, Defense, "aggregate"):
        raise _missing("defense", name, obj, "declares replaces_aggregation but has no aggregate()")
    return obj


def check_attack(obj: Any, name: str) -> Any:
    from attacks.base import Attack

    if not (inspect.isclass(obj) and issubclass(obj, Attack)):
        raise _missing("attack", name, obj, "is not a subclass of attacks.base.Attack")
    _params_dataclass("attack", name, obj)
    if obj.threat_model not in THREAT_MODELS:
        raise _missing("attack", name, obj, f"declares threat_model {obj.threat_model!r}; expected one of {', '.join(THREAT_MODELS)}")
    if obj.kind not in ATTACK_KINDS:
        raise _missing("attack", name, obj, f"declares kind {obj.kind!r}; expected one of {', '.join(ATTACK_KINDS)}")
    if not _overrides(obj, Attack, "run"):
        raise _missing("attack", name, obj, "has no run(self, view, rng) of its own")
    try:
        inspect.signature(obj.run).bind(None, None, None)
    except TypeError:
        raise _missing("attack", name, obj, f"has run{inspect.signature(obj.run)}; expected run(self, view, rng)") from None
    return obj


def check_dataset(obj: Any, name: str) -> Any:
    for method in ("check", "fingerprint", "load"):
        if not callable(getattr(obj, method, None)):
            raise _missing("dataset", name, obj, f"has no {method}(cfg)")
    modality = getattr(obj, "modality", None)
    if modality not in MODALITIES:
        raise _missing("dataset", name, obj, f"declares modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return obj


# --------------------------------------------------------------------------- models


class ModuleModel:
    """A user model (a ``torch.nn.Module`` subclass or a factory function taking
    ``(info, **params)``) behind the built-in models' interface: ``check(cfg)``,
    ``build(info, cfg)`` and a ``Params`` dataclass read from its signature (or its own ``Params``).

    Args:
        wrapped: the user's class or function.
        name: the name it is registered or referred to by.
    """

    def __init__(self, wrapped: Any, name: str, params: type) -> None:
        self.wrapped = wrapped
        self.name = name
        self.Params = params
        self.__doc__ = wrapped.__doc__ or f"{_what(wrapped)} (no docstring)"
        self.__module__ = getattr(wrapped, "__module__", None)

    def check(self, cfg: Any) -> None:
        """A user's own ``check_config(cfg)`` (optional) refuses configurations it cannot work with."""
        hook = getattr(self.wrapped, "check_config", None)
        if hook is not None:
            hook(cfg)

    def build(self, info: Any, cfg: Any) -> Any:
        """``wrapped(info, **cfg.params)``, which must be a ``torch.nn.Module``."""
        import torch

        params = dict(getattr(cfg, "params", None) or {})
        model = self.wrapped(info, **params)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model {self.name!r} ({_what(self.wrapped)}) returned {type(model).__name__}, not a torch.nn.Module")
        return model


_YAML_TYPES = (int, float, str, bool)


def _yaml_type(annotation: Any, default: Any) -> Any:
    """A type bench.schema can read from YAML for one parameter (``Any`` when it cannot say)."""
    origin = typing.get_origin(annotation)
    if annotation in _YAML_TYPES:
        return annotation
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = args[0] if args and args[0] in _YAML_TYPES else Any
        return tuple[item, ...]
    if origin is typing.Literal:
        return annotation
    if origin is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1 and type(None) in typing.get_args(annotation):
            return Optional[_yaml_type(inner[0], None)]
    if annotation is inspect.Parameter.empty and default is not inspect.Parameter.empty and default is not None:
        return type(default) if type(default) in _YAML_TYPES else Any
    return Any


def params_from_signature(fn: Any, name: str) -> type:
    """A frozen ``Params`` dataclass of ``fn``'s parameters after ``info`` (types from its
    annotations or defaults; no default: required). ``ConfigError`` when ``fn`` cannot take
    ``(info, **params)``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        raise _missing("model", name, fn, "has no readable signature; expected (info, **params)") from None
    params = list(sig.parameters.values())
    if inspect.isclass(fn):
        params = params[1:]  # self
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise _missing("model", name, fn, f"takes {sig}; expected the dataset's facts first: (info, **params)")
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    first = params[0]
    named = first.name == "info" or "DatasetInfo" in str(hints.get(first.name, first.annotation))
    if not named:
        raise _missing("model", name, fn, f"takes {sig}; expected the dataset's facts first: (info, **params)")
    fields = []
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise _missing("model", name, fn, f"takes *{p.name}; parameters must be named (the YAML keys)")
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise _missing("model", name, fn, f"takes {p.name!r} positionally only; parameters must be keywords (the YAML keys)")
        tp = _yaml_type(hints.get(p.name, p.annotation), p.default)
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, tp))
        else:
            default = tuple(p.default) if isinstance(p.default, list) else p.default
            fields.append((p.name, tp, dataclasses.field(default=default)))
    fields.sort(key=lambda f: len(f) == 3)  # required first, as dataclasses want
    cls = dataclasses.make_dataclass("Params", fields, frozen=True)
    cls.__doc__ = f"Parameters of {name} (from its signature)."
    return cls


def check_model(obj: Any, name: str) -> Any:
    if isinstance(obj, ModuleModel):
        return obj
    if callable(getattr(obj, "build", None)) and callable(getattr(obj, "check", None)) and not _is_module_class(obj):
        return obj  # the built-in form: build(info, cfg), check(cfg)
    if not callable(obj):
        raise _missing("model", name, obj, "is neither a torch.nn.Module class, a function (info, **params) -> nn.Module, "
                                           "nor an object with build(info, cfg) and check(cfg)")
    own = getattr(obj, "Params", None)
    if own is not None:
        _params_dataclass("model", name, obj)
        params_from_signature(obj, name)  # still takes (info, ...)
        return ModuleModel(obj, name, own)
    return ModuleModel(obj, name, params_from_signature(obj, name))


def _is_module_class(obj: Any) -> bool:
    if not inspect.isclass(obj):
        return False
    torch = sys.modules.get("torch")
    if torch is None:  # no torch.nn.Module subclass exists before torch is imported (`privbench list` stays without it)
        return False
    return issubclass(obj, torch.nn.Module)


#: what an attack of each ``kind`` must return from ``run`` (names in :mod:`bench.types`)
ATTACK_OUTPUTS = {"membership": "MembershipScores", "source": "SourceGuesses", "reconstruction": "Reconstructions",
                  "audit": "AuditScores", "attribute": "AttributeInferences"}


def check_output(name: str, kind: str, output: Any) -> None:
    """Refuse, in one line, an attack output that is not what its ``kind`` promises (scoring would fail obscurely)."""
    import bench.types as types

    expected = ATTACK_OUTPUTS.get(kind)
    if expected is not None and not isinstance(output, getattr(types, expected)):
        raise ConfigError(f"attacks: {name!r} (kind {kind!r}) returned {type(output).__name__}; its run() must return "
                          f"bench.types.{expected}")


CHECKS = {"defense": check_defense, "attack": check_attack, "dataset": check_dataset, "model": check_model}


def check_component(family: str, obj: Any, name: str) -> Any:
    """The component ``obj`` registered as ``name`` if it meets ``family``'s contract (possibly
    wrapped, see :class:`ModuleModel`); else a one-line :class:`ConfigError`."""
    return CHECKS[family](obj, name)


def family_of(obj: Any) -> Optional[str]:
    """The family whose contract ``obj`` meets (defense, attack, dataset, model), or None."""
    for family in ("defense", "attack", "dataset", "model"):
        try:
            CHECKS[family](obj, "?")
            return family
        except ConfigError:
            continue
    return None
