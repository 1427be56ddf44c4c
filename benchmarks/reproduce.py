"""Did a change move what a suite concludes? Compare two stores of the same suite, seed by seed.

Usage::

    python benchmarks/reproduce.py --suite membership \\
        --before sqlite:////tmp/repro/before-membership.db --after sqlite:////tmp/repro/after-membership.db

Both stores hold the same suite run by two versions of privbench (e.g. before and after the
one-engine change of issue 15). Cells are matched by their run name without the seed (the
setting) and their seed; run keys differ between versions whenever the resolved config or the
data fingerprint gained a field, so they cannot be used.

For every setting and every metric logged by both versions (timings under ``cost/``, the
paired comparisons under ``compare/`` and the reference federations' bookkeeping are left
out), with the seeds run by both:

* ``before`` / ``after``: mean over seeds;
* ``spread``: the sample standard deviation over seeds of the *before* values — the
  seed-to-seed spread the number was published with;
* ``moved``: ``|after − before| > spread`` (for a number with no spread across seeds, e.g. ε:
  any change beyond 1e-9 relative). A moved number is listed with its values; the rest are
  counted as identical (every seed equal to 1e-12 relative) or within the spread.

Exit status 0 always: this is a measurement, its reading goes into docs/.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from statistics import mean, stdev

SKIP = re.compile(r"^(cost/|compare/|reference/|fairness/.*_ci_(low|high)$)")


def cells(uri: str, suite: str) -> dict[tuple[str, int], dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        raise SystemExit(f"{uri}: no suite {suite!r}")
    out = {}
    for run in client.search_runs([exp.experiment_id], "tags.role = 'cell' and attributes.status = 'FINISHED'", max_results=50000):
        seed = int(run.data.tags["seed"])
        setting = re.sub(r" · seed \d+$", "", run.info.run_name)
        out[(setting, seed)] = {k: v for k, v in run.data.metrics.items() if not SKIP.match(k)}
    return out


def compare(before: dict, after: dict):
    settings = sorted({s for s, _ in before} & {s for s, _ in after})
    rows, counts, within = [], defaultdict(int), defaultdict(set)
    for setting in settings:
        seeds = sorted({d for s, d in before if s == setting} & {d for s, d in after if s == setting})
        metrics = set.intersection(*(set(before[(setting, d)]) & set(after[(setting, d)]) for d in seeds))
        for m in sorted(metrics):
            b = [before[(setting, d)][m] for d in seeds]
            a = [after[(setting, d)][m] for d in seeds]
            if any(not math.isfinite(v) for v in a + b):
                same = all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))
                counts["identical" if same else "non-finite, changed"] += 1
                continue
            counts["compared"] += 1
            if all(abs(x - y) <= 1e-12 * max(1.0, abs(y)) for x, y in zip(a, b)):
                counts["identical"] += 1
                continue
            spread = stdev(b) if len(b) > 1 else 0.0
            delta = mean(a) - mean(b)
            limit = spread if spread > 0 else 1e-9 * max(1.0, abs(mean(b)))
            if abs(delta) <= limit:
                counts["within the spread"] += 1
                within[setting].add(m.split("/")[0] + "/" + m.split("/")[1] if m.count("/") else m)
            else:
                counts["moved"] += 1
                rows.append((setting, m, len(seeds), mean(b), mean(a), spread, delta))
    return settings, counts, rows, within


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--before", required=True, help="tracking URI of the store written before the change")
    ap.add_argument("--after", required=True, help="tracking URI of the store written after it")
    args = ap.parse_args()
    before, after = cells(args.before, args.suite), cells(args.after, args.suite)
    settings, counts, rows, within = compare(before, after)
    only = sorted({s for s, _ in before} ^ {s for s, _ in after})
    print(f"suite {args.suite}: {len(settings)} settings in both stores" + (f"; in one store only: {'; '.join(only)}" if only else ""))
    print("metrics (setting x metric, over the common seeds): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if within:
        print("changed but within the spread (setting: metric families):")
        for setting, fams in sorted(within.items()):
            print(f"  {setting}: {', '.join(sorted(fams))}")
    if rows:
        print("\n| setting | metric | seeds | before mean | after mean | before spread (sd) | change |")
        print("|---|---|---|---|---|---|---|")
        for setting, m, n, b, a, sd, d in rows:
            print(f"| {setting} | {m} | {n} | {b:.4g} | {a:.4g} | {sd:.3g} | {d:+.3g} ({abs(d) / sd:.1f} sd) |" if sd > 0 else
                  f"| {setting} | {m} | {n} | {b:.6g} | {a:.6g} | 0 | {d:+.3g} |")


if __name__ == "__main__":
    main()
