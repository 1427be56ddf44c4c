"""The summary table (CSV, Markdown, HTML) and the self-contained report page."""

from __future__ import annotations

import base64
import csv
import html
import time
from pathlib import Path
from typing import Optional, Sequence

from bench.redact import mask_uri
from bench.report.families import ATTACK_AXES, AUDIT_EPS, AUDIT_LB, EPSILON, SITE_GAP, UTILITY, WORST_SITE, attack_names
from bench.report.compare import Comparison, unpaired_settings
from bench.report.decision import DECISION_CSS
from bench.report.figures import Figure, Skipped, indicative_banner, verdict_lines
from bench.report.load import Setting, SuiteRuns
from bench.report.stats import Estimate


FIXED_COLUMNS = (
    UTILITY, "utility/test_auroc", WORST_SITE, SITE_GAP, EPSILON, "privacy/delta", AUDIT_LB, AUDIT_EPS, "audit/delta",
    *(ax.key for ax in ATTACK_AXES),
)
# per-attack columns: these suffixes of attack/<name>/... (whatever attacks a suite has)
# (``oracle_*`` numbers pick by the truth: upper bounds, left to the MLflow run, never a headline)
ATTACK_COLUMNS = ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "accuracy", "lift", "psnr", "ssim", "label_accuracy",
                  "feature_accuracy", "baseline_feature_accuracy", "feature_accuracy_gain", "record_exact_match",
                  "baseline_record_exact_match", "lift_over_nonmembers", "epsilon_lower_bound")
TAIL_COLUMNS = ("cost/seconds", "cost/bytes_per_client")


def summary_columns(settings: Sequence[Setting]) -> list[str]:
    """Metric columns present in at least one setting, in a fixed readable order."""
    present = {k for s in settings for c in s.cells for k in c.head}
    cols = [m for m in FIXED_COLUMNS if m in present]
    all_metrics = [c.metrics for s in settings for c in s.cells]
    for suffix in ATTACK_COLUMNS:
        cols += [f"attack/{n}/{suffix}" for n in attack_names(all_metrics, suffix)]
    return cols + [m for m in TAIL_COLUMNS if m in present]


def summary_rows(settings: Sequence[Setting]) -> tuple[list[str], list[dict]]:
    """One row per setting: labels, seeds, ε (δ), and an :class:`Estimate` (or None) per metric column."""
    cols = summary_columns(settings)
    rows = []
    for s in settings:
        row = {"setting": s.label, "dataset": s.dataset, "defenses": s.cells[0].tags.get("defenses", ""),
               "seeds": ",".join(s.seeds), "n": len(s.cells), "epsilon (delta)": s.epsilon_label()}
        for m in cols:
            row[m] = s.estimate(m)
        rows.append(row)
    return cols, rows


def _num(x: float) -> str:  # δ-sized values (1e-5) would read 0.000 with three decimals
    return f"{x:.2g}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"


def fmt_estimate(e: Optional[Estimate]) -> str:
    """``0.850 [0.215, 1.485]``; the bare mean without an interval; ``–`` when absent."""
    if e is None:
        return "–"
    return f"{_num(e.mean)} [{_num(e.low)}, {_num(e.high)}]" if e.has_interval else _num(e.mean)


def write_summary(settings: Sequence[Setting], out: Path) -> tuple[list[str], str]:
    """Write summary.csv (mean, std and 95 % interval columns), summary.md and summary.html; return files and the HTML table."""
    cols, rows = summary_rows(settings)
    head = ["setting", "dataset", "defenses", "seeds", "n", "epsilon (delta)"]
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head + [x for m in cols for x in (f"{m} mean", f"{m} std", f"{m} ci_low", f"{m} ci_high")])
        for s, r in zip(settings, rows):
            vals = []
            for m in cols:
                e, st = r[m], s.stat(m)
                vals += [repr(e.mean), repr(st[1])] if e else ["", ""]
                vals += [repr(e.low), repr(e.high)] if e is not None and e.has_interval else ["", ""]
            w.writerow([r[h] for h in head] + vals)
    show = ["setting", "dataset", "seeds", "epsilon (delta)"]
    cells = lambda r: [r["setting"], r["dataset"], str(r["n"]), r["epsilon (delta)"] or "–"] + [fmt_estimate(r[m]) for m in cols]  # noqa: E731
    md = ["| " + " | ".join(show + cols) + " |", "|" + "---|" * (len(show) + len(cols))]
    md += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    table = _table(show + cols, [cells(r) for r in rows])
    (out / "summary.html").write_text(f"<!doctype html><meta charset='utf-8'><title>summary</title>{_CSS}{table}\n", encoding="utf-8")
    return ["summary.csv", "summary.md", "summary.html"], table


COMPARISON_HEAD = ["setting", "compared with", "metric", "defense − no defense", "95 % low", "95 % high", "seeds", "interval", "verdict"]


def comparison_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    def num(v):
        return "" if v is None else f"{v:+.4f}"

    return [[c.setting, c.baseline, c.metric, num(c.diff.mean), num(c.diff.low), num(c.diff.high), str(c.diff.n), c.diff.method, c.diff.verdict]
            for c in comparisons]


def write_comparisons(comparisons: Sequence[Comparison], out: Path) -> tuple[list[str], str]:
    """Write comparisons.csv (one row per defense setting and metric); return the files and the HTML table."""
    rows = comparison_rows(comparisons)
    with open(out / "comparisons.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COMPARISON_HEAD)
        w.writerows(rows)
    return ["comparisons.csv"], _table(COMPARISON_HEAD, rows)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="summary"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


# --------------------------------------------------------------------------- HTML


_CSS = """<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
img{max-width:100%;border:1px solid #eee}p.reading{max-width:60em}
.note{color:#7a5b00;background:#fff8e1;padding:.4em .8em;border-left:3px solid #f0c000}
table.summary{border-collapse:collapse;font-size:.8em;display:block;overflow-x:auto}
table.summary td,table.summary th{border:1px solid #ccc;padding:.25em .5em;white-space:nowrap}
table.summary th{background:#f4f4f4}
.banner{color:#8a4b00;background:#fff3e0;padding:.5em .8em;border-left:4px solid #e08000}
</style>"""


def render_html(runs: SuiteRuns, settings: Sequence[Setting], items: Sequence[Figure | Skipped], table: str, out: Path,
                comparisons: Sequence[Comparison] = (), comparison_table: str = "", fairness_table: str = "",
                decision_table: str = "") -> str:
    """A self-contained page: the decision table first, then the indicative-only banner, the verdicts, every
    figure embedded as base64 PNG, the tables."""
    banner = indicative_banner(settings)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>privbench report: {html.escape(runs.suite)}</title>{_CSS}"
        f"{DECISION_CSS}</head><body>",
        f"<h1>privbench report: suite <code>{html.escape(runs.suite)}</code></h1>",
        f"<p class='banner'><b>{html.escape(banner)}.</b></p>" if banner else "",
    ]
    if decision_table:
        parts += [
            "<h2 id='decide'>Decision table</h2><p class='reading'>One row per defense setting: each value is a mean over seeds "
            "with its 95 % interval and, under it, the verdict word. Costs are the defense minus no defense on the same seeds "
            "(negative = the defense loses accuracy); the worst hospital counts only hospitals with at least "
            "<code>fairness.min_count</code> test records; the membership column is the attack whose TPR interval has the highest "
            "lower end (AUC where the FPR is unsupported); 'attack-only' cells train one round on a record per hospital, so "
            "their accuracy is not a utility result. Hover a value for its metric. Also in decision.csv.</p>",
            decision_table,
        ]
    parts += [
        f"<p>{len(runs.cells)} finished cells in {len(settings)} defense settings, read from <code>{html.escape(mask_uri(runs.uri))}</code> "
        f"(experiment {html.escape(runs.experiment_id)}, latest suite run {html.escape(runs.parent_run_id or 'none')}), "
        f"generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Every number is a mean over seeds with its 95 % interval "
        "(Student t over seeds; with one seed the cell's own interval where it logged one). ε is shown with its δ.</p>",
    ]
    if runs.left_out:  # FAILED, KILLED, RUNNING (still running somewhere) or missing: never silently
        lis = "".join(f"<li>{html.escape(c.name)}: <b>{html.escape(c.status)}</b> ({html.escape(c.reason)})</li>" for c in runs.left_out)
        parts.append(f"<div class='note'><b>{len(runs.left_out)} cell(s) of the suite are left out of this report</b> "
                     f"(rerun the suite to run them; a RUNNING cell may still be running elsewhere):<ul>{lis}</ul></div>")
    parts.append("<h2>What the paired comparisons say</h2><p class='reading'>Each defense setting against no defense on the same "
                 "seeds and splits; only differences whose 95 % interval excludes 0 are named. Nothing else is ranked.</p>")
    lines = verdict_lines(comparisons, lambda k: True)
    parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>" if lines else "<p class='note'>No paired comparison in this suite.</p>")
    alone = unpaired_settings(settings)
    if alone:
        parts.append(f"<p class='note'>Not compared (no no-defense setting with the same config and seeds): {html.escape('; '.join(alone))}.</p>")
    for it in items:
        parts.append(f"<h2>{html.escape(it.title)}</h2>")
        if isinstance(it, Skipped):
            parts.append(f"<p class='note'>Not drawn: {html.escape(it.reason)}.</p>")
            continue
        data = base64.b64encode((out / it.file).read_bytes()).decode()
        parts.append(f"<p class='reading'>{html.escape(it.reading)}</p><img alt='{html.escape(it.title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Summary table</h2><p class='reading'>One row per defense setting; mean [95 % interval] over seeds "
                 "(a bare number where there is no interval). <code>strongest/...</code> columns take, in each cell, the best "
                 "attack of that family: a worst case, biased upward. The same table is in summary.csv (mean, std and interval "
                 "columns) and summary.md.</p>")
    parts.append(table)
    if comparison_table:
        parts.append("<h2>Paired comparisons</h2><p class='reading'>Defense minus no defense on the same seeds and splits, "
                     "per metric; also in comparisons.csv and logged to MLflow (<code>compare/...</code>).</p>")
        parts.append(comparison_table)
    if fairness_table:
        parts.append("<h2>Who pays: subgroups and hospitals</h2><p class='reading'>Per patient subgroup and hospital: test "
                     "accuracy and membership-attack AUC on that group's records (mean over seeds [95 % interval]), and the change "
                     "under each defense against no defense on the same seeds (paired interval, verdict); then the gaps between "
                     "groups. 'too few' means fewer test records than fairness.min_count. Also in fairness.csv and fairness.md.</p>")
        parts.append(fairness_table)
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)
