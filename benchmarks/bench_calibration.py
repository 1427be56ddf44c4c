"""Noise calibration (σ for a target ε): Opacus's ``get_noise_multiplier`` against
``bench.accounting.noise_multiplier_for`` (what ``dp_sgd`` calls), measured in one run.

The settings are the membership suite's DP-SGD hospitals (``experiments/membership.yaml``: UCI
heart disease, 20 rounds of 2 local epochs, batch 16, δ = min(1e-5, 1/(100 n))): n = 122, 117,
49 and 80 training records. For each hospital, ε ∈ {1, 4, 8} and accountant, both functions
run back to back from a cold cache (``noise_multiplier_for``'s caches cleared first; Opacus
has none), ``--repeat`` times, median shown, and the two σ are compared bit for bit.

Usage (from the repository root)::

    python benchmarks/bench_calibration.py [--repeat 3] [--accountants rdp,prv]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

import bench.accounting as accounting  # noqa: E402
from bench.accounting import default_delta, noise_multiplier_for  # noqa: E402
from defenses.dp_sgd import sample_rate, steps_per_round  # noqa: E402

HOSPITALS = {"cleveland": 122, "hungary": 117, "switzerland": 49, "va_long_beach": 80}
ROUNDS, EPOCHS, BATCH = 20, 2, 16


def cold() -> None:
    noise_multiplier_for.cache_clear()
    accounting._rdp_per_step.cache_clear()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--accountants", default="rdp,prv")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    noise_multiplier_for(1.0, 1e-5, 0.1, 10, "rdp")  # imports (Opacus, SciPy) outside the timings
    print(f"{'accountant':<10} {'hospital':<14} {'n':>4} {'q':>6} {'steps':>5} {'eps':>4} {'sigma':>10} "
          f"{'opacus ms':>10} {'new ms':>8} {'ratio':>7} same")
    worst: dict[tuple[str, float], float] = {}
    for acc in args.accountants.split(","):
        for eps in (1.0, 4.0, 8.0):
            for name, n in HOSPITALS.items():
                q, steps, delta = sample_rate(n, BATCH), ROUNDS * steps_per_round(n, BATCH, EPOCHS), default_delta(n)
                t_old, t_new, same = [], [], True
                for _ in range(args.repeat):
                    old, dt = timed(lambda: get_noise_multiplier(
                        target_epsilon=eps, target_delta=delta, sample_rate=q, steps=steps, accountant=acc))
                    t_old.append(dt)
                    cold()
                    new, dt = timed(lambda: noise_multiplier_for(eps, delta, q, steps, acc))
                    t_new.append(dt)
                    same &= float(old) == new
                mo, mn = statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3
                worst[(acc, eps)] = max(worst.get((acc, eps), 0.0), mn)
                print(f"{acc:<10} {name:<14} {n:>4} {q:>6.3f} {steps:>5} {eps:>4g} {new:>10.6g} "
                      f"{mo:>10.1f} {mn:>8.1f} {mo / mn:>6.1f}x {'yes' if same else 'NO'}", flush=True)
    print()
    for (acc, eps), ms in worst.items():
        print(f"slowest hospital, {acc}, eps={eps:g}: {ms:.1f} ms (cold cache)")
    cold()
    noise_multiplier_for(8.0, default_delta(122), sample_rate(122, BATCH), ROUNDS * steps_per_round(122, BATCH, EPOCHS), "rdp")
    _, dt = timed(lambda: noise_multiplier_for(8.0, default_delta(122), sample_rate(122, BATCH),
                                               ROUNDS * steps_per_round(122, BATCH, EPOCHS), "rdp"))
    print(f"cached (same hospital, cell or seed again): {dt * 1e6:.1f} us")


if __name__ == "__main__":
    main()
