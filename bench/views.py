"""``derive_views``: the single place where a threat model becomes what an attacker sees."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from bench.types import Federation, OutsiderView, ServerRound, ServerView, TrainingRecord


def server_view(record: TrainingRecord, fed: Federation, model_fn: Callable[[], torch.nn.Module]) -> ServerView:
    """The honest-but-curious server: each round's global model and the updates it received.

    Under secure aggregation (``updates_hidden``) it receives only the aggregate.
    """
    hidden = any(r.updates_hidden for r in record.rounds)
    rounds = tuple(
        ServerRound(
            round=r.round,
            global_params=r.global_params,
            participants=r.participants,
            updates=None if r.updates_hidden else dict(r.updates),
            aggregate=r.aggregate,
            disclosures=dict(r.disclosures),
        )
        for r in record.rounds
    )
    return ServerView(
        info=fed.info,
        model_fn=model_fn,
        rounds=rounds,
        site_names=fed.site_names,
        known_records=fed.candidates,
        updates_hidden=hidden,
        final_params=record.final_params,
        # a white-box auditor knows the directions it crafted, never which canaries went in
        canary_directions=fed.audit_canaries.directions if fed.audit_canaries is not None else None,
        canary_site=fed.audit_canaries.site if fed.audit_canaries is not None else None,
    )


def outsider_view(
    record: TrainingRecord,
    fed: Federation,
    model_fn: Callable[[], torch.nn.Module],
    simulate: Optional[Callable[..., torch.Tensor]] = None,
    simulate_many: Optional[Callable[..., torch.Tensor]] = None,
    reference_seed: int = 0,
    fallback_reason: str = "",
) -> OutsiderView:
    """Query access to the released (final) model, plus population data.

    ``reference_signals(K)`` trains K reference federations (vectorised with
    ``simulate_many`` when possible, else sequentially with ``simulate``) once per cell
    and K, and hands every attack the same per-record signals.
    """
    from bench.reference import ReferenceCache

    site_sizes = {s.name: len(s.train) for s in fed.sites}
    refs = None
    if simulate is not None or simulate_many is not None:
        refs = ReferenceCache(
            model_fn, record.final_params, fed.population, site_sizes, reference_seed, simulate_many, simulate, fallback_reason
        )
    return OutsiderView(
        info=fed.info,
        model_fn=model_fn,
        final_params=record.final_params,
        candidates=fed.candidates,
        population=fed.population,
        site_sizes=site_sizes,
        simulate=simulate,
        reference_signals=refs,
        canaries=fed.canaries,
    )


def derive_views(record, fed, model_fn, threat_models, simulate=None, **outsider) -> dict:
    """One view per requested threat model (``outsider`` kwargs go to :func:`outsider_view`)."""
    makers = {
        "server": lambda: server_view(record, fed, model_fn),
        "outsider": lambda: outsider_view(record, fed, model_fn, simulate, **outsider),
    }
    return {tm: makers[tm]() for tm in sorted(set(threat_models))}
