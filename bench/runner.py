"""Run one cell: the only place that wires data, models, defenses, training, views,
attacks, accounting, scoring and logging together."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import yaml

from bench.accounting import PrivacyReport, account, against_metrics, weak_delta_reason
from bench.components import component_class
from bench.contracts import check_output
from bench.config import ExperimentConfig
from bench.data import build_federation
from bench.fairness import fairness_metrics
from bench.federated import run_federated
from bench.artifacts import apply_record_policy, record_artifacts_allowed, render
from bench.metrics import SITE_MIN_COUNT, score
from bench.metrics.malicious import malicious_metrics
from bench.auditing import audit_delta, audit_metrics, audit_verdict
from bench.reference import make_many_simulator, reference_artifacts
from bench.models import MODELS, build_model, flatten, num_params
from bench.seeding import Seeds
from bench.memlog import CellLog, MemoryCellLog
from bench.types import AuditScores, Reconstructions, Federation, PlanInputs, Records, RoundRecord, Site, TrainingRecord
from bench.views import derive_views

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellResult:
    """The final numbers of one cell (also what the CLI's summary table shows)."""

    name: str
    run_key: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)
    record: Optional[TrainingRecord] = None


def make_defenses(cfg: ExperimentConfig) -> list:
    out = [component_class("defense", s.name)(s.params) for s in cfg.defenses]
    for d in out:  # a defense whose accounting follows another's record (distributed_dp: the secure sum's inputs)
        see = getattr(d, "see_defenses", None)
        if see is not None:
            see(out)
    return out


def make_simulator(cfg: ExperimentConfig, fed: Federation, model_fn: Callable[[], torch.nn.Module]):
    """The public FL protocol as a function an attacker can call to train reference models.

    ``simulate(site_records, seed)`` trains a federation on ``site_records`` (hospital name ->
    Records) with the same model, FL settings and defenses (fresh instances) and returns the
    final flat parameters. No evaluation, no logging.
    """

    def simulate(site_records: Mapping[str, Records], seed: int) -> torch.Tensor:
        seeds = Seeds(seed)
        empty = Records(ids=np.zeros(0, np.int64), x=fed.test.x[:0], y=fed.test.y[:0])
        sites = tuple(Site(name=n, train=r, test=empty) for n, r in site_records.items())
        ref = Federation(info=fed.info, sites=sites, test=empty, candidates=empty, population=empty, sensitive=fed.sensitive)
        initial = build_model(fed.info, cfg.model, seeds.torch("init"))
        rec = run_federated(ref, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False)
        return rec.final_params

    return simulate


#: where an attack-only cell's accuracy goes instead of utility/ (see run_cell)
ATTACK_ONLY_PREFIX = "attack_only/"


def privacy_metrics(report: PrivacyReport) -> dict[str, float]:
    """``privacy/...`` metrics: per hospital for record-level DP, per federation for client-level."""
    if not report.is_dp:
        return {}
    out = {}
    for (unit, party), (eps, delta) in report.per_party.items():
        if unit == "record":
            out[f"privacy/site/{party}/epsilon"] = eps
            out[f"privacy/site/{party}/delta"] = delta
        else:
            out["privacy/client/epsilon"] = eps
            out["privacy/client/delta"] = delta
    head = "record" if "record" in report.units() else "client"
    out["privacy/epsilon"] = report.epsilon(head)
    out["privacy/delta"] = report.delta(head)
    return out


def privacy_tags(report: PrivacyReport, tags: Mapping[str, str]) -> dict[str, str]:
    """The privacy tags of a cell, given the defenses' ``tags`` (a new dict; inputs untouched).

    ``dp``; with DP, ``privacy_unit`` and ``neighbouring`` (the resolved relation per unit, e.g.
    ``client:replace_one+record:add_remove``); and ``dp_weak_guarantee=true`` when some party's
    δ ≥ 1/n, its reason appended to any a defense already gave (client_dp with few hospitals).
    """
    out = {"dp": str(report.is_dp).lower()}
    if not report.is_dp:
        return out
    out["privacy_unit"] = "+".join(report.units())
    out["neighbouring"] = "+".join(f"{u}:{r}" for u, r in report.relations().items())
    reason = weak_delta_reason(report)
    if reason is not None:
        log.warning("privacy: %s", reason)
        before = tags.get("dp_weak_guarantee_reason")
        out["dp_weak_guarantee"] = "true"
        out["dp_weak_guarantee_reason"] = f"{before}; {reason}" if before else reason
    return out


def adversary_tags(plan, report: PrivacyReport, record: TrainingRecord) -> dict[str, str]:
    """Every result names its adversary: ``adversary`` (``honest_but_curious`` or
    ``malicious_server``), what a malicious server did, the rounds the hospitals refused, and
    ``dp_holds_against_adversary=false`` where the server withheld the noise it accounts."""
    if plan is None:
        return {"adversary": "honest_but_curious"}
    out = {"adversary": plan.adversary, "adversary_capabilities": ",".join(plan.capabilities)}
    aborted = [r.round for r in record.rounds if r.aborted is not None]
    if aborted:
        out["rounds_aborted"] = ",".join(str(r) for r in aborted)
    if plan.withhold_noise and report.is_dp and "client" in report.units():
        out["dp_holds_against_adversary"] = "false"
        out["dp_holds_against_adversary_reason"] = "the server withheld the central noise that client-level epsilon accounts"
    return out


def run_cell(cfg: ExperimentConfig, out: CellLog, on_round: Optional[Callable[[RoundRecord], None]] = None,
             on_phase: Optional[Callable[[str], None]] = None) -> CellResult:
    """Run one experiment cell and log everything to ``out``.

    ``on_round`` is called after each FedAvg round, ``on_phase`` with a short name when a
    phase starts (``data``, ``training``, ``attack lira``, ``fairness``, ``logging``) so that
    a progress display covers the whole cell, not only its rounds.

    The pipeline (DESIGN.md): federation + truth -> defenses/attacks -> FedAvg record ->
    ε -> attacker views -> attack outputs -> scores (the only place truth meets attacks).
    """
    t0 = time.perf_counter()
    phase = on_phase or (lambda name: None)
    phase("data")
    seeds = Seeds(cfg.seed)
    out.params(cfg.flat_params())
    out.text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")

    fed, truth = build_federation(cfg.data, seeds, cfg.fairness)
    model_fn = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
    initial = build_model(fed.info, cfg.model, seeds.torch("init"))
    defenses = make_defenses(cfg)
    attacks = [component_class("attack", s.name)(s.params) for s in cfg.attacks]
    for spec, attack in zip(cfg.attacks, attacks):  # e.g. an audit inserts canaries; only truth keeps which
        prepare = getattr(attack, "prepare", None)
        if prepare is not None:
            fed, truth_fields = prepare(fed, seeds.rng("prepare", spec.name), num_params=num_params(initial), cfg=cfg)
            truth = dataclasses.replace(truth, **truth_fields)
    out.params({f"data.site_size.{s.name}": len(s.train) for s in fed.sites})

    # A cell whose attacks are all gradient inversions (no malicious plan) evaluates a model trained for the
    # attack's sake (one round, a record per hospital): its accuracy is not a utility result, so it is logged
    # as attack_only/... and never reaches a utility axis, table or comparison (tag cell_kind).
    attack_only = bool(attacks) and all(a.kind == "reconstruction" and not hasattr(a, "server_plan") for a in attacks)
    as_logged = (lambda d: {ATTACK_ONLY_PREFIX + k[len("utility/"):] if k.startswith("utility/") else k: v for k, v in d.items()}) \
        if attack_only else (lambda d: dict(d))

    def stream(r: RoundRecord) -> None:
        out.metrics({**as_logged(r.utility), "cost/round_seconds": r.seconds}, step=r.round)
        if on_round is not None:
            on_round(r)

    # a malicious server declares what it does to the protocol before training (DESIGN.md)
    plan_inputs = PlanInputs(info=fed.info, model_fn=model_fn, initial_params=flatten(initial), site_names=fed.site_names,
                             site_sizes={s.name: len(s.train) for s in fed.sites}, rounds=cfg.train.rounds, population=fed.population)
    plans = [a.server_plan(plan_inputs, seeds.rng("plan", spec.name)) for spec, a in zip(cfg.attacks, attacks) if hasattr(a, "server_plan")]
    plan = plans[0] if plans else None
    served_fn = plan.model_fn if plan is not None and plan.model_fn is not None else model_fn  # what the hospitals trained

    phase("training")
    record = run_federated(fed, initial, defenses, cfg.train, cfg.privacy, seeds, on_round=stream, plan=plan,
                           site_min_count=cfg.fairness.min_count if cfg.fairness is not None else SITE_MIN_COUNT)
    metrics: dict[str, float] = as_logged(record.rounds[-1].utility)
    report = account(record.dp_events, cfg.privacy.accountant, cfg.privacy.delta, cfg.privacy.neighbouring)
    metrics.update(privacy_metrics(report))
    tags = dict(record.tags)
    if attack_only:
        tags["cell_kind"] = "attack_only"
    tags.update(privacy_tags(report, tags))
    tags.update(adversary_tags(plan, report, record))
    against, against_tags = against_metrics(defenses, report, cfg.privacy.accountant, cfg.privacy.neighbouring)
    metrics.update(against)  # the ε that still holds against each adversary (privacy/against/<adversary>/...)
    tags.update(against_tags)
    for d in defenses:
        metrics.update(d.metrics())
    metrics["cost/train_seconds"] = record.seconds
    metrics["cost/bytes_per_client"] = float(np.mean([r.bytes_per_client for r in record.rounds]))
    metrics["cost/aggregation_seconds"] = float(np.mean([r.aggregation_seconds for r in record.rounds]))

    simulate_many, why_not = make_many_simulator(cfg, fed.info)
    views = derive_views(
        record, fed, served_fn, [a.threat_model for a in attacks], make_simulator(cfg, fed, model_fn),
        simulate_many=simulate_many, reference_seed=seeds.int_seed("reference"), fallback_reason=why_not,
        peer_site=next((getattr(a.params, "site", None) for a in attacks if a.threat_model == "peer"), None),
        adversary=plan.adversary if plan is not None else "honest_but_curious",
    )
    # Audits are stated at δ ≤ 1e-5 (below the accountant's δ when a user set a larger one) and
    # compared with the accountant's ε for the audited party at that same δ.
    delta_audit = audit_delta(metrics.get("privacy/delta"))
    audits: dict[str, dict[str, float]] = {}
    observed: dict[str, list[str]] = {}
    outputs: dict[str, object] = {}
    # per-record scores, member lists and records of real patients stay out of the store unless opted in
    records_ok = record_artifacts_allowed(cfg.data.name, cfg.record_artifacts)
    tags["record_artifacts"] = str(records_ok).lower()
    for spec, attack in zip(cfg.attacks, attacks):
        phase(f"attack {spec.name}")  # (the first outsider attack also trains the reference models)
        t_a = time.perf_counter()
        output = outputs[spec.name] = attack.run(views[attack.threat_model], seeds.rng("attack", spec.name))
        check_output(spec.name, attack.kind, output)  # a plug-in's run() returns what its kind promises
        if isinstance(output, AuditScores):
            scored = audit_metrics(output, truth, delta_audit, record.dp_events, cfg.privacy.accountant, seeds.rng("audit", spec.name))
            audits[spec.name], observed[spec.name] = scored, list(output.observations)
            metrics.update({f"audit/{spec.name}/{k}": v for k, v in scored.items()})
        else:
            scored = score(output, truth)  # ground truth meets the attack output only here
            if hasattr(attack, "server_plan"):
                scored.update(malicious_metrics(output, truth))
            metrics.update({f"attack/{spec.name}/{k}": v for k, v in scored.items()})
        metrics[f"cost/attack/{spec.name}/seconds"] = time.perf_counter() - t_a
        if records_ok and isinstance(output, Reconstructions):
            output = dataclasses.replace(output, write_records=True)  # record_artifacts: true covers user data too
        for path, data in apply_record_policy(render(output, truth, fed.info, spec.name), records_ok, output).items():
            out.bytes(data, path)
    phase("fairness and audit verdicts")
    ref_files, ref_metrics = reference_artifacts(views)
    for path, data in apply_record_policy(ref_files, records_ok).items():
        out.bytes(data, path)
    metrics.update(ref_metrics)
    metrics.update(fairness_metrics(cfg.fairness, fed, truth, served_fn(), record.final_params, outputs))  # scoring's side: truth meets outputs
    audit, audit_tags = audit_verdict(audits, observed)
    metrics.update(audit)
    tags.update(audit_tags)
    metrics["cost/seconds"] = time.perf_counter() - t0
    phase("logging")
    finite = {k: v for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    # the last round's utility is already logged at step=rounds: log it once, not twice
    streamed = as_logged(record.rounds[-1].utility)
    out.metrics({k: v for k, v in finite.items() if k not in streamed}, step=cfg.train.rounds)
    out.tags(tags)
    return CellResult(name=cfg.label(), run_key=cfg.run_key, metrics=finite, tags=tags, record=record)


def run_in_memory(cfg: ExperimentConfig) -> CellResult:
    """Run one cell without MLflow (tests, notebooks)."""
    return run_cell(cfg, MemoryCellLog(cfg.label(), {}))
