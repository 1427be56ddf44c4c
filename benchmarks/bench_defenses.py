"""Cost of the defenses, as ratios against a baseline measured in the same run.

1. DP-SGD (Opacus) local round time over the plain local round time, per model and per
   Opacus engine (expanded weights, hooks, ghost clipping), and the whole FedAvg round
   (all hospitals + aggregation) with and without ``dp_sgd``.
2. Secure aggregation (Bonawitz et al., one process, real cryptography) over plain
   aggregation for n ∈ {4, 16, 64} hospitals and d ∈ {10⁴, 10⁶} parameters, with bytes
   sent per client against the plain float32 update.

Usage::

    python benchmarks/bench_defenses.py            # the full table (about 2 minutes on 2 cores)
    python benchmarks/bench_defenses.py --quick    # d = 10⁴ only, fewer repeats

Timings on a shared machine are noisy: every ratio's numerator and denominator are measured
in the same run, each the median of several repeats.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.config import parse_experiment  # noqa: E402
from bench.data import build_federation  # noqa: E402
from bench.federated import local_settings, run_federated  # noqa: E402
from bench.models import build_model, flatten  # noqa: E402
from bench.seeding import Seeds  # noqa: E402
from bench.training import PlainTrainer  # noqa: E402
from defenses.base import ServerContext, weighted_sum  # noqa: E402
from defenses.dp_sgd import DPSGD, DPTrainer  # noqa: E402
from defenses.secure_aggregation import SecureAggregation  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


DP_CONFIGS = (
    # (dataset, model, hidden, batch size, local epochs); heart_disease only if its files are found
    ("heart_disease", "logreg", (32,), 16, 1),
    ("breast_cancer", "logreg", (32,), 16, 2),
    ("breast_cancer", "mlp", (64,), 16, 2),
    ("digits", "mlp", (256, 256), 64, 1),
    ("digits", "cnn", (32,), 32, 1),
)
MODES = ("ew", "hooks", "ghost")


def bench_dp_sgd(repeats: int) -> list[tuple]:
    """Median seconds of one local round (hospital 0) for plain training and each Opacus engine,
    and of one whole FedAvg round (4 hospitals, no evaluation) without / with ``dp_sgd`` (ew)."""
    rows = []
    for data, model, hidden, batch, epochs in DP_CONFIGS:
        if data == "heart_disease" and not os.environ.get("PRIVBENCH_DATA_DIR"):
            print("(heart_disease skipped: set PRIVBENCH_DATA_DIR to include it)")
            continue
        raw = {
            "data": {"name": data, "partition": "natural" if data == "heart_disease" else "iid", "num_sites": 4},
            "model": {"name": model, "hidden": list(hidden), "channels": 8},
            "train": {"rounds": 3, "local_epochs": epochs, "batch_size": batch, "lr": 0.1},
        }
        cfg = parse_experiment(raw)
        seeds = Seeds(0)
        fed, _ = build_federation(cfg.data, seeds)
        initial = build_model(fed.info, cfg.model, seeds.torch("init"))
        start = flatten(initial)
        site = fed.sites[0]
        settings = local_settings(cfg.train)
        plain = PlainTrainer(copy.deepcopy(initial), site.train, settings)
        trainers = {"plain": plain}
        for mode in MODES:
            trainers[mode] = DPTrainer(PlainTrainer(copy.deepcopy(initial), site.train, settings), 1.0, 1.0, "poisson", mode)
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        times = {}
        for name, t in trainers.items():
            t.train(start, gen())  # warm-up
            times[name] = median_time(lambda: t.train(start, gen()), repeats)

        def fedavg(defs):
            return run_federated(fed, initial, defs, cfg.train, cfg.privacy, Seeds(0), evaluate=False).seconds / cfg.train.rounds

        k = max(1, repeats // 3)
        f_plain = statistics.median(fedavg([]) for _ in range(k))
        f_dp = statistics.median(fedavg([DPSGD(DPSGD.Params(noise_multiplier=1.0))]) for _ in range(k))
        site_note = f"{site.name}, " if data == "heart_disease" else ""
        what = f"{data} {model}{list(hidden) if model == 'mlp' else ''} b={batch}, {site_note}n={len(site.train)}, {plain.steps_per_round()} steps"
        rows.append((what, times, f_plain, f_dp))
    return rows


def bench_secagg(ns, ds, repeats: int, neighbors: int | None = None) -> list[tuple]:
    rows = []
    for d in ds:
        for n in ns:
            g = torch.Generator().manual_seed(0)
            updates = {f"h{i}": torch.randn(d, generator=g) * 0.01 for i in range(n)}
            weights = {k: 1.0 / n for k in updates}
            ctx = lambda: ServerContext(round=1, participants=tuple(updates), generator=torch.Generator().manual_seed(0))  # noqa: E731
            t_plain = median_time(lambda: weighted_sum(updates, weights), max(3, repeats))
            reps = repeats if n * d <= 16 * 10**6 else 1  # the largest cells once
            secs, sent = [], []
            for _ in range(reps):
                sa = SecureAggregation(SecureAggregation.Params(neighbors=neighbors))
                sa.aggregate(updates, weights, ctx())
                m = sa.metrics()  # encode + protocol + decode of all parties, not the plain baseline
                secs.append(m["cost/secagg_seconds"])
                sent.append(m["cost/bytes_per_client"])
            rows.append((n, d, neighbors, t_plain, statistics.median(secs), statistics.median(sent), 4.0 * d))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d = 10^4 only, fewer repeats")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 7
    torch.set_num_threads(1)  # one core per simulated party; the machine is shared
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    print("\n## DP-SGD (Opacus, Poisson sampling, sigma=1, C=1) vs plain local training\n")
    print("| local round | plain s | ew | hooks | ghost | FedAvg round plain s | FedAvg round dp_sgd(ew) |")
    print("|---|---|---|---|---|---|---|")
    for what, times, f_plain, f_dp in bench_dp_sgd(repeats):
        p = times["plain"]
        cells = " | ".join(f"{times[m] / p:.2f}x" for m in MODES)
        print(f"| {what} | {p:.4f} | {cells} | {f_plain:.4f} | {f_dp / f_plain:.2f}x |")
    ds = (10**4,) if args.quick else (10**4, 10**6)
    print("\n## Secure aggregation (X25519, HKDF, AES-CTR masks, Shamir, AES-GCM; 32-bit ring) vs plain sum\n")
    print("| n | d | graph | plain sum s | secagg s | ratio | bytes/client | plain bytes | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = bench_secagg((4, 16, 64), ds, max(1, repeats // 2))
    rows += bench_secagg((64,), ds, max(1, repeats // 2), neighbors=8)
    for n, d, k, tp, ts, b, pb in rows:
        graph = "complete" if k is None else f"SecAgg+ k={k}"
        print(f"| {n} | {d:.0e} | {graph} | {tp:.4f} | {ts:.3f} | {ts / tp:.0f}x | {b:,.0f} | {pb:,.0f} | {b / pb:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
