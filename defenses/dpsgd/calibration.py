"""How many steps, at what rate, and how much noise: DP-SGD's numbers before training.

The Poisson sampling rate q = b/n, the local steps a round takes (as many as plain training),
and σ calibrated to a target ε (:func:`calibrate_noise`, with a cheap sufficient condition for
reachability, :func:`_surely_reachable`).
"""

from __future__ import annotations

import math


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / n (capped at 1: full-batch steps)."""
    return min(1.0, batch_size / max(n, 1))


def steps_per_round(n: int, batch_size: int, epochs: int) -> int:
    """Local steps per round: as many as :class:`bench.training.PlainTrainer` takes."""
    return epochs * ((n + batch_size - 1) // batch_size)


def _surely_reachable(target_epsilon: float, delta: float, steps: int, accountant: str) -> bool:
    """A cheap sufficient condition for :func:`calibrate_noise` to succeed.

    Opacus's search doubles σ from 10 and gives up above 10⁶. At σ = 20480 (on its way) the
    ε it reports is at most that of the *unsampled* Gaussian mechanism (q = 1 only adds
    privacy loss) converted from RDP the classic way, ε ≤ min_α α·T/(2σ²) + log(1/δ)/(α−1),
    over Opacus's own orders α (its conversion is tighter). PRV's estimate may exceed the
    exact ε by its error bound (0.01): 0.02 of slack. False only means "search to be sure"."""
    from opacus.accountants.rdp import RDPAccountant

    sigma = 20480.0
    bound = min(a * steps / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in RDPAccountant.DEFAULT_ALPHAS)
    return bound + (0.0 if accountant == "rdp" else 0.02) <= target_epsilon


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """σ that reaches ``target_epsilon`` at ``delta`` after ``steps`` Poisson-Gaussian steps.

    The σ Opacus's ``get_noise_multiplier`` returns (its search replayed with far fewer and
    cheaper ε evaluations, cached per (target, δ, q, steps, accountant):
    :func:`bench.accounting.noise_multiplier_for`; milliseconds with RDP where Opacus takes
    0.1–1.5 s).

    Raises:
        ValueError: no σ up to 10⁶ reaches the target.
    """
    from bench.accounting import noise_multiplier_for

    return noise_multiplier_for(float(target_epsilon), float(delta), float(q), int(steps), accountant)
