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
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from bench.accounting import account, epsilons_of
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


def weakened_mechanism(output: AuditScores, events: Sequence[DPEvent], observation: str):
    """``make(sigma_factor, rate_factor) -> simulate(rng) -> (scores, included)``: the
    mechanism the accountant was told about with σ divided by ``sigma_factor`` and q
    multiplied by ``rate_factor`` (capped at 1), seen the way this white-box audit's
    ``observation`` sees it (every step scored one by one, or their sum); ``None`` when there
    is no such model (black-box audits, no DP, several composed mechanisms). ``make`` returns
    ``None`` for a weakening the model has no form for (q of full-participation client_dp)."""
    evs = party_events(output, events)
    if output.party is None or len(evs) != 1:
        return None
    e, m = evs[0], len(output.ids)
    if e.unit == "record":
        sim = stats.simulate_dpsgd_step_canaries if observation in output.step_observations else stats.simulate_dpsgd_canaries

        def make(sigma_factor: float = 1.0, rate_factor: float = 1.0):
            return functools.partial(sim, m, e.steps, min(1.0, e.sample_rate * rate_factor), e.noise_multiplier / sigma_factor)

        return make
    if e.sample_rate != 1.0:
        return None

    def make_client(sigma_factor: float = 1.0, rate_factor: float = 1.0):
        if rate_factor != 1.0:
            return None
        return functools.partial(stats.simulate_fedavg_canaries, m, e.steps, e.noise_multiplier / sigma_factor)

    return make_client


def idealized_mechanism(output: AuditScores, events: Sequence[DPEvent], observation: Optional[str] = None):
    """``simulate(rng) -> (scores, included)`` of the mechanism the accountant was told about
    (:func:`weakened_mechanism` with no weakening); ``None`` when there is no such model."""
    make = weakened_mechanism(output, events, observation or next(iter(output.observations)))
    return None if make is None else make(1.0, 1.0)


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
    if output.party is None:  # the weakest of several parties, at each δ: one Rényi curve per party
        groups: dict[tuple, list] = {}
        for e in evs:  # (add/remove, as accountant_epsilon)
            groups.setdefault((e.unit, e.party), []).append(dataclasses.replace(e, neighbouring="add_remove"))
        if not groups:
            return None
        curves = [epsilons_of(g, PROFILE_DELTAS, accountant) for _, g in sorted(groups.items())]
        eps = [max(c[i] for c in curves) for i in range(len(PROFILE_DELTAS))]
    elif not evs:
        return None
    else:  # one party: one Rényi curve, every δ (add/remove, as accountant_epsilon)
        eps = epsilons_of([dataclasses.replace(e, neighbouring="add_remove") for e in evs], PROFILE_DELTAS, accountant)
    if not all(math.isfinite(e) for e in eps):
        return None
    return np.asarray(eps), np.asarray(PROFILE_DELTAS)


def profile_rejected(profile: tuple[np.ndarray, np.ndarray], m: int, r: int, v: int, level: float) -> bool:
    """Whether v right guesses of r reject the accountant's whole claimed profile at ``level``
    (the f-DP one-run test of Mahloujifar et al. with the claimed curve). Stronger than
    comparing one bound with one ε: rejecting the ε at the audit's δ rejects the profile, not
    conversely."""
    eps, deltas = profile

    def psi(y):  # the pointwise maximum of every claimed pair's ψ, all pairs in one broadcast
        y = np.asarray(y, dtype=float)
        shape = (-1,) + (1,) * y.ndim
        return np.max(stats.dp_inverse_blow_up(y[None, ...], eps.reshape(shape), deltas.reshape(shape)), axis=0)

    return bool(stats.fdp_rejects(psi, m, r, v, level))


def certified_flag(profile, eps: float, delta: float, p: float, guess_counts) -> Callable[[np.ndarray, np.ndarray], bool]:
    """``flags(scores, included)``: whether the audit's certified verdict (``violation``) would
    fire on these canary scores, with the audit's own guess rules and level. The claimed
    profile holds the pair (ε, δ) itself, and rejecting that pair rejects the profile, so
    "certified bound above ε, or profile rejected" is "profile rejected" (one test per rule,
    no bound search); without a profile, the pair alone."""
    claim = profile if profile is not None else (np.asarray([eps]), np.asarray([delta]))

    def flags(scores: np.ndarray, included: np.ndarray) -> bool:
        m = len(scores)
        rules = tuple(guess_counts) if guess_counts is not None else stats.default_guess_counts(m)
        level = p / len(rules)
        for k_pos, k_neg in rules:
            r, v = stats.count_correct(stats.guesses(scores, k_pos, k_neg), included)
            if profile_rejected(claim, m, r, v, level):
                return True
        return False

    return flags


def power_metrics(output: AuditScores, events: Sequence[DPEvent], observation: str, profile, eps: float, delta: float,
                  accountant: str, rng: np.random.Generator, reps: int = 10) -> dict[str, float]:
    """The audit's detection power in ``observation`` (issue: "power, not a boolean"):

    * ``detectable_factor`` — the smallest k such that the claimed mechanism with σ/k is
      flagged as a certified violation in ≥ 80 % of idealized runs (same canaries, guesses,
      level, δ); ``inf``: vacuous, no weakening up to 16× would be caught;
    * ``detectable_factor_rate`` — the same for q·k (record-level DP-SGD only);
    * ``detectable_epsilon_ratio`` — ε of the mechanism weakened by ``detectable_factor`` over
      the claimed ε (the accountant at the audit's δ): "would catch ε understated by ≥ this".

    NaN where the mechanism has no idealized model (black-box audits, composed mechanisms);
    a black-box audit whose maximum certifiable ε is below the claim is vacuous (``inf``).
    """
    make = weakened_mechanism(output, events, observation)
    if make is None or not math.isfinite(eps):
        return {}
    flags = certified_flag(profile, eps, delta, output.p_value, output.guess_counts)
    out = {"detectable_factor": stats.detectable_factor(lambda k, g: make(k, 1.0)(g), flags, rng, reps)}
    if make(1.0, 2.0) is not None:
        out["detectable_factor_rate"] = stats.detectable_factor(lambda k, g: make(1.0, k)(g), flags, rng, reps)
    k = out["detectable_factor"]
    if math.isfinite(k):
        evs = [dataclasses.replace(e, noise_multiplier=e.noise_multiplier / k) for e in party_events(output, events)]
        out["detectable_epsilon_ratio"] = _ratio(accountant_epsilon(output, evs, accountant, delta), eps)
    else:
        out["detectable_epsilon_ratio"] = math.inf
    return out


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
    out: dict[str, float] = {
        "delta": float(delta), "canaries": float(len(included)), "accountant_epsilon": eps, "p_value": float(output.p_value),
    }
    profile = claimed_profile(output, events, accountant)
    primary = next(iter(output.observations))
    ceilings: dict[bool, Optional[dict]] = {}  # one ceiling per kind of statistic (summed or step by step)
    powers: dict[bool, dict[str, float]] = {}  # likewise the detection power
    for obs, scores in output.observations.items():
        stepwise = obs in output.step_observations
        if stepwise not in ceilings:
            mechanism = idealized_mechanism(output, events, obs)
            ceilings[stepwise] = None if mechanism is None else stats.ceiling(
                mechanism, delta, rng, reps=ceiling_reps, p=output.p_value, guess_counts=output.guess_counts
            )
        ceil = ceilings[stepwise]
        s = stats.audit_summary(scores, included, delta, output.p_value, output.guess_counts, rng=rng)
        if stepwise:  # a likelihood-ratio sum is not Gaussian-shaped: its Gaussian fit estimates nothing
            for k in [k for k in s if k.startswith("epsilon_estimate")]:
                s[k] = math.nan
        if obs == primary or stepwise:  # the idealized model sees every update (or step): not the final model alone
            if stepwise not in powers:
                powers[stepwise] = power_metrics(output, events, obs, profile, eps, delta, accountant, rng)
            s.update(powers[stepwise])
        if ceil is not None:
            s["ceiling_epsilon_lower_bound"] = ceil["epsilon_lower_bound"]
            s["ceiling_epsilon_lower_bound_steinke"] = ceil["epsilon_lower_bound_steinke"]
            s["ceiling_epsilon_estimate"] = ceil["epsilon_estimate"]
            s["bound_to_ceiling"] = _ratio(s["epsilon_lower_bound"], ceil["epsilon_lower_bound"])
        if profile is not None:
            s.update(claim_test(scores, included, profile, output.p_value, output.guess_counts))
        if math.isnan(s.get("detectable_factor", math.nan)) and cannot_contradict(s, eps):
            s["detectable_factor"] = math.inf
        s["bound_to_accountant"] = _ratio(s["epsilon_lower_bound"], eps)
        s["estimate_to_accountant"] = _ratio(s["epsilon_estimate"], eps)
        # the uncertified tier: the estimate's lower 95 % end above the claim
        s["suspect"] = float(s.get("epsilon_estimate_low", math.nan) > eps) if math.isfinite(eps) else math.nan
        s.pop("delta", None)
        s.pop("canaries", None)
        out.update({f"{obs}/{k}": v for k, v in s.items()})
        if obs == primary:
            out.update({k: s[k] for k in HEADLINE if k in s})
    # the audit flags when any observation does: its power is the best observation's
    powers = [(out[f"{o}/detectable_factor"], out.get(f"{o}/detectable_epsilon_ratio", math.nan))
              for o in output.observations if f"{o}/detectable_factor" in out]
    if powers:
        out["detectable_factor"], out["detectable_epsilon_ratio"] = min(powers, key=lambda kv: kv[0])
    if math.isfinite(eps):
        out["suspect"] = float(any(out.get(f"{o}/suspect", 0.0) > 0 for o in output.observations))
    return out


def no_power(factor: float) -> bool:
    """Whether a ``detectable_factor`` read back means "vacuous": infinite, or MLflow's stand-in
    for it (its SQL stores store ±inf as ±max float)."""
    return math.isinf(factor) or factor >= 1e300


def cannot_contradict(summary: Mapping[str, float], eps: float) -> bool:
    """Whether even every guess right could not contradict the claim (an audit with no idealized
    model then has no power: vacuous): its maximum certifiable ε is at most ``eps`` and every
    guess right would not reject the claimed profile either."""
    return summary["max_certifiable_epsilon"] <= eps and not summary.get("claim_rejectable", 0.0) > 0


def power_words(factor: float, epsilon_ratio: float) -> str:
    """An audit's power in words, for tags, the CLI and the report."""
    if math.isnan(factor):
        return "power unknown (no idealized model of this audit)"
    if no_power(factor):
        return "vacuous: would not catch even a 16x weaker mechanism"
    ratio = f" (epsilon understated >= {epsilon_ratio:.1f}x)" if math.isfinite(epsilon_ratio) and not no_power(epsilon_ratio) else ""
    return f"would catch noise understated >= {factor:g}x{ratio}"


def audit_verdict(per_audit: Mapping[str, Mapping[str, float]], observations: Mapping[str, Sequence[str]]) -> tuple[dict[str, float], dict[str, str]]:
    """The cell's verdict over its audits, in two tiers never confused:

    * ``violation`` (certified): an audit, in any observation, certifies an ε above the
      accountant's ε for the audited party at the audit's δ, or rejects the accountant's whole
      claimed privacy profile (``claim_rejected``) — a bug in the accountant, the mechanism or
      the audit, at 95 % confidence;
    * ``suspect`` (uncertified): no violation, but an estimate's lower 95 % end lies above the
      accountant's ε (``suspect``); its false-alarm rate on honest code is in docs/bench-audit.md;
    * ``no_violation``, or ``vacuous`` when no audit in the cell has the power to catch any
      weakening up to 16× (``detectable_factor`` = inf): then "no violation" says nothing.

    Tags: ``audit_verdict`` (the tier), ``audit_violation``, ``audit_suspect`` and
    ``audit_power`` (the best audit's power in words). The cell-level ``audit/epsilon_lower_bound``
    and ``audit/accountant_epsilon`` are those of the audit whose bound comes closest to (or
    furthest past) its accountant ε; ``audit/detectable_factor`` is the smallest over audits.
    """
    if not per_audit:
        return {}, {}
    tags: dict[str, str] = {}
    worst, worst_ratio = None, -math.inf
    violated, suspect, comparable = False, False, False
    best_power, best_ratio = math.nan, math.nan
    for name, m in per_audit.items():
        eps = m.get("accountant_epsilon", math.nan)
        bounds = {o: m[f"{o}/epsilon_lower_bound"] for o in observations[name]}
        ratio = _ratio(m["epsilon_lower_bound"], eps) if math.isfinite(eps) else -math.inf
        if worst is None or ratio > worst_ratio:
            worst, worst_ratio = name, ratio
        if not math.isfinite(eps):
            continue
        comparable = True
        k = m.get("detectable_factor", math.nan)
        if math.isnan(k) and all(cannot_contradict({k2[len(o) + 1:]: v for k2, v in m.items() if k2.startswith(f"{o}/")}, eps)
                                 for o in observations[name]):
            k = math.inf
        if not math.isnan(k) and (math.isnan(best_power) or k < best_power):
            best_power, best_ratio = k, m.get("detectable_epsilon_ratio", math.nan)
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
            if m.get(f"{o}/suspect", 0.0) > 0:
                suspect = True
    w = per_audit[worst]
    out = {"audit/epsilon_lower_bound": w["epsilon_lower_bound"], "audit/delta": w["delta"],
           "audit/max_certifiable_epsilon": w["max_certifiable_epsilon"], "audit/epsilon_estimate": w["epsilon_estimate"]}
    if comparable:
        out["audit/accountant_epsilon"] = w["accountant_epsilon"]
        if not math.isnan(best_power):
            out["audit/detectable_factor"] = best_power
        verdict = "violation" if violated else "suspect" if suspect else "vacuous" if math.isinf(best_power) else "no_violation"
        if verdict == "suspect":
            log.warning(
                "AUDIT SUSPECT: an audit's epsilon estimate lies above the accountant's epsilon at its lower 95%% end "
                "(uncertified: see docs/bench-audit.md for its false-alarm rate); the DP mechanism may be weaker than claimed"
            )
        tags["audit_verdict"] = verdict
        tags["audit_violation"] = str(violated).lower()
        tags["audit_suspect"] = str(suspect and not violated).lower()
        tags["audit_power"] = power_words(best_power, best_ratio)
        if verdict == "vacuous":
            log.warning(
                "audit: no audit in this cell could catch even a 16x weaker mechanism (max certifiable %.3f vs the "
                "accountant's %.3f); 'no violation' is vacuous here: use more canaries or a white-box audit",
                w["max_certifiable_epsilon"], w["accountant_epsilon"],
            )
    return out, tags
