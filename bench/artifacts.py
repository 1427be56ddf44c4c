"""Artifacts of attack outputs (score arrays, figures), rendered next to scoring.

``render(output, truth, info)`` dispatches on the output type and returns
``{artifact path: bytes}``; the runner logs whatever it returns. Like scoring, it may see
ground truth (e.g. to mark members in a score file), because it runs after the attack.
"""

from __future__ import annotations

import io
from functools import singledispatch

import numpy as np

from bench.metrics import align
from bench.types import AuditScores, DatasetInfo, GroundTruth, MembershipScores, Reconstructions


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


@singledispatch
def render(output, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    """No artifacts for output types without a renderer."""
    return {}


def loglog_roc_axes(ax, floor: float) -> None:
    """Log–log ROC axes down to half the smallest non-zero FPR (``floor`` = 1/#non-members),
    with the chance diagonal: the low-FPR corner where an attack matters stays visible."""
    ax.plot([floor / 2, 1], [floor / 2, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(floor / 2, 1)
    ax.set_xlabel("false-positive rate (log)")
    ax.set_ylabel("true-positive rate (log)")


def roc_figure(scores: np.ndarray, is_member: np.ndarray, title: str):
    """Log–log ROC curve (Carlini et al. 2022): what matters is the low-FPR corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.metrics.membership import membership_metrics, roc_points

    fpr, tpr = roc_points(scores, is_member)
    m = membership_metrics(scores, is_member)
    floor = 1.0 / max(int((~np.asarray(is_member, bool)).sum()), 1)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    tpr1 = m.get("tpr_at_fpr_0.01")  # logged only with >= 100 non-members
    low_fpr = f"TPR@1% {tpr1:.3f}" if tpr1 is not None else "TPR@1%: too few non-members"
    ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), lw=1.5, label=f"AUC {m['auc']:.3f}, {low_fpr}")
    loglog_roc_axes(ax, floor)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return fig


@render.register
def _(output: MembershipScores, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    import matplotlib.pyplot as plt

    idx = align(output.ids, truth)
    is_member = truth.candidate_is_member[idx]
    fig = roc_figure(output.scores, is_member, f"{name} on {info.name}")
    try:
        png = png_bytes(fig)
    finally:
        plt.close(fig)
    return {
        f"attacks/{name}/scores.npz": npz_bytes(ids=output.ids, scores=output.scores, is_member=is_member),
        f"attacks/{name}/roc_loglog.png": png,
    }


@render.register
def _(output: AuditScores, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    """The canaries' scores per observation with their true inclusion (npz), and a histogram of
    included vs. excluded canaries' scores per observation (what the bound and estimate read)."""
    import matplotlib.pyplot as plt

    pos = {int(i): k for k, i in enumerate(truth.canary_ids)}
    included = truth.canary_included[np.asarray([pos[int(i)] for i in output.ids], dtype=np.int64)]
    arrays = {f"scores_{obs}": np.asarray(s) for obs, s in output.observations.items()}
    fig, axes = plt.subplots(1, len(arrays), figsize=(4.2 * len(arrays), 3.2), squeeze=False)
    for ax, (obs, s) in zip(axes[0], output.observations.items()):
        s = np.asarray(s, np.float64)
        bins = np.histogram_bin_edges(s, bins=40)
        ax.hist(s[~included], bins=bins, alpha=0.6, label="not included")
        ax.hist(s[included], bins=bins, alpha=0.6, label="included")
        ax.set_title(f"{name}: {obs}", fontsize=9)
        ax.set_xlabel("canary score (higher = looks included)")
    axes[0][0].set_ylabel("canaries")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    try:
        png = png_bytes(fig)
    finally:
        plt.close(fig)
    return {
        f"attacks/{name}/canary_scores.npz": npz_bytes(ids=output.ids, included=included, **arrays),
        f"attacks/{name}/canary_scores.png": png,
    }


# --------------------------------------------------------------------------- inversion

# Public benchmark data: reconstructions of its records may be rendered. User data
# (the ``csv`` dataset) holds real patients: its reconstructions are rendered only on opt-in.
PUBLIC_BENCHMARK_DATA = frozenset({"breast_cancer", "digits", "heart_disease"})

# --------------------------------------------------------------------------- record-level policy

# Datasets whose record-level artifacts are written by default: bundled benchmark tables and
# images, no one's patients in this study. Real patients' rows (a user's CSV, UCI heart disease)
# get them only with ``record_artifacts: true`` (README, "Privacy of the results").
RECORD_ARTIFACTS_BY_DEFAULT = frozenset({"breast_cancer", "digits"})
# per-record files: a record id beside its score and membership, a member list, or a record
RECORD_LEVEL_SUFFIXES = ("/scores.npz", "/canary_scores.npz", ".csv")
RECORD_LEVEL_PREFIXES = ("reference/signals_",)


def record_artifacts_allowed(dataset: str, opt_in: "bool | None") -> bool:
    """Whether a cell writes record-level artifacts: the ``record_artifacts`` key when set,
    else only for :data:`RECORD_ARTIFACTS_BY_DEFAULT`."""
    return dataset in RECORD_ARTIFACTS_BY_DEFAULT if opt_in is None else bool(opt_in)


def is_record_level(path: str) -> bool:
    """An artifact that holds per-record data (ids with scores or membership, member lists,
    reconstructed or true records), as opposed to figures and aggregates."""
    return path.endswith(RECORD_LEVEL_SUFFIXES) or path.startswith(RECORD_LEVEL_PREFIXES)


def apply_record_policy(files: dict[str, bytes], allowed: bool, output: object = None) -> dict[str, bytes]:
    """``files`` without its record-level artifacts unless ``allowed``; an inversion attack's
    own ``write_records: true`` still writes its reconstruction CSVs."""
    if allowed:
        return files
    keep_csv = bool(getattr(output, "write_records", False))
    return {p: b for p, b in files.items() if not is_record_level(p) or (keep_csv and p.endswith(".csv"))}


def image_grid_png(true, rec, title: str) -> bytes:
    """Truth (top row) above the matched reconstruction (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(true)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n + 0.4, 2.5), squeeze=False)
    for j in range(n):
        for i, img in enumerate((true[j], rec[j])):
            ax = axes[i][j]
            ax.imshow(np.clip(img.transpose(1, 2, 0).squeeze(-1) if img.shape[0] == 1 else img.transpose(1, 2, 0), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("truth", fontsize=7)
    axes[1][0].set_ylabel("reconstruction", fontsize=7)
    fig.suptitle(title, fontsize=8)
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)


def records_csv(true, rec, true_y, rec_y, ids, info: DatasetInfo) -> bytes:
    """True and reconstructed records side by side, decoded to original units."""
    import csv

    def decode(row):
        vals = []
        for f in info.features:
            s, e = f.columns
            if f.kind == "categorical":
                vals.append(f.categories[int(np.argmax(row[s:e]))])
            else:
                vals.append(f"{float(row[s]) * f.std + f.mean:.4g}")
        return vals

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["record_id", "row", *[f.name for f in info.features], "label"])
    for k in range(len(true)):
        w.writerow([int(ids[k]), "true", *decode(true[k]), int(true_y[k])])
        w.writerow([int(ids[k]), "reconstructed", *decode(rec[k]), "" if rec_y is None else int(rec_y[k])])
    return buf.getvalue().encode()


@render.register
def _(output: Reconstructions, truth: GroundTruth, info: DatasetInfo, name: str) -> dict[str, bytes]:
    import json

    from bench.metrics.reconstruction import decode_table, feature_hits, hungarian, pairwise_mse, true_records

    files = {f"attacks/{name}/disclosure.json": json.dumps(dict(output.disclosure), indent=1, sort_keys=True).encode()}
    may_write = info.name in PUBLIC_BENCHMARK_DATA or output.write_records
    for item in output.items:
        true = true_records(item, truth)
        rec = item.x.detach().numpy()
        tx = true.x.numpy()
        stem = f"attacks/{name}/round{item.round}_{item.target}"
        if info.modality == "image":
            rows, cols = hungarian(pairwise_mse(np.clip(rec, 0, 1), tx))
            files[f"{stem}.png"] = image_grid_png(tx[cols], np.clip(rec[rows], 0, 1), f"{name} · round {item.round} · {item.target}")
        elif may_write:
            hits = feature_hits(decode_table(rec, info), decode_table(tx, info), info)
            rows, cols = hungarian((~hits).sum(axis=2))
            labels = None if item.labels is None else item.labels.numpy()[rows]
            files[f"{stem}.csv"] = records_csv(tx[cols], rec[rows], true.y.numpy()[cols], labels, true.ids[cols], info)
    return files
