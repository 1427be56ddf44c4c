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
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

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
    hist = tuple((effective_noise_multiplier(e), e.sample_rate, e.steps) for e in events)
    if any(s <= 0 for s, _, _ in hist):
        return math.inf
    return _epsilon_of_history(hist, float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_of_history(hist: tuple, delta: float, accountant: str) -> float:
    """The accountant's ε for one history of (σ, q, steps): a pure function, asked many times
    per cell with the same arguments (the cell's ε, each adversary's, the audits') and costly
    at large ε under RDP (Opacus's fractional-order series), so it is computed once."""
    acc = make_accountant(accountant)
    acc.history = list(hist)
    return float(acc.get_epsilon(delta=delta))


def epsilons_of(events: Iterable[DPEvent], deltas: Sequence[float], accountant: str = "rdp") -> list[float]:
    """:func:`epsilon_of` at each of ``deltas`` (a privacy profile). With RDP the Rényi curve of the
    composition is computed once and converted at every δ (Opacus's ``compute_rdp`` and
    ``get_privacy_spent``, exactly what its ``RDPAccountant.get_epsilon`` does per call)."""
    events = [e for e in events if e.steps > 0]
    if accountant != "rdp" or not events:
        return [epsilon_of(events, d, accountant) for d in deltas]
    relations = {e.neighbouring for e in events}
    if len(relations) > 1:
        raise ValueError(f"events of one party under several neighbouring relations {sorted(relations)}; restate them under one")
    hist = [(effective_noise_multiplier(e), e.sample_rate, e.steps) for e in events]
    if any(s <= 0 for s, _, _ in hist):
        return [math.inf] * len(deltas)
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders) for sigma, q, steps in hist)
    return [float(get_privacy_spent(orders=orders, rdp=rdp, delta=d)[0]) for d in deltas]


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


# --------------------------------------------------------------------------- σ for a target ε

#: Opacus's ``get_noise_multiplier`` gives up once its doubling search passes this σ
MAX_SIGMA = 1e6
#: Opacus's ``get_noise_multiplier`` stops once ε is within this of the target (from below)
EPSILON_TOLERANCE = 0.01
#: relative width of the brackets seeded around the σ's that reach the levels the search compares with
SEED_WIDTH = 1e-4


@functools.lru_cache(maxsize=65536)
def _rdp_per_step(q: float, sigma: float, order: float) -> float:
    """Opacus's RDP of one Poisson-Gaussian step at one order (cached: orders are evaluated lazily)."""
    from opacus.accountants.analysis import rdp as analysis

    return float(analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[order])[0])


class _RdpCurve:
    """ε(σ) of ``steps`` Poisson-Gaussian steps at rate ``q`` and ``delta``: Opacus's RDP accountant.

    Opacus's ``RDPAccountant.get_epsilon`` evaluates the RDP at all 150 of its orders and takes
    the smallest ε their conversions give. The conversion is unimodal along the orders, so this
    walks from the previous call's best order to the local minimum instead, evaluating 3–5
    orders per σ (each with Opacus's ``compute_rdp`` and ``get_privacy_spent``): the same number
    as Opacus's (``tests/test_calibration.py`` compares them over σ, q, steps and δ).
    """

    def __init__(self, q: float, steps: int, delta: float) -> None:
        from opacus.accountants.rdp import RDPAccountant

        self.q, self.steps, self.delta = float(q), int(steps), float(delta)
        self.orders = tuple(RDPAccountant.DEFAULT_ALPHAS)
        self.best: dict[float, int] = {}  # σ -> the index of its best order

    def _term(self, sigma: float, i: int) -> float:
        import numpy as np
        from opacus.accountants.analysis import rdp as analysis

        order = self.orders[i]
        # the same float operations as RDPAccountant: (per-step RDP array) * steps, then the conversion
        rdp = np.array([_rdp_per_step(self.q, sigma, order)]) * self.steps
        if np.isnan(rdp).all():
            return math.inf
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": true of a one-order list
            warnings.simplefilter("ignore")
            eps, _ = analysis.get_privacy_spent(orders=[order], rdp=rdp, delta=self.delta)
        eps = float(eps)
        return math.inf if math.isnan(eps) else eps

    def __call__(self, sigma: float) -> float:
        if self.q == 0:
            return 0.0
        if sigma == 0:
            return math.inf
        vals: dict[int, float] = {}

        def v(j: int) -> float:
            if j not in vals:
                vals[j] = self._term(sigma, j)
            return vals[j]

        last = len(self.orders) - 1

        def rising(j: int) -> bool:  # false left of the minimum, true from it on (ties: the first minimum)
            return j >= last or v(j + 1) >= v(j)

        # the first rising order: galloping from the minimum at the nearest σ evaluated, then
        # bisection; far from any (a factor 1.25), bisection over all orders
        near = min(self.best, key=lambda s: abs(math.log(s / sigma)), default=None)
        if near is None or abs(math.log(near / sigma)) > math.log(1.25):
            lo, hi = -1, last
        else:
            i = self.best[near]
            lo, hi = i - 1, i
        if hi - lo > 1:
            pass  # bisection below
        elif rising(i):
            lo, hi, step = i - 1, i, 1  # rising(hi); find lo with not rising(lo) (or -1)
            while lo >= 0 and rising(lo):
                hi, lo, step = lo, max(lo - step, -1), step * 2
        else:
            lo, hi, step = i, i + 1, 1
            while not rising(hi):
                lo, hi, step = hi, min(hi + step, last), step * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if rising(mid):
                hi = mid
            else:
                lo = mid
        self.best[sigma] = hi
        return v(hi)


def _prv_curve_class():
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import Domain

    class _PrvCurve(PRVAccountant):
        """ε(σ) from Opacus's PRV accountant, with the domain's RDP ε found as in :class:`_RdpCurve`.

        ``PRVAccountant`` sizes its discretisation domain with two full RDP evaluations
        (``compute_safe_domain_size``: 80 % of its time at small σ); this computes the same two
        ε by the order walk and keeps everything else (mesh, truncation, discretisation,
        composition, the upper bound on ε) Opacus's own.
        """

        def __init__(self, q: float, steps: int, delta: float) -> None:
            super().__init__()
            self.q, self.steps, self.delta = float(q), int(steps), float(delta)
            delta_error = self.delta / 1000  # PRVAccountant.get_epsilon's default
            self._composed = _RdpCurve(q, steps, delta_error / 4)
            self._single = _RdpCurve(q, 1, delta_error / (8 * steps))

        def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error):
            import numpy as np

            sigma = prvs[0].noise_multiplier
            # compute_safe_domain_size (Opacus, remark 5.6 of Gopi et al.) with one mechanism
            L = max(max(self._composed(sigma), self._single(sigma)), eps_error) + 3
            mesh_size = eps_error / np.sqrt(sum(num_self_compositions) * np.log(12 / delta_error) / 2)
            return Domain.create_aligned(-L, L, mesh_size)

        def __call__(self, sigma: float) -> float:
            if self.q == 0:
                return 0.0
            if sigma == 0:
                return math.inf
            self.history = [(sigma, self.q, self.steps)]
            eps = float(self.get_epsilon(delta=self.delta))
            return math.inf if math.isnan(eps) else eps

    return _PrvCurve


def epsilon_curve(q: float, steps: int, delta: float, accountant: str = "rdp"):
    """σ -> ε of ``steps`` Poisson-Gaussian steps at rate ``q``, at ``delta`` (Opacus's accountant).

    Equal to ``make_accountant(accountant)`` with ``history = [(σ, q, steps)]`` (its
    ``get_epsilon(delta)``), and monotone (non-increasing) in σ; faster (fewer RDP orders).
    """
    if accountant == "rdp":
        return _RdpCurve(q, steps, delta)
    if accountant == "prv":
        return _prv_curve_class()(q, steps, delta)
    raise ValueError(f"privacy.accountant: got {accountant!r}; allowed: rdp, prv")


class _Monotone:
    """Values of a non-increasing σ -> ε, and what they imply about predicates monotone in σ."""

    def __init__(self, curve) -> None:
        self.curve = curve
        self.known: dict[float, float] = {}

    def __call__(self, sigma: float) -> float:
        if sigma not in self.known:
            self.known[sigma] = self.curve(sigma)
        return self.known[sigma]

    def holds(self, sigma: float, pred) -> bool:
        """``pred(ε(σ))`` for a predicate false at small σ and true at large σ (ε non-increasing):
        decided from an evaluated σ' ≤ σ where it holds or σ' ≥ σ where it fails, else evaluated."""
        for s, e in self.known.items():
            if s <= sigma and pred(e):
                return True
            if s >= sigma and not pred(e):
                return False
        return pred(self(sigma))

    def approach(self, level: float, rel: float = SEED_WIDTH, max_evals: int = 8) -> None:
        """Evaluate points that bracket ε(σ) = ``level`` within a relative width ``rel`` (secant
        steps on log ε against log σ, then one step across): only seeds :meth:`holds`."""
        for _ in range(max_evals):
            pts = [(s, e) for s, e in self.known.items() if 0 < e < math.inf and s > 0]
            below = [s for s, e in self.known.items() if e < level]
            above = [s for s, e in self.known.items() if e >= level]
            a, b = (max(above) if above else None), (min(below) if below else None)
            if a is not None and b is not None and b <= a * (1 + rel):
                return
            if not pts:
                g = 20.0
            else:
                pts.sort(key=lambda p: abs(math.log(p[1] / level)))
                (s1, e1) = pts[0]
                slope = -1.0  # ε ~ 1/σ away from the extremes
                if len(pts) > 1:
                    (s2, e2) = pts[1]
                    if s2 != s1 and e2 != e1:
                        slope = math.log(e1 / e2) / math.log(s1 / s2)
                    if not slope < 0:
                        slope = -1.0
                step = math.log(level / e1) / slope  # log σ from s1 to the estimated root
                # aim a little past the estimated root, so that the next point lands across it
                step += math.copysign(max(rel / 4, abs(step) / 16), step if step != 0 else (1.0 if e1 >= level else -1.0))
                g = s1 * math.exp(max(min(step, 3.0), -3.0))
            if a is not None and b is not None and not a < g < b:
                g = math.sqrt(a * b)
            if g > 2 * MAX_SIGMA or g in self.known:
                return
            self(g)


@functools.lru_cache(maxsize=4096)
def noise_multiplier_for(
    target_epsilon: float, delta: float, q: float, steps: int, accountant: str = "rdp", tolerance: float = EPSILON_TOLERANCE
) -> float:
    """σ that reaches ``target_epsilon`` at ``delta`` after ``steps`` Poisson-Gaussian steps at rate ``q``.

    The σ Opacus's ``get_noise_multiplier`` returns, found with fewer and cheaper ε
    evaluations: its search (σ doubled from 20 until ε ≤ target, then bisected on [0, σ] until
    ε is within ``tolerance`` below the target) is replayed step for step, but each comparison
    it makes is decided from σ's already evaluated wherever ε's monotonicity in σ decides it.
    Those are seeded by secant steps on log ε against log σ that bracket the two levels the
    search compares with (the target, and the target less ``tolerance``), so a comparison is
    evaluated only when its σ falls within such a bracket (:data:`SEED_WIDTH`). Each ε is
    :func:`epsilon_curve` (Opacus's accountant). Cached per (target, δ, q, steps, accountant).

    Raises:
        ValueError: no σ up to :data:`MAX_SIGMA` reaches the target (Opacus's "The privacy
            budget is too low.").
    """
    f = _Monotone(epsilon_curve(q, steps, delta, accountant))
    sigma_low, sigma_high = 0, 10
    while True:
        sigma_high = 2 * sigma_high
        reached = f.holds(sigma_high, lambda e: e <= target_epsilon)
        if sigma_high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
        if reached:
            break
    # seed both levels the bisection compares with: the target, and the target less the tolerance
    for level in (target_epsilon, target_epsilon - tolerance):
        if level > 0:
            f.approach(level)
    while f.holds(sigma_high, lambda e: target_epsilon - e > tolerance):
        sigma = (sigma_low + sigma_high) / 2
        if f.holds(sigma, lambda e: e < target_epsilon):
            sigma_high = sigma
        else:
            sigma_low = sigma
    return float(sigma_high)
