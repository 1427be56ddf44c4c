"""A suite = a base experiment + a grid of overrides + variants + seeds -> cells.

YAML shape::

    suite: quick                  # MLflow experiment name
    description: one line
    base: {data: {...}, model: {...}, train: {...}, defenses: [...], attacks: [...]}
    grid:                         # cartesian product over dotted paths
      defenses: [[], [{name: clipping, max_norm: 1.0}]]
    variants:                     # optional bundles of overrides, combined with the grid
      - {data.name: breast_cancer, model.name: logreg}
      - {data.name: digits, model.name: cnn}
    seeds: [0, 1]

Seeds: each cell's seed comes from the top-level ``seeds`` list (default ``[0]``); a
``base.seed`` is the same as ``seeds: [that seed]`` (and refused if ``seeds`` leaves it out);
``--set seed=5`` or ``--set seeds=[1,2]`` replaces the list; ``seed`` in a grid or variant is
refused (list the seeds at the top level).

Run names: ``<defenses with their key parameter> · <what tells colliding cells apart> · seed N``,
e.g. ``dp_sgd(z=1,C=1) · seed 0``; the dataset appears only where the suite has cells that
differ by it (``no defense · digits · seed 0``).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from bench.config import ExperimentConfig, load_yaml, parse_experiment, parse_override, set_path
from bench.schema import show
from bench.types import ConfigError

SUITE_KEYS = ("suite", "description", "base", "grid", "variants", "seeds")
SEED_KEYS = ("seed", "seeds")  # --set keys that replace the suite's seeds
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")  # no leading '.' ('.', '..', hidden names are path-like)
NAME_MAX = 100  # characters of a suite name: an MLflow experiment and a folder name under results/
KEY_MAX = 200  # characters of a dotted key in a grid or a variant
RUN_NAME_MAX = 40  # characters of a cell's MLflow run name (the runs table shows them in full; issue 23)
# shorter spellings, applied in this order only to names that would pass RUN_NAME_MAX; the full
# setting is the run's `full_name` tag, the dataset and attack list its `dataset` and `attacks` tags
_ABBREVIATIONS = (
    ("secure_aggregation", "secagg"), ("breast_cancer", "breast"), ("heart_disease", "heart"),
    ("data.members_per_site=", "members="), ("data.num_sites=", "sites="), ("data.partition=", "partition="),
    ("model.name=", "model="), (" · ", " "), (", ", ","),
)
# the dataset spellings among them: a suite uses one spelling of each dataset in all its names
_DATASET_ABBREVIATIONS = (("breast_cancer", "breast"), ("heart_disease", "heart"))
_ATTACK_SHORT = {
    "loss_threshold": "loss", "update_cosine": "cosine", "source_inference": "source", "inverting_gradients": "invgrad",
    "canary_audit": "canary", "dpsgd_audit": "audit", "client_canary_audit": "client_canary", "peer_fedmia": "fedmia", "withheld_noise": "withheld",
    "attribute_inference": "attr", "attribute_inference_server": "attr_server",
}
DEFAULT_MAX_CELLS = 10_000
MAX_CELLS_ENV = "PRIVBENCH_MAX_CELLS"  # raises (or lowers) the limit on a suite's cells
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def max_cells() -> int:
    """The most cells a suite may expand to: ``$PRIVBENCH_MAX_CELLS`` or :data:`DEFAULT_MAX_CELLS`."""
    import os

    text = os.environ.get(MAX_CELLS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_CELLS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_CELLS_ENV}: got {text[:40]!r}; expected a positive whole number of cells, e.g. {MAX_CELLS_ENV}=50000")
    return value


@dataclass(frozen=True)
class Cell:
    """One resolved experiment of a suite."""

    index: int
    config: ExperimentConfig
    distinct: str = ""  # what sets this cell apart from its suite's others beyond data and defenses
    short: str = ""  # the setting in at most RUN_NAME_MAX characters with the seed (build_suite: unique per setting)

    @property
    def run_key(self) -> str:
        return self.config.run_key

    @property
    def setting(self) -> str:
        """The run name without the seed: ``dp_sgd(z=1,C=1) · digits · model.name=cnn``."""
        base = self.config.setting_label()
        return f"{base} · {self.distinct}" if self.distinct else base

    @property
    def short_setting(self) -> str:
        """:attr:`setting` short enough for a run name of at most :data:`RUN_NAME_MAX` characters
        (:func:`short_label`); the same for every seed of one setting."""
        return self.short or short_label(self.setting, self.config.seed)

    @property
    def name(self) -> str:
        """The MLflow run name: the (short) setting and the seed, at most :data:`RUN_NAME_MAX` characters."""
        return f"{self.short_setting} · seed {self.config.seed}"


def _seed_room(seed: int) -> int:
    return RUN_NAME_MAX - len(f" · seed {seed}")


def short_label(setting: str, seed: int = 0) -> str:
    """``setting`` in at most ``RUN_NAME_MAX - len(" · seed N")`` characters: unchanged when it fits,
    else with :data:`_ABBREVIATIONS` applied one by one until it fits, else cut with "…".

    e.g. ``client_dp(z=1,C=0.5)+secure_aggregation`` -> ``client_dp(z=1,C=0.5)+secagg``.
    """
    room = _seed_room(seed)
    for old, new in _ABBREVIATIONS:
        if len(setting) <= room:
            break
        setting = setting.replace(old, new)
    return setting if len(setting) <= room else setting[: room - 1].rstrip(" ·,") + "…"


def _unique_shorts(cells: Sequence["Cell"]) -> list[str]:
    """:meth:`Cell.short_setting` of each cell, made unique per setting: two settings whose short
    labels match after cutting get ``#2``, ``#3``... (their full labels stay in the `full_name` tag)."""
    top = max((x.config.seed for x in cells), default=0)
    # one spelling of each dataset in a suite: abbreviated in every name once one name needs it
    spell = [(old, new) for old, new in _DATASET_ABBREVIATIONS
             if any(old in c.setting and old not in short_label(c.setting, top) for c in cells)]

    def label(c: "Cell") -> str:
        setting = c.setting
        for old, new in spell:
            setting = setting.replace(old, new)
        return short_label(setting, top)

    by_short: dict[str, list[str]] = {}
    for c in cells:
        settings = by_short.setdefault(label(c), [])
        if c.setting not in settings:
            settings.append(c.setting)
    out = []
    for c in cells:
        short = label(c)
        settings = by_short[short]
        k = settings.index(c.setting)
        if len(settings) > 1 and k > 0:
            tag = f"#{k + 1}"
            short = short[: _seed_room(top) - len(tag) - 1].rstrip(" ·,…") + "…" + tag
        out.append(short)
    return out


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    cells: tuple[Cell, ...]
    source: dict  # the YAML as loaded, with --set overrides applied (logged as an artifact)


def _check_top(raw: Any, path: str) -> dict:
    import difflib

    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a suite needs at least `suite: <name>` and `base:` (see experiments/quick.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SUITE_KEYS)}")
    for key in raw:
        if key not in SUITE_KEYS:
            close = difflib.get_close_matches(str(key), SUITE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: unknown top-level key{hint}; allowed: {', '.join(SUITE_KEYS)}")
    name = raw.get("suite")
    if isinstance(name, str) and len(name) > NAME_MAX:
        raise ConfigError(f"suite: got a name of {len(name)} characters ({name[:30]!r}...); expected at most {NAME_MAX}, e.g. suite: quick")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"suite: got {show(name)}; expected a name of letters, digits, '_', '-', '.' not starting with '.' "
                          "(no spaces, slashes or control characters; e.g. suite: quick)")
    return raw


def _check_keys(pairs: Sequence[tuple[str, Any]], where: str) -> None:
    """Dotted keys of one grid or variant: bounded, printable, and each setting written once
    (``data.name`` beside ``data: {name: ...}`` or `` data.name`` is one key spelled twice)."""
    seen: dict[str, str] = {}
    for key, value in pairs:
        if len(key) > KEY_MAX or _CONTROL.search(key):
            raise ConfigError(f"{where}: key {show(key)} is {'too long' if len(key) > KEY_MAX else 'not printable'}; "
                              f"write a dotted key such as train.lr (at most {KEY_MAX} characters, no control characters)")
        if isinstance(value, str) and _CONTROL.search(value):
            raise ConfigError(f"{where}.{key}: got {show(value)}, which holds a control character; write the value without it")
        norm = ".".join(part.strip() for part in key.split("."))
        leaves = [norm]
        if isinstance(value, dict):  # data: {name: x} sets data.name
            leaves = [f"{norm}.{str(k).strip()}" for k in value] or [norm]
        for leaf in leaves:
            for other, spelled in seen.items():
                if leaf == other or leaf.startswith(other + ".") or other.startswith(leaf + "."):
                    raise ConfigError(f"{where}: {spelled!r} and {key!r} both set {min(leaf, other, key=len)}; "
                                      "keep one spelling of each key")
            seen[leaf] = key


def _seeds(raw: Any, where: str = "seeds") -> tuple[int, ...]:
    """A non-empty list of distinct non-negative integers (any size: ``bench.seeding``)."""
    seeds = raw if raw is not None else [0]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: got {show(raw)}; expected a non-negative integer or a non-empty list of them, e.g. seeds: [0, 1, 2]")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{where}[{i}]: got {show(s)}; expected a non-negative integer, e.g. seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: a seed is listed twice; list each seed once")
    return tuple(seeds)


def _suite_seeds(raw: dict, base: dict, seed_sets: Sequence[tuple[str, Any]]) -> tuple[int, ...]:
    """The suite's seeds: ``--set seed=/seeds=`` (the last wins), else ``seeds:``, else ``base.seed``."""
    if seed_sets:
        key, value = seed_sets[-1]
        try:
            return _seeds(value, key)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from --set {key}={value})") from None
    if "seed" not in base:
        return _seeds(raw.get("seeds"))
    one = base["seed"]
    if isinstance(one, bool) or not isinstance(one, int) or one < 0:
        raise ConfigError(f"base.seed: got {show(one)}; expected a non-negative integer (or list the seeds at the top level: seeds: [0, 1, 2])")
    if raw.get("seeds") is None:
        return (one,)
    seeds = _seeds(raw.get("seeds"))
    if one not in seeds:
        raise ConfigError(
            f"base.seed: got {one}, but seeds: {list(seeds)} sets every cell's seed; remove base.seed or add {one} to seeds"
        )
    return seeds


def _refuse_seed_axes(axes: Sequence[tuple[str, Any]], where: str) -> None:
    for key, _ in axes:
        if key in SEED_KEYS:
            raise ConfigError(f"{where}.{key}: seeds are not a grid axis; list them at the top level, e.g. seeds: [0, 1, 2]")


def _grid(raw: Any) -> list[list[tuple[str, Any]]]:
    """The grid's axes: one list of ``(key, value)`` per key (not yet their product)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError(f"grid: got {raw!r}; expected a mapping of dotted keys to lists of values")
    axes = []
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: got {values!r}; expected a non-empty list of values")
        axes.append([(str(key), v) for v in values])
    _check_keys([axis[0] for axis in axes], "grid")
    for axis in axes:
        for key, value in axis[1:]:
            _check_keys([(key, value)], "grid")
    return axes


def _combos(axes: list) -> list[list[tuple[str, Any]]]:
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def _variants(raw: Any) -> list[list[tuple[str, Any]]]:
    if raw is None:
        return [[]]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("variants: expected a non-empty list of mappings of dotted keys to values")
    out = []
    for i, v in enumerate(raw):
        if not isinstance(v, dict):
            raise ConfigError(f"variants[{i}]: got {v!r}; expected a mapping of dotted keys to values")
        pairs = [(str(k), val) for k, val in v.items()]
        _check_keys(pairs, f"variants[{i}]")
        out.append(pairs)
    return out


def cell_count(raw: dict, seeds: Sequence[int], axes: Sequence[Sequence[Any]], variants: Sequence[Any]) -> int:
    """Cells a suite expands to (variants × grid × seeds), counted without expanding it."""
    n = len(variants) * len(seeds)
    for axis in axes:
        n *= len(axis)
    return n


# keys tried first when two cells would share a run name; then every other varying key
_FIRST = ("data.name", "model.name", "attacks", "data.members_per_site", "data.num_sites", "data.partition")


def _suffix(chosen: Sequence[str], flat: dict[str, str]) -> str:
    """The distinguishing part of a run name: the dataset by its name alone, then the other
    keys as ``key=value`` (``digits · data.members_per_site=1, model.name=cnn``)."""
    dataset = [flat.get(k, "-") for k in chosen if k == "data.name"]
    others = ", ".join(_attack_set(flat.get(k, "-")) if k == "attacks" else f"{k}={flat.get(k, '-')}"
                       for k in chosen if k != "data.name")
    return " · ".join([*dataset, *([others] if others else [])])


def _attack_set(attacks: str) -> str:
    """An attack list in a run name: its first attack (short) and how many more, ``loss+4`` for
    ``loss_threshold+lira+rmia+update_cosine+source_inference`` (the list is the `attacks` tag)."""
    names = [a for a in str(attacks).split("+") if a]
    if not names:
        return "no attacks"
    first = _ATTACK_SHORT.get(names[0], names[0])
    return f"{first}+{len(names) - 1}" if len(names) > 1 else first


def _distinct_suffixes(configs: Sequence[ExperimentConfig]) -> list[str]:
    """For each config, the fewest parts that keep its run name unique.

    Names read ``<defenses> · seed N``; cells that would collide on that (e.g. no defense on
    two datasets, the same defense with two models, or with two attack sets) get the params
    that tell them apart, the dataset first, chosen greedily: a key is added only if it splits
    the colliding group further."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault((c.setting_label(), c.seed), []).append(i)
    flats = [c.flat_params() for c in configs]
    out = [""] * len(configs)
    # a defense that the suite runs on several datasets names the dataset in every cell of it, even
    # where its parameters already differ (issue 23: "dp_sgd(z=1,C=1) · seed 0" beside
    # "dp_sgd(eps=4,C=1) · seed 0" did not say which one was the digits inversion cell)
    datasets: dict[tuple, set] = {}
    for c, f in zip(configs, flats):
        datasets.setdefault(tuple(d.name for d in c.defenses), set()).add(f.get("data.name"))
    named = [len(datasets[tuple(d.name for d in c.defenses)]) > 1 for c in configs]
    for members in groups.values():
        with_dataset = any(named[i] for i in members)
        if len(members) < 2 and not with_dataset:
            continue
        keys = sorted({k for i in members for k in flats[i]} - {"seed"}, key=lambda k: (k not in _FIRST, _FIRST.index(k) if k in _FIRST else 0, k))
        chosen: list[str] = ["data.name"] if with_dataset else []
        for k in keys:
            signature = lambda i, ks: tuple(flats[i].get(x, "-") for x in ks)  # noqa: E731
            if len({signature(i, chosen + [k]) for i in members}) > len({signature(i, chosen) for i in members}):
                chosen.append(k)
            if len({signature(i, chosen) for i in members}) == len(members):
                break
        for i in members:
            out[i] = _suffix(chosen, flats[i])
    return out


def _fingerprints(cells: Sequence[ExperimentConfig]) -> list[ExperimentConfig]:
    """Each config with its data's fingerprint (``bench.data.fingerprint``), one look per
    distinct data config. Data that cannot be read here gets ``unavailable``: `run` and
    `validate --data` load every cell's data before anything is logged and name the problem."""
    from bench.data import fingerprint

    seen: dict[Any, str] = {}
    out = []
    for cfg in cells:
        if cfg.data not in seen:
            try:
                seen[cfg.data] = fingerprint(cfg.data)
            except ConfigError:
                seen[cfg.data] = "unavailable"
        out.append(dataclasses.replace(cfg, data_fingerprint=seen[cfg.data]))
    return out


def build_suite(raw: Any, overrides: Sequence[str] = (), source: str = "suite") -> Suite:
    """Expand and validate every cell. Raises :class:`ConfigError` on the first problem."""
    raw = _check_top(raw, source)
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base: got {base!r}; expected a mapping (data, model, train, defenses, attacks)")
    parsed = [parse_override(o) for o in overrides]
    sets = [(k, v) for k, v in parsed if k not in SEED_KEYS]
    seeds = _suite_seeds(raw, base, [(k, v) for k, v in parsed if k in SEED_KEYS])
    variants, axes = _variants(raw.get("variants")), _grid(raw.get("grid"))
    for i, variant in enumerate(variants):
        _refuse_seed_axes(variant, f"variants[{i}]")
    _refuse_seed_axes([axis[0] for axis in axes], "grid")
    limit = max_cells()
    count = cell_count(raw, seeds, axes, variants)
    if count > limit:  # refused before a single cell is built: a 10^6-cell grid would hang here
        shape = " × ".join([f"{len(variants)} variants"] * (len(variants) > 1) + [f"{len(a)} {a[0][0]}" for a in axes]
                           + [f"{len(seeds)} seeds"])
        raise ConfigError(f"{source}: {count:,} cells ({shape}) is more than the limit of {limit:,}; shrink the grid or seeds, "
                          f"or raise the limit with {MAX_CELLS_ENV}={count}")
    grid = _combos(axes)
    configs: list[ExperimentConfig] = []
    for variant in variants:
        for combo in grid:
            for seed in seeds:
                cell_raw = dict(base)
                for key, value in [*variant, *combo, *sets, ("seed", seed)]:
                    cell_raw = set_path(cell_raw, key, value)
                try:
                    cfg = parse_experiment(cell_raw)
                except ConfigError as exc:
                    from_set = [f"{k}={v}" for k, v in sets if str(exc).startswith(k)]
                    if from_set:  # the command line's override, not the suite file, is wrong
                        raise ConfigError(f"{exc} (from --set {from_set[0]})") from None
                    where = ", ".join(f"{k}={v!r}" for k, v in [*variant, *combo]) or "base"
                    raise ConfigError(f"{exc} [in cell {where}]" if (variant or combo) else str(exc)) from None
                configs.append(cfg)
    unique: dict[str, ExperimentConfig] = {}
    for cfg in _fingerprints(configs):
        unique.setdefault(cfg.run_key, cfg)  # identical cells (e.g. a grid value equal to the base) run once
    configs = list(unique.values())
    suffixes = _distinct_suffixes(configs)
    cells = [Cell(i, cfg, sfx) for i, (cfg, sfx) in enumerate(zip(configs, suffixes))]
    cells = [dataclasses.replace(c, short=short) for c, short in zip(cells, _unique_shorts(cells))]
    source_dict = dict(raw)
    if parsed:
        source_dict["overrides"] = [f"{k}={v}" for k, v in parsed]
    return Suite(name=raw["suite"], description=str(raw.get("description", "")), cells=tuple(cells), source=source_dict)


def load_suite(path: str, overrides: Sequence[str] = ()) -> Suite:
    """Load, expand and validate a suite YAML file."""
    return build_suite(load_yaml(path), overrides, source=path)


def filter_cells(suite: Suite, pattern: Optional[str]) -> Suite:
    if not pattern:
        return suite
    cells = tuple(c for c in suite.cells if pattern in c.name)
    if not cells:
        raise ConfigError(f"--only {pattern!r}: matches no cell; see `privbench validate` for cell names")
    return Suite(suite.name, suite.description, cells, suite.source)
