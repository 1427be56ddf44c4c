"""Scoring of malicious-server attacks beyond the usual reconstruction and membership metrics:
how many of the targeted hospitals' records came back *verbatim*, and how many attacked rounds
the hospitals refused (client-side checks).

A true record counts as recovered verbatim when the Hungarian matching of
``bench.metrics.reconstruction`` pairs it with a reconstruction that gets every feature right
under TabLeak's rule (categorical: the category; continuous: within 0.319 std) — images: a
pixel MSE below 1e-4 (PSNR ≥ 40 dB). Fractions carry 95 % Wilson intervals over records.

A membership follow-up (``Reconstructions.membership``, e.g. ``model_inconsistency`` scoring
the candidates against the update it isolated) is scored by ``bench.metrics.membership`` on
the candidates of the hospital it asks about: that hospital's members against the non-members
held out from it (``auc``, ``tpr_at_fpr_<level>`` with their intervals, ...).
"""

from __future__ import annotations

import numpy as np

from bench.metrics import align, membership_metrics, wilson_interval
from bench.metrics.reconstruction import decode_table, matched_table_hits, pairwise_mse, hungarian
from bench.types import GroundTruth, MembershipScores, Reconstructions, safe_label

IMAGE_VERBATIM_MSE = 1e-4


def verbatim_flags(item, truth: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Per true record of the item's hospitals (concatenated in ``item.sites`` order): whether
    it was recovered verbatim, and the index of its hospital in ``item.sites``."""
    info = truth.info
    sites = item.sites or (item.target,)
    parts = [truth.site_train[s] for s in sites]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    flags = np.zeros(len(owner), dtype=bool)
    if len(item.x) == 0:
        return flags, owner
    x_true = np.concatenate([p.x.numpy() for p in parts])
    rec = item.x.detach().numpy()
    if info.modality == "image":
        cost = pairwise_mse(np.clip(rec, 0, 1), x_true)
        rows, cols = hungarian(cost)
        flags[cols[cost[rows, cols] < IMAGE_VERBATIM_MSE]] = True
        return flags, owner
    hits, _, cols = matched_table_hits(decode_table(rec.reshape(len(rec), -1), info), decode_table(x_true.reshape(len(x_true), -1), info), info)
    flags[cols[hits.all(axis=1)]] = True
    return flags, owner


def site_membership_metrics(scores: MembershipScores, site: str, truth: GroundTruth) -> dict[str, float]:
    """Membership metrics of ``scores`` for the question "was this record in ``site``'s training
    set": the candidates held by ``site`` (its members and the non-members held out from it);
    the other hospitals' candidates are left out (their members are not ``site``'s)."""
    idx = align(scores.ids, truth)
    mine = truth.candidate_site[idx] == truth.site_names.index(site)
    return membership_metrics(np.asarray(scores.scores)[mine], truth.candidate_is_member[idx][mine])


def malicious_metrics(output, truth: GroundTruth) -> dict[str, float]:
    """``recovered_fraction`` (with ``_ci_low``/``_ci_high``), ``records_recovered``,
    ``site/<name>/recovered_fraction``, ``recovered_fraction_worst_site`` (the least exposed
    hospital: a conservative headline), ``records_claimed``, ``rounds_aborted``."""
    out: dict[str, float] = {}
    if isinstance(output, MembershipScores):
        return out
    if not isinstance(output, Reconstructions):
        return out
    disc = output.disclosure or {}
    out["rounds_aborted"] = float(disc.get("rounds_aborted", 0))
    if output.membership is not None:
        out.update(site_membership_metrics(output.membership, output.membership_site, truth))
    if "records_claimed" in disc:
        out["records_claimed"] = float(disc["records_claimed"])
    got: dict[str, int] = {}
    total: dict[str, int] = {}
    for item in output.items:
        flags, owner = verbatim_flags(item, truth)
        for i, s in enumerate(item.sites or (item.target,)):
            got[s] = got.get(s, 0) + int(flags[owner == i].sum())
            total[s] = total.get(s, 0) + int((owner == i).sum())
    if not total:
        return out
    k, n = sum(got.values()), sum(total.values())
    out["records_recovered"] = float(k)
    out["recovered_fraction"] = k / n
    out["recovered_fraction_ci_low"], out["recovered_fraction_ci_high"] = wilson_interval(k, n)
    for s in total:
        out[f"site/{safe_label(s)}/recovered_fraction"] = got[s] / total[s]
    out["recovered_fraction_worst_site"] = min(got[s] / total[s] for s in total)
    return out
