"""Name -> component maps (one registry per family), built-ins and plug-ins on one path.

Every component is a *reference* ``"module:attr"`` that is imported when first used:

* built-ins: the tables :data:`BUILTIN_DATASETS`, :data:`BUILTIN_MODELS`,
  :data:`BUILTIN_DEFENSES`, :data:`BUILTIN_ATTACKS` below (the modules also register their
  class with ``@REGISTRY.register(name)`` when imported, which resolves the reference);
* installed plug-ins: entry points of the groups ``privbench.datasets``, ``privbench.models``,
  ``privbench.defenses``, ``privbench.attacks`` (``name = "my_pkg.mod:Attr"``);
* a suite may name a component by its import path directly: ``model: {name: "my_pkg.nets:ChestNet"}``.

Whatever the origin, the loaded object goes through the same contract check
(:mod:`bench.contracts`) before it is used; one that breaks it is refused in one line naming
what is missing (a :class:`~bench.types.ConfigError`, exit code 2 in the CLI).

This module is a leaf: it imports nothing of privbench but the error type. The components
themselves are imported by :func:`importlib.import_module` when a name is first looked up.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from bench.types import ConfigError

T = TypeVar("T")

#: a component's import path: ``package.module:Attr`` (dots allowed after the colon: ``mod:Outer.Inner``)
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

BUILTIN_DATASETS = {
    "breast_cancer": "bench.data.sklearn_sets:BreastCancer",
    "digits": "bench.data.sklearn_sets:Digits",
    "csv": "bench.data.csv_data:CsvDataset",
    "heart_disease": "bench.data.heart_disease:HeartDisease",
    "images": "bench.data.images:ImageCollection",
}
BUILTIN_MODELS = {
    "logreg": "bench.models:LogisticRegression",
    "mlp": "bench.models:MLP",
    "cnn": "bench.models:SmallCNN",
}
BUILTIN_DEFENSES = {
    "clipping": "defenses.clipping:Clipping",
    "sparsify": "defenses.sparsify:Sparsify",
    "dp_sgd": "defenses.dp_sgd:DPSGD",
    "client_dp": "defenses.client_dp:ClientDP",
    "distributed_dp": "defenses.distributed_dp:DistributedDP",
    "secure_aggregation": "defenses.secure_aggregation:SecureAggregation",
    "model_check": "defenses.model_check:ModelCheck",
}
BUILTIN_ATTACKS = {
    "loss_threshold": "attacks.membership.loss_threshold:LossThreshold",
    "lira": "attacks.membership.lira:LiRA",
    "rmia": "attacks.membership.rmia:RMIA",
    "update_cosine": "attacks.membership.update_cosine:UpdateCosine",
    "source_inference": "attacks.membership.source_inference:SourceInference",
    "peer_fedmia": "attacks.membership.peer_fedmia:PeerFedMIA",
    "canary_audit": "attacks.audit.canary:CanaryAudit",
    "dpsgd_audit": "attacks.audit.whitebox:DPSGDAudit",
    "client_canary_audit": "attacks.audit.whitebox:ClientCanaryAudit",
    "analytic": "attacks.inversion.analytic:Analytic",
    "dlg": "attacks.inversion.dlg:DLG",
    "inverting_gradients": "attacks.inversion.inverting_gradients:InvertingGradients",
    "tableak": "attacks.inversion.tableak:TabLeak",
    "attribute_inference": "attacks.attribute.blackbox:AttributeInference",
    "attribute_inference_server": "attacks.attribute.whitebox:ServerAttributeInference",
    "withheld_noise": "attacks.malicious.withheld_noise:WithheldNoise",
    "imprint": "attacks.malicious.imprint:Imprint",
    "model_inconsistency": "attacks.malicious.inconsistency:ModelInconsistency",
}


def split_path(ref: str) -> tuple[str, str]:
    """``("my_pkg.nets", "ChestNet")`` of ``"my_pkg.nets:ChestNet"``."""
    module, _, attr = ref.partition(":")
    return module, attr


def import_object(ref: str) -> Any:
    """The object ``"module:attr"`` names, imported now; one-line :class:`ConfigError` otherwise.

    Raises:
        ConfigError: the text is not ``module:attr``, the module cannot be imported (with the
            reason, e.g. its own error), or it has no such attribute.
    """
    if not IMPORT_PATH.match(ref):
        raise ConfigError(f"{ref!r} is not an import path; write it as package.module:Name")
    module_name, attr = split_path(ref)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import {module_name!r} (no module {exc.name!r}); put its folder on PYTHONPATH "
                              "or run from the folder that holds it") from None
        raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except ConfigError:
        raise
    except Exception as exc:  # a plug-in's own bug: shown in one line, not as a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"importing {module_name!r} failed: {type(exc).__name__}: {first}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    """One registered name: where it comes from and, once loaded, the checked object.

    Attributes:
        name: the public name (a suite's ``name:``).
        ref: ``"module:attr"`` (None for an object registered directly).
        origin: ``built-in``, ``plug-in <distribution>`` or ``import path``.
        obj: the loaded, checked component (None until first use).
        error: why a plug-in was refused (then it cannot be used; ``privbench list`` shows why).
    """

    name: str
    ref: Optional[str]
    origin: str
    obj: Any = None
    error: Optional[str] = None


class Registry(Generic[T]):
    """Maps a public name to a component, loading it on first use.

    Args:
        family: what the registry holds (``dataset``, ``model``, ``defense``, ``attack``), used in messages
            and as the entry-point group ``privbench.<family>s``.
        builtins: name -> ``"module:attr"`` of the built-in components.
        contract: ``"module:function"`` of ``check(family, obj, name) -> obj`` (the contract every
            component meets; it may return an adapter, e.g. for a ``torch.nn.Module`` class).
    """

    def __init__(self, family: str, builtins: Optional[dict[str, str]] = None, contract: Optional[str] = None) -> None:
        self.family = family
        self.group = f"privbench.{family}s"
        self.contract = contract
        self._entries: dict[str, Entry] = {n: Entry(n, ref, "built-in") for n, ref in (builtins or {}).items()}
        self._plugins_scanned = False
        self._loading: set[str] = set()

    # ---------------------------------------------------------------- registration
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator used by the built-in modules: registers ``obj`` under ``name``.

        A name in the built-in table is resolved by it (its module is being imported); a name
        registered twice by two different objects is an error.
        """

        def deco(obj: T) -> T:
            entry = self._entries.get(name)
            if entry is None:
                self._entries[name] = Entry(name, None, "built-in", obj=self._checked(name, obj))
            elif entry.obj is not None and entry.obj is not obj and getattr(entry.obj, "wrapped", None) is not obj:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            elif entry.obj is None:
                if entry.ref is not None and split_path(entry.ref)[0] != getattr(obj, "__module__", None):
                    raise ValueError(f"{self.family} {name!r} is registered twice ({entry.ref} and {obj!r})")
                entry.obj = self._checked(name, obj)
            return obj

        return deco

    def _checked(self, name: str, obj: Any) -> Any:
        if self.contract is None:
            return obj
        return import_object(self.contract)(self.family, obj, name)

    def _scan_plugins(self) -> None:
        """Add the installed plug-ins of this family (entry points), once."""
        if self._plugins_scanned:
            return
        self._plugins_scanned = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
            origin = f"plug-in {dist}"
            if ep.name in self._entries:
                prior = self._entries[ep.name]
                if prior.ref == ep.value:
                    continue  # the same distribution found twice on sys.path
                self._entries[f"{ep.name}@{dist}"] = Entry(
                    ep.name, ep.value, origin,
                    error=f"entry point {self.group} {ep.name!r} of {dist} clashes with the {prior.origin} "
                          f"{self.family} of that name; rename it")
                continue
            self._entries[ep.name] = Entry(ep.name, ep.value, origin)

    # ---------------------------------------------------------------- lookup
    def _load(self, entry: Entry) -> Any:
        if entry.error is not None:
            raise ConfigError(entry.error)
        if entry.obj is not None:
            return entry.obj
        if entry.name in self._loading:  # the module is importing itself through us
            raise ConfigError(f"{self.family} {entry.name!r} is looked up while its module {entry.ref} is imported")
        self._loading.add(entry.name)
        try:
            module, attr = split_path(entry.ref)
            import_object(f"{module}:__name__")  # a built-in module's @register resolves the entry
            if entry.obj is None:
                entry.obj = self._checked(entry.name, import_object(entry.ref))
        except ConfigError as exc:
            if entry.origin in ("built-in", "import path"):  # the path is in the message's key already
                raise
            entry.error = f"{self.family} {entry.name!r} ({entry.origin}, {entry.ref}): {exc}"
            raise ConfigError(entry.error) from None
        finally:
            self._loading.discard(entry.name)
        return entry.obj

    def resolve(self, name: Any, where: str) -> T:
        """The component called ``name`` (a registered name or an import path), checked;
        ``ConfigError`` ``"<where>: ..."`` in one line otherwise."""
        if not isinstance(name, str):
            raise ConfigError(f"{where}: got {name!r}; expected the name of a {self.family}, one of {', '.join(self.names())}")
        try:
            return self.get(name)
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]}") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def get(self, name: str) -> T:
        """The component registered as ``name`` (or at import path ``name``), loaded and checked.

        Raises:
            KeyError: an unknown name (the message suggests the closest one).
            ConfigError: the component cannot be imported or breaks its contract.
        """
        entry = self._entries.get(name)
        if entry is None and ":" in str(name):
            entry = self._entries[name] = Entry(name, name, "import path")
            try:
                return self._load(entry)
            except ConfigError:
                del self._entries[name]  # a fixed module is picked up by the next look-up
                raise
        if entry is None:
            self._scan_plugins()
            entry = self._entries.get(name)
        if entry is None:
            raise KeyError(self.unknown_message(name))
        return self._load(entry)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (f"unknown {self.family} {name!r}{hint}; allowed: {', '.join(self.names())}, "
                "or an import path such as my_pkg.module:Name")

    def names(self) -> list[str]:
        """Every usable registered name (built-ins and installed plug-ins), sorted."""
        self._scan_plugins()
        return sorted(n for n, e in self._entries.items() if e.origin != "import path" and n == e.name)

    def entries(self) -> list[Entry]:
        """Every registered entry, refused plug-ins included (sorted by name; not loaded)."""
        self._scan_plugins()
        return [e for _, e in sorted(self._entries.items()) if e.origin != "import path"]

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, component)`` of every usable name, each loaded (a refused plug-in is left out)."""
        out = []
        for name in self.names():
            try:
                out.append((name, self.get(name)))
            except ConfigError:
                if self._entries[name].origin == "built-in":
                    raise
        return iter(out)

    def origin(self, name: str) -> str:
        """``built-in``, ``plug-in <distribution>`` or ``import path``."""
        entry = self._entries.get(name)
        return "import path" if entry is None and ":" in name else (entry.origin if entry else "unknown")

    def __contains__(self, name: object) -> bool:
        """A registered name (built-in or plug-in); an import path is in the registry once loaded."""
        if not isinstance(name, str):
            return False
        if name in self._entries and self._entries[name].error is None:
            return True
        self._scan_plugins()
        return name in self._entries and self._entries[name].error is None and self._entries[name].name == name

    def __len__(self) -> int:
        return len(self.names())


CONTRACT = "bench.contracts:check_component"

#: the four registries (leaves: the component modules import them, never the other way round)
DATASETS: Registry = Registry("dataset", BUILTIN_DATASETS, CONTRACT)
MODELS: Registry = Registry("model", BUILTIN_MODELS, CONTRACT)
DEFENSES: Registry = Registry("defense", BUILTIN_DEFENSES, CONTRACT)
ATTACKS: Registry = Registry("attack", BUILTIN_ATTACKS, CONTRACT)
REGISTRIES = {"dataset": DATASETS, "model": MODELS, "defense": DEFENSES, "attack": ATTACKS}
