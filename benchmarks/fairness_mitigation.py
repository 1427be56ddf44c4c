"""Paired effect of a mitigation on who pays: one defense setting against another (not only
against no defense, which the report already compares), seed by seed, from a suite's store.

Usage (the table in docs/bench-fairness.md, "Mitigation")::

    python benchmarks/fairness_mitigation.py --tracking-uri sqlite:////tmp/fair10/mlflow.db \\
        --setting "dp_sgd(eps=1,C=1,group_clip[sex:female=2])" --against "dp_sgd(eps=1,C=1)" "no defense"

``--metrics`` compares other logged metrics instead (e.g. ``fairness/sex/female/fpr``).

Each row is the mean difference (setting − against) over the seeds both ran, with a 95 % paired-t
interval and a verdict (``bench.report.stats.paired_difference``, the report's own statistics).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report.stats import paired_difference  # noqa: E402

METRICS = ("utility/test_accuracy", "fairness/sex/female/accuracy", "fairness/sex/male/accuracy",
           "fairness/sex/worst_group_accuracy", "attack/lira/auc", "privacy/epsilon")


def load(uri: str, suite: str) -> dict[str, dict[int, dict[str, float]]]:
    """setting label -> seed -> final metrics, for the suite's finished cells (latest per name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise SystemExit(f"no suite {suite!r} in {uri}")
    out: dict[str, dict[int, dict[str, float]]] = collections.defaultdict(dict)
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000):
        name = run.data.tags.get("mlflow.runName", run.info.run_name or "")
        if " · seed " not in name:
            continue
        setting, seed = name.rsplit(" · seed ", 1)
        out[setting.split(" · ", 1)[-1]].setdefault(int(seed), dict(run.data.metrics))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--suite", default="fairness")
    ap.add_argument("--setting", required=True, help="the mitigation's defense label as in the run names")
    ap.add_argument("--against", nargs="+", required=True, help="defense labels to compare with")
    ap.add_argument("--metrics", nargs="+", default=list(METRICS), help=f"metrics to compare (default: {' '.join(METRICS)})")
    args = ap.parse_args()
    runs = load(args.tracking_uri, args.suite)
    for other in args.against:
        if args.setting not in runs or other not in runs:
            raise SystemExit(f"settings found: {sorted(runs)}")
        seeds = sorted(set(runs[args.setting]) & set(runs[other]))
        print(f"\n{args.setting} − {other} (paired over {len(seeds)} seeds)\n")
        print("| metric | difference [95 % CI] | verdict |\n|---|---|---|")
        rows = list(args.metrics) + ["women − men accuracy"]
        for k in rows:
            def v(s, seed):
                m = runs[s][seed]
                if k == "women − men accuracy":
                    return m.get("fairness/sex/female/accuracy", float("nan")) - m.get("fairness/sex/male/accuracy", float("nan"))
                return m.get(k, float("nan"))
            d = paired_difference([(v(args.setting, s), v(other, s)) for s in seeds])
            if d is not None:
                print(f"| {k} | {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {d.verdict} |")


if __name__ == "__main__":
    main()
