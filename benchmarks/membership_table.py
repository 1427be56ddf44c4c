"""Print the resolution tables of ``experiments/membership.yaml`` from MLflow (markdown).

Usage::

    python benchmarks/membership_table.py --tracking-uri sqlite:///results/mlflow.db

Means over the seeds of each cell: AUC / TPR at 1% FPR per membership attack, source
inference accuracy on members and non-members, K and the seconds spent on reference
federations; then the canary audit's ε lower bound beside the accountant's ε.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--suite", default="membership")
    args = ap.parse_args()
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.suite], output_format="list", max_results=5000)
    mia, audit = collections.defaultdict(list), collections.defaultdict(list)
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") is None or r.info.status != "FINISHED":
            continue
        name = r.info.run_name.rsplit(" · seed", 1)[0]
        (audit if "audit/epsilon_lower_bound" in r.data.metrics else mia)[name].append(r.data.metrics)
    print("| cell | seeds | test acc | ε | " + " | ".join(f"{a} AUC / TPR@1%" for a in MIA)
          + " | source_inference acc members / non-members | K | reference s | cell s |")
    print("|" + "---|" * (8 + len(MIA)))
    for name, ms in sorted(mia.items()):
        row = [name, str(len(ms)), mean(ms, "utility/test_accuracy"), mean(ms, "privacy/epsilon", 2)]
        for a in MIA:
            auc = mean(ms, f"attack/{a}/auc")
            row.append("–" if auc == "–" else f"{auc} / {mean(ms, f'attack/{a}/tpr_at_fpr_0.01')}")
        acc = mean(ms, "attack/source_inference/accuracy")
        row.append("–" if acc == "–" else f"{acc} / {mean(ms, 'attack/source_inference/accuracy_nonmembers')}")
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
            print(f"| {name} | {len(ms)} | {mean(ms, 'privacy/epsilon', 2)} | {mean(ms, 'audit/accountant_epsilon', 2)} | "
                  f"{'–' if audit_delta is None else f'{audit_delta:g}'} | {mean(ms, 'audit/epsilon_lower_bound')} | "
                  f"{mean(ms, 'attack/canary_audit/correct', 1)} of {mean(ms, 'attack/canary_audit/guesses', 0)} | {viol} |")


if __name__ == "__main__":
    main()
