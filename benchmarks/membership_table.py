"""Print the resolution tables of ``experiments/membership.yaml`` from MLflow (markdown).

Usage::

    python benchmarks/membership_table.py --tracking-uri sqlite:///results/mlflow.db [--detail]
    python benchmarks/membership_table.py --tracking-uri URI_1 --compare URI_2   # run-to-run differences

Means over the seeds of each cell: AUC / TPR at 1% FPR per membership attack, source
inference accuracy on members and non-members and its lift over non-members (seed 0's 95 %
interval, and how many seeds' intervals lie above 0), K and the seconds spent on reference
federations; then the canary audit's ε lower bound beside the accountant's ε. ``--detail``
prints instead one row per (cell, attack) with mean ± sample std over seeds and seed 0's
95 % intervals (bootstrap for AUC, Clopper–Pearson for TPR).
"""

from __future__ import annotations

import argparse
import collections
import statistics

import mlflow

MIA = ("loss_threshold", "lira", "rmia", "update_cosine")


def mean(ms: list, key: str, digits: int = 3) -> str:
    vals = [m[key] for m in ms if key in m]
    return f"{statistics.mean(vals):.{digits}f}" if vals else "–"


def eps_delta(ms: list, text: str) -> str:
    """``text`` (an ε) followed by its δ (mean over seeds): ε is never printed without it."""
    deltas = [m["privacy/delta"] for m in ms if "privacy/delta" in m]
    return text if text == "–" else f"{text} (δ {statistics.mean(deltas):.2g})" if deltas else f"{text} (δ ?)"


def spread(ms: list, key: str, digits: int = 3) -> str:
    """Mean ± sample std over seeds (the mean alone for one seed)."""
    vals = [m[key] for m in ms if key in m]
    if not vals:
        return "–"
    sd = f"±{statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):.{digits}f}{sd}"


def interval(m: dict, key: str, digits: int = 3) -> str:
    """``[low, high]`` of ``key`` in one run's metrics, or ``–``."""
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return "–" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def source_lift(ms: list) -> str:
    """Lift of source inference over non-members: mean over seeds, seed 0's interval, seeds above 0."""
    key = "attack/source_inference/lift_over_nonmembers"
    vals = [m for m in ms if key in m]
    if not vals:
        return "–"
    above = sum(1 for m in vals if m[f"{key}_verdict"] > 0)
    return f"{statistics.mean(m[key] for m in vals):+.3f} {interval(vals[0], key)} ({above} of {len(vals)} above 0)"


def detail(mia: dict) -> None:
    print("| cell | seeds | test acc | ε | attack | AUC [95% CI of seed 0] | TPR@1%FPR [95% CI of seed 0] | ε lb (ROC) | seconds (attack) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, ms in sorted(mia.items()):
        head = f"| {name} | {len(ms)} | {spread(ms, 'utility/test_accuracy')} | {eps_delta(ms, spread(ms, 'privacy/epsilon'))} |"
        attacks = sorted({k.split("/")[1] for m in ms for k in m if k.startswith("attack/")})
        for a in attacks:
            p = f"attack/{a}/"
            secs = spread(ms, f"cost/attack/{a}/seconds")
            if f"{p}auc" not in ms[0]:
                acc = f"accuracy {spread(ms, p + 'accuracy')} vs non-members {spread(ms, p + 'accuracy_nonmembers')}"
                print(f"{head} {a} | {acc} | lift {source_lift(ms)} | – | {secs} |")
                continue
            tpr = p + "tpr_at_fpr_0.01"
            tpr_text = f"{spread(ms, tpr)} {interval(ms[0], tpr)}" if tpr in ms[0] else "n/a (< 100 non-members)"
            print(f"{head} {a} | {spread(ms, p + 'auc')} {interval(ms[0], p + 'auc')} | {tpr_text} | "
                  f"{spread(ms, p + 'roc_epsilon_heuristic')} | {secs} |")


def per_run(uri: str, suite: str) -> dict:
    """``(run name, seed) -> metrics`` of the finished cell runs in the store at ``uri``."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(suite).experiment_id], max_results=5000)
    return {(r.info.run_name, r.data.tags.get("seed")): r.data.metrics for r in runs
            if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED"}


def compare(a: dict, b: dict) -> None:
    """Print the largest |a − b| per kind of number over the runs (and metrics) both stores hold."""
    kinds = {"auc": "/auc", "tpr_at_fpr_0.01": "/tpr_at_fpr_0.01", "source accuracy": "source_inference/accuracy",
             "test accuracy": "utility/test_accuracy"}
    both = sorted(set(a) & set(b))
    print(f"{len(both)} runs in both stores; largest differences:")
    for kind, suffix in kinds.items():
        diffs = [(abs(a[k][m] - b[k][m]), k[0], m) for k in both for m in a[k] if m.endswith(suffix) and m in b[k]]
        if diffs:
            d, run, metric = max(diffs)
            print(f"  {kind:<16} {d:.4f}  ({metric} in {run})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--suite", default="membership")
    ap.add_argument("--detail", action="store_true", help="one row per (cell, attack) with seed 0's intervals")
    ap.add_argument("--compare", metavar="URI", help="another run's store: print the largest differences instead")
    args = ap.parse_args()
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    if args.compare:
        compare(per_run(mlflow.get_tracking_uri(), args.suite), per_run(args.compare, args.suite))
        return
    runs = mlflow.search_runs(experiment_names=[args.suite], output_format="list", max_results=5000)
    mia, audit = collections.defaultdict(list), collections.defaultdict(list)
    for r in sorted(runs, key=lambda r: int(r.data.tags.get("seed", 0))):  # seed 0 first: its intervals are shown
        if r.data.tags.get("mlflow.parentRunId") is None or r.info.status != "FINISHED":
            continue
        name = r.info.run_name.rsplit(" · seed", 1)[0].split(" · attacks=")[0]  # the defense tells cells apart
        (audit if "audit/epsilon_lower_bound" in r.data.metrics else mia)[name].append(r.data.metrics)
    if args.detail:
        detail(mia)
        return
    print("| cell | seeds | test acc | ε | " + " | ".join(f"{a} AUC / TPR@1%" for a in MIA)
          + " | source_inference acc members / non-members | lift over non-members [95% CI, seed 0] | K | reference s | cell s |")
    print("|" + "---|" * (9 + len(MIA)))
    for name, ms in sorted(mia.items()):
        row = [name, str(len(ms)), mean(ms, "utility/test_accuracy"), eps_delta(ms, mean(ms, "privacy/epsilon", 2))]
        for a in MIA:
            auc = mean(ms, f"attack/{a}/auc")
            row.append("–" if auc == "–" else f"{auc} / {mean(ms, f'attack/{a}/tpr_at_fpr_0.01')}")
        acc = mean(ms, "attack/source_inference/accuracy")
        row.append("–" if acc == "–" else f"{acc} / {mean(ms, 'attack/source_inference/accuracy_nonmembers')}")
        row.append(source_lift(ms))
        ks = sorted({k.split("/")[2] for m in ms for k in m if k.startswith("cost/reference/") and k.endswith("/seconds")})
        row.append(",".join(k[1:] for k in ks) or "–")
        row.append(", ".join(mean(ms, f"cost/reference/{k}/seconds", 1) for k in ks) or "–")
        row.append(mean(ms, "cost/seconds", 1))
        print("| " + " | ".join(row) + " |")
    if audit:
        print()
        print("| cell | seeds | ε (accountant, its δ) | ε (accountant) at the audit's δ | audit δ | audit ε lower bound | correct of guesses | violations |")
        print("|---|---|---|---|---|---|---|---|")
        for name, ms in sorted(audit.items()):
            viol = sum(1 for m in ms if m.get("audit/epsilon_lower_bound", 0) > m.get("audit/accountant_epsilon", m.get("privacy/epsilon", float("inf"))))
            audit_delta = ms[0].get("audit/delta")
            print(f"| {name} | {len(ms)} | {eps_delta(ms, mean(ms, 'privacy/epsilon', 2))} | {mean(ms, 'audit/accountant_epsilon', 2)} | "
                  f"{'–' if audit_delta is None else f'{audit_delta:g}'} | {mean(ms, 'audit/epsilon_lower_bound')} | "
                  f"{mean(ms, 'audit/canary_audit/final_model/correct', 1)} of {mean(ms, 'audit/canary_audit/final_model/guesses', 0)} | {viol} |")


if __name__ == "__main__":
    main()
