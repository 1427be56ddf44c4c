"""What DP-SGD costs in a whole FedAvg round, and what K = 16 reference federations cost,
now that both run bench.engine (issue 15), side by side in one run.

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease nice python benchmarks/bench_fedavg_dp.py
    ... --quick     # fewer rounds and repeats

Table 1, one FedAvg round (``run_federated``, no evaluation): plain vs ``dp_sgd`` with the
default ``grad_sample_mode: auto`` (bench.engine) vs ``grad_sample_mode: ew`` (Opacus), for
heart disease + logreg (natural partition: 4 hospitals), breast cancer + MLP [32], digits +
CNN and digits + MLP [256, 256]; batch 16, one local epoch, σ = 1, C = 1, SGD lr 0.1.
Each number is the thread CPU time of one round (round 2 onwards: set-up excluded), the
minimum over rounds and repeats, the three columns interleaved.

Table 2, K = 16 reference federations (``bench.reference.train_many``, what LiRA/RMIA train)
vs one target federation (``run_federated``), same cell, whole runs of ``--rounds`` rounds,
without a defense and with dp_sgd.

Time is each thread's CPU time (``time.thread_time``): other processes on a shared machine
do not add to it (they still slow caches); compare the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from bench.config import parse_experiment
from bench.data import build_federation
from bench.federated import run_federated
from bench.models import build_model
from bench.reference import train_many
from bench.runner import make_defenses
from bench.seeding import Seeds

warnings.filterwarnings("ignore")

DP = {"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
CELLS = {
    "heart disease, logreg": ({"name": "heart_disease", "partition": "natural", "download": False}, {"name": "logreg"}),
    "breast cancer, mlp [32]": ({"name": "breast_cancer", "partition": "iid", "num_sites": 3}, {"name": "mlp", "hidden": [32]}),
    "digits, cnn (8 channels)": ({"name": "digits", "partition": "iid", "num_sites": 3}, {"name": "cnn", "channels": 8}),
    "digits, mlp [256, 256]": ({"name": "digits", "partition": "iid", "num_sites": 3}, {"name": "mlp", "hidden": [256, 256]}),
}


def cfg_for(cell: str, defenses: list, rounds: int):
    data, model = CELLS[cell]
    data = dict(data)
    if data["name"] == "heart_disease":
        data["data_dir"] = os.environ["PRIVBENCH_DATA_DIR"]
    raw = {"data": data, "model": model, "defenses": defenses, "attacks": [], "seed": 0,
           "train": {"rounds": rounds, "local_epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.1}}
    return parse_experiment(raw)


def round_seconds(cfg, fed) -> float:
    """Least thread CPU time of one round (rounds 2.. of one run)."""
    seeds = Seeds(0)
    marks = []
    run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), make_defenses(cfg), cfg.train, cfg.privacy,
                  seeds, on_round=lambda r: marks.append(time.thread_time()), evaluate=False)
    return min(b - a for a, b in zip(marks, marks[1:]))


def fedavg_table(rounds: int, repeats: int) -> list[str]:
    rows = ["| one FedAvg round | hospitals (records) | plain ms | dp_sgd engine (default) | dp_sgd Opacus ew |", "|---|---|---|---|---|"]
    for cell in CELLS:
        variants = {"plain": [], "engine": [{**DP}], "ew": [{**DP, "grad_sample_mode": "ew"}]}
        cfgs = {k: cfg_for(cell, d, rounds) for k, d in variants.items()}
        fed, _ = build_federation(cfgs["plain"].data, Seeds(0))
        best = {k: float("inf") for k in variants}
        for _ in range(repeats):
            for k, cfg in cfgs.items():
                best[k] = min(best[k], round_seconds(cfg, fed))
        sizes = ", ".join(str(len(s.train)) for s in fed.sites)
        p = best["plain"]
        rows.append(f"| {cell} | {len(fed.sites)} ({sizes}) | {p * 1e3:.2f} | **{best['engine'] / p:.2f}x** | {best['ew'] / p:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def reference_table(k: int, rounds: int, repeats: int) -> list[str]:
    rows = [f"| cell ({rounds} rounds) | defense | target ms | K={k} references ms | ratio |", "|---|---|---|---|---|"]
    for cell in CELLS:
        for label, defenses in (("none", []), ("dp_sgd", [DP])):
            cfg = cfg_for(cell, defenses, rounds)
            fed, _ = build_federation(cfg.data, Seeds(0))
            sites = {s.name: s.train for s in fed.sites}
            t_best, r_best = float("inf"), float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                run_federated(fed, build_model(fed.info, cfg.model, Seeds(0).torch("init")), make_defenses(cfg), cfg.train,
                              cfg.privacy, Seeds(0), evaluate=False)
                t_best = min(t_best, time.thread_time() - t0)
                t0 = time.thread_time()
                train_many([sites] * k, list(range(k)), fed.info, cfg.model, cfg.train, cfg.privacy,
                           [(s.name, d) for s, d in zip(cfg.defenses, make_defenses(cfg))])
                r_best = min(r_best, time.thread_time() - t0)
            rows.append(f"| {cell} | {label} | {t_best * 1e3:.0f} | {r_best * 1e3:.0f} | **{r_best / t_best:.2f}x** |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.repeats = 4, 1
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()}", flush=True)
    out = fedavg_table(args.rounds, args.repeats)
    out += [""] + reference_table(args.k, args.rounds, args.repeats)
    print(f"load average at the end {os.getloadavg()}", flush=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
