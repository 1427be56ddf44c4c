"""From DP events to ε: one pure function, using Opacus's accountants (RDP or PRV)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from bench.types import DPEvent


@dataclass(frozen=True)
class PrivacyReport:
    """ε at δ per protected party (a hospital's records, or the federation's clients).

    ``epsilon`` is the largest ε over parties (the weakest guarantee), reported per unit.
    """

    per_party: Mapping[tuple[str, str], tuple[float, float]]  # (unit, party) -> (epsilon, delta)

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


def default_delta(population: int) -> float:
    """δ = 1/(10·n): well below 1/n, the level at which releasing one record is allowed."""
    return 1.0 / (10.0 * max(population, 1))


def make_accountant(name: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[name]()


def epsilon_of(events: Iterable[DPEvent], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of ``events`` (all of one party)."""
    acc = make_accountant(accountant)
    hist = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if e.steps > 0]
    if not hist:
        return 0.0
    if any(s <= 0 for s, _, _ in hist):
        return math.inf
    acc.history = hist
    return float(acc.get_epsilon(delta=delta))


def account(events: Iterable[DPEvent], accountant: str = "rdp", delta: Optional[float] = None) -> PrivacyReport:
    """Group events by (unit, party) and compute each party's ε.

    Args:
        events: everything the mechanisms did.
        accountant: ``"rdp"`` (default) or ``"prv"``.
        delta: fixed δ, or ``None`` for 1/(10·n) of each party's population.
    """
    groups: dict[tuple[str, str], list[DPEvent]] = {}
    for e in events:
        groups.setdefault((e.unit, e.party), []).append(e)
    out = {}
    for key, evs in sorted(groups.items()):
        d = delta if delta is not None else default_delta(evs[0].population)
        out[key] = (epsilon_of(evs, d, accountant), d)
    return PrivacyReport(per_party=out)
