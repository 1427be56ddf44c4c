"""From DP events to ε: one pure function, using Opacus's accountants (RDP or PRV).

Every ε is stated with its δ and its neighbouring relation:

* **δ.** ``privacy.delta: null`` means δ = min(1e-5, 1/(100·n)) for a party of n privacy units
  (:func:`default_delta`). δ is the probability with which the guarantee may fail outright:
  at δ = 1/n, a mechanism that publishes one randomly chosen unit's data in the clear is
  (0, δ)-DP, so δ must stay far below 1/n. A party with δ ≥ 1/n (only possible with an
  explicit ``privacy.delta``) is flagged (:func:`weak_delta_reason`).
* **Neighbouring relation.** ``add_remove``: the neighbouring dataset lacks (or has) one
  unit; what Opacus's RDP/PRV accountants assume. ``replace_one``: one unit's data is
  replaced by anything else; for a Gaussian sum with clipping bound C the sensitivity is 2C
  instead of C, so it is accounted as the same mechanism at noise multiplier σ/2
  (:func:`effective_noise_multiplier`). ``privacy.neighbouring: auto`` keeps each
  mechanism's own relation (record-level DP-SGD: add/remove; client_dp, whose roster of
  hospitals is public and always participates: replace-one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from bench.types import DPEvent

NEIGHBOURING = ("add_remove", "replace_one")
DELTA_CAP = 1e-5  # the default δ never exceeds this, whatever the population


@dataclass(frozen=True)
class PrivacyReport:
    """ε at δ per protected party (a hospital's records, or the federation's clients).

    ``epsilon`` is the largest ε over parties (the weakest guarantee), reported per unit.

    Attributes:
        per_party: (unit, party) -> (ε, δ).
        population: (unit, party) -> n, the number of privacy units the party holds.
        neighbouring: (unit, party) -> the relation its ε is stated under.
    """

    per_party: Mapping[tuple[str, str], tuple[float, float]]
    population: Mapping[tuple[str, str], int] = field(default_factory=dict)
    neighbouring: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @property
    def is_dp(self) -> bool:
        return bool(self.per_party)

    def epsilon(self, unit: Optional[str] = None) -> float:
        vals = [e for (u, _), (e, _) in self.per_party.items() if unit in (None, u)]
        return max(vals) if vals else math.inf

    def delta(self, unit: Optional[str] = None) -> float:
        vals = [d for (u, _), (_, d) in self.per_party.items() if unit in (None, u)]
        return max(vals) if vals else math.nan

    def units(self) -> tuple[str, ...]:
        return tuple(sorted({u for u, _ in self.per_party}))

    def relations(self) -> dict[str, str]:
        """unit -> the neighbouring relation(s) its ε is stated under (``+``-joined if several)."""
        out: dict[str, set[str]] = {}
        for (u, _), rel in self.neighbouring.items():
            out.setdefault(u, set()).add(rel)
        return {u: "+".join(sorted(r)) for u, r in sorted(out.items())}

    def weak_parties(self) -> tuple[tuple[str, str], ...]:
        """The parties whose δ ≥ 1/n: at that δ, publishing one unit's data outright is allowed."""
        return tuple(
            k for k, (_, d) in self.per_party.items() if k in self.population and d >= 1.0 / max(self.population[k], 1)
        )


def default_delta(population: int) -> float:
    """The default δ for a party of ``population`` privacy units: min(1e-5, 1/(100·n)).

    1/n is the level at which releasing one unit's data outright (with probability δ) is
    allowed; 1/(100·n) stays two orders of magnitude below it, and 1e-5 caps δ for small
    parties (4 hospitals, 122 records: 1e-5; 10⁶ records: 1e-8).
    """
    return min(DELTA_CAP, 1.0 / (100.0 * max(population, 1)))


def effective_noise_multiplier(event: DPEvent) -> float:
    """The noise multiplier of ``event`` as an add/remove Gaussian mechanism (what Opacus accounts).

    Replace-one at q = 1: the sum of clipped contributions moves by up to 2C when one unit's
    data is replaced (−C for the old, +C for the new, fixed denominator), and the noise is
    σC, so it is exactly the Gaussian mechanism of sensitivity 1 and multiplier σ/2. With
    Poisson subsampling (q < 1) this does not hold: the replaced unit is sampled or not
    independently of the unit replacing it, and the subsampled mixture is not that of the
    add/remove accountant at σ/2, so it is refused rather than approximated.

    Raises:
        ValueError: replace-one for a record-level event or at sample rate < 1, or an unknown
            relation.
    """
    if event.neighbouring == "add_remove":
        return event.noise_multiplier
    if event.neighbouring == "replace_one":
        if event.unit != "client":
            raise ValueError(
                f"{event.source or 'event'}: replace_one is accounted only at hospital (client) level; "
                f"the {event.unit}-level accountant is add/remove"
            )
        if event.sample_rate != 1.0:
            raise ValueError(
                f"{event.source or 'event'}: replace_one needs every hospital in every round (q = 1), got q = "
                f"{event.sample_rate:g}; σ/2 is exact only without subsampling"
            )
        return event.noise_multiplier / 2.0
    raise ValueError(f"{event.source or 'event'}: unknown neighbouring relation {event.neighbouring!r}; allowed: {', '.join(NEIGHBOURING)}")


def with_neighbouring(events: Iterable[DPEvent], setting: str = "auto") -> tuple[DPEvent, ...]:
    """``events`` under ``privacy.neighbouring``: ``auto`` keeps each mechanism's own relation,
    ``add_remove``/``replace_one`` restate every event under that relation (new events)."""
    if setting == "auto":
        return tuple(events)
    if setting not in NEIGHBOURING:
        raise ValueError(f"privacy.neighbouring: got {setting!r}; allowed: auto, {', '.join(NEIGHBOURING)}")
    return tuple(dataclasses.replace(e, neighbouring=setting) for e in events)


def make_accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[name]()


def epsilon_of(events: Iterable[DPEvent], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of ``events`` (all of one party, one relation)."""
    events = [e for e in events if e.steps > 0]
    if not events:
        return 0.0
    relations = {e.neighbouring for e in events}
    if len(relations) > 1:
        raise ValueError(f"events of one party under several neighbouring relations {sorted(relations)}; restate them under one")
    hist = [(effective_noise_multiplier(e), e.sample_rate, e.steps) for e in events]
    if any(s <= 0 for s, _, _ in hist):
        return math.inf
    acc = make_accountant(accountant)
    acc.history = hist
    return float(acc.get_epsilon(delta=delta))


def account(
    events: Iterable[DPEvent], accountant: str = "rdp", delta: Optional[float] = None, neighbouring: str = "auto"
) -> PrivacyReport:
    """Group events by (unit, party) and compute each party's ε.

    Args:
        events: everything the mechanisms did.
        accountant: ``"rdp"`` (default) or ``"prv"``.
        delta: fixed δ, or ``None`` for :func:`default_delta` of each party's population.
        neighbouring: ``privacy.neighbouring`` (``auto`` keeps each event's own relation).
    """
    groups: dict[tuple[str, str], list[DPEvent]] = {}
    for e in with_neighbouring(events, neighbouring):
        groups.setdefault((e.unit, e.party), []).append(e)
    out, pop, rel = {}, {}, {}
    for key, evs in sorted(groups.items()):
        d = delta if delta is not None else default_delta(evs[0].population)
        out[key] = (epsilon_of(evs, d, accountant), d)
        pop[key] = evs[0].population
        rel[key] = evs[0].neighbouring
    return PrivacyReport(per_party=out, population=pop, neighbouring=rel)


def weak_delta_reason(report: PrivacyReport) -> Optional[str]:
    """One line saying which parties have δ ≥ 1/n (``None`` if none): their guarantee allows
    publishing one unit's data outright with probability δ."""
    weak = report.weak_parties()
    if not weak:
        return None
    listed = ", ".join(f"{u} {p!r} (n={report.population[(u, p)]}, delta={report.per_party[(u, p)][1]:.3g})" for u, p in weak)
    return (
        f"delta >= 1/n for {listed}: at that delta a mechanism that publishes one record or hospital outright "
        "satisfies the guarantee; set privacy.delta well below 1/n or leave it null for min(1e-5, 1/(100 n))"
    )


# --------------------------------------------------------------------------- ε per adversary

#: who the adversary is (threat matrix, ``privacy/against/<adversary>/...``): an outsider with the
#: released model, the honest-but-curious server, a malicious server (it may send different models,
#: alter what it sends, withhold noise, claim dropouts) and a curious peer hospital
ADVERSARIES: tuple[str, ...] = ("outsider", "server", "malicious_server", "peer")


def draws_noise_on_server(defense) -> bool:
    """Whether ``defense`` adds its DP noise in a server hook (``transform_aggregate``), as central
    ``client_dp`` does: the server sees the sum before that noise (``RoundRecord.aggregate``), and a
    malicious one may withhold it, so its events protect nothing from the server."""
    hook = getattr(type(defense), "transform_aggregate", None)
    owner = getattr(hook, "__qualname__", "Defense.").split(".")[0]
    return bool(getattr(defense, "is_dp", False)) and owner != "Defense" and not hasattr(defense, "dp_events_against")


def events_against(defenses, adversary: str) -> tuple[DPEvent, ...]:
    """The DP events of ``defenses`` whose guarantee still holds against ``adversary``.

    A defense may say it itself (``dp_events_against(adversary)``, e.g. ``distributed_dp``: fewer
    noise shares against a server that claims dropouts or a peer that knows its own share).
    Otherwise its events hold against everyone, except that noise drawn by the server
    (:func:`draws_noise_on_server`) holds only against the outsider and the peers, who see the
    noisy models. Record-level DP-SGD's noise never leaves the hospital: it holds against all.
    """
    if adversary not in ADVERSARIES:
        raise ValueError(f"unknown adversary {adversary!r}; allowed: {', '.join(ADVERSARIES)}")
    out: list[DPEvent] = []
    for d in defenses:
        own = getattr(d, "dp_events_against", None)
        if own is not None:
            out.extend(own(adversary) or ())
        elif draws_noise_on_server(d) and adversary in ("server", "malicious_server"):
            continue
        else:
            out.extend(d.dp_events())
    return tuple(out)


def against_metrics(defenses, full: PrivacyReport, accountant: str = "rdp", neighbouring: str = "auto") -> tuple[dict[str, float], dict[str, str]]:
    """``privacy/against/<adversary>/<unit>/epsilon`` (and ``.../delta``) for every adversary and every
    privacy unit the cell's full report has, at the δ the full report states for each party; a unit with no guarantee left
    against an adversary gets no metric but the tag ``privacy/against/<adversary>/<unit>`` = ``none``.
    Also ``privacy/epsilon_after_claimed_dropouts`` (the malicious server's client-level ε).

    Returns:
        ``(metrics, tags)``; both empty when the cell has no DP at all.
    """
    if not full.is_dp:
        return {}, {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for adv in ADVERSARIES:
        evs = with_neighbouring(events_against(defenses, adv), neighbouring)
        for unit in full.units():
            d = full.delta(unit)
            mine = [e for e in evs if e.unit == unit]
            # each party at the δ the full report states for it; a party with no event left has no guarantee
            parties = {p for (u, p) in full.per_party if u == unit}
            eps = max(
                (epsilon_of([e for e in mine if e.party == p], full.per_party[(unit, p)][1], accountant)
                 if any(e.party == p and e.steps > 0 for e in mine) else math.inf for p in parties),
                default=math.inf,
            )
            if math.isinf(eps):
                tags[f"privacy/against/{adv}/{unit}"] = "none"
            else:
                metrics[f"privacy/against/{adv}/{unit}/epsilon"] = eps
                metrics[f"privacy/against/{adv}/{unit}/delta"] = d
                tags[f"privacy/against/{adv}/{unit}"] = f"epsilon={eps:.3g} delta={d:.3g}"
    if "privacy/against/malicious_server/client/epsilon" in metrics:
        metrics["privacy/epsilon_after_claimed_dropouts"] = metrics["privacy/against/malicious_server/client/epsilon"]
    return metrics, tags
