"""Access to the component registries (datasets, models, defenses, attacks) and the
load-time compatibility check of a configured experiment."""

from __future__ import annotations

from typing import Any

from bench.registry import REGISTRIES, Registry
from bench.types import ConfigError


def registry(kind: str) -> Registry:
    """The registry of one family: ``dataset``, ``model``, ``defense`` or ``attack``."""
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise ValueError(f"unknown component family {kind!r}") from None


def component_class(kind: str, name: str) -> Any:
    return registry(kind).get(name)


def placeholder_info(cfg):
    """A :class:`~bench.types.DatasetInfo` of the right modality for checks made before the
    data is loaded (its tabular width is a stand-in: the data decides it)."""
    from bench.types import DatasetInfo

    ds = registry("dataset").get(cfg.data.name)
    modality = getattr(ds, "modality", "tabular")
    shape_of = getattr(ds, "image_shape_of", None)  # a collection whose shape the config decides (images)
    shape = (tuple(shape_of(cfg.data)) if shape_of else tuple(getattr(ds, "image_shape", (1, 8, 8)))) if modality == "image" else (4,)
    return DatasetInfo(name=cfg.data.name, input_shape=shape, num_classes=2, modality=modality)


def check_model_and_sites(cfg, info, site_names) -> None:
    """The attacks' structural hooks, before training:

    * ``check_model(params, model, info)``: the attack can work on this architecture (e.g. the
      analytic inversion needs a fully connected input layer); where the attack also has
      ``check_input_layer(params, layer, info)`` and the model describes its first layer
      (``input_layer(info, cfg)``, the built-ins), that is called instead and nothing is built
      (``privbench validate`` without torch);
    * ``check_sites(params, names)``: hospitals the attack names exist (``site_names`` None:
      not known yet, checked once the data is loaded).
    """
    model = None
    mcls = registry("model").get(cfg.model.name)
    for spec in cfg.attacks:
        acls = component_class("attack", spec.name)
        hook = getattr(acls, "check_model", None)
        light = getattr(acls, "check_input_layer", None)
        described = getattr(mcls, "input_layer", None)
        if hook is not None and light is not None and described is not None:
            light(spec.params, described(info, cfg.model), info)  # the same decision without building (or torch)
        elif hook is not None:
            if model is None:
                model = mcls.build(info, cfg.model)
            hook(spec.params, model, info)
        hook = getattr(acls, "check_sites", None)
        if hook is not None and site_names is not None:
            hook(spec.params, tuple(site_names))


def check_experiment(cfg) -> None:
    """Refuse, before any training, what cannot work; each reason is one line.

    * unknown dataset/model names;
    * partitions a dataset does not support;
    * attacks whose threat model needs individual updates while a defense hides them;
    * attacks that declare ``modalities`` (e.g. TabLeak: tabular) on other data;
    * more than one defense that replaces aggregation;
    * each component's own ``check(cfg)``;
    * attacks' ``check_model`` and ``check_sites`` (see :func:`check_model_and_sites`).

    What only the loaded data can tell (a csv's hospitals, their sizes) is checked by
    :func:`bench.data.check_data`, which ``run`` calls before it logs anything.
    """
    datasets = registry("dataset")
    datasets.resolve(cfg.data.name, "data.name")  # a name, a plug-in or an import path, checked
    models = registry("model")
    models.resolve(cfg.model.name, "model.name")
    datasets.get(cfg.data.name).check(cfg)
    models.get(cfg.model.name).check(cfg)
    if cfg.train.sites_per_round is not None and cfg.data.partition != "natural":
        if cfg.train.sites_per_round > cfg.data.num_sites:
            raise ConfigError(
                f"train.sites_per_round: got {cfg.train.sites_per_round}; must be <= data.num_sites ({cfg.data.num_sites})"
            )
    names = [s.name for s in cfg.defenses]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"defenses: {sorted(dupes)[0]!r} listed twice; list each defense once")
    anames = [s.name for s in cfg.attacks]
    adupes = {n for n in anames if anames.count(n) > 1}
    if adupes:
        raise ConfigError(f"attacks: {sorted(adupes)[0]!r} listed twice; list each attack once")
    dcls = [component_class("defense", s.name) for s in cfg.defenses]
    aggregators = [s.name for s, c in zip(cfg.defenses, dcls) if c.replaces_aggregation]
    if len(aggregators) > 1:
        raise ConfigError(f"defenses: {aggregators} both replace aggregation; keep one")
    hiders = [s.name for s, c in zip(cfg.defenses, dcls) if c.hides_updates]
    for spec in cfg.attacks:
        acls = component_class("attack", spec.name)
        if acls.needs_individual_updates and hiders:
            raise ConfigError(
                f"attacks: {spec.name!r} needs each hospital's individual update, but {hiders[0]!r} "
                "shows the server only their sum; drop one of them"
            )
    modality = getattr(datasets.get(cfg.data.name), "modality", "tabular")
    for spec in cfg.attacks:
        allowed = getattr(component_class("attack", spec.name), "modalities", None)
        if allowed is not None and modality not in allowed:
            raise ConfigError(
                f"attacks: {spec.name!r} works on {' or '.join(allowed)} data, but {cfg.data.name!r} is {modality} data; "
                f"drop the attack from this cell or use {' or '.join(allowed)} data"
            )
    for spec, c in zip(cfg.defenses, dcls):
        c.check(spec.params, cfg)
    for spec in cfg.attacks:
        component_class("attack", spec.name).check(spec.params, cfg)
    from bench.data.sites import site_names

    check_model_and_sites(cfg, placeholder_info(cfg), site_names(cfg.data))
