"""The import rule of DESIGN.md, enforced by parsing imports (no module is executed).

``defenses/`` and ``attacks/`` may import the standard library, torch, numpy, scipy, opacus,
cryptography, their own package and ``bench.types`` (the shared vocabulary). A few small
``bench`` helpers are allowed by name below, each with the reason; anything else from
``bench`` (the runner, the data, the tracker, ground-truth scoring ...) and any import of the
*other* family is a violation. ``bench/`` may import anything.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("defenses", "attacks")
THIRD_PARTY = {"torch", "numpy", "scipy", "opacus", "cryptography"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# Whole bench modules any defense or attack may import.
ALLOWED_BENCH_MODULES = {
    "bench.types",  # the shared vocabulary (DESIGN.md)
    "bench.registry",  # the tiny name -> factory map each family's registry is built on
    "bench.lazy",  # torch/scipy imported on first use, so `privbench list`/`validate` go without them (issue 26)
}
# Single names from other bench modules, allowed as "small shared helpers" (DESIGN.md).
# Everything else in these modules (e.g. the MODELS registry, PlainTrainer) stays off limits.
ALLOWED_BENCH_NAMES = {
    # flat-parameter helpers: an attack loads the released parameters into a fresh model,
    # DP-SGD trains on the global parameters and returns flat parameters
    ("bench.models", "flatten"),
    ("bench.models", "load_flat"),
    # DP-SGD builds the same local optimiser plain training uses (so zero noise and an
    # infinite clip equal plain training)
    ("bench.training", "make_optimizer"),
    ("bench.training", "local_optimizer"),  # the same SGD as plain training, on the engine path
    # DP-SGD calibrates σ to a target ε at the same default δ the accountant uses
    ("bench.accounting", "default_delta"),
    # ... and with the accounting module's own accountant (issue 26: σ equal to Opacus's, faster)
    ("bench.accounting", "noise_multiplier_for"),
    # white-box audits: canary insertion lives in bench/ (DESIGN.md) so that the attack only
    # crafts directions and DP-SGD only inserts what the federation carries
    ("bench.canaries", "insert_audit_canaries"),
    ("bench.canaries", "GradientCanaryRows"),
    # the white-box audit scores every released step with the statistic its ceiling simulates
    ("bench.metrics.audit", "step_llr_scores"),
    # DP-SGD's one implementation (issue 15): the same clipped sums, noise and Poisson steps for
    # the target federation (K = 1) and the reference federations (K = 16) of bench/reference.py
    ("bench.engine", "compile_model"),
    ("bench.engine", "clipped_sum"),
    ("bench.engine", "clip_rows"),
    ("bench.engine", "noisy_mean"),
    ("bench.engine", "flat_poisson_step"),
}


def imports_of(source: str, module_path: str) -> list[tuple[int, str, str | None]]:
    """``(line, absolute module, imported name or None)`` for every import in ``source``.

    Relative imports are resolved against ``module_path`` (``attacks.membership.lira``);
    imports inside functions and ``if TYPE_CHECKING`` blocks count too, and so does a
    :func:`bench.lazy.lazy` stand-in (``torch = lazy("torch", globals())``, ``lazy("scipy.stats:norm", ...)``),
    which is an import that waits for first use.
    """
    out: list[tuple[int, str, str | None]] = []
    here = module_path.split(".")
    for node in ast.walk(ast.parse(source)):
        target = lazy_target(node)
        if target is not None:
            module, _, attr = target.partition(":")
            out.append((node.lineno, module, attr or None))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out += [(node.lineno, module, alias.name) for alias in node.names]
    return out


def lazy_target(node: ast.AST) -> str | None:
    """``"module"`` or ``"module:attr"`` of a ``lazy("...", globals())`` call (bench/lazy.py), else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lazy" and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value
    return None


def violations(source: str, package: str, module_path: str) -> list[str]:
    bad = []
    for line, module, name in imports_of(source, module_path):
        root = module.split(".")[0]
        if root == package or root in THIRD_PARTY or root in STDLIB:
            continue
        if module in ALLOWED_BENCH_MODULES:
            continue
        if name is not None and (module, name) in ALLOWED_BENCH_NAMES:
            continue
        what = f"from {module} import {name}" if name else f"import {module}"
        bad.append(f"{module_path}:{line}: {what}")
    return bad


def _modules(package: str) -> list[tuple[Path, str]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] + ["__init__"]  # relative imports resolve from the package itself
        out.append((path, ".".join(parts)))
    return out


@pytest.mark.parametrize("package", FAMILIES)
def test_family_imports_only_what_design_allows(package):
    files = _modules(package)
    assert len(files) >= 5, f"expected the {package}/ modules, found {files}"
    bad = [v for path, mod in files for v in violations(path.read_text(encoding="utf-8"), package, mod)]
    assert not bad, "imports DESIGN.md does not allow:\n" + "\n".join(bad)


def test_the_checker_catches_what_it_should():
    """The rule is only as good as its checker: feed it known violations and known-good code."""
    good = (
        "from __future__ import annotations\nimport math, collections\nimport numpy as np\n"
        "from scipy import stats\nfrom torch.func import grad\nfrom opacus import GradSampleModule\n"
        "from bench.types import ServerView\nfrom bench.models import load_flat\nfrom attacks.base import ATTACKS\n"
        "from . import common\nfrom .common import Problem\n"
        "def f():\n    from cryptography.hazmat.primitives import hashes\n"
    )
    assert violations(good, "attacks", "attacks.inversion.dlg") == []
    lazy_good = ('from bench.lazy import lazy, no_grad\ntorch = lazy("torch", globals())\n'
                 'norm = lazy("scipy.stats:norm", globals())\nvmap = lazy("torch.func:vmap", globals())\n')
    assert violations(lazy_good, "attacks", "attacks.inversion.dlg") == []
    assert [m for _, m, _ in imports_of(lazy_good, "attacks.inversion.dlg")] == ["bench.lazy", "bench.lazy", "torch", "scipy.stats", "torch.func"]
    cases = {
        "import pandas": "pandas",
        "from sklearn.metrics import roc_auc_score": "sklearn",
        "from bench.runner import run_cell": "bench.runner",
        "from bench.metrics import score": "bench.metrics",  # ground truth meets attacks only there
        "from bench.models import MODELS": "bench.models import MODELS",  # a name not on the list
        "import bench.models": "bench.models",
        "from defenses.clipping import clip_l2": "defenses.clipping",  # the other family
        "def f():\n    from bench.data import build_federation": "bench.data",  # hidden in a function
        'pd = lazy("pandas", globals(), "pd")': "pandas",  # an import that waits is still an import
        'score = lazy("bench.metrics:score", globals())': "bench.metrics",
    }
    for src, needle in cases.items():
        got = violations(src, "attacks", "attacks.membership.lira")
        assert len(got) == 1 and needle in got[0], (src, got)
    # relative imports resolve: `from .. import x` in attacks.membership.lira is attacks.x (own
    # package); one that climbs out of the package is not waved through
    assert violations("from .. import base", "attacks", "attacks.membership.lira") == []
    assert violations("from ... import bench", "attacks", "attacks.membership.lira")


def test_bench_is_not_restricted_but_every_module_parses():
    """``bench/`` may import anything; still, every module in the three packages must parse."""
    for package in ("bench", *FAMILIES):
        for path, _ in _modules(package):
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --------------------------------------------------------------------------- no import circles (issue 25 item 5)

PACKAGES = ("bench", "defenses", "attacks", "privbench")


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    """``module -> modules it imports`` among the packages' own modules.

    The rule: every ``import`` statement counts, at module level or inside a function or class
    (a function-level import is a dependency that only waits), except under ``if TYPE_CHECKING``.
    An edge goes to the module named (``from bench.data.sites import x``: ``bench.data.sites``;
    ``from bench import config``: ``bench.config``), not to the parent packages Python initialises
    on the way, which is the package's structure rather than a dependency someone wrote.
    Lazy ``module:attr`` references (the registries' entries, resolved by importlib) are data,
    not imports; a ``lazy("module:attr", globals())`` stand-in (bench/lazy.py) is an import.
    """
    mods: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            lazy = lazy_target(node)
            if lazy is not None:  # lazy("module:attr", globals()): an import that waits for first use
                targets = [lazy.partition(":")[0]]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _path(graph, comp):
    """One concrete circle through a component, for the failure message: a -> b -> ... -> a."""
    start = comp[0]
    members = set(comp)
    seen, todo = {start: None}, [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while seen[path[-1]] is not None:
                    path.append(seen[path[-1]])
                return " -> ".join(path[::-1] + [start])
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return " <-> ".join(comp)


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "bench.registry" in graph and "bench.components" in graph
    found = cycles(graph)
    assert not found, "import circles (DESIGN.md: registries are leaves):\n" + "\n".join(_path(graph, c) for c in found)


def test_registries_are_leaves():
    """The registries import no component, and the component families reach them only downward."""
    graph = import_graph()
    assert graph["bench.registry"] <= {"bench.types"}
    for mod in ("bench.components", "bench.models", "bench.data", "defenses.base", "attacks.base"):
        assert "bench.registry" in graph[mod], mod
    # the three of issue 25: executors -> runner -> tracking, never back
    assert not {"bench.executors", "bench.runner"} & graph["bench.tracking"]
    assert "bench.executors" not in graph["bench.runner"]


def test_the_tracking_rooms_sit_below_the_tracker():
    """issue 25 item 6: the store, the claims and the in-memory log are their own modules, below
    ``bench.tracking`` (which re-exports their names), and import nothing that logs or runs."""
    graph = import_graph()
    assert graph["bench.store"] <= {"bench.redact", "bench.types"}
    assert graph["bench.claims"] == set()  # (its tracker annotation is a TYPE_CHECKING import)
    assert graph["bench.memlog"] <= {"bench.claims"}
    assert {"bench.store", "bench.claims", "bench.memlog"} <= graph["bench.tracking"]
    for mod in ("bench.runner", "bench.executors", "bench.early"):  # a cell's log needs no MLflow tracker
        assert "bench.tracking" not in graph[mod], mod
    import bench.claims
    import bench.memlog
    import bench.store
    import bench.tracking

    for home in (bench.store, bench.claims, bench.memlog):  # every old name still reachable, the same object
        own = [n for n, obj in vars(home).items() if getattr(obj, "__module__", None) == home.__name__
               or n.lstrip("_").isupper() and n not in ("TYPE_CHECKING",)]
        assert len(own) >= 4, (home, own)
        for name in own:
            assert getattr(bench.tracking, name, None) is getattr(home, name), (home.__name__, name)
    assert bench.tracking._Heartbeat is bench.claims.Heartbeat  # its name before the split


def test_the_cycle_finder_finds_circles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "a -> b -> c -> a" == _path(g, ["a", "b", "c"])
    # function-level imports count; TYPE_CHECKING ones do not
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\ndef f():\n    from x import z\n"
    tree_targets = [m for _, m, _ in imports_of(src, "x.w")]
    assert "x" in tree_targets


def test_dp_sgds_machinery_sits_below_the_defense():
    """issue 25 item 6: ``defenses/dp_sgd.py`` is the defense a plug-in author reads; its trainer,
    the engine and Opacus paths, calibration and group_clip are modules of ``defenses/dpsgd/``
    below it, and every name it had is still reachable from it (the same object, so that a
    mutation such as ``_FALLBACKS_TOLD.clear()`` reaches the code that reads it)."""
    graph = import_graph()
    parts = [m for m in graph if m.startswith("defenses.dpsgd.")]
    assert len(parts) >= 5, parts
    for mod in parts:
        assert "defenses.dp_sgd" not in graph[mod], mod
    assert set(parts) - {"defenses.dpsgd.trainer"} <= graph["defenses.dp_sgd"] | graph["defenses.dpsgd.trainer"]
    import defenses.dp_sgd as dp_sgd
    from defenses.dpsgd import calibration, engine_path, group_clip, opacus_path, trainer

    for home, names in {
        trainer: ("DPTrainer", "_FALLBACKS_TOLD", "_NO_CLIP", "GRAD_SAMPLE_MODES"),
        engine_path: ("EngineDPOptimizer",),
        opacus_path: ("_group_clip_optimizer",),
        calibration: ("sample_rate", "steps_per_round", "calibrate_noise", "_surely_reachable"),
        group_clip: ("GroupClip",),
    }.items():
        for name in names:
            assert getattr(dp_sgd, name) is getattr(home, name), name
    assert dp_sgd.DPSGD.trainer_class is trainer.DPTrainer
    assert trainer.log.name == "defenses.dp_sgd"  # the fallback warning keeps the defense's logger name


def test_each_command_has_its_module_below_the_cli():
    """issue 25 item 6: ``bench/cli.py`` keeps the parser and dispatch; each command group is a
    module of ``bench/commands/`` that never imports the CLI back, and every name ``bench.cli`` had
    is still importable from it (the same object)."""
    graph = import_graph()
    parts = [m for m in graph if m.startswith("bench.commands.")]
    assert {"bench.commands.run", "bench.commands.validate", "bench.commands.report", "bench.commands.ui"} <= set(parts)
    for mod in parts:
        assert "bench.cli" not in graph[mod], mod
    import bench.cli as cli
    from bench.commands import common, report, run, summary, ui, validate

    for home in (common, summary, validate, run, report, ui):
        own = [n for n, obj in vars(home).items() if getattr(obj, "__module__", None) == home.__name__
               or n.lstrip("_").isupper()]
        assert own, home
        for name in own:
            assert getattr(cli, name, None) is getattr(home, name), (home.__name__, name)
    parser = cli.build_parser()
    funcs = {c: parser.parse_args([c, *a]).func for c, a in
             (("run", ["s.yaml"]), ("validate", ["s.yaml"]), ("list", []), ("schema", []), ("report", ["--suite", "x"]), ("ui", []))}
    assert funcs == {"run": run.cmd_run, "validate": validate.cmd_validate, "list": validate.cmd_list,
                     "schema": validate.cmd_schema, "report": report.cmd_report, "ui": ui.cmd_ui}
