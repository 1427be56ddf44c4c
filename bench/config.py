"""Frozen experiment configuration, YAML loading, ``--set`` overrides and validation.

The dataclasses are the schema; YAML is only a serialisation. Library code never receives
raw dicts: everything is validated here, at load time, before anything trains or logs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from bench.schema import from_dict, to_dict
from bench.types import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split into hospitals, members, non-members and test records.

    Attributes:
        name: the dataset (``privbench list`` shows them).
        partition: ``natural`` (the dataset's real hospitals), ``iid`` (random equal shares) or
            ``dirichlet`` (label-skewed shares, see ``alpha``).
        num_sites: how many hospitals ``iid`` and ``dirichlet`` make (``natural`` keeps the real ones).
        alpha: Dirichlet concentration of ``dirichlet``: smaller means more label skew between hospitals.
        member_fraction: share of each hospital's non-test records that train (members); the rest are non-members.
        test_fraction: share of each hospital's records held out for test accuracy.
        max_records_per_site: cap on each hospital's records before the split (a random subset); null: no cap.
        members_per_site: cap on each hospital's members after the split (the rest leave the candidate pool); null: no cap.
        small_sites: hospitals too small to split: ``error`` lists them, ``drop`` leaves them out, ``merge``
            pools them into one hospital.
        min_site_records: the size below which a hospital is too small; null: the least that splits.
        data_dir: folder holding the dataset's files (else $PRIVBENCH_DATA_DIR, then the cache).
        download: fetch the files once into the cache when they are not found.
        path: the CSV file (docs/csv.md).
        site_column: the CSV column naming each row's hospital (read for ``partition: natural`` only).
        label_column: the CSV column holding the class label.
        categorical_columns: CSV columns read as categories even though their values are numbers.
        id_columns: identifier columns: never features, never logged.
        drop_columns: CSV columns not read at all.
        positive_labels: label values that become class 1 (the rest class 0), as the CSV writes them.
        multiclass: keep every label value as its own class (instead of ``positive_labels``).
        path_column: the image manifest's column holding each image's file (relative to the manifest's folder).
        image_size: ``[height, width]`` every image is resized to (bilinear); null: the images' own size, which must be the same for all.
        image_mode: ``gray`` (1 channel) or ``rgb`` (3 channels), whatever the files store.
    """

    name: str = "breast_cancer"
    partition: Literal["natural", "iid", "dirichlet"] = "iid"
    num_sites: int = field(default=4, metadata={"ge": 1, "le": 1000})
    alpha: float = field(default=1.0, metadata={"gt": 0})
    member_fraction: float = field(default=0.5, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    max_records_per_site: Optional[int] = field(default=None, metadata={"ge": 4})
    # cap on each hospital's members (training records) after the split; the rest become
    # non-members. Gradient inversion attacks a hospital holding exactly B records.
    members_per_site: Optional[int] = field(default=None, metadata={"ge": 1})
    # hospitals too small to split (or below min_site_records): "error" lists them all, "drop" leaves
    # them out, "merge" pools them into one hospital named "merged_small_sites" (bench.data.small_sites)
    small_sites: Literal["error", "drop", "merge"] = "error"
    min_site_records: Optional[int] = field(default=None, metadata={"ge": 1})
    data_dir: Optional[str] = None
    download: bool = True
    path: Optional[str] = None
    site_column: str = "site"
    label_column: str = "label"
    categorical_columns: tuple[str, ...] = ()
    # csv only (docs/csv.md): identifier columns (never features, never logged), columns not
    # read at all, and what the label's values mean: ``positive_labels`` binarises (those
    # values -> 1, the rest -> 0), ``multiclass: true`` keeps every value as a class. A label
    # with more than two values needs one of the two; the loader does not guess.
    id_columns: tuple[str, ...] = ()
    drop_columns: tuple[str, ...] = ()
    positive_labels: tuple[Any, ...] = ()  # text or numbers, as written in the CSV (checked by the csv dataset)
    multiclass: bool = False
    # images only (docs/images.md): a folder (<label>/<file> or <site>/<label>/<file>) or a manifest
    # (CSV/Parquet: path, label, optional site and subgroup columns); pixels are scaled to [0, 1]
    # (left out of a config's dict and run_key while at their defaults: cells from before they existed keep their keys)
    path_column: str = field(default="path", metadata={"omit_if_default": True})
    image_size: Optional[tuple[int, ...]] = field(default=None, metadata={"omit_if_default": True})
    image_mode: Literal["gray", "rgb"] = field(default="gray", metadata={"omit_if_default": True})


class ModelParams(dict):
    """A plug-in model's own parameters (its ``Params`` fields, already checked): a plain,
    picklable mapping that hashes like the frozen config around it."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=str))


@dataclass(frozen=True)
class ModelConfig:
    """Model architecture (see ``privbench list``); a plug-in model (``name: my_pkg.nets:ChestNet``,
    docs/own-model.md) takes its own keys beside ``name``."""

    name: str = "logreg"
    hidden: tuple[int, ...] = (32,)
    channels: int = field(default=8, metadata={"ge": 1})
    # a plug-in model's keys beside ``name`` (checked against its Params); None for the built-ins,
    # whose configs (and run_keys) stay as they were
    params: Optional[ModelParams] = field(default=None, metadata={"derived": True, "omit_if_none": True})


@dataclass(frozen=True)
class TrainConfig:
    """FedAvg settings."""

    rounds: int = field(default=10, metadata={"ge": 1, "le": 100000})
    sites_per_round: Optional[int] = field(default=None, metadata={"ge": 1})
    local_epochs: int = field(default=1, metadata={"ge": 1})
    batch_size: int = field(default=32, metadata={"ge": 1})
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.1, metadata={"gt": 0})
    momentum: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    server_lr: float = field(default=1.0, metadata={"gt": 0})


@dataclass(frozen=True)
class PrivacyConfig:
    """Accounting settings: every ε is stated at a δ and under a neighbouring relation.

    Attributes:
        delta: δ per protected party; ``null`` means min(1e-5, 1/(100·n)) for its n records
            (record-level DP) or hospitals (client-level DP), which stays far below 1/n, the
            δ at which publishing one record outright is allowed. A party with δ ≥ 1/n is
            tagged ``dp_weak_guarantee=true``.
        accountant: ``rdp`` or ``prv`` (Opacus).
        neighbouring: ``add_remove`` (one record or hospital present or absent) or
            ``replace_one`` (one hospital's data replaced: sensitivity 2C; hospital level
            only, refused for dp_sgd). ``auto``: add/remove for dp_sgd's records,
            replace-one for client_dp's hospitals (a public roster that always participates).
    """

    delta: Optional[float] = field(default=None, metadata={"gt": 0, "lt": 1})
    accountant: Literal["rdp", "prv"] = "rdp"
    neighbouring: Literal["auto", "add_remove", "replace_one"] = "auto"


@dataclass(frozen=True)
class SensitiveAttributeConfig:
    """One sensitive attribute whose subgroups fairness is measured on.

    Attributes:
        name: a column of the dataset (heart disease: ``sex`` or ``age``; csv: any column).
        bands: cut points for a continuous column, e.g. ``[55]`` gives ``under_55`` and
            ``55_and_over`` (each band is ``[low, high)``); empty for a categorical column.
        input: whether the attribute stays a model input (``true``) or is held out of the
            features (``false``): then neither the model nor any attack ever sees it.
    """

    name: str
    bands: tuple[float, ...] = ()
    input: bool = True

    def __post_init__(self) -> None:
        b = self.bands
        if any(not math.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise ConfigError(f"fairness.attributes.{self.name}.bands: got {list(b)}; expected finite, strictly increasing cut points, e.g. [45, 60]")


@dataclass(frozen=True)
class FairnessConfig:
    """Who pays for privacy: utility and membership exposure per subgroup and hospital (bench.fairness).

    Attributes:
        attributes: the sensitive attributes; each a column name or ``{age: {bands: [55]}}``.
        min_count: a subgroup (or hospital × subgroup) with fewer evaluated records than this
            is reported as "too few" with its count, never as a number.
        bootstrap: resamples of the within-cell bootstrap intervals (0: none).
        top_exposed: how many members with the highest membership scores are profiled
            (their subgroup, hospital and distance to the population; never the records).
    """

    attributes: tuple[SensitiveAttributeConfig, ...] = ()
    min_count: int = field(default=10, metadata={"ge": 1})
    bootstrap: int = field(default=200, metadata={"ge": 0, "le": 100000})
    top_exposed: int = field(default=10, metadata={"ge": 1})


@dataclass(frozen=True)
class ComponentSpec:
    """A defense or attack by registered name, with its validated parameters."""

    name: str
    params: Any

    def to_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.params)}


@dataclass(frozen=True)
class ExperimentConfig:
    """One fully resolved cell of a suite.

    Attributes:
        data_fingerprint: what the data *is* (``bench.data.fingerprint``: a file digest, or
            the package version of bundled data), filled in when the suite is built (never
            from YAML). Part of :attr:`run_key` and :attr:`setting_key`, so a cell whose data
            changed runs again; empty when the config was built without a suite (tests), or
            ``unavailable`` when the data could not be read then (``check_data`` says why).
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    defenses: tuple[ComponentSpec, ...] = ()
    attacks: tuple[ComponentSpec, ...] = ()
    seed: int = field(default=0, metadata={"ge": 0})
    fairness: Optional[FairnessConfig] = None
    # record-level artifacts (per-record scores, member lists, reconstructed records): None = the
    # dataset's default (on for bundled benchmark data, off for real patients: csv, heart_disease)
    record_artifacts: Optional[bool] = None
    data_fingerprint: str = field(default="", metadata={"derived": True})

    def to_dict(self) -> dict:
        """The config as YAML would write it (without the derived ``data_fingerprint``)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("fairness", "record_artifacts") and value is None:
                continue  # absent, not null: configs without them keep their run_key
            if f.metadata.get("derived"):
                continue
            if f.name in ("defenses", "attacks"):
                out[f.name] = [spec.to_dict() for spec in value]
            else:
                out[f.name] = to_dict(value)
        return out

    def _identity(self, with_seed: bool) -> str:
        d = self.to_dict()
        if not with_seed:
            d.pop("seed")
        if self.data_fingerprint:  # absent when unknown: such configs keep their former key
            d["data_fingerprint"] = self.data_fingerprint
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def run_key(self) -> str:
        """Hash of the resolved config (seed included) and of the data's fingerprint: identifies
        a cell across invocations; changed data (an edited CSV) is a new cell."""
        return self._identity(with_seed=True)

    def flat_params(self) -> dict[str, str]:
        """The config flattened with dots, for MLflow params (``defenses.dp_sgd.noise_multiplier``)."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

        d = self.to_dict()
        for group in ("defenses", "attacks"):
            specs = d.pop(group)
            flat[group] = "+".join(s["name"] for s in specs) or "none"
            for s in specs:
                walk(f"{group}.{s['name']}", {k: v for k, v in s.items() if k != "name"})
        walk("", d)
        return flat

    @property
    def setting_key(self) -> str:
        """Hash of the resolved config without its seed (data fingerprint included): the seeds
        of one setting share it."""
        return self._identity(with_seed=False)

    def setting_label(self) -> str:
        """The defenses with their key parameters, ``dp_sgd(z=1,C=1)+secure_aggregation`` or
        ``no defense``: the start of a run name (the MLflow runs table shows ~15 characters,
        so the defense comes first; a suite appends what tells its cells apart)."""
        from bench.components import component_class

        parts = [component_class("defense", s.name).label(s.params) for s in self.defenses]
        return "+".join(parts) or "no defense"

    def label(self) -> str:
        """A run name a person can read: ``dp_sgd(z=1,C=1)+secure_aggregation · seed 0``."""
        return f"{self.setting_label()} · seed {self.seed}"


# --------------------------------------------------------------------------- parsing


def _parse_specs(kind: str, raw: Any, path: str) -> tuple[ComponentSpec, ...]:
    from bench.components import registry

    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{path}: got {raw!r}; expected a list of {{name: ..., <params>}} entries")
    specs = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}: got {item!r}; expected a mapping with a 'name' key")
        name = item["name"]
        cls = registry(kind).resolve(name, f"{where}.name")  # a name, a plug-in or an import path, checked
        params = from_dict(cls.Params, {k: v for k, v in item.items() if k != "name"}, f"{path}.{name}")
        specs.append(ComponentSpec(name=name, params=params))
    return tuple(specs)


def _normalise_fairness(raw: Any) -> Any:
    """Accept ``attributes: [sex, {age: {bands: [55]}}, {name: age, bands: [55]}]`` (or a mapping
    ``{sex: {}, age: {bands: [55]}}``) and return the schema's form (a list of ``{name: ...}``)."""
    if not isinstance(raw, dict) or "attributes" not in raw:
        return raw
    items = raw["attributes"]
    if isinstance(items, dict):
        items = [{k: v} for k, v in items.items()]
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"fairness.attributes: got {items!r}; expected a list, e.g. [sex, {{age: {{bands: [55]}}}}]")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        elif isinstance(item, dict) and "name" not in item and len(item) == 1:
            (name, opts), = item.items()
            if opts is not None and not isinstance(opts, dict):
                raise ConfigError(f"fairness.attributes[{i}].{name}: got {opts!r}; expected a mapping such as {{bands: [55]}}")
            item = {"name": name, **(opts or {})}
        out.append(item)
    names = [it.get("name") for it in out if isinstance(it, dict)]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"fairness.attributes: {dupes[0]!r} listed twice; list each attribute once")
    return {**raw, "attributes": out}


def _plugin_model_params(raw: dict) -> tuple[dict, Optional[ModelParams]]:
    """A plug-in model's keys beside ``name`` (all of them, checked against its ``Params``) taken
    out of ``raw["model"]``; the built-ins (no ``Params``) keep ``hidden``/``channels``."""
    section = raw.get("model")
    if not isinstance(section, dict) or not isinstance(section.get("name"), str):
        return raw, None
    from bench.components import registry

    own = getattr(registry("model").resolve(section["name"], "model.name"), "Params", None)
    if own is None:
        return raw, None
    parsed = from_dict(own, {k: v for k, v in section.items() if k != "name"}, "model")
    values = ModelParams({f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)})
    return {**raw, "model": {"name": section["name"]}}, values


def parse_experiment(raw: Any, path: str = "") -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig` (one line per error)."""
    from bench.components import check_experiment

    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'base'}: got {raw!r}; expected a mapping")
    raw = dict(raw)
    defenses = _parse_specs("defense", raw.pop("defenses", None), "defenses")
    attacks = _parse_specs("attack", raw.pop("attacks", None), "attacks")
    fairness = raw.pop("fairness", None)  # built directly: its errors name fairness.<key>, not "fairness: expected ... or null"
    fairness = None if fairness is None else from_dict(FairnessConfig, _normalise_fairness(fairness), "fairness")
    raw, model_params = _plugin_model_params(raw)
    cfg = from_dict(ExperimentConfig, raw)
    cfg = dataclasses.replace(cfg, defenses=defenses, attacks=attacks, fairness=fairness)
    if model_params is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, params=model_params))
    check_experiment(cfg)
    return cfg


def set_path(raw: dict, dotted: str, value: Any) -> dict:
    """Return a copy of ``raw`` with ``dotted`` (``train.lr``) set to ``value``."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {dotted!r}: empty key in path; write it like train.lr=0.05")
    out = copy.deepcopy(raw)  # YAML data may hold dates or shared (aliased) nodes: no JSON round trip
    node = out
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value`` (value in YAML syntax) from ``--set``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. --set train.rounds=5")
    key, _, value = text.partition("=")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (safe_load keeps the
    last one silently, so a second ``base:`` block would quietly replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable keys are refused later, by the schema
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice in one mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


DEFAULT_MAX_YAML_BYTES = 1_000_000  # a suite file is a page of YAML; the largest shipped one is a few kB
MAX_YAML_BYTES_ENV = "PRIVBENCH_MAX_YAML_BYTES"
MAX_YAML_DEPTH = 32  # nesting levels of a suite (a suite needs about 6; Python's parser gives up near 1000)


def _env_limit(var: str, default: int) -> int:
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{var}: got {text[:40]!r}; expected a positive whole number, e.g. {var}={default * 10}")
    return int(text)


def yaml_depth(value: Any) -> int:
    """Nesting depth of loaded YAML (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_YAML_DEPTH:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def load_yaml(path: str) -> Any:
    """Read a YAML file safely (no object construction, duplicate keys refused, bounded size and
    nesting); errors name the file and line."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0  # a missing file or folder is named below
    limit = _env_limit(MAX_YAML_BYTES_ENV, DEFAULT_MAX_YAML_BYTES)
    if size > limit:
        raise ConfigError(f"{path}: {size:,} bytes is more than a suite file may hold ({limit:,}); "
                          f"pass the suite YAML, or raise the limit with {MAX_YAML_BYTES_ENV}={size}")
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than a suite can be (more than {MAX_YAML_DEPTH} levels); flatten the YAML") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; pass the path of a suite YAML, e.g. experiments/quick.yaml") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; pass a suite YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}; fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; pass a suite YAML file") from None
    if yaml_depth(loaded) > MAX_YAML_DEPTH:
        raise ConfigError(f"{path}: nested deeper than a suite can be (more than {MAX_YAML_DEPTH} levels); flatten the YAML")
    return loaded
