"""Print the result tables of ``experiments/inversion.yaml`` (docs/bench-inversion.md) from MLflow.

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease \\
      privbench run experiments/inversion.yaml --tracking-uri sqlite:////tmp/inv/mlflow.db
    python benchmarks/inversion_table.py --tracking-uri sqlite:////tmp/inv/mlflow.db

Two markdown tables: digits (PSNR dB / SSIM of the attacker's pick, then oracle PSNR and label
accuracy) and heart disease (feature accuracy, its gain over the prior baseline, whole-record
exact match). The row formatters are used by ``tests/test_docs_tables.py``, which reruns one
cell and compares it with the doc within :data:`TOLERANCE`. ``--compare URI`` prints the
largest differences between two runs' stores (how :data:`TOLERANCE` was measured).
"""

from __future__ import annotations

import argparse
from typing import Mapping

# (attack, metric) -> the largest difference measured between two runs of the batch-1 cells on
# one machine with different CPU kernels (ATEN_CPU_CAPABILITY=avx512 vs default, i.e.
# vectorised vs scalar float arithmetic: why two machines disagree), rounded up; 0.01 where
# none was measured (the tables print 2 decimals). `--compare` measures it again;
# docs/bench-inversion.md prints :func:`tolerance_text`.
TOLERANCE = {
    ("inverting_gradients", "psnr"): 1.1, ("inverting_gradients", "ssim"): 0.01,
    ("dlg", "psnr"): 3.6, ("dlg", "ssim"): 0.15, ("dlg", "feature_accuracy"): 0.16,
    ("analytic", "feature_accuracy"): 0.01, ("tableak", "feature_accuracy"): 0.01,
}

DIGITS_DEFENSES = {"none": "none", "clipping": "clipping C=0.05", "sparsify": "sparsify keep 10%",
                   "dp_sgd": "dp_sgd σ=1", "secure_aggregation": "secure_aggregation"}
HEART_DEFENSES = {"none": "none", "clipping": "clipping", "sparsify": "sparsify", "dp_sgd": "dp_sgd σ=1",
                  "secure_aggregation": "secure_aggregation"}
ORDER = ("none", "clipping", "sparsify", "dp_sgd", "secure_aggregation")


def _signed(v: float) -> str:
    return f"{v:+.2f}".replace("-", "−")


def _plain(v: float) -> str:
    return f"{v:.2f}".replace("-", "−")


def digits_cells(m: Mapping[str, float]) -> list[str]:
    """``inverting_gradients`` and ``dlg`` cells of a digits row: ``PSNR / SSIM (oracle PSNR; label acc)``."""
    ig, dlg = "attack/inverting_gradients/", "attack/dlg/"
    return [
        f"{m[ig + 'psnr']:.2f} / {_plain(m[ig + 'ssim'])} ({m[ig + 'oracle_psnr']:.2f}; {m[ig + 'label_accuracy']:.2f})",
        f"{m[dlg + 'psnr']:.2f} / {_plain(m[dlg + 'ssim'])}",
    ]


def heart_cells(m: Mapping[str, float]) -> list[str]:
    """``analytic``, ``tableak``, ``dlg``, baseline and ε cells of a heart-disease row."""
    def full(a: str) -> str:
        p = f"attack/{a}/"
        return f"{m[p + 'feature_accuracy']:.2f} ({_signed(m[p + 'feature_accuracy_gain'])}; {m[p + 'record_exact_match']:.2f})"

    p = "attack/dlg/"
    eps, delta = m.get("privacy/epsilon"), m.get("privacy/delta")
    privacy = "—" if eps is None else f"{eps:.2f} (δ {'?' if delta is None else f'{delta:.2g}'})"
    return [full("analytic"), full("tableak"), f"{m[p + 'feature_accuracy']:.2f} ({_signed(m[p + 'feature_accuracy_gain'])})",
            f"{m['attack/analytic/baseline_feature_accuracy']:.2f}", privacy]


def defense_key(defenses_tag: str) -> str:
    return "none" if defenses_tag in ("", "none") else defenses_tag


def rows(runs: list) -> dict[tuple[str, int, str], Mapping[str, float]]:
    """``(dataset, B, defense) -> metrics`` of the finished cell runs."""
    out = {}
    for r in runs:
        if r.data.tags.get("role") != "cell" or r.info.status != "FINISHED":
            continue
        b = int(r.data.params["data.members_per_site"])
        out[(r.data.tags["dataset"], b, defense_key(r.data.tags["defenses"]))] = r.data.metrics
    return out


def tables(cells: Mapping[tuple[str, int, str], Mapping[str, float]]) -> str:
    """The two markdown tables of docs/bench-inversion.md."""
    lines = ["| B | defense | inverting_gradients | dlg |", "| --- | --- | --- | --- |"]
    for b in (1, 8):
        for d in ORDER:
            if ("digits", b, d) in cells:
                label = DIGITS_DEFENSES[d] + (f" ({4 * b} records)" if d == "secure_aggregation" else "")
                lines.append("| " + " | ".join([str(b), label, *digits_cells(cells[("digits", b, d)])]) + " |")
    lines += ["", "| B | defense | analytic | tableak | dlg | baseline | ε (δ) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for b in (1, 8):
        for d in ORDER:
            if ("heart_disease", b, d) in cells:
                lines.append("| " + " | ".join([str(b), HEART_DEFENSES[d], *heart_cells(cells[("heart_disease", b, d)])]) + " |")
    return "\n".join(lines)


def tolerance_text() -> str:
    """The tolerance sentence docs/bench-inversion.md carries (tests/test_docs_tables.py checks it)."""
    units = {"psnr": " dB PSNR", "ssim": " SSIM", "feature_accuracy": " feature accuracy"}
    parts = [f"{a} ±{t:g}{units[k]}" for (a, k), t in TOLERANCE.items()]
    return "Tolerance: " + ", ".join(parts) + "."


def differences(a: Mapping[tuple, Mapping[str, float]], b: Mapping[tuple, Mapping[str, float]]) -> dict[tuple[str, str], tuple[float, str]]:
    """Per (attack, metric) of :data:`TOLERANCE`, the largest |a − b| over the cells both hold, and where."""
    out: dict[tuple[str, str], tuple[float, str]] = {}
    for key in sorted(set(a) & set(b)):
        for attack, kind in TOLERANCE:
            k = f"attack/{attack}/{kind}"
            if k in a[key] and k in b[key]:
                d = abs(a[key][k] - b[key][k])
                if d >= out.get((attack, kind), (-1.0, ""))[0]:
                    out[(attack, kind)] = (d, f"{key[0]} B={key[1]} {key[2]}")
    return out


def load(uri: str, suite: str) -> dict:
    import mlflow

    return rows(mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name(suite).experiment_id], max_results=5000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--suite", default="inversion")
    ap.add_argument("--compare", metavar="URI", help="another run's store: print the largest differences instead")
    args = ap.parse_args()
    cells = load(args.tracking_uri, args.suite)
    if args.compare:
        other = load(args.compare, args.suite)
        print(f"{len(set(cells) & set(other))} cells in both stores; largest differences (tolerance in use):")
        for (attack, kind), (d, where) in differences(cells, other).items():
            print(f"  {attack:<20} {kind:<17} {d:.4f}  at {where}  (tolerance {TOLERANCE[(attack, kind)]:g})")
        return
    print(tables(cells))


if __name__ == "__main__":
    main()
