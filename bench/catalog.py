"""What a user can put in a suite, read from the same dataclasses that validate it.

* :func:`describe` — ``privbench list NAME``: a component's description, paper, threat model
  and every parameter with its type, default and range.
* :func:`overview` — ``privbench list``: one entry per component, paper titles whole.
* :func:`suite_schema` — ``privbench schema``: a JSON Schema (draft 2020-12) of a suite file,
  so editors autocomplete and check the YAML (e.g. ``# yaml-language-server: $schema=...``).

There is one source of truth: the frozen config dataclasses (``bench.config``) and each
component's ``Params`` dataclass; range limits are their field metadata (``gt``/``ge``/``lt``/``le``).
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from bench.types import ConfigError

FAMILIES = (("dataset", "datasets"), ("model", "models"), ("defense", "defenses"), ("attack", "attacks"))
WIDTH = 100


# --------------------------------------------------------------------------- types


def type_text(tp: Any) -> str:
    """A short readable type: ``number``, ``integer``, ``one of a|b``, ``list of integer``."""
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        inner = [type_text(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in get_args(tp) else "")
    if origin is tuple:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def range_text(meta: typing.Mapping[str, Any]) -> str:
    """``> 0``, ``>= 1, <= 1000``... from a field's metadata; empty without limits."""
    parts = [f"{sym} {meta[k]}" for k, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in meta]
    return ", ".join(parts)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if dataclasses.is_dataclass(v):
        return "{...}"
    return str(v)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from an ``Attributes:`` / ``Args:`` section of ``cls``'s docstring."""
    doc = textwrap.dedent("\n".join((cls.__doc__ or "").splitlines()[1:]))
    out: dict[str, str] = {}
    in_section, current = False, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Attributes:", "Args:", "Parameters:"):
            in_section, current = True, None
            continue
        if not in_section:
            continue
        if not stripped:
            current = None
            continue
        indent = len(line) - len(line.lstrip())
        head, sep, rest = stripped.partition(":")
        if sep and indent <= 4 and head.replace("_", "").isalnum() and " " not in head:
            current = head
            out[current] = rest.strip()
        elif current is not None:
            out[current] += " " + stripped
        elif indent == 0:
            in_section = False
    return out


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One parameter of a component or config section."""

    name: str
    type: str
    default: str  # ``required`` when there is none
    range: str
    doc: str


def params_of(cls: type) -> tuple[ParamInfo, ...]:
    """The parameters of dataclass ``cls`` in declaration order."""
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("derived"):
            continue
        d = _default(f)
        out.append(ParamInfo(f.name, type_text(hints[f.name]), "required" if d is dataclasses.MISSING else _yaml_value(d),
                             range_text(f.metadata), docs.get(f.name, "")))
    return tuple(out)


# --------------------------------------------------------------------------- list


def _summary(cls: type) -> str:
    """The first paragraph of the class docstring, on one line (a paper reference stays whole)."""
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _facts(kind: str, cls: type) -> str:
    if kind == "attack":
        return f"threat model: {cls.threat_model}"
    if kind == "defense":
        return "DP: has ε (with its δ)" if cls.is_dp else "not DP (no ε)"
    return ""


def overview() -> str:
    """``privbench list``: every component family, one wrapped entry per component."""
    from bench.components import registry

    lines: list[str] = []
    for kind, title in FAMILIES:
        lines.append(f"{title}:")
        reg = registry(kind)
        for entry in reg.entries():
            name = entry.name
            try:
                cls = reg.get(name) if entry.error is None else None
            except ConfigError:
                cls = None
            if cls is None:  # a plug-in that breaks its contract: listed with the reason, never used
                text = f"REFUSED ({entry.origin}): {entry.error}"
            else:
                facts = "; ".join(x for x in (_facts(kind, cls), "" if entry.origin == "built-in" else entry.origin) if x)
                text = _summary(cls) + (f" [{facts}]" if facts else "")
                if entry.origin != "built-in":
                    params = getattr(cls, "Params", None)
                    keys = [p.name for p in params_of(params)] if params is not None and dataclasses.is_dataclass(params) else []
                    text += f" Parameters: {', '.join(keys) or 'none'}."
            wrapped = textwrap.wrap(text, WIDTH - 23, break_on_hyphens=False, break_long_words=False) or [""]
            lines.append(f"  {name:<20} {wrapped[0]}")
            lines += [" " * 23 + w for w in wrapped[1:]]
    lines.append("")
    lines.append("`privbench list NAME` shows one component's parameters, defaults and ranges.")
    return "\n".join(lines)


def find(name: str) -> tuple[str, type]:
    """``(family, class)`` of the component called ``name``; a one-line error naming the choices."""
    from bench.components import registry

    if ":" in name:  # an import path: the family whose contract it meets
        from bench.contracts import family_of
        from bench.registry import import_object

        try:
            obj = import_object(name)
        except ConfigError as exc:
            raise ConfigError(f"list: {exc}") from None
        kind = family_of(obj)
        if kind is None:
            raise ConfigError(f"list: {name!r} is no dataset, model, defense or attack (docs/own-model.md says what each must be)")
        return kind, registry(kind).resolve(name, "list")
    hits = [(kind, registry(kind).get(name)) for kind, _ in FAMILIES if name in registry(kind)]
    if not hits:
        import difflib

        every = sorted({n for kind, _ in FAMILIES for n in registry(kind).names()})
        close = difflib.get_close_matches(name, every, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"list: no component called {name!r}{hint}; `privbench list` shows them all")
    return hits[0]


def data_params(name: str) -> tuple[ParamInfo, ...]:
    """The ``data.*`` keys that apply to dataset ``name``: every key of ``DataConfig`` but
    ``name``, less those another dataset declares its own (``own_data_keys``, e.g. the CSV's
    ``path`` or heart disease's ``data_dir``) and ``name`` does not."""
    from bench.components import registry
    from bench.config import DataConfig

    datasets = registry("dataset")
    own = set(getattr(datasets.get(name), "own_data_keys", ()))
    others = {k for n, c in datasets.items() if n != name for k in getattr(c, "own_data_keys", ())}
    return tuple(p for p in params_of(DataConfig) if p.name != "name" and (p.name in own or p.name not in others))


def describe(name: str) -> str:
    """``privbench list NAME``: description, facts and the parameter table of one component."""
    kind, cls = find(name)
    lines = [f"{name} ({kind})"]
    facts = _facts(kind, cls)
    if facts:
        lines.append(f"  {facts}")
    doc = textwrap.dedent("\n".join((cls.__doc__ or "").strip().splitlines()[1:]))
    first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines.append("")
    lines += ["  " + line if line else "" for line in (first + "\n" + doc).strip().splitlines()]
    params_cls = getattr(cls, "Params", None)
    lines.append("")
    if kind == "dataset":
        rows, where = data_params(name), "under `data:`, beside `name:`"
    elif params_cls is None or not dataclasses.is_dataclass(params_cls) or not dataclasses.fields(params_cls):
        rows, where = (), ""
    else:
        rows, where = params_of(params_cls), "beside `name:`"
    if not rows:
        lines.append("  parameters: none")
    else:
        lines.append(f"  parameters (YAML keys {where}):")
        w = max(len(p.name) for p in rows)
        for p in rows:
            extra = "; ".join(x for x in (f"default {p.default}", p.range) if x)
            lines.append(f"    {p.name:<{w}}  {p.type}  ({extra})")
            if p.doc:
                lines += ["    " + " " * (w + 2) + t for t in textwrap.wrap(p.doc, WIDTH - w - 6)]
    example = {"dataset": f"data: {{name: {name}}}", "model": f"model: {{name: {name}}}",
               "defense": f"defenses: [{{name: {name}}}]", "attack": f"attacks: [{{name: {name}}}]"}[kind]
    lines += ["", f"  in a suite: {example}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- JSON Schema


def _json_type(tp: Any) -> dict:
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        options = [_json_type(a) for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp):
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is tuple:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is dict:
        args = get_args(tp)
        return {"type": "object", **({"additionalProperties": _json_type(args[1])} if len(args) == 2 else {})}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if tp is float:  # YAML's .inf is allowed where a field has no upper bound: the range check decides
        return {"type": "number"}
    return {int: {"type": "integer"}, str: {"type": "string"}, bool: {"type": "boolean"}}.get(tp, {})


def dataclass_schema(cls: type, extra: typing.Optional[dict] = None) -> dict:
    """JSON Schema of one config dataclass: its fields, types, defaults, ranges and docs."""
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    props: dict[str, dict] = dict(extra or {})
    required = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("derived"):
            continue
        s = dict(_json_type(hints[f.name]))
        for key, js in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("lt", "exclusiveMaximum"), ("le", "maximum")):
            if key in f.metadata:
                s[js] = f.metadata[key]
        d = _default(f)
        if d is dataclasses.MISSING:
            required.append(f.name)
        elif not dataclasses.is_dataclass(d):
            s["default"] = list(d) if isinstance(d, tuple) else d
        if docs.get(f.name):
            s["description"] = docs[f.name]
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    summary = _summary(cls)
    if summary:
        out["description"] = summary
    return out


def _components(kind: str) -> dict:
    from bench.components import registry

    from bench.registry import IMPORT_PATH

    options = [{"type": "object", "required": ["name"], "description": "a plug-in by import path (docs/own-model.md)",
                "properties": {"name": {"type": "string", "pattern": IMPORT_PATH.pattern}}}]
    for name, cls in registry(kind).items():
        params = getattr(cls, "Params", None)
        name_prop = {"name": {"const": name, "description": _summary(cls)}}
        if params is not None and dataclasses.is_dataclass(params):
            s = dataclass_schema(params, name_prop)
        else:
            s = {"type": "object", "properties": name_prop, "additionalProperties": False}
        s["required"] = ["name", *s.get("required", [])]
        s.pop("description", None)
        options.append(s)
    return {"type": "array", "items": {"oneOf": options}}


def _attributes_schema() -> dict:
    """``fairness.attributes``: ``sex``, ``{age: {bands: [55]}}`` or ``{name: age, bands: [55]}``."""
    from bench.config import SensitiveAttributeConfig

    full = dataclass_schema(SensitiveAttributeConfig)
    options = {k: v for k, v in full["properties"].items() if k != "name"}
    short = {"type": "object", "minProperties": 1, "maxProperties": 1,
             "additionalProperties": {"anyOf": [{"type": "null"}, {"type": "object", "properties": options, "additionalProperties": False}]}}
    return {"type": "array", "items": {"anyOf": [{"type": "string"}, full, short]}, "description": full.get("description", "")}


def _model_schema(strict: dict) -> dict:
    """``model:``: the built-ins' keys (name, hidden, channels), or any keys beside the name of a
    plug-in model (an import path or an installed plug-in; its loader checks them)."""
    from bench.components import registry
    from bench.registry import BUILTIN_MODELS, IMPORT_PATH

    plugins = [n for n in registry("model").names() if n not in BUILTIN_MODELS]
    own = {"anyOf": [{"type": "string", "pattern": IMPORT_PATH.pattern}, *([{"enum": plugins}] if plugins else [])]}
    loose = {k: v for k, v in strict.items() if k != "additionalProperties"}
    return {**loose, "if": {"type": "object", "required": ["name"], "properties": {"name": own}},
            "else": {"properties": strict["properties"], "additionalProperties": False}}


def experiment_schema() -> dict:
    """Schema of one experiment (a suite's ``base``): every config section and component."""
    from bench.config import ExperimentConfig

    s = dataclass_schema(ExperimentConfig)
    props = s["properties"]
    props["defenses"] = {**_components("defense"), "description": "defenses, applied in order (`privbench list` shows them)"}
    props["attacks"] = {**_components("attack"), "description": "attacks run on what their threat model sees"}
    props["model"] = _model_schema(props["model"])
    fairness = next(o for o in props["fairness"]["anyOf"] if o.get("type") == "object")
    fairness["properties"]["attributes"] = _attributes_schema()
    props.pop("seed", None)  # a suite's seeds are its top-level `seeds:` list
    s.pop("required", None)
    return s


def dotted_properties(schema: dict, prefix: str = "") -> dict:
    """``{"train.lr": {...}, "data.name": {...}, "defenses": {...}}``: every key a variant, a grid
    axis or ``--set`` may name, with its schema (sections both whole and by dotted leaf)."""
    out: dict[str, dict] = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out[path] = sub
        obj = sub if sub.get("type") == "object" else next((o for o in sub.get("anyOf", []) if o.get("type") == "object"), None)
        if obj is not None and "properties" in obj and key not in ("attributes",):
            out.update(dotted_properties(obj, path + "."))
    return out


def _partial(schema: dict) -> dict:
    """The same schema with nothing required (a variant or --set overrides only some keys)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: _partial(v) if isinstance(v, dict) else [_partial(x) for x in v] if isinstance(v, list) else v
           for k, v in schema.items() if k != "required"}
    return out


# a plug-in model's own keys (model.width ...): the loader checks them against its Params
PLUGIN_MODEL_KEYS = {r"^model\.(?!(name|hidden|channels)$)": {}}


def suite_schema() -> dict:
    """JSON Schema (draft 2020-12) of a suite file: ``suite``, ``description``, ``base``,
    ``variants``, ``grid``, ``seeds``."""
    base = experiment_schema()
    dotted = dotted_properties(base)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://privbench.dev/suite.schema.json",
        "title": "privbench suite",
        "description": "A base experiment, optional variants and grid, and seeds; every combination is one cell.",
        "type": "object",
        "required": ["suite", "base"],
        "additionalProperties": False,
        "properties": {
            "suite": {"type": "string", "description": "the MLflow experiment name"},
            "description": {"type": "string"},
            "base": base,
            "variants": {"type": "array", "minItems": 1, "description": "bundles of overrides (dotted keys such as train.lr, or whole sections)",
                         "items": {"type": "object", "properties": _partial(dotted), "additionalProperties": False,
                                   "patternProperties": PLUGIN_MODEL_KEYS}},
            "grid": {"type": "object", "description": "dotted key -> list of values; every combination is a cell",
                     "properties": {k: {"type": "array", "minItems": 1, "items": _partial(v)} for k, v in dotted.items()},
                     "additionalProperties": False, "patternProperties": {k: {"type": "array", "minItems": 1} for k in PLUGIN_MODEL_KEYS}},
            "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        },
    }


# --------------------------------------------------------------------------- every error at once


def _where(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "suite"


def _explain(err) -> list[str]:
    """One readable line per leaf problem of a jsonschema error (component choices resolved by name)."""
    where = _where(err.absolute_path)
    if err.validator in ("oneOf", "anyOf") and isinstance(err.instance, dict) and "name" in err.instance:
        name = err.instance["name"]
        own = [e for e in err.context if list(e.relative_schema_path)[:1] and
               err.validator_value[list(e.relative_schema_path)[0]].get("properties", {}).get("name", {}).get("const") == name]
        if own:
            return [line for e in own if e.validator != "const" for line in _explain(e)] or [f"{where}: invalid"]
        names = [o.get("properties", {}).get("name", {}).get("const") for o in err.validator_value]
        names = [n for n in names if n]
        if names:
            return [f"{where}.name: unknown component {name!r}; allowed: {', '.join(names)}"]
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        import difflib

        lines = []
        for key in extra:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            lines.append(f"{where + '.' if where != 'suite' else ''}{key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return lines or [f"{where}: {err.message}"]
    if err.validator in ("anyOf", "oneOf") and err.context:
        deepest = max(err.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(err.absolute_path):
            return _explain(deepest)
    return [f"{where}: {err.message}"]


def schema_errors(raw: Any) -> list[str]:
    """Every problem the suite schema finds in a loaded YAML document, one line each, in file order.

    The loader (``bench.suite``) stops at its first error with a message that names the fix;
    this lists all of them at once (``privbench validate``). Range and type checks are the
    dataclasses' own, so the two agree on what is wrong (tests/test_catalog.py).
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(suite_schema())
    lines: list[str] = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        for line in _explain(err):
            if line not in lines:
                lines.append(line)
    return lines
