"""Datasets (one registry) and :func:`build_federation`: hospitals, members, non-members, truth."""

from __future__ import annotations

from typing import Optional

import numpy as np

from bench.data.partition import dirichlet_partition, iid_partition, split_site  # noqa: F401
from bench.data.sites import _site_indices, site_names  # noqa: F401  (a leaf: csv_data and bench.components use it)
from bench.data.sensitive import hold_out, sensitive_attributes
from bench.data.table import RawData, TableEncoder
from bench.registry import DATASETS, Registry  # noqa: F401  (the registry is a leaf of bench)
from bench.seeding import Seeds
from bench.types import ConfigError, DatasetInfo, Federation, GroundTruth, Records, Site

from bench.data import csv_data, heart_disease, images, sklearn_sets  # noqa: E402,F401  (registration)
from bench.data.csv_data import CsvReport, csv_report, describe_csv  # noqa: E402,F401  (for `validate --data`)
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def dataset_display_name(cfg) -> str:
    """The name a reader sees for the data of ``cfg`` (a :class:`bench.config.DataConfig`) in
    run names, tags, figure titles and MLflow dataset inputs: ``csv:<file stem>`` for a CSV
    (``csv:patients`` for ``data/patients.csv``), else the dataset's registered name
    (``breast_cancer``). ``DatasetInfo.name`` stays the registered name (``csv``): code keys
    on it, people read this."""
    hook = getattr(DATASETS.get(cfg.name), "display_name", None)
    return cfg.name if hook is None else hook(cfg)


def fingerprint(cfg) -> str:
    """What the data of ``cfg`` (a :class:`bench.config.DataConfig`) *is*, cheaply: part of
    each cell's ``run_key`` (so an edited CSV runs again) and worth logging as the tag
    ``data_fingerprint``.

    * ``csv``: ``sha256:<hex>`` of the file (as ``sha256sum`` prints it), cached per file
      version (path, size, mtime, ctime, inode; a file changed in the last 2 s is read again):
      one read per file, not per cell;
    * ``heart_disease``: ``sha256:<hex>`` over the four files' published SHA-256 digests, which
      every loaded file is verified against (no file is read);
    * ``breast_cancer``, ``digits``: ``sklearn-<version>:<name>`` (bundled with scikit-learn).

    Raises:
        ConfigError: the data cannot be read (a csv path that is not a readable file), with
            the same line loading it would give.
    """
    return DATASETS.get(cfg.name).fingerprint(cfg)


def encode(raw: RawData, member_index: np.ndarray):
    """Fit preprocessing on the member records only; return (transform, info)."""
    if raw.image_shape is not None:
        info = DatasetInfo(
            name=raw.name,
            input_shape=raw.image_shape,
            num_classes=raw.num_classes,
            modality="image",
            class_names=raw.class_names,
        )
        return (lambda x: (x / raw.image_scale).astype(np.float32)), info
    enc = TableEncoder.fit(raw.columns, raw.x[member_index])
    features = enc.features()
    width = features[-1].columns[1]
    info = DatasetInfo(
        name=raw.name, input_shape=(width,), num_classes=raw.num_classes, features=features, class_names=raw.class_names
    )
    return enc.transform, info


MERGED_SITE = "merged_small_sites"


def min_site_records(cfg) -> int:
    """The fewest records of one label that split into ≥ 2 members (``members_per_site`` if 1), ≥ 1
    non-member and ≥ 1 test record at the configured fractions (``split_site``'s rounding); a
    hospital with mixed labels may need more, since each label is split on its own."""
    need_mem = min(2, cfg.members_per_site or 2)
    for n in range(1, 100_000):
        n_test = int(round(n * cfg.test_fraction))
        n_mem = int(round((n - n_test) * cfg.member_fraction))
        if n_test >= 1 and n_mem >= need_mem and n - n_test - n_mem >= 1:
            return n
    return 100_000  # not reached for fractions in (0, 1)


def too_small_message(short, cfg) -> str:
    """One line naming every too-small hospital with its size, the minimum, and the keys that fix it."""
    listed = ", ".join(f"{n} ({k})" for n, k in short)
    need = max(cfg.min_site_records or 0, min_site_records(cfg))
    return (f"data: {len(short)} hospital(s) too small to split into members/non-members/test: {listed} records; each needs at "
            f"least {need} (at data.test_fraction={cfg.test_fraction:g}, data.member_fraction={cfg.member_fraction:g}); set "
            f"data.small_sites: drop (leave them out) or merge (pool them into one hospital), or raise the fractions"
            + (" or use fewer hospitals (data.num_sites)" if cfg.partition != "natural" else ""))


def small_sites(parts, names, cfg) -> tuple[list, list, list[tuple[str, int]]]:
    """Apply ``data.small_sites`` to hospitals with fewer than ``data.min_site_records`` records
    (default: :func:`min_site_records`).

    Returns:
        (index arrays, names, [(hospital, records)] of the hospitals dropped or merged). Under
        ``error`` nothing changes here; :func:`build_federation` then lists every hospital that
        cannot be split in one error.
    """
    if cfg.small_sites == "error":
        return list(parts), list(names), []
    need = cfg.min_site_records or min_site_records(cfg)
    small = [(n, p) for n, p in zip(names, parts) if len(p) < need]
    if not small:
        return list(parts), list(names), []
    keep = [(n, p) for n, p in zip(names, parts) if len(p) >= need]
    if cfg.small_sites == "merge":
        keep.append((MERGED_SITE, np.sort(np.concatenate([p for _, p in small]))))
    if not keep:
        raise ConfigError(f"data.small_sites: {cfg.small_sites}: every hospital has fewer than {need} records; "
                          "lower data.min_site_records or use data.small_sites: merge")
    return [p for _, p in keep], [n for n, _ in keep], [(n, len(p)) for n, p in small]


def small_site_report(cfg, seed: int) -> Optional[str]:
    """What ``data.small_sites`` did to this data (``privbench validate --data`` prints it), or None
    when the policy is ``error`` or no hospital is below the minimum."""
    if cfg.small_sites == "error":
        return None
    raw = DATASETS.get(cfg.name).load(cfg)
    parts, names = _site_indices(raw, cfg, Seeds(seed).rng("data"))
    _, kept, changed = small_sites(parts, names, cfg)
    if not changed:
        return None
    need = cfg.min_site_records or min_site_records(cfg)
    what = "left out" if cfg.small_sites == "drop" else f"merged into {MERGED_SITE!r}"
    return (f"data.small_sites: {cfg.small_sites}: {len(changed)} hospital(s) below {need} records {what}: "
            + ", ".join(f"{n} ({k})" for n, k in changed) + f"; {len(kept)} hospital(s) remain")


def build_federation(cfg, seeds: Seeds, fairness=None) -> tuple[Federation, GroundTruth]:
    """Load ``cfg.name``, split it into hospitals and member / non-member / test records.

    Args:
        cfg: a :class:`bench.config.DataConfig`.
        seeds: the experiment's seeds; the split uses the stream ``("data",)``.
        fairness: a :class:`bench.config.FairnessConfig` or None: its attributes' subgroups go
            to the ground truth only, and attributes held out of the features are dropped from
            the records before encoding (the split is the same either way).

    Returns:
        The federation (what the simulation uses) and the ground truth (only scoring sees it).
    """
    raw = DATASETS.get(cfg.name).load(cfg)
    sensitive = sensitive_attributes(raw, fairness)
    raw = hold_out(raw, fairness)
    rng = seeds.rng("data")
    parts, names = _site_indices(raw, cfg, rng)
    parts, names, _ = small_sites(parts, names, cfg)
    names = tuple(names)
    splits, fit_parts = [], []
    for part in parts:
        if cfg.max_records_per_site is not None and len(part) > cfg.max_records_per_site:
            part = np.sort(rng.choice(part, cfg.max_records_per_site, replace=False))
        mem, non, test = split_site(part, raw.y, cfg.test_fraction, cfg.member_fraction, rng)
        fit_parts.append(mem)  # preprocessing is fitted before the cap (a handful of records cannot fix the encoding)
        if cfg.members_per_site is not None and len(mem) > cfg.members_per_site:
            # the records left out shaped the preprocessing, so they are neither members nor
            # non-members: they leave the candidate pool (non-members stay untouched by training)
            mem = np.sort(rng.choice(mem, cfg.members_per_site, replace=False))
        splits.append((mem, non, test))
    short = [(n, len(p)) for n, p, (mem, non, test) in zip(names, parts, splits)
             if len(mem) < min(2, cfg.members_per_site or 2) or len(non) < 1 or len(test) < 1]
    if short:  # every such hospital at once, with its size and the minimum, and the keys that fix it
        raise ConfigError(too_small_message(short, cfg))
    transform, info = encode(raw, np.concatenate(fit_parts))
    x_all = torch.from_numpy(transform(raw.x))
    y_all = torch.from_numpy(raw.y.astype(np.int64))
    ids_all = np.arange(len(raw.y), dtype=np.int64)
    records = Records(ids=ids_all, x=x_all, y=y_all)

    sites = tuple(Site(name=n, train=records.take(m), test=records.take(t)) for n, (m, _, t) in zip(names, splits))
    test = Records.concat([s.test for s in sites])
    cand_index = np.concatenate([np.concatenate([m, u]) for m, u, _ in splits])
    cand_site = np.concatenate([np.full(len(m) + len(u), i) for i, (m, u, _) in enumerate(splits)])
    cand_member = np.concatenate([np.r_[np.ones(len(m), bool), np.zeros(len(u), bool)] for m, u, _ in splits])
    order = rng.permutation(len(cand_index))
    candidates = records.take(cand_index[order])
    truth = GroundTruth(
        candidate_ids=candidates.ids,
        candidate_is_member=cand_member[order],
        candidate_site=cand_site[order],
        site_names=names,
        site_train={s.name: s.train for s in sites},
        info=info,
        population=test,  # the inversion prior: same distribution, never trained on nor attacked
        sensitive=sensitive,
        candidates=candidates,
    )
    fed = Federation(info=info, sites=sites, test=test, candidates=candidates, population=candidates, sensitive=sensitive)
    return fed, truth


def check_data(configs) -> None:
    """Load and split the data of every distinct (data config, seed) among ``configs`` once.

    The CLI calls this before it logs anything, so missing files, a bad checksum, a broken
    CSV or hospitals too small to split fail as one error up front instead of as one FAILED
    run per cell. Then every defense's and attack's ``check_against(params, cfg, fed)`` (and
    the older ``check_federation``) sees the loaded federation: what only the data can tell
    (hospital names and sizes, e.g. a ``target_epsilon`` no noise can reach) is refused here,
    before training, not as a FAILED cell. Raises :class:`ConfigError` naming the first
    failing setting.
    """
    from bench.components import check_model_and_sites, component_class
    from bench.models import MODELS, num_params

    seen, checked = {}, set()
    for cfg in configs:
        key = (cfg.data, cfg.seed, getattr(cfg, "fairness", None))
        if key not in seen:
            seen[key] = build_federation(cfg.data, Seeds(cfg.seed), getattr(cfg, "fairness", None))[0]
        fed = seen[key]
        if (cfg.data, cfg.model, cfg.attacks, cfg.seed) not in checked:  # now with the real input shape and hospitals
            checked.add((cfg.data, cfg.model, cfg.attacks, cfg.seed))
            check_model_and_sites(cfg, fed.info, fed.site_names)
        for spec in cfg.attacks:  # e.g. a white-box audit needs a model with as many parameters as canaries
            hook = getattr(component_class("attack", spec.name), "check_federation", None)
            if hook is not None and (cfg.data, cfg.model, spec) not in checked:
                checked.add((cfg.data, cfg.model, spec))
                hook(spec.params, fed, num_params(MODELS.get(cfg.model.name).build(fed.info, cfg.model)))
        for spec in cfg.defenses:  # e.g. dp_sgd's group_clip names subgroups only the data knows
            hook = getattr(component_class("defense", spec.name), "check_federation", None)
            if hook is not None:
                hook(spec.params, fed)
        for kind, specs in (("defense", cfg.defenses), ("attack", cfg.attacks)):
            for spec in specs:
                hook = getattr(component_class(kind, spec.name), "check_against", None)
                if hook is not None and (kind, spec, cfg.data, cfg.train, cfg.privacy, cfg.seed) not in checked:
                    checked.add((kind, spec, cfg.data, cfg.train, cfg.privacy, cfg.seed))
                    hook(spec.params, cfg, fed)
