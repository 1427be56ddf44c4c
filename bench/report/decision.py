"""The decision table: one row per defense setting, what a review board decides from.

Columns (each a value with its 95 % interval and a verdict word):

* ε with its δ, privacy unit and neighbouring relation (never ε alone);
* accuracy cost: defense − no defense on the same seeds (:mod:`bench.report.compare`);
* worst-hospital cost: the paired change of the worst hospital's accuracy among the hospitals
  with at least ``min_count`` test records (``fairness/site/worst_group_accuracy`` where logged,
  else ``utility/worst_site_accuracy``, which the runner computes from those hospitals only);
* worst-subgroup cost: the most negative paired change of a subgroup's worst accuracy
  (``fairness/<attribute>/worst_group_accuracy``);
* strongest membership attack: TPR at 1 % FPR (the attack whose interval has the highest lower
  end), or its AUC where no attack had enough non-members for that FPR (said so);
* reconstruction: the strongest inversion (feature accuracy against its prior baseline, or PSNR);
* audit: the verdict tag (``violation`` / ``suspect`` / ``no_violation`` / ``vacuous``), the
  certified ε lower bound and the audit's power in words;
* attribute inference, where the suite runs it: the strongest member/non-member signal
  (``attack/<attack>/<attribute>/signal``: the attack's gain over imputation on members minus
  its gain on non-members, :mod:`bench.metrics.attribute`) over attacks and attributes, with its
  interval ("leaks beyond imputation" when the interval is above 0, "no detectable signal"
  when it holds 0);
* one column per adversary when the suite attacks as more than one (the threat matrix's cell:
  strongest attack against that adversary and the ε that still holds against it).

Attack-only cells (gradient-inversion cells that train one round on a record per hospital) have
no utility numbers: their cost columns read "attack-only".
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from bench.report.compare import Comparison
from bench.report.families import DELTA, EPSILON, UTILITY, WORST_SITE
from bench.report.load import Setting
from bench.report.stats import HIGHER, LOWER, SAME, UNKNOWN, Estimate, t_interval

#: the FPR of the membership column, and the tag marking a cell whose accuracy is not a utility result
MIA_FPR = 0.01
ATTACK_ONLY_TAG = "cell_kind"
ATTACK_ONLY = "attack_only"
SITE_WORST = "fairness/site/worst_group_accuracy"
AUDIT_ORDER = ("violation", "suspect", "vacuous", "no_violation")  # the most severe over seeds is shown


@dataclass(frozen=True)
class Entry:
    """One cell of the decision table.

    Attributes:
        text: what the page shows (value with interval, or why there is none).
        verdict: the verdict word ("costs accuracy", "above chance", "no violation", ...), "" if none.
        mean: the number behind it (None when there is none).
        low: lower end of its 95 % interval, or None.
        high: upper end, or None.
        detail: what the number is (attack, metric, method of the interval).
    """

    text: str
    verdict: str = ""
    mean: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    detail: str = ""


NONE = Entry("–")


def is_attack_only(setting: Setting) -> bool:
    """Whether the setting's cells are attack-only (their accuracy is not a utility result)."""
    return all(c.tags.get(ATTACK_ONLY_TAG) == ATTACK_ONLY for c in setting.cells)


def _n(x: float) -> str:
    return f"{x:.2g}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"


def _est_text(e: Estimate, signed: bool = False) -> str:
    f = (lambda v: f"{v:+.3f}") if signed else _n
    if e.has_interval:
        return f"{f(e.mean)} [{f(e.low)}, {f(e.high)}]"
    return f"{f(e.mean)} (n={e.n}, no interval)"


def epsilon_entry(s: Setting) -> Entry:
    """ε (δ, unit, neighbouring relation) over seeds, or "no DP"."""
    eps, delta = s.stat(EPSILON), s.stat(DELTA)
    if eps is None:
        return Entry("no DP", "no guarantee")
    tags = s.cells[0].tags
    est = s.estimate(EPSILON)
    d = f"δ {delta[0]:.1g}" if delta is not None else "δ not logged"
    unit = tags.get("privacy_unit", "unit ?")
    rel = tags.get("neighbouring", "relation ?")
    weak = any(c.tags.get("dp_weak_guarantee") == "true" for c in s.cells)
    holds = all(c.tags.get("dp_holds_against_adversary") != "false" for c in s.cells)
    word = "weak guarantee" if weak else ("does not hold against the adversary" if not holds else "DP")
    return Entry(f"ε {eps[0]:.3g} ({d}, {unit}, {rel})", word, eps[0], est.low if est else None, est.high if est else None,
                 f"{est.method if est else ''}")


_COST_WORDS = {LOWER: "costs", HIGHER: "gains", SAME: "no detectable cost", UNKNOWN: "not enough seeds"}


def cost_entry(comps: Sequence[Comparison], setting: Setting, metrics: Sequence[str], what: str) -> Entry:
    """The paired change of the first of ``metrics`` compared for this setting (most negative of several)."""
    if is_attack_only(setting):
        return Entry("attack-only", "not a utility result")
    if setting.is_baseline:
        for m in metrics:
            e = setting.estimate(m)
            if e is not None:
                return Entry(f"baseline {_est_text(e)}", "reference", e.mean, e.low, e.high, m)
        return NONE
    for m in metrics:
        found = [c for c in comps if c.setting == setting.label and c.metric == m]
        if found:
            c = found[0]
            d = c.diff
            word = _COST_WORDS[d.verdict] + (f" {what}" if d.verdict in (LOWER, HIGHER) else "")
            return Entry(_est_text(d, signed=True), word, d.mean, d.low, d.high, f"{m} vs {c.baseline} ({d.method})")
    return NONE


def worst_subgroup_entry(fair: Sequence[Comparison], setting: Setting) -> Entry:
    """The subgroup attribute whose worst-group accuracy drops most (lowest interval end), paired."""
    if is_attack_only(setting):
        return Entry("attack-only", "not a utility result")
    cands = [c for c in fair if c.setting == setting.label and c.metric.startswith("fairness/")
             and c.metric.endswith("/worst_group_accuracy") and c.metric != SITE_WORST]
    if not cands:
        return NONE
    c = min(cands, key=lambda c: c.diff.low if c.diff.low is not None else c.diff.mean)
    d = c.diff
    attr = c.metric.split("/")[1]
    word = _COST_WORDS[d.verdict] + (" worst group's accuracy" if d.verdict in (LOWER, HIGHER) else "")
    return Entry(f"{attr}: {_est_text(d, signed=True)}", word, d.mean, d.low, d.high, f"{c.metric} vs {c.baseline} ({d.method})")


def _attacks(setting: Setting, suffix: str) -> list[str]:
    names = set()
    for c in setting.cells:
        for k in c.metrics:
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "attack" and parts[2] == suffix and math.isfinite(c.metrics[k]):
                names.add(parts[1])
    return sorted(names)


def _over_seeds(setting: Setting, metric: str) -> Optional[Estimate]:
    """Mean over seeds with a t interval; with one seed the cell's own interval where logged."""
    return setting.estimate(metric)


def _strongest(setting: Setting, suffix: str) -> Optional[tuple[str, Estimate]]:
    """The attack whose ``suffix`` metric has the highest lower interval end (the mean where none)."""
    best = None
    for a in _attacks(setting, suffix):
        e = _over_seeds(setting, f"attack/{a}/{suffix}")
        if e is None:
            continue
        key = (e.low if e.low is not None else e.mean, e.mean)
        if best is None or key > best[0]:
            best = (key, a, e)
    return None if best is None else (best[1], best[2])


def _vs_baseline(comps: Sequence[Comparison], setting: Setting, metric: str) -> str:
    found = [c for c in comps if c.setting == setting.label and c.metric == metric]
    if not found:
        return ""
    v = found[0].diff.verdict
    return {LOWER: "; lower than no defense", HIGHER: "; higher than no defense", SAME: "; no detectable change vs no defense",
            UNKNOWN: ""}[v]


def membership_entry(comps: Sequence[Comparison], setting: Setting, fpr: float = MIA_FPR) -> Entry:
    """The strongest membership attack's TPR at ``fpr`` (AUC where that FPR is unsupported)."""
    key = f"tpr_at_fpr_{fpr:g}"
    got = _strongest(setting, key)
    if got is not None:
        a, e = got
        word = "above chance" if e.low is not None and e.low > fpr else ("not above chance" if e.low is not None else "no interval")
        word += _vs_baseline(comps, setting, f"attack/{a}/{key}")
        return Entry(f"{a}: TPR {_est_text(e)} at FPR {fpr:g}", word, e.mean, e.low, e.high, f"attack/{a}/{key} ({e.method})")
    got = _strongest(setting, "auc")
    if got is None:
        return NONE
    a, e = got
    short = [c.metrics[k] for c in setting.cells for k in c.metrics if k.endswith(f"/{key}_unsupported")]
    why = f"TPR at FPR {fpr:g} unsupported ({int(min(short))} non-members); " if short else ""
    word = "above chance" if e.low is not None and e.low > 0.5 else ("not above chance" if e.low is not None else "no interval")
    word += _vs_baseline(comps, setting, f"attack/{a}/auc")
    return Entry(f"{a}: AUC {_est_text(e)}", word, e.mean, e.low, e.high, f"{why}attack/{a}/auc ({e.method})")


def reconstruction_entry(comps: Sequence[Comparison], setting: Setting) -> Entry:
    """The strongest reconstruction: tabular feature accuracy (vs its prior baseline) or image PSNR."""
    got = _strongest(setting, "feature_accuracy")
    if got is not None:
        a, e = got
        base = setting.estimate(f"attack/{a}/baseline_feature_accuracy")
        gain = setting.estimate(f"attack/{a}/feature_accuracy_gain")
        if gain is not None and gain.low is not None:
            word = "beats the prior" if gain.low > 0 else "not above the prior"
        else:
            word = "no interval"
        word += _vs_baseline(comps, setting, f"attack/{a}/feature_accuracy")
        prior = f" (prior {_n(base.mean)})" if base is not None else ""
        return Entry(f"{a}: features {_est_text(e)}{prior}", word, e.mean, e.low, e.high, f"attack/{a}/feature_accuracy ({e.method})")
    got = _strongest(setting, "psnr")
    if got is None:
        return NONE
    a, e = got
    word = (_vs_baseline(comps, setting, f"attack/{a}/psnr")[2:] or "no comparison")
    return Entry(f"{a}: PSNR {_est_text(e)} dB", word, e.mean, e.low, e.high, f"attack/{a}/psnr ({e.method})")


def audit_entry(setting: Setting) -> Entry:
    """The most severe audit verdict over seeds, the certified ε lower bound and the audit's power."""
    verdicts = [c.tags.get("audit_verdict") for c in setting.cells if c.tags.get("audit_verdict")]
    if not verdicts:
        return NONE
    worst = min(verdicts, key=lambda v: AUDIT_ORDER.index(v) if v in AUDIT_ORDER else len(AUDIT_ORDER))
    lb = setting.estimate("audit/epsilon_lower_bound")
    power = next((c.tags["audit_power"] for c in setting.cells if c.tags.get("audit_power")), "")
    text = f"ε ≥ {_est_text(lb)}" if lb is not None else "no bound"
    if power and not power.startswith(("power", "vacuous")):  # "would catch ..." reads as a power; the others say so
        power = f"power: {power}"
    return Entry(f"{text}; {power}" if power else text, worst.replace("_", " "), lb.mean if lb else None,
                 lb.low if lb else None, lb.high if lb else None, "audit/epsilon_lower_bound; tags audit_verdict, audit_power")


ATTRIBUTE_SIGNAL = "signal"
_SIGNAL_WORDS = {1: "leaks beyond imputation", 0: "no detectable signal", -1: "below imputation"}


def attribute_signals(setting: Setting) -> list[tuple[str, str]]:
    """``(attack, attribute)`` pairs with an ``attack/<attack>/<attribute>/signal`` metric in any cell
    (the whole-population signal, not the per-subgroup ``.../group/...`` ones), sorted."""
    found = set()
    for c in setting.cells:
        for k, v in c.metrics.items():
            parts = k.split("/")
            if len(parts) == 4 and parts[0] == "attack" and parts[3] == ATTRIBUTE_SIGNAL and math.isfinite(v):
                found.add((parts[1], parts[2]))
    return sorted(found)


def signal_word(e: Estimate) -> str:
    """The verdict word of an attribute-inference signal's interval."""
    if e.low is None or e.high is None:
        return "no interval"
    return _SIGNAL_WORDS[1 if e.low > 0 else -1 if e.high < 0 else 0]


def attribute_entry(comps: Sequence[Comparison], setting: Setting) -> Entry:
    """The strongest attribute-inference signal (highest lower interval end) over attacks and attributes."""
    best = None
    for attack, attr in attribute_signals(setting):
        metric = f"attack/{attack}/{attr}/{ATTRIBUTE_SIGNAL}"
        e = setting.estimate(metric)
        if e is None:
            continue
        key = (e.low if e.low is not None else e.mean, e.mean)
        if best is None or key > best[0]:
            best = (key, attack, attr, metric, e)
    if best is None:
        return NONE
    _, attack, attr, metric, e = best
    word = signal_word(e) + _vs_baseline(comps, setting, metric)
    n = len(attribute_signals(setting))
    more = f"; strongest of {n} attack × attribute signals" if n > 1 else ""
    return Entry(f"{attack} {attr}: signal {_est_text(e, signed=True)}", word, e.mean, e.low, e.high,
                 f"{metric}: (attack − imputation on members) − (on non-members) ({e.method}){more}")


def adversaries_in(settings: Sequence[Setting]) -> list[str]:
    """The adversaries the suite's attacks model, in the accounting's order."""
    from bench.accounting import ADVERSARIES
    from bench.report.threats import attack_adversary

    names = {k.split("/")[1] for s in settings for c in s.cells for k in c.metrics if k.startswith("attack/")}
    found = {attack_adversary(n) for n in names} - {None}
    return [a for a in ADVERSARIES if a in found]


def adversary_entries(settings: Sequence[Setting]) -> dict[str, dict[str, Entry]]:
    """Setting label -> adversary -> the threat matrix's cell (only when more than one adversary)."""
    from bench.report.threats import threat_matrix

    advs = adversaries_in(settings)
    if len(advs) < 2:
        return {}
    cells = [{"row": s.label, "seed": c.seed, "metrics": dict(c.metrics), "tags": dict(c.tags)} for s in settings for c in s.cells]
    m = threat_matrix(cells)
    out: dict[str, dict[str, Entry]] = {}
    for label, row in m.items():
        out[label] = {}
        for a in advs:
            c = row[a]
            if c.attack is None:
                out[label][a] = Entry(f"no attack; ε: {c.epsilon_text}", "")
                continue
            e = c.estimate
            if c.metric and c.metric.endswith("/" + ATTRIBUTE_SIGNAL):  # attribute inference: its gain over imputation
                out[label][a] = Entry(f"{c.attack} {c.metric} {_est_text(e, signed=True)}; ε: {c.epsilon_text}", signal_word(e),
                                      e.mean, e.low, e.high, f"attack/{c.attack}/{c.metric}")
                continue
            beats = c.chance is not None and e.low is not None and e.low > c.chance
            word = "beats a blind guess" if beats else ("no better than a blind guess" if e.low is not None and c.chance is not None
                                                        else "no interval" if e.low is None else "")
            out[label][a] = Entry(f"{c.attack} {c.metric} {_est_text(e)}; ε: {c.epsilon_text}", word, e.mean, e.low, e.high,
                                  f"attack/{c.attack}/{c.metric}")
    return out


BASE_HEAD = ("setting", "dataset", "seeds", "ε (δ, unit, relation)", "accuracy cost", "worst-hospital cost", "worst-subgroup cost",
             "strongest membership attack", "reconstruction", "audit", "attribute inference")


@dataclass(frozen=True)
class DecisionTable:
    """The table: column names and per setting its entries (setting, dataset and seeds as plain entries)."""

    head: tuple[str, ...]
    rows: tuple[tuple[Entry, ...], ...]


def decision_table(settings: Sequence[Setting], comparisons: Sequence[Comparison], fair: Sequence[Comparison] = ()) -> DecisionTable:
    """One row per defense setting (see the module docstring); columns that no setting fills are dropped."""
    from bench.accounting import ADVERSARIES  # noqa: F401  (the order of the adversary columns)
    from bench.report.threats import ADVERSARY_TITLES

    adv = adversary_entries(settings)
    advs = adversaries_in(settings) if adv else []
    head = list(BASE_HEAD) + [f"vs {ADVERSARY_TITLES.get(a, a)}" for a in advs]
    rows = []
    for s in settings:
        worst = cost_entry(list(fair) + list(comparisons), s, [SITE_WORST, WORST_SITE], "worst hospital's accuracy")
        row = [Entry(s.label), Entry(s.dataset), Entry(f"{len(s.cells)} ({','.join(s.seeds)})", mean=float(len(s.cells))),
               epsilon_entry(s), cost_entry(comparisons, s, [UTILITY], "accuracy"), worst, worst_subgroup_entry(fair, s),
               membership_entry(comparisons, s), reconstruction_entry(comparisons, s), audit_entry(s), attribute_entry(comparisons, s)]
        row += [adv.get(s.label, {}).get(a, NONE) for a in advs]
        rows.append(tuple(row))
    keep = [i for i in range(len(head)) if i < 4 or any(r[i] is not NONE for r in rows)]
    return DecisionTable(tuple(head[i] for i in keep), tuple(tuple(r[i] for i in keep) for r in rows))


def write_decision(table: DecisionTable, out: Path) -> list[str]:
    """decision.csv: per column its text, mean, 95 % interval, verdict and what the number is."""
    with open(out / "decision.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        first = table.head[:3]
        w.writerow(list(first) + [f"{h} {x}" for h in table.head[3:] for x in ("", "mean", "ci_low", "ci_high", "verdict", "detail")])
        for r in table.rows:
            vals = [e.text for e in r[:3]]
            for e in r[3:]:
                vals += [e.text, "" if e.mean is None else repr(e.mean), "" if e.low is None else repr(e.low),
                         "" if e.high is None else repr(e.high), e.verdict, e.detail]
            w.writerow(vals)
    return ["decision.csv"]


_WORD_CLASS = {"costs": "bad", "above chance": "bad", "beats": "bad", "leaks": "bad", "violation": "bad", "suspect": "warn", "vacuous": "warn",
               "weak guarantee": "warn", "does not hold": "bad", "no guarantee": "warn", "not enough seeds": "warn",
               "no interval": "warn", "no comparison": "warn"}


def _cls(word: str) -> str:
    for k, v in _WORD_CLASS.items():
        if word.startswith(k):
            return v
    return "ok" if word else ""


def decision_html(table: DecisionTable) -> str:
    """The table as HTML: value on the first line, the verdict word under it (coloured), details as a tooltip."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in table.head)
    trs = []
    for r in table.rows:
        tds = []
        for e in r:
            word = f"<br><span class='v {_cls(e.verdict)}'>{html.escape(e.verdict)}</span>" if e.verdict else ""
            title = f" title='{html.escape(e.detail)}'" if e.detail else ""
            tds.append(f"<td{title}>{html.escape(e.text)}{word}</td>")
        trs.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table class='decision' id='decision'><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


DECISION_CSS = """<style>
table.decision{border-collapse:collapse;font-size:.72em;width:100%;table-layout:auto}
table.decision td,table.decision th{border:1px solid #ccc;padding:.2em .35em;vertical-align:top}
table.decision th{background:#eef2f7;text-align:left}
table.decision td:first-child{font-weight:600;max-width:16em;overflow-wrap:anywhere}
.v{font-size:.9em;font-weight:600}.v.bad{color:#b00020}.v.warn{color:#8a4b00}.v.ok{color:#1b5e20}
</style>"""


def as_mapping(table: DecisionTable) -> list[Mapping[str, str]]:
    """Rows as ``{column: text}`` (tests, the CLI)."""
    return [{h: e.text for h, e in zip(table.head, r)} for r in table.rows]
