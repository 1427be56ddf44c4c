"""Scoring of one-run audits: certified bound, estimate, ceiling and verdict, per audit.

Only here do an audit's canary scores meet which canaries were really included
(``GroundTruth.canary_included``). Every number is stated at the audit's δ and compared with
the accountant's ε for the audited party at that same δ (DESIGN.md: "audits are attacks that
can fail"). Metric names (``audit/<name>/...``; per observation ``audit/<name>/<obs>/...``):

* ``epsilon_lower_bound`` — certified at confidence 1 − p (f-DP one-run analysis with the
  (ε, δ) curve; Bonferroni over guess rules), ``epsilon_lower_bound_steinke`` beside it;
* ``epsilon_estimate`` (+ ``_low``/``_high``) — Gaussian fit of the scores: an estimate,
  never a bound;
* ``max_certifiable_epsilon`` — what this many canaries and guesses could ever certify;
* ``ceiling_epsilon_lower_bound`` / ``ceiling_epsilon_estimate`` — the same analysis on an
  idealized simulation of the mechanism the accountant was told about (white-box audits);
* ``accountant_epsilon``, ``bound_to_accountant``, ``estimate_to_accountant``,
  ``bound_to_ceiling``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Mapping, Optional, Sequence

import numpy as np

from bench.accounting import account
from bench.metrics import audit as stats
from bench.types import AuditScores, DPEvent, GroundTruth

log = logging.getLogger(__name__)

AUDIT_DELTA = 1e-5  # the audit is stated at min(accountant δ, this): a bound at δ ~ 1/n means nothing
HEADLINE = ("epsilon_lower_bound", "epsilon_estimate", "max_certifiable_epsilon", "ceiling_epsilon_lower_bound",
            "bound_to_accountant", "estimate_to_accountant", "claim_rejected", "claim_rejectable")


def audit_delta(privacy_delta: Optional[float]) -> float:
    """The δ of every audit in a cell: the accountant's δ, capped at 1e-5."""
    return AUDIT_DELTA if privacy_delta is None or math.isnan(privacy_delta) else min(privacy_delta, AUDIT_DELTA)


def _included(output: AuditScores, truth: GroundTruth) -> np.ndarray:
    if truth.canary_ids is None or truth.canary_included is None:
        raise ValueError("audit: the ground truth holds no canaries (did the audit's prepare step run?)")
    pos = {int(i): k for k, i in enumerate(truth.canary_ids)}
    return truth.canary_included[np.asarray([pos[int(i)] for i in output.ids], dtype=np.int64)]


def party_events(output: AuditScores, events: Sequence[DPEvent]) -> tuple[DPEvent, ...]:
    """The DP events of the party an audit tests (all of them for a black-box audit)."""
    if output.party is None:
        return tuple(events)
    return tuple(e for e in events if e.unit == output.unit and e.party == output.party)


def idealized_mechanism(output: AuditScores, events: Sequence[DPEvent]):
    """``simulate(rng) -> (scores, included)`` of the mechanism the accountant was told about,
    seen the way this white-box audit sees it; ``None`` when there is no such model
    (black-box audits, no DP, several composed mechanisms)."""
    evs = party_events(output, events)
    if output.party is None or len(evs) != 1:
        return None
    e, m = evs[0], len(output.ids)
    if e.unit == "record":
        return functools.partial(stats.simulate_dpsgd_canaries, m, e.steps, e.sample_rate, e.noise_multiplier)
    if e.sample_rate != 1.0:
        return None
    return functools.partial(stats.simulate_fedavg_canaries, m, e.steps, e.noise_multiplier)


def accountant_epsilon(output: AuditScores, events: Sequence[DPEvent], accountant: str, delta: float) -> float:
    """The accountant's ε at ``delta`` for the audited party (the weakest party if unnamed),
    under add/remove, the relation the audit instantiates."""
    # Canaries (gradient canaries, canary clients) are each present or absent: add/remove.
    # client_dp's headline ε is replace-one (σ/2); comparing an add/remove bound with it would
    # make every audit look loose by ~3×, so the audit is compared with the add/remove ε.
    evs = [dataclasses.replace(e, neighbouring="add_remove") for e in party_events(output, events)]
    report = account(evs, accountant, delta)
    if not report.is_dp:
        return math.nan
    return report.epsilon(output.unit if output.party is not None else None)


PROFILE_DELTAS = tuple(float(d) for d in np.logspace(-12, -1, 23))  # δ grid of the claimed privacy profile


def claimed_profile(output: AuditScores, events: Sequence[DPEvent], accountant: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The accountant's claim for the audited party as (ε_i, δ_i) pairs over a δ grid
    (``None`` without DP). Each pair is a guarantee the accountant states; together they
    claim f-DP for f = max_i f_{ε_i, δ_i} (Dong, Roth, Su 2022), a curve, not one point."""
    evs = party_events(output, events)
    eps = [accountant_epsilon(output, evs, accountant, d) for d in PROFILE_DELTAS]
    if not all(math.isfinite(e) for e in eps):
        return None
    return np.asarray(eps), np.asarray(PROFILE_DELTAS)


def profile_rejected(profile: tuple[np.ndarray, np.ndarray], m: int, r: int, v: int, level: float) -> bool:
    """Whether v right guesses of r reject the accountant's whole claimed profile at ``level``
    (the f-DP one-run test of Mahloujifar et al. with the claimed curve). Stronger than
    comparing one bound with one ε: rejecting the ε at the audit's δ rejects the profile, not
    conversely."""
    eps, deltas = profile

    def psi(y):
        return np.max([stats.dp_inverse_blow_up(y, e, d) for e, d in zip(eps, deltas)], axis=0)

    return bool(stats.fdp_rejects(psi, m, r, v, level))


def claim_test(scores: np.ndarray, included: np.ndarray, profile, p: float, guess_counts) -> dict[str, float]:
    """``claim_rejected`` (the data reject the accountant's profile at level p, Bonferroni over
    the guess rules) and ``claim_rejectable`` (all guesses right would: the audit can fail)."""
    m = len(scores)
    rules = tuple(guess_counts) if guess_counts is not None else stats.default_guess_counts(m)
    level = p / len(rules)
    rejected = rejectable = False
    for k_pos, k_neg in rules:
        r, v = stats.count_correct(stats.guesses(scores, k_pos, k_neg), included)
        rejected = rejected or profile_rejected(profile, m, r, v, level)
        rejectable = rejectable or profile_rejected(profile, m, r, r, level)
    return {"claim_rejected": float(rejected), "claim_rejectable": float(rejectable)}


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def audit_metrics(
    output: AuditScores,
    truth: GroundTruth,
    delta: float,
    events: Sequence[DPEvent],
    accountant: str,
    rng: np.random.Generator,
    ceiling_reps: int = 5,
) -> dict[str, float]:
    """Every number of one audit, keyed relative to ``audit/<name>/``."""
    included = _included(output, truth)
    eps = accountant_epsilon(output, events, accountant, delta)
    mechanism = idealized_mechanism(output, events)
    out: dict[str, float] = {
        "delta": float(delta), "canaries": float(len(included)), "accountant_epsilon": eps, "p_value": float(output.p_value),
    }
    profile = claimed_profile(output, events, accountant)
    ceil = None
    if mechanism is not None:
        ceil = stats.ceiling(mechanism, delta, rng, reps=ceiling_reps, p=output.p_value, guess_counts=output.guess_counts)
    primary = next(iter(output.observations))
    for obs, scores in output.observations.items():
        s = stats.audit_summary(scores, included, delta, output.p_value, output.guess_counts, rng=rng)
        if ceil is not None:
            s["ceiling_epsilon_lower_bound"] = ceil["epsilon_lower_bound"]
            s["ceiling_epsilon_lower_bound_steinke"] = ceil["epsilon_lower_bound_steinke"]
            s["ceiling_epsilon_estimate"] = ceil["epsilon_estimate"]
            s["bound_to_ceiling"] = _ratio(s["epsilon_lower_bound"], ceil["epsilon_lower_bound"])
        if profile is not None:
            s.update(claim_test(scores, included, profile, output.p_value, output.guess_counts))
        s["bound_to_accountant"] = _ratio(s["epsilon_lower_bound"], eps)
        s["estimate_to_accountant"] = _ratio(s["epsilon_estimate"], eps)
        s.pop("delta", None)
        s.pop("canaries", None)
        out.update({f"{obs}/{k}": v for k, v in s.items()})
        if obs == primary:
            out.update({k: s[k] for k in HEADLINE if k in s})
    return out


def audit_verdict(per_audit: Mapping[str, Mapping[str, float]], observations: Mapping[str, Sequence[str]]) -> tuple[dict[str, float], dict[str, str]]:
    """The cell's verdict over its audits.

    ``audit_violation=true`` when any audit, in any observation, certifies an ε above the
    accountant's ε for the audited party at the audit's δ, or rejects the accountant's whole
    claimed privacy profile (``claim_rejected``): a bug in the accountant, the mechanism or
    the audit. ``audit_can_fail=false`` when no audit could certify as much as
    the accountant's ε (its ``max_certifiable_epsilon`` is below it): then "no violation"
    says nothing. The cell-level ``audit/epsilon_lower_bound`` and ``audit/accountant_epsilon``
    are those of the audit whose bound comes closest to (or furthest past) its accountant ε.
    """
    if not per_audit:
        return {}, {}
    tags: dict[str, str] = {}
    worst, worst_ratio = None, -math.inf
    violated, can_fail, comparable = False, False, False
    for name, m in per_audit.items():
        eps = m.get("accountant_epsilon", math.nan)
        bounds = {o: m[f"{o}/epsilon_lower_bound"] for o in observations[name]}
        ratio = _ratio(m["epsilon_lower_bound"], eps) if math.isfinite(eps) else -math.inf
        if worst is None or ratio > worst_ratio:
            worst, worst_ratio = name, ratio
        if not math.isfinite(eps):
            continue
        comparable = True
        can_fail = can_fail or any(
            m[f"{o}/max_certifiable_epsilon"] > eps or m.get(f"{o}/claim_rejectable", 0.0) > 0 for o in observations[name]
        )
        for o, b in bounds.items():
            if b > eps + 1e-9:
                violated = True
                log.error(
                    "AUDIT VIOLATION: %s (%s) certifies epsilon >= %.3f at delta=%.2g, above the accountant's %.3f; "
                    "the accountant, the DP mechanism or the audit has a bug", name, o, b, m["delta"], eps,
                )
            elif m.get(f"{o}/claim_rejected", 0.0) > 0:
                violated = True
                log.error(
                    "AUDIT VIOLATION: %s (%s) rejects the accountant's privacy profile (epsilon %.3f at delta=%.2g and "
                    "the other (epsilon, delta) pairs it claims) at confidence %.0f%%; the accountant, the DP mechanism "
                    "or the audit has a bug", name, o, eps, m["delta"], 100 * (1 - m.get("p_value", 0.05)),
                )
    w = per_audit[worst]
    out = {"audit/epsilon_lower_bound": w["epsilon_lower_bound"], "audit/delta": w["delta"],
           "audit/max_certifiable_epsilon": w["max_certifiable_epsilon"], "audit/epsilon_estimate": w["epsilon_estimate"]}
    if comparable:
        out["audit/accountant_epsilon"] = w["accountant_epsilon"]
        tags["audit_violation"] = str(violated).lower()
        tags["audit_can_fail"] = str(can_fail).lower()
        if not can_fail:
            log.warning(
                "audit: no audit in this cell could certify the accountant's epsilon (max certifiable %.3f < %.3f); "
                "'no violation' is vacuous here: use more canaries or a white-box audit", w["max_certifiable_epsilon"],
                w["accountant_epsilon"],
            )
    return out, tags
