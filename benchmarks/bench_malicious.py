"""The malicious server against secure aggregation and DP (issue 21): measured on the four
UCI heart-disease hospitals, 3 seeds, and written to ``docs/bench-malicious.md``.

Rows:
1. ``imprint`` (trap weights) under secure aggregation, no DP: FedSGD (one full-batch local
   step) and the heart-disease suite's usual local training (4 epochs of batch 4, lr 0.001).
2. The same under DP-SGD (target ε = 4 per hospital, C = 1).
3. ``model_inconsistency`` + ``tableak`` on the isolated hospital's update under secure
   aggregation, beside ``tableak`` on the same hospital's individual update without secure
   aggregation (the honest-but-curious server's best case), and under DP-SGD (ε = 4).
4. ``model_inconsistency``'s membership follow-up (``update_cosine``'s score on the isolated
   update) under secure aggregation, beside ``update_cosine`` without secure aggregation on
   the same seeds and splits, both on the target hospital's candidates (its members against
   the non-members held out from it; for ``update_cosine`` the per-hospital exposure of
   ``fairness``), and under DP-SGD (ε = 4).
5. ``model_check``: rounds aborted when the server is inconsistent (every round attacked)
   and when it is honest.

Intervals: per seed the metric's own 95 % interval (bootstrap over records; Wilson for
fractions); across seeds mean ± t-interval of the per-seed values.

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_malicious.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from bench.config import parse_experiment  # noqa: E402
from bench.runner import run_in_memory  # noqa: E402

DATA = os.environ.get("PRIVBENCH_DATA_DIR", "/work/shared/data/uci-heart-disease")
FEDSGD = {"local_epochs": 1, "batch_size": 1000, "lr": 0.1}
USUAL = {"local_epochs": 4, "batch_size": 4, "lr": 0.001}  # experiments/heart_disease.yaml
DPSGD = {"name": "dp_sgd", "target_epsilon": 4.0, "max_grad_norm": 1.0}


def cell(attacks, defenses, train, seed, rounds=1, fairness=None):
    raw = {
        **({"fairness": fairness} if fairness else {}),
        "data": {"name": "heart_disease", "partition": "natural", "data_dir": DATA},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"rounds": rounds, "optimizer": "sgd", **train},
        "attacks": attacks, "defenses": defenses, "seed": seed,
    }
    return run_in_memory(parse_experiment(raw))


def across(values):
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return f"{v.mean():.3f}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.3f} [{v.mean() - half:.3f}, {v.mean() + half:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one seed, a small TabLeak budget")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "bench-malicious.md"))
    args = ap.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    tab = {"iterations": 100 if args.quick else 500, "restarts": 2 if args.quick else 4}
    t0 = time.perf_counter()
    lines = []

    # 1-2: imprint
    rows = []
    for label, defenses, train in [
        ("secure_aggregation, FedSGD", [{"name": "secure_aggregation"}], FEDSGD),
        ("secure_aggregation, 4 local epochs (batch 4)", [{"name": "secure_aggregation"}], USUAL),
        ("dp_sgd(ε=4) + secure_aggregation, FedSGD", [DPSGD, {"name": "secure_aggregation"}], FEDSGD),
        ("dp_sgd(ε=4) + secure_aggregation, 4 local epochs", [DPSGD, {"name": "secure_aggregation"}], USUAL),
    ]:
        per = [cell([{"name": "imprint"}], defenses, train, s).metrics for s in seeds]
        k = "attack/imprint/"
        rows.append(
            f"| {label} | {across([m[k + 'recovered_fraction_worst_site'] for m in per])} "
            f"| {across([m[k + 'recovered_fraction'] for m in per])} "
            f"| {across([m.get(k + 'feature_accuracy', np.nan) for m in per])} "
            f"| {across([m.get(k + 'baseline_feature_accuracy', np.nan) for m in per])} "
            f"| {across([m.get(k + 'records_claimed', 0) for m in per])} "
            f"| {across([m.get('privacy/epsilon', np.nan) for m in per])} |"
        )
        print(rows[-1], flush=True)
    lines += [
        "## Trap weights (imprint) read from the secure sum",
        "",
        "`imprint` (1,024 bins, coupling 0.1, scale 1e-3), round 1, MLP [32], the 4 hospitals (368 training records).",
        "*worst hospital*: the smallest fraction of one hospital's training records recovered verbatim (every feature right, TabLeak's rule);",
        "*feature accuracy*: over the records the attacker claimed (its own one-hot test), against the prior baseline.",
        f"Mean over seeds {seeds} with a 95 % t-interval across seeds.",
        "",
        "| defenses, local training | recovered, worst hospital | recovered, all | feature accuracy (claimed) | prior baseline | records claimed | ε (δ = 1e-5·, per hospital) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]

    # 3: model inconsistency
    rows = []
    for label, attack, defenses in [
        ("tableak, no secure aggregation (honest-but-curious server)", {"name": "tableak", "sites": ["cleveland"], **tab}, []),
        ("model_inconsistency + tableak, secure aggregation", {"name": "model_inconsistency", "target": "cleveland", "inversion": "tableak", **tab},
         [{"name": "secure_aggregation"}]),
        ("tableak on the sum, secure aggregation (honest server)", {"name": "tableak", **tab}, [{"name": "secure_aggregation"}]),
        ("model_inconsistency + tableak, dp_sgd(ε=4) + secure aggregation",
         {"name": "model_inconsistency", "target": "cleveland", "inversion": "tableak", **tab}, [DPSGD, {"name": "secure_aggregation"}]),
    ]:
        per = [cell([attack], defenses, FEDSGD, s).metrics for s in seeds]
        k = f"attack/{attack['name']}/"
        fa = [m[k + "feature_accuracy"] for m in per]
        ci = "; ".join(f"{m[k + 'feature_accuracy_ci_low']:.3f}–{m[k + 'feature_accuracy_ci_high']:.3f}" for m in per)
        rows.append(f"| {label} | {across(fa)} | {ci} | {across([m[k + 'baseline_feature_accuracy'] for m in per])} "
                    f"| {across([m.get(k + 'label_accuracy', np.nan) for m in per])} |")
        print(rows[-1], flush=True)
    lines += [
        "## Model inconsistency: one hospital isolated from the secure sum, then TabLeak",
        "",
        f"Target: cleveland, round 1, FedSGD (one full-batch step, lr 0.1), TabLeak {tab['iterations']} iterations × {tab['restarts']} restarts.",
        "Per-seed intervals are bootstrap intervals over the hospital's records.",
        "",
        "| attack, defenses | feature accuracy (mean over seeds [95 % t]) | per-seed 95 % bootstrap intervals | prior baseline | label accuracy |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]

    # 4: membership on the isolated update vs the honest-but-curious server's update_cosine
    rows = []
    mrounds = 3
    fair = {"attributes": ["sex"], "bootstrap": 0}
    for label, attack, defenses, prefix in [
        ("update_cosine, no secure aggregation (honest-but-curious server)", {"name": "update_cosine"}, [],
         "fairness/exposure/update_cosine/site/cleveland/"),
        ("model_inconsistency + update_cosine, secure aggregation",
         {"name": "model_inconsistency", "target": "cleveland", "inversion": "analytic", "rounds": list(range(1, mrounds + 1))},
         [{"name": "secure_aggregation"}], "attack/model_inconsistency/"),
        ("model_inconsistency + update_cosine, dp_sgd(ε=4) + secure aggregation",
         {"name": "model_inconsistency", "target": "cleveland", "inversion": "analytic", "rounds": list(range(1, mrounds + 1))},
         [DPSGD, {"name": "secure_aggregation"}], "attack/model_inconsistency/"),
    ]:
        per = [cell([attack], defenses, USUAL, s, rounds=mrounds, fairness=fair).metrics for s in seeds]
        ci = "; ".join(f"{m[prefix + 'auc']:.3f} [{m[prefix + 'auc_ci_low']:.3f}, {m[prefix + 'auc_ci_high']:.3f}]" for m in per)
        tpr = "; ".join(f"{m[prefix + 'tpr_at_fpr_0.01']:.3f} [{m[prefix + 'tpr_at_fpr_0.01_ci_low']:.3f}, {m[prefix + 'tpr_at_fpr_0.01_ci_high']:.3f}]"
                        if prefix + "tpr_at_fpr_0.01" in m else "unsupported" for m in per)
        rows.append(f"| {label} | {across([m[prefix + 'auc'] for m in per])} | {ci} | {tpr} | {int(per[0][prefix + 'members'])}/{int(per[0][prefix + 'nonmembers'])} "
                    f"| {across([m.get('privacy/epsilon', np.nan) for m in per])} |")
        print(rows[-1], flush=True)
    lines += [
        "## Model inconsistency followed by membership inference",
        "",
        f"Target: cleveland, rounds 1–{mrounds} all attacked, the suite's usual local training (4 epochs of batch 4, lr 0.001).",
        "The malicious server scores every candidate with `update_cosine`'s score against the update it isolated from the secure sum;",
        "the honest-but-curious server without secure aggregation runs `update_cosine` on every hospital's update. Both are scored on",
        "cleveland's candidates: its members against the non-members held out from it (for `update_cosine`: `fairness/exposure/update_cosine/site/cleveland/...`).",
        "Per seed: AUC with its 95 % bootstrap interval; TPR at 1 % FPR with its Clopper–Pearson interval.",
        "",
        "| attack, defenses | AUC (mean over seeds [95 % t]) | per-seed AUC [95 % bootstrap] | per-seed TPR at 1 % FPR [95 % CP] | members/non-members | ε |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]

    # 5: the client-side check
    attacked = cell([{"name": "model_inconsistency", "inversion": "analytic", "rounds": [1, 2, 3, 4]}],
                    [{"name": "secure_aggregation"}, {"name": "model_check"}], FEDSGD, 0, rounds=4)
    honest = cell([{"name": "analytic"}], [{"name": "secure_aggregation"}, {"name": "model_check"}], FEDSGD, 0, rounds=4)
    arch = cell([{"name": "imprint", "rounds": [1, 2, 3, 4]}], [{"name": "secure_aggregation"}, {"name": "model_check"}], FEDSGD, 0, rounds=4)
    def ab(res):
        return sum(r.aborted is not None for r in res.record.rounds)
    lines += [
        "## Client-side checks (model_check)",
        "",
        "| server | rounds | rounds aborted | outcome |",
        "| --- | --- | --- | --- |",
        f"| inconsistent every round (model_inconsistency) | 4 | {ab(attacked)} | {attacked.record.rounds[0].aborted} |",
        f"| architecture changed (imprint) | 4 | {ab(arch)} | {(arch.record.rounds[0].aborted or '')[:40]}… |",
        f"| honest | 4 | {ab(honest)} | — |",
        "",
        f"Total wall time {time.perf_counter() - t0:.0f} s on this machine.",
    ]
    head = [
        "# The malicious server (issue 21): measured",
        "",
        "Generated by `PRIVBENCH_DATA_DIR=... python benchmarks/bench_malicious.py`" + (" --quick" if args.quick else "") + ".",
        "",
    ]
    Path(args.out).write_text("\n".join(head + lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
