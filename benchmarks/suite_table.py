"""Print a markdown table of any suite from MLflow: one row per defense setting, mean ± sample
std over its seeds for each metric asked for.

Usage::

    python benchmarks/suite_table.py --suite defenses --tracking-uri sqlite:////tmp/def/mlflow.db \\
        utility/test_accuracy utility/worst_site_accuracy privacy/epsilon

A metric a setting did not log shows ``–``; ``privacy/epsilon`` is followed by its δ
(``privacy/delta``, the mean over seeds) so that ε is never printed without it. Rows are the
settings in the order of their first run, named by the runs' ``setting`` tag without its hash.
Used for the utility / ε tables of docs/bench-defenses.md and docs/bench-heart.md.
"""

from __future__ import annotations

import argparse
import collections
import statistics
from typing import Mapping, Sequence


def cell(values: Sequence[float], digits: int) -> str:
    """``mean ± sample std`` (the value alone for one seed, ``–`` for none)."""
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{sd}"


def table(groups: Mapping[str, list[Mapping[str, float]]], metrics: Sequence[str], digits: int = 3) -> str:
    """The markdown table of ``groups`` (setting -> the metrics of each of its seeds' runs)."""
    lines = ["| setting | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name, ms in groups.items():
        row = [name, str(len(ms))]
        for key in metrics:
            text = cell([m[key] for m in ms if key in m], digits)
            if key == "privacy/epsilon" and text != "–":
                deltas = [m["privacy/delta"] for m in ms if "privacy/delta" in m]
                text += f" (δ {statistics.mean(deltas):.2g})" if deltas else " (δ ?)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    import mlflow

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", nargs="+", help="metric names, e.g. utility/test_accuracy")
    ap.add_argument("--suite", required=True)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--digits", type=int, default=3)
    args = ap.parse_args()
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.suite], output_format="list", max_results=5000,
                              order_by=["attributes.start_time ASC"])
    groups: dict[str, list] = collections.defaultdict(list)
    for r in runs:
        if r.data.tags.get("role") != "cell" or r.info.status != "FINISHED":
            continue
        groups[r.data.tags.get("setting", r.info.run_name).rsplit(" · ", 1)[0]].append(r.data.metrics)
    print(table(groups, args.metrics, args.digits))


if __name__ == "__main__":
    main()
