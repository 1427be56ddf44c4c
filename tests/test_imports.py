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
    imports inside functions and ``if TYPE_CHECKING`` blocks count too.
    """
    out: list[tuple[int, str, str | None]] = []
    here = module_path.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out += [(node.lineno, module, alias.name) for alias in node.names]
    return out


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
    cases = {
        "import pandas": "pandas",
        "from sklearn.metrics import roc_auc_score": "sklearn",
        "from bench.runner import run_cell": "bench.runner",
        "from bench.metrics import score": "bench.metrics",  # ground truth meets attacks only there
        "from bench.models import MODELS": "bench.models import MODELS",  # a name not on the list
        "import bench.models": "bench.models",
        "from defenses.clipping import clip_l2": "defenses.clipping",  # the other family
        "def f():\n    from bench.data import build_federation": "bench.data",  # hidden in a function
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
