"""Build frozen dataclasses from plain YAML values, with one-line errors.

Every error names the key path, the offending value and what is allowed, and suggests
the closest key for typos. Range limits live in field metadata::

    lr: float = field(default=0.1, metadata={"gt": 0})
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from bench.types import ConfigError

_INF = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, ".inf": math.inf, "+.inf": math.inf,
        "-inf": -math.inf, "-infinity": -math.inf, "-.inf": -math.inf}


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 400-digit integer stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}...({len(text)} chars)"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin is tuple:
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
                if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                    raise  # a mapping meant for that dataclass: its own error names the key that is wrong
                if arg is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                    raise  # a number meant for the float (e.g. too large): say so, not "expected a number"
        raise ConfigError(f"{path}: got {show(value)}; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: got {value!r}; allowed: {', '.join(map(str, allowed))}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: got {value!r}; expected a list")
        args = get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: got {value!r}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: got {show(value)}; expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in _INF:
                raise ConfigError(f"{path}: got {show(value)}; expected a number")
            return _INF[text]  # refused below unless the field allows it (``inf_ok``)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: got {show(value)}; expected a number")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: got {show(value)}; too large for a number, expected a finite number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: got {value!r}; expected a string")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _range_text(meta: Any) -> str:
    parts = [f"{sym} {meta[k]}" for k, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in meta]
    return f" {' and '.join(parts)}" if parts else ""


def _check_finite(f: dataclasses.Field, value: Any, path: str) -> None:
    """Refuse NaN and infinities (``.inf``, ``1e400``): a number that is not finite would train
    on silently (``target_epsilon: .inf`` became σ = 10). A field whose metadata has
    ``inf_ok`` (a reason, e.g. "no clipping") accepts +inf."""
    items = value if isinstance(value, tuple) else (value,)
    for i, v in enumerate(items):
        if not isinstance(v, float) or math.isfinite(v):
            continue
        where = f"{path}[{i}]" if isinstance(value, tuple) else path
        if v == math.inf and f.metadata.get("inf_ok"):
            continue
        also = f" (or inf: {f.metadata['inf_ok']})" if f.metadata.get("inf_ok") else ""
        raise ConfigError(f"{where}: got {v}; expected a finite number{_range_text(f.metadata)}{also}")


def _check_range(f: dataclasses.Field, value: Any, path: str) -> None:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    meta = f.metadata
    checks = [
        ("gt", lambda v, b: v > b, ">"),
        ("ge", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("le", lambda v, b: v <= b, "<="),
    ]
    for key, ok, sym in checks:
        if key in meta and not ok(value, meta[key]):
            raise ConfigError(f"{path}: got {show(value)}; must be {sym} {meta[key]}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating keys, types and ranges."""
    label = path or "config"
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: got {data!r}; expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    # ``derived`` fields are filled in by code (e.g. the data fingerprint), never by YAML
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("derived")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key{hint}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            value = _coerce(hints[name], data[name], sub)
            _check_finite(f, value, sub)
            _check_range(f, value, sub)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: missing required key")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain, YAML/JSON-ready form of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue  # an optional field added later: configs without it keep their run_key
            if f.metadata.get("omit_if_default") and value == f.default:
                continue  # likewise for a field added later with a default (e.g. the image keys)
            out[f.name] = to_dict(value)
        name = getattr(obj, "_spec_name", None)
        return out if name is None else {"name": name, **out}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj
