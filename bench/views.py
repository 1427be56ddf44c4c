"""``derive_views``: the single place where a threat model becomes what an attacker sees."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from bench.types import Federation, OutsiderView, PeerView, ServerRound, ServerView, TrainingRecord


def server_view(
    record: TrainingRecord, fed: Federation, model_fn: Callable[[], torch.nn.Module], adversary: str = "honest_but_curious"
) -> ServerView:
    """The honest-but-curious server: each round's global model and the updates it received.

    Under secure aggregation (``updates_hidden``) it receives only the aggregate. A malicious
    server (``adversary="malicious_server"``) also knows what it sent each hospital and its
    aggregation weights; what it received is the same as an honest server's.
    """
    malicious = adversary != "honest_but_curious"
    hidden = any(r.updates_hidden for r in record.rounds)
    rounds = tuple(
        ServerRound(
            round=r.round,
            global_params=r.global_params,
            participants=r.participants,
            updates=None if r.updates_hidden else dict(r.updates),
            aggregate=r.aggregate,
            disclosures=dict(r.disclosures),
            step_updates=dict(r.step_updates) if r.step_updates else None,
            sent=dict(r.sent) if malicious else None,
            weights=dict(r.weights) if malicious else None,
            aborted=r.aborted,
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
        adversary=adversary,
        canary_clip=fed.audit_canaries.clip if fed.audit_canaries is not None else None,
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


def peer_view(record: TrainingRecord, fed: Federation, model_fn: Callable[[], torch.nn.Module],
              site: Optional[str] = None) -> PeerView:
    """A curious peer hospital (``site``, default the first of the roster): the model it received
    each round (what the server sent *it*), the released model, its own records and updates.

    Its own training records leave the candidates: it knows them, so scoring them would
    credit the peer with knowledge, not with an attack.
    """
    site = site or fed.site_names[0]
    if site not in fed.site_names:
        from bench.types import ConfigError

        raise ConfigError(f"attacks: peer site {site!r} is not a hospital of this federation; use one of {', '.join(fed.site_names)}")
    me = next(s for s in fed.sites if s.name == site)
    own = set(int(i) for i in me.train.ids)
    keep = np.asarray([int(i) not in own for i in fed.candidates.ids], dtype=bool)
    received = tuple((getattr(r, "sent", None) or {}).get(site, r.global_params) for r in record.rounds)
    return PeerView(
        info=fed.info,
        model_fn=model_fn,
        site=site,
        received=received,
        final_params=record.final_params,
        own_records=me.train,
        own_holdout=me.test,
        own_updates=tuple(r.updates.get(site) for r in record.rounds),
        candidates=fed.candidates.take(np.flatnonzero(keep)),
        site_sizes={s.name: len(s.train) for s in fed.sites},
    )


def derive_views(record, fed, model_fn, threat_models, simulate=None, adversary="honest_but_curious", peer_site=None,
                 **outsider) -> dict:
    """One view per requested threat model (``outsider`` kwargs go to :func:`outsider_view`;
    ``adversary`` names the server's behaviour, see :func:`server_view`)."""
    makers = {
        "server": lambda: server_view(record, fed, model_fn, adversary),
        "outsider": lambda: outsider_view(record, fed, model_fn, simulate, **outsider),
        "peer": lambda: peer_view(record, fed, model_fn, peer_site),
    }
    return {tm: makers[tm]() for tm in sorted(set(threat_models))}
