"""The table ``privbench run`` prints when a suite ends: one row per cell, fitted to 120 columns.

Per cell: ε (δ), the strongest membership attack by the lower end of its interval, the audit's
ε lower bound, the best inversion, utility against the majority-class baseline and seconds;
notes under the table explain the marks used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from bench.commands.common import log

SUMMARY_WIDTH = 120  # the table fits a 120-column terminal (tests/test_summary.py)
SUMMARY_FPR = 0.01  # the membership column: TPR at this FPR
_INDENT = "   "
# (header line 1, header line 2, width): a value longer than its width is cut with "…"; a
# first-line header may run on over the next column when that one's first line is empty
_COLUMNS = (
    ("ε (δ)", "! = weak δ", 14),
    ("strongest MIA (by lower CI end)", "TPR@1%FPR [95% CI]", 19),
    ("", "attack", 14),
    ("audit", "ε lower bound", 17),
    ("inversion", "best result", 14),
    ("utility", "test acc (maj)", 18),  # "0.623! (maj 0.632)" whole
    ("", "sec", 5),
)
_NOTES = {
    "mia": "strongest MIA: the attack whose 95% Clopper-Pearson interval of TPR at 1% FPR has the highest lower end"
    " (not max TPR)",
    "weak": "!: dp_weak_guarantee=true (δ ≥ 1/n for a party, or client DP over few hospitals): see dp_weak_guarantee_reason",
    "attack_only": "attack-only: a gradient-inversion cell (one round on a few records); its accuracy is not a utility result",
    "maj": "maj: test accuracy of always answering the majority class",
    "at_majority": "acc!: at or below the majority-class baseline: the model is no better than a constant guess",
    "auc_fallback": "AUC: too few non-members for TPR at 1% FPR in that cell, so the strongest attack's AUC [95% CI] is shown",
    "violation": "VIOLATION: an audit certified more ε than the accountant claims (a bug in the accountant, mechanism or audit)",
    "suspect": "SUSPECT: an audit's ε estimate (uncertified) lies above the accountant's ε at its lower 95% end",
    "vacuous": "vacuous: no audit in the cell could catch even a 16× weaker mechanism, so 'no violation' says nothing",
    "power": "k×: the audit's power: it would catch the noise understated by ≥ k× (audit/detectable_factor; tag audit_power)",
}


@dataclass(frozen=True)
class SummaryRow:
    """One cell of the CLI summary: what ``privbench run`` prints when the suite ends.

    Attributes:
        name: the cell's run name.
        status: ``FINISHED`` or ``FAILED``.
        metrics: the cell's final metrics (empty for a failed cell).
        tags: the cell's run tags as logged by the runner (``dp_weak_guarantee``, ``audit_violation``...).
        seconds: wall-clock seconds of the cell.
    """

    name: str
    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _attack_names(m: Mapping[str, float], metric: str) -> list[str]:
    """Attacks (``attack/<name>/<metric>``) that logged ``metric``, sorted by name."""
    return sorted(k[len("attack/") : -len(metric) - 1] for k in m if k.startswith("attack/") and k.endswith("/" + metric))


def _num(v: float, digits: int = 3, keep_zeros: bool = False) -> str:
    """``v`` with ``digits`` significant digits (trailing zeros kept with ``keep_zeros``)."""
    return f"{v:#.{digits}g}".rstrip(".") if keep_zeros else f"{v:.{digits}g}"


def format_privacy(m: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """``ε (δ)``, ``!`` appended under ``dp_weak_guarantee=true``; ``no DP`` without an ε.

    Args:
        m: a cell's metrics (``privacy/epsilon``, ``privacy/delta``).
        tags: its tags (``dp_weak_guarantee``).

    Returns:
        e.g. ``"3.99 (1e-05)"``, ``"12.1 (0.025)!"``, ``"no DP"``; ε is never shown without δ
        (``δ ?`` where none was logged).
    """
    eps = m.get("privacy/epsilon")
    if eps is None:
        return "no DP"
    delta = m.get("privacy/delta")
    text = f"{_num(eps, keep_zeros=True)} ({'δ ?' if delta is None else _num(delta, 2)})"
    return text + ("!" if tags.get("dp_weak_guarantee") == "true" else "")


def strongest_membership(m: Mapping[str, float], level: float = SUMMARY_FPR) -> Optional[tuple[str, float, float, float]]:
    """The membership attack with the highest lower end of its TPR interval at FPR ``level``.

    The highest *point* TPR over several attacks is biased upward (the maximum of noisy
    estimates); the highest lower interval end is the attack that is reliably strongest.
    Ties (e.g. every lower end 0) go to the higher point value, then to the name.

    Returns:
        ``(attack, tpr, ci_low, ci_high)``, or ``None`` when no attack logged that TPR.
    """
    key = f"tpr_at_fpr_{level:g}"
    cands = [
        (m[f"attack/{n}/{key}_ci_low"], m[f"attack/{n}/{key}"], n)
        for n in _attack_names(m, key)
        if f"attack/{n}/{key}_ci_low" in m and f"attack/{n}/{key}_ci_high" in m
    ]
    if not cands:
        return None
    low, tpr, name = max(cands, key=lambda c: (c[0], c[1]))  # first of equals: names are sorted
    return name, tpr, low, m[f"attack/{name}/{key}_ci_high"]


def format_membership(m: Mapping[str, float], level: float = SUMMARY_FPR) -> tuple[str, str]:
    """``("TPR [low,high]", attack)`` of :func:`strongest_membership`; why not, where unsupported.

    Returns:
        e.g. ``("0.031 [0.006,0.090]", "rmia")``; ``("n/a: 60 non-memb.", "")`` when every
        membership attack had too few non-members for this FPR; ``("-", "")`` without one.
    """
    best = strongest_membership(m, level)
    if best is not None:
        name, tpr, low, high = best
        return f"{tpr:.3f} [{low:.3f},{high:.3f}]", name
    short = [v for k, v in m.items() if k.startswith("attack/") and k.endswith(f"/tpr_at_fpr_{level:g}_unsupported")]
    if short:
        # too few non-members for this FPR: the AUC (with its bootstrap interval) is what is supported
        aucs = [(m.get(f"attack/{n}/auc_ci_low", m[f"attack/{n}/auc"]), n) for n in _attack_names(m, "auc")]
        if aucs:
            _, name = max(aucs)
            a, lo, hi = m[f"attack/{name}/auc"], m.get(f"attack/{name}/auc_ci_low"), m.get(f"attack/{name}/auc_ci_high")
            return (f"AUC {a:.3f}" + (f" [{lo:.2f},{hi:.2f}]" if lo is not None and hi is not None else "")), name
        return f"n/a: {int(min(short))} non-memb.", ""
    return "-", ""


def format_audit(m: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """``ε≥<bound>`` of the cell's audit with its verdict tier (``VIOLATION``, ``SUSPECT``,
    ``vacuous``) or, without one, its power (``k×``: catches σ understated by ≥ k×)."""
    bound = m.get("audit/epsilon_lower_bound")
    if bound is None:
        return "-"
    text = f"ε≥{bound:.2f}"
    verdict = tags.get("audit_verdict")
    if tags.get("audit_violation") == "true":
        return text + " VIOLATION!"
    if verdict == "suspect":
        return text + " SUSPECT"
    if verdict == "vacuous":
        return text + " vacuous"
    k = m.get("audit/detectable_factor")
    if k is not None and math.isfinite(k) and k < 1e300:  # (MLflow stores an infinite power as max float)
        return f"{text} {k:g}×"
    return text


def _strongest(m: Mapping[str, float], metric: str) -> Optional[float]:
    """The highest ``metric`` over attacks, ranked by the lower end of its interval where logged."""
    names = [n for n in _attack_names(m, metric) if math.isfinite(m[f"attack/{n}/{metric}"])]
    if not names:
        return None
    rank = lambda n: (m.get(f"attack/{n}/{metric}_ci_low", m[f"attack/{n}/{metric}"]), m[f"attack/{n}/{metric}"])  # noqa: E731
    return m[f"attack/{max(names, key=rank)}/{metric}"]


def format_reconstruction(m: Mapping[str, float]) -> str:
    """The strongest inversion: ``features <p>%`` (tables) or ``PSNR <x> dB`` (images); ``-`` without one."""
    acc = _strongest(m, "feature_accuracy")
    if acc is not None:
        return f"features {100 * acc:.0f}%"
    psnr = _strongest(m, "psnr")
    return "-" if psnr is None else f"PSNR {psnr:.1f} dB"


def is_attack_only(m: Mapping[str, float]) -> bool:
    """True for a cell whose attacks are all reconstructions (inversion cells: one round,
    one record per hospital; their test accuracy is not a utility result)."""
    recon = any(k.startswith("attack/") and k.endswith("/targets") for k in m)
    other = any(k.startswith("audit/") for k in m) or any(k.startswith("attack/") and k.endswith("/accuracy") for k in m)
    return recon and not other and not _attack_names(m, "auc")


def at_or_below_majority(m: Mapping[str, float]) -> Optional[tuple[float, float]]:
    """``(test accuracy, majority-class baseline)`` when the accuracy is at or below the baseline
    (no better than always answering the majority class), else None; None for an attack-only cell
    (its accuracy is not a utility result) and where either number was not logged."""
    acc, base = m.get("utility/test_accuracy"), m.get("utility/majority_baseline")
    if acc is None or base is None or is_attack_only(m) or acc > base:
        return None
    return acc, base


def format_utility(m: Mapping[str, float]) -> str:
    """``acc (maj <baseline>)``, ``!`` after ``acc`` where :func:`at_or_below_majority`, or
    ``attack-only`` (see :func:`is_attack_only`)."""
    if is_attack_only(m):
        return "attack-only"
    acc = m.get("utility/test_accuracy")
    if acc is None:
        return "-"
    base = m.get("utility/majority_baseline")
    flag = "!" if at_or_below_majority(m) else ""  # no better than always answering the majority class
    return f"{acc:.3f}{flag}" + ("" if base is None else f" (maj {base:.3f})")


def summary_cells(row: SummaryRow) -> tuple[str, ...]:
    """The values line of one finished cell, one string per column of :data:`_COLUMNS`."""
    m, t = row.metrics, row.tags
    tpr, attack = format_membership(m)
    return (format_privacy(m, t), tpr, attack, format_audit(m, t), format_reconstruction(m), format_utility(m),
            f"{row.seconds:.1f}")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _line(cells: Sequence[str]) -> str:
    return (_INDENT + "  ".join(_fit(c, w).ljust(w) for c, (_, _, w) in zip(cells, _COLUMNS))).rstrip()


def _header_line() -> str:
    """The first header line: a title may run on over following columns whose title is empty."""
    out, pos = _INDENT, len(_INDENT)
    for i, (title, _, w) in enumerate(_COLUMNS):
        if title:
            span = w + sum(2 + c[2] for c in _COLUMNS[i + 1 : i + 1 + _run_on(i)])
            out = out.ljust(pos) + _fit(title, span)
        pos += w + 2
    return out.rstrip()


def _run_on(i: int) -> int:
    """How many columns after column ``i`` have an empty first-line title."""
    n = 0
    while i + 1 + n < len(_COLUMNS) and not _COLUMNS[i + 1 + n][0]:
        n += 1
    return n


def _summary_table(rows: Sequence[SummaryRow]) -> str:
    """The end-of-run summary: per cell a name line, then its values under two header lines,
    then notes for the markers that occur. Every line is at most :data:`SUMMARY_WIDTH` wide."""
    lines = ["cell", _header_line(), _line([c[1] for c in _COLUMNS])]
    used: set[str] = set()
    for i, row in enumerate(rows, 1):
        lines.append(_fit(f"{i}. {row.name}", SUMMARY_WIDTH))
        if row.status != "FINISHED":
            lines.append(f"{_INDENT}{row.status} (see the run's 'error' tag)")
            continue
        cells = summary_cells(row)
        lines.append(_line(cells))
        used |= {k for k, hit in (("mia", cells[2] != ""), ("weak", cells[0].endswith("!")), ("attack_only", cells[5] == "attack-only"),
                                   ("maj", "maj" in cells[5]), ("at_majority", "! (maj" in cells[5]), ("auc_fallback", cells[1].startswith("AUC")), ("violation", "VIOLATION" in cells[3]),
                                   ("suspect", "SUSPECT" in cells[3]), ("vacuous", "vacuous" in cells[3]),
                                   ("power", cells[3].endswith("×"))) if hit}
    lines += [_fit(_NOTES[k], SUMMARY_WIDTH) for k in _NOTES if k in used]
    return "\n".join(lines)


def _finished_row(name: str, m: Mapping[str, float], tags: Mapping[str, str]) -> SummaryRow:
    """The summary row of a cell that finished (here or on a worker); a warning where its test
    accuracy is at or below the majority-class baseline (the summary's ``!``)."""
    low = at_or_below_majority(m)
    if low is not None:
        log.warning("cell %s: test accuracy %.3f is at or below the majority-class baseline %.3f (always answering the "
                    "majority class): the model is no better than a constant guess; train longer (train.rounds), tune "
                    "train.lr, or check the label column", name, *low)
    return SummaryRow(name, "FINISHED", dict(m), dict(tags), m.get("cost/seconds", 0.0))
