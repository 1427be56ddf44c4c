"""The in-process FedAvg engine.

It returns a :class:`~bench.types.TrainingRecord` of what happened each round: the global
model the server sent, each hospital's update as sent (after client-side defenses) and the
aggregate the server applied. Attacker views are derived from it (``bench.views``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from bench.canaries import client_canary_updates
from bench.metrics import SITE_MIN_COUNT, utility_metrics
from bench.models import flatten, load_flat, num_params
from bench.seeding import Seeds
from bench.training import LocalSettings, PlainTrainer, RecordGroups
from bench.types import Disclosure, Federation, RoundRecord, ServerPlan, TrainingRecord
from defenses.base import ClientContext, Defense, FederationFacts, ServerContext, weighted_sum

RoundCallback = Callable[[RoundRecord], None]
log = logging.getLogger(__name__)


def architecture_of(model: torch.nn.Module) -> str:
    """A hospital's fingerprint of an architecture it receives: every module's type and every
    parameter's name and shape, hashed (what ``model_check``'s allow-list names)."""
    parts = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    parts += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def local_settings(train_cfg) -> LocalSettings:
    return LocalSettings(
        epochs=train_cfg.local_epochs,
        batch_size=train_cfg.batch_size,
        optimizer=train_cfg.optimizer,
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay,
    )


def federation_facts(fed: Federation, train_cfg, privacy_cfg, n_params: int) -> FederationFacts:
    k = train_cfg.sites_per_round or len(fed.sites)
    return FederationFacts(
        site_names=fed.site_names,
        site_sizes={s.name: len(s.train) for s in fed.sites},
        sites_per_round=min(k, len(fed.sites)),
        rounds=train_cfg.rounds,
        num_params=n_params,
        local_epochs=train_cfg.local_epochs,
        batch_size=train_cfg.batch_size,
        accountant=privacy_cfg.accountant,
        delta=privacy_cfg.delta,
    )


def payload_bytes(update: torch.Tensor) -> float:
    """Bytes a hospital sends for ``update``: dense, or as (int32 index, value) pairs when that is
    smaller — so sparsification's saving shows up in ``cost/bytes_per_client``."""
    dense = update.numel() * update.element_size()
    sparse = int(torch.count_nonzero(update)) * (update.element_size() + 4)
    return float(min(dense, sparse))


def canary_client_sum(
    names: Sequence[str], stack: torch.Tensor, defenses: Sequence[Defense], r: int, num_participants: int, seed: int
) -> torch.Tensor:
    """Σ of the included canary clients' updates ``stack`` (K, P), after every client hook,
    each weighted 1/m with m the number of real participants: a fixed public denominator,
    so that adding one canary moves the mean by exactly C/m — the add/remove neighbour
    client_dp accounts.

    The canaries never join the hospitals' updates (no hospital-level view holds them); under
    secure aggregation their sum is added beside the protocol's, which equals the plain sum.
    Hooks that map a stack row by row get it in one call; the others, one canary at a time.
    """
    def ctx(site: str, k: int) -> ClientContext:
        return ClientContext(site=site, round=r, num_samples=0, generator=torch.Generator().manual_seed(seed + k))

    if all(d.stacks_updates() for d in defenses):  # (run_federated calls this once per run)
        for d in defenses:  # client hooks in list order, exactly as for a hospital
            stack = d.transform_update(stack, ctx("canaries", 0))
        return stack.sum(dim=0) / num_participants
    total = torch.zeros(stack.shape[1], dtype=stack.dtype)
    for k, (name, u) in enumerate(zip(names, stack)):
        for d in defenses:
            u = d.transform_update(u, ctx(name, k))
        total += u
    return total / num_participants


def run_federated(
    fed: Federation,
    initial_model: torch.nn.Module,
    defenses: Sequence[Defense],
    train_cfg,
    privacy_cfg,
    seeds: Seeds,
    on_round: Optional[RoundCallback] = None,
    evaluate: bool = True,
    plan: Optional[ServerPlan] = None,
    site_min_count: int = SITE_MIN_COUNT,
) -> TrainingRecord:
    """Run FedAvg with ``defenses`` and return the record of every round.

    Args:
        fed: the hospitals and test data.
        initial_model: the global model at round 0 (its weights are not modified).
        defenses: ordered defenses; client hooks in order, server hooks in reverse.
        train_cfg: ``bench.config.TrainConfig``.
        privacy_cfg: ``bench.config.PrivacyConfig`` (passed to defenses as facts).
        seeds: streams ``("select", r)``, ``("train", site, r)``, ``("defense", name, ...)``.
        on_round: called with each finished round (progress, streaming metrics).
        evaluate: compute utility on the test sets each round.
        plan: a malicious server's behaviour (``ServerPlan``): the architecture it sends, what
            it sends each hospital each round, whether it withholds its own noise. Client-side
            defenses (``check_received``) see what each hospital received before it trains and
            may refuse the round (recorded as ``RoundRecord.aborted``; the model stays as it was).
        site_min_count: hospitals with fewer test records get a count, not an accuracy (``utility_metrics``).
    """
    t_start = time.perf_counter()
    configured_architecture = architecture_of(initial_model)
    if plan is not None and plan.model_fn is not None:  # the server sends another architecture
        changed = plan.model_fn()
        load_flat(changed, plan.initial(flatten(initial_model)) if plan.initial is not None else flatten(initial_model))
        initial_model = changed
    sent_architecture = architecture_of(initial_model)
    global_params = flatten(initial_model)
    facts = federation_facts(fed, train_cfg, privacy_cfg, num_params(initial_model))
    for d in defenses:
        d.setup(facts)
    settings = local_settings(train_cfg)
    trainers = {}
    audit = fed.audit_canaries
    canary_clients = client_canary_updates(audit) if audit is not None and audit.kind == "client" else None
    fixed_canary_sum = None
    for site in fed.sites:
        grad_canaries = audit if audit is not None and audit.kind == "gradient" and audit.site == site.name else None
        groups = {a.name: RecordGroups(labels=a.groups, codes=a.of_any(site.train.ids)) for a in fed.sensitive}
        trainer = PlainTrainer(copy.deepcopy(initial_model), site.train, settings, canaries=grad_canaries, groups=groups)
        for d in defenses:  # client hooks in list order: the first defense wraps first
            trainer = d.wrap_local_training(trainer, site.name)
        trainers[site.name] = trainer
    eval_model = copy.deepcopy(initial_model)
    sizes = facts.site_sizes
    aggregator = next((d for d in defenses if d.replaces_aggregation), None)
    uniform = any(d.uniform_weights for d in defenses)
    rounds = []
    for r in range(1, train_cfg.rounds + 1):
        t_round = time.perf_counter()
        pick = seeds.rng("select", r).choice(len(fed.sites), facts.sites_per_round, replace=False)
        participants = tuple(fed.sites[i].name for i in sorted(pick))
        updates, disclosures, step_updates = {}, {}, {}
        sent = {n: plan.send(r, n, global_params) for n in participants} if plan is not None and plan.send is not None else {}
        received = {n: sent.get(n, global_params) for n in participants}
        aborted = None
        for d in defenses:  # client side, before any hospital trains on what it received
            aborted = aborted or d.check_received(received, {n: sent_architecture for n in participants}, configured_architecture, r)
        if aborted is not None:
            log.warning("round %d aborted by the hospitals: %s", r, aborted)
            record = RoundRecord(
                round=r, global_params=global_params, participants=participants, weights={}, updates={},
                updates_hidden=any(d.hides_updates for d in defenses), aggregate=torch.zeros_like(global_params),
                disclosures={}, utility=utility_metrics(eval_model, global_params, fed, site_min_count) if evaluate else {},
                seconds=time.perf_counter() - t_round, aggregation_seconds=0.0, bytes_per_client=0.0,
                sent={n: v for n, v in sent.items() if not torch.equal(v, global_params)}, aborted=aborted,
            )
            rounds.append(record)
            if on_round is not None:
                on_round(record)
            continue
        for name in participants:
            res = trainers[name].train(received[name], seeds.torch("train", name, r))
            update = res.params - received[name]
            if res.step_updates is not None:  # an audited hospital's every privatized step
                step_updates[name] = res.step_updates
            for d in defenses:
                ctx = ClientContext(site=name, round=r, num_samples=res.num_samples, generator=seeds.torch("defense", d.name, name, r))
                update = d.transform_update(update, ctx)
            updates[name] = update
            disclosures[name] = Disclosure(
                num_samples=res.num_samples,
                local_epochs=train_cfg.local_epochs,
                local_steps=res.num_steps,
                batch_size=train_cfg.batch_size,
                lr=train_cfg.lr,
                optimizer=train_cfg.optimizer,
            )
        if uniform:
            weights = {n: 1.0 / len(participants) for n in participants}
        else:
            total = sum(sizes[n] for n in participants)
            weights = {n: sizes[n] / total for n in participants}
        sctx = ServerContext(round=r, participants=participants, generator=seeds.torch("server", r))
        t_agg = time.perf_counter()
        summed = aggregator.aggregate(updates, weights, sctx) if aggregator else weighted_sum(updates, weights)
        agg_seconds = time.perf_counter() - t_agg
        if canary_clients is not None and len(canary_clients[0]):
            if fixed_canary_sum is None or not all(d.stacks_updates() for d in defenses):
                fixed_canary_sum = canary_client_sum(*canary_clients, defenses, r, 1, seeds.int_seed("canary", r))
            summed = summed + fixed_canary_sum / len(participants)  # the same updates, the same hooks: every round
        aggregate = summed
        for d in reversed(defenses):  # server hooks in reverse order
            aggregate = d.transform_aggregate(aggregate, sctx)
        if plan is not None and plan.withhold_noise:
            # the hooks ran (their bookkeeping, hence the ε the hospitals were promised), but a
            # server that withholds its noise applies the clean sum
            aggregate = summed
        new_params = global_params + train_cfg.server_lr * aggregate
        utility = utility_metrics(eval_model, new_params, fed, site_min_count) if evaluate else {}
        bytes_pc = float(np.mean([payload_bytes(u) for u in updates.values()]))
        if aggregator is not None:
            bytes_pc = float(aggregator.metrics().get("cost/bytes_per_client", bytes_pc))
        record = RoundRecord(
            round=r,
            global_params=global_params,
            participants=participants,
            weights=weights,
            updates=updates,
            updates_hidden=any(d.hides_updates for d in defenses),
            aggregate=summed,  # what the server knows: it adds its own noise after this
            disclosures=disclosures,
            utility=utility,
            seconds=time.perf_counter() - t_round,
            aggregation_seconds=agg_seconds,
            bytes_per_client=bytes_pc,
            step_updates=step_updates,
            sent={n: v for n, v in sent.items() if not torch.equal(v, global_params)},
        )
        rounds.append(record)
        if on_round is not None:
            on_round(record)
        global_params = new_params
    events = tuple(e for d in defenses for e in d.dp_events())
    tags: dict[str, str] = {}
    for d in defenses:
        tags.update(d.tags())
    return TrainingRecord(
        rounds=tuple(rounds), final_params=global_params, dp_events=events, seconds=time.perf_counter() - t_start, tags=tags
    )
