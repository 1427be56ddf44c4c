"""The threat matrix: rows = defense settings, columns = adversary, each cell the strongest
attack against that adversary with its interval over seeds, and the ε that still holds.

An attribute-inference attack's headline is its member/non-member signal per attribute
(``attack/<attack>/<attribute>/signal``), whose "blind guess" is 0: what imputation from the
population already gives.

Which attack belongs to which adversary is read from the attack itself (its ``adversary``
attribute, else its threat model: ``outsider`` -> outsider, ``server`` -> the
honest-but-curious server, ``peer`` -> the curious peer hospital), never from a list here;
the ε from the runner's ``privacy/against/<adversary>/<unit>/epsilon`` metrics
(``bench.accounting.against_metrics``). ``python -m bench.report.threats --suite threats``
prints the matrix as Markdown and writes ``threats.png``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from bench.accounting import ADVERSARIES
from bench.report.stats import Estimate, t_interval

ADVERSARY_TITLES = {
    "outsider": "outsider (final model)",
    "server": "honest-but-curious server",
    "malicious_server": "malicious server",
    "peer": "curious peer hospital",
}
#: the headline of each kind of attack result, in order of preference, and the value of a blind guess
#: (None: the attack's own logged ``baseline_<metric>`` or ``chance`` where it has one, e.g. the prior's
#: feature accuracy, source inference's 1 / hospitals; images' SSIM has no blind-guess baseline: shown against 0)
HEADLINES = (("recovered_fraction", 0.0), ("auc", 0.5), ("accuracy", None), ("feature_accuracy", None), ("ssim", None))


def attack_adversary(name: str) -> Optional[str]:
    """The adversary an attack models (None for an unregistered name, e.g. an old run's)."""
    from attacks import ATTACKS

    try:
        cls = ATTACKS.get(name)
    except Exception:  # noqa: BLE001  (an attack of an older run, no longer registered)
        return None
    own = getattr(cls, "adversary", None)
    return own if own in ADVERSARIES else {"outsider": "outsider", "server": "server", "peer": "peer"}.get(cls.threat_model)


@dataclass(frozen=True)
class MatrixCell:
    """One (defense setting, adversary) cell.

    Attributes:
        attack: the strongest attack (highest lower interval end over seeds), or None.
        metric: its headline metric (``auc``, ``recovered_fraction``, ...).
        estimate: the metric's mean and 95 % t interval over seeds.
        chance: the metric's value for a blind guess (AUC 0.5), where one exists.
        epsilon: ε that still holds against this adversary (mean over seeds), None if none holds.
        epsilon_text: ε with δ and unit, or why there is none.
    """

    attack: Optional[str]
    metric: Optional[str]
    estimate: Optional[Estimate]
    chance: Optional[float]
    epsilon: Optional[float]
    epsilon_text: str


def _headline(metrics: Mapping[str, float], attack: str) -> Optional[tuple[str, Optional[float]]]:
    for name, chance in HEADLINES:
        if f"attack/{attack}/{name}" in metrics:
            return name, chance
    return None


def _signals(metrics: Mapping[str, float], attack: str) -> list[str]:
    """An attribute-inference attack's ``<attribute>/signal`` headlines (``bench.metrics.attribute``:
    its gain over imputation on members minus on non-members; 0 = what imputation alone gives)."""
    prefix = f"attack/{attack}/"
    return sorted(k[len(prefix):] for k in metrics if k.startswith(prefix) and k.endswith("/signal") and k.count("/") == 3)


def _epsilon(cells: Sequence[Mapping], adversary: str) -> tuple[Optional[float], str]:
    dp = [c for c in cells if c["tags"].get("dp") == "true"]
    if not dp:
        return None, "no DP"
    for unit in ("record", "client"):
        key = f"privacy/against/{adversary}/{unit}/epsilon"
        vals = [c["metrics"][key] for c in dp if key in c["metrics"]]
        if vals:
            deltas = [c["metrics"][f"privacy/against/{adversary}/{unit}/delta"] for c in dp if key in c["metrics"]]
            eps = float(sum(vals) / len(vals))
            return eps, f"{unit} ε={eps:.3g}, δ={max(deltas):.0e}"
        if any(c["tags"].get(f"privacy/against/{adversary}/{unit}") == "none" for c in dp):
            return None, f"none ({unit}-level ε does not hold)"
    return None, "not accounted"


def threat_matrix(cells: Sequence[Mapping]) -> dict[str, dict[str, MatrixCell]]:
    """Build the matrix from finished cells.

    Args:
        cells: each ``{"row": defense setting, "seed": int, "metrics": {...}, "tags": {...}}``
            (one suite cell; several cells of one row may hold different attacks).

    Returns:
        row -> adversary -> :class:`MatrixCell`, rows in first-seen order.
    """
    rows: dict[str, list[Mapping]] = {}
    for c in cells:
        rows.setdefault(c["row"], []).append(c)
    out: dict[str, dict[str, MatrixCell]] = {}
    for row, members in rows.items():
        attacks = sorted({k.split("/")[1] for c in members for k in c["metrics"] if k.startswith("attack/")})
        out[row] = {}
        for adv in ADVERSARIES:
            best: Optional[tuple] = None
            for a in attacks:
                if attack_adversary(a) != adv:
                    continue
                found = [(c, _headline(c["metrics"], a)) for c in members]
                found = [(c, h) for c, h in found if h is not None]
                heads = [found[0][1]] if found else []
                # attribute inference: each attribute's signal, whose "blind guess" is imputation (0)
                heads += [(m, 0.0) for m in sorted({m for c in members for m in _signals(c["metrics"], a)})]
                for metric, chance in heads:
                    if chance is None:  # the attack's own blind guess, where it logs one (the prior's feature
                        # accuracy, source inference's 1 / hospitals)
                        for key in (f"attack/{a}/baseline_{metric}", f"attack/{a}/chance"):
                            base = [c["metrics"][key] for c in members if key in c["metrics"]]
                            if base:
                                chance = float(sum(base) / len(base))
                                break
                    est = t_interval([c["metrics"][f"attack/{a}/{metric}"] for c in members if f"attack/{a}/{metric}" in c["metrics"]])
                    if est is None:
                        continue
                    low = est.low if est.low is not None else est.mean
                    # compare across metrics by the lower end's excess over a blind guess
                    key = low - (chance or 0.0)
                    if best is None or key > best[0]:
                        best = (key, a, metric, est, chance)
            eps, text = _epsilon(members, adv)
            if best is None:
                out[row][adv] = MatrixCell(None, None, None, None, eps, text)
            else:
                out[row][adv] = MatrixCell(best[1], best[2], best[3], best[4], eps, text)
    return out


def _fmt(e: Estimate) -> str:
    if e.low is None:
        return f"{e.mean:.3f} (1 seed)"
    return f"{e.mean:.3f} [{e.low:.3f}, {e.high:.3f}]"


def matrix_markdown(matrix: Mapping[str, Mapping[str, MatrixCell]]) -> str:
    """The matrix as a Markdown table: per cell the strongest attack, its headline with the
    95 % interval over seeds, and the ε that holds against that adversary."""
    head = "| defense | " + " | ".join(ADVERSARY_TITLES[a] for a in ADVERSARIES) + " |"
    lines = [head, "|" + " --- |" * (len(ADVERSARIES) + 1)]
    for row, cells in matrix.items():
        parts = []
        for a in ADVERSARIES:
            c = cells[a]
            attack = "no attack applies" if c.attack is None else f"`{c.attack}` {c.metric} {_fmt(c.estimate)}"
            parts.append(f"{attack}; ε: {c.epsilon_text}")
        lines.append(f"| {row or 'none'} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def verdicts(matrix: Mapping[str, Mapping[str, MatrixCell]]) -> list[str]:
    """One line per cell where an attack beats a blind guess (its interval's lower end above
    chance), or where no ε holds although the row is a DP setting: what the report states."""
    out = []
    for row, cells in matrix.items():
        for a in ADVERSARIES:
            c = cells[a]
            if c.estimate is not None and c.chance is not None and c.estimate.low is not None and c.estimate.low > c.chance:
                if c.metric.endswith("/signal"):
                    out.append(f"{row or 'none'} / {ADVERSARY_TITLES[a]}: `{c.attack}` leaks {c.metric.split('/')[0]} beyond "
                               f"imputation (signal {_fmt(c.estimate)})")
                    continue
                out.append(f"{row or 'none'} / {ADVERSARY_TITLES[a]}: `{c.attack}` beats a blind guess ({c.metric} {_fmt(c.estimate)})")
            if c.epsilon_text.startswith("none"):
                out.append(f"{row or 'none'} / {ADVERSARY_TITLES[a]}: the row's ε does not hold against this adversary")
    return out


def matrix_figure(matrix: Mapping[str, Mapping[str, MatrixCell]], path: Path) -> Path:
    """A heat map: colour = the strongest attack's lower interval end above a blind guess
    (0 = no better than chance), text = attack, headline and ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(matrix)
    grid = np.full((len(rows), len(ADVERSARIES)), np.nan)
    for i, r in enumerate(rows):
        for j, a in enumerate(ADVERSARIES):
            c = matrix[r][a]
            if c.estimate is not None:
                low = c.estimate.low if c.estimate.low is not None else c.estimate.mean
                span = 1.0 - (c.chance or 0.0)
                grid[i, j] = max(0.0, (low - (c.chance or 0.0)) / span) if span > 0 else 0.0
    fig, ax = plt.subplots(figsize=(3.2 * len(ADVERSARIES), 0.9 * len(rows) + 1.2))
    ax.imshow(np.nan_to_num(grid, nan=-0.05), cmap="Reds", vmin=-0.05, vmax=1.0, aspect="auto")
    for i, r in enumerate(rows):
        for j, a in enumerate(ADVERSARIES):
            c = matrix[r][a]
            what = "no attack applies" if c.attack is None else f"{c.attack}\n{c.metric} {_fmt(c.estimate)}"
            dark = not np.isnan(grid[i, j]) and grid[i, j] > 0.55  # white text where the red is deep
            ax.text(j, i, f"{what}\nε: {c.epsilon_text}", ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    ax.set_xticks(range(len(ADVERSARIES)), [ADVERSARY_TITLES[a] for a in ADVERSARIES], fontsize=8)
    ax.set_yticks(range(len(rows)), [r or "none" for r in rows], fontsize=7)
    ax.set_title("Threat matrix: strongest attack per adversary (colour: lower 95% end above a blind guess) and the ε that holds",
                 fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def cells_from_store(suite: str, uri: Optional[str] = None) -> list[dict]:
    """The suite's finished cells from MLflow, as :func:`threat_matrix` takes them (row = the
    ``defenses`` tag)."""
    from mlflow.tracking import MlflowClient

    from bench.report.load import load_suite_runs

    client = MlflowClient(tracking_uri=uri)
    runs = load_suite_runs(client, suite, uri or "")
    return [{"row": c.tags.get("defenses", ""), "seed": c.params.get("seed"), "metrics": dict(c.metrics), "tags": dict(c.tags)}
            for c in runs.cells]


def main(argv: Optional[Sequence[str]] = None) -> None:  # pragma: no cover - thin CLI
    p = argparse.ArgumentParser(description="threat matrix of a suite")
    p.add_argument("--suite", default="threats")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default="results/threats")
    a = p.parse_args(argv)
    m = threat_matrix(cells_from_store(a.suite, a.tracking_uri))
    matrix_figure(m, Path(a.out) / "threats.png")
    text = matrix_markdown(m) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(m))
    (Path(a.out) / "threats.md").write_text(text + "\n", encoding="utf-8")
    import sys

    sys.stdout.write(text + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
