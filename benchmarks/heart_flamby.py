"""FedAvg and pooled training on UCI Heart Disease (4 real hospitals), next to FLamby.

Reproduces the Fed-Heart-Disease comparison of FLamby (du Terrail et al., NeurIPS 2022
Datasets & Benchmarks) with privbench's own pipeline:

* **FedAvg** (logistic regression, and an MLP with 64 hidden units): one privbench cell per
  seed through :func:`bench.runner.run_in_memory`, exactly the no-defense cells of
  ``experiments/heart_disease.yaml`` (without their attacks, which do not change training).
* **Pooled** (centralised) baselines trained on the *union of the same member records*
  (same seed, same split, same initial weights), evaluated on the same per-hospital test
  sets:

  - ``pooled (same budget)``: the FedAvg optimizer and budget (SGD, lr, batch size,
    rounds x local epochs = the same number of passes over every member record);
  - ``pooled (FLamby recipe)``: FLamby's pooled baseline (Adam, lr 1e-3, batch 4, 50 epochs).

Training settings are FLamby's, not tuned here (see ``docs/bench-heart.md``): SGD, lr 1e-3,
batch 4, 15 rounds, and 4 local epochs, which is FLamby's 100 local updates per round for
the two large hospitals (25 batches of 4 per epoch).

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/heart_flamby.py
    python benchmarks/heart_flamby.py --data-dir /path/to/uci-heart-disease --seeds 0 1 2 3 4
    python benchmarks/heart_flamby.py --member-fraction 0.8    # ~486 training records, as FLamby

About 30 s on 2 cores for 5 seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.config import parse_experiment  # noqa: E402
from bench.data import build_federation  # noqa: E402
from bench.executors import CELL_THREADS  # noqa: E402
from bench.federated import run_federated  # noqa: E402
from bench.metrics import utility_metrics  # noqa: E402
from bench.models import MODELS, build_model  # noqa: E402
from bench.runner import run_in_memory  # noqa: E402
from bench.seeding import Seeds  # noqa: E402
from bench.types import Federation, Records, Site  # noqa: E402

# FLamby's Fed-Heart-Disease settings (flamby/datasets/fed_heart_disease/common.py,
# flamby/benchmarks/fed_benchmark.py): BATCH_SIZE 4, pooled Adam lr 1e-3 x 50 epochs;
# FedAvg: SGD lr 1e-3, num_updates 100 local steps per round,
# get_nb_max_rounds(100) = (486 // 4 // 4) * 50 // 100 = 15 rounds.
FLAMBY_TRAIN = {"rounds": 15, "local_epochs": 4, "batch_size": 4, "optimizer": "sgd", "lr": 0.001}
FLAMBY_POOLED = {"rounds": 1, "local_epochs": 50, "batch_size": 4, "optimizer": "adam", "lr": 0.001}
TEST_FRACTION = 0.34  # FLamby: train_fraction 0.66 per centre, stratified by label

# FLamby's committed results for the final code version (per-centre standardisation,
# 13 features, 740 records), seeds 42-46: flamby/results/results_benchmark_fed_heart_disease/
# heart_seed{42..46}.csv in github.com/owkin/FLamby. Accuracy at threshold 0.5.
# (pooled test, [client_test_0..3]) per seed.
FLAMBY = {
    "FedAvg (SGD lr 1e-3, 15 x 100 updates)": [
        (0.7755905511811023, [0.7596153846153846, 0.8202247191011236, 0.6875, 0.7555555555555555]),
        (0.7716535433070866, [0.7211538461538461, 0.7865168539325843, 0.875, 0.8222222222222222]),
        (0.7795275590551181, [0.75, 0.797752808988764, 0.9375, 0.7555555555555555]),
        (0.7007874015748031, [0.7307692307692307, 0.6741573033707865, 0.75, 0.6222222222222222]),
        (0.7598425196850394, [0.7019230769230769, 0.7303370786516854, 0.5625, 0.7111111111111111]),
    ],
    "Pooled (Adam lr 1e-3, 50 epochs)": [
        (0.7913385826771654, [0.7788461538461539, 0.7865168539325843, 0.8125, 0.8222222222222222]),
        (0.7952755905511811, [0.7788461538461539, 0.797752808988764, 0.8125, 0.8222222222222222]),
        (0.7952755905511811, [0.7788461538461539, 0.797752808988764, 0.8125, 0.8222222222222222]),
        (0.7992125984251969, [0.7788461538461539, 0.7640449438202247, 0.75, 0.6444444444444445]),
        (0.7952755905511811, [0.7692307692307693, 0.7640449438202247, 0.75, 0.6444444444444445]),
    ],
}
FLAMBY_SITES = ("cleveland", "hungary", "switzerland", "va_long_beach")  # client 0..3


def default_data_dir() -> str:
    return os.environ.get("PRIVBENCH_DATA_DIR") or str((REPO / ".." / "shared" / "data" / "uci-heart-disease").resolve())


def experiment(model: str, seed: int, data_dir: str, member_fraction: float, train: dict | None = None):
    """The validated config of one FedAvg cell (what experiments/heart_disease.yaml runs)."""
    raw = {
        "data": {
            "name": "heart_disease",
            "partition": "natural",
            "test_fraction": TEST_FRACTION,
            "member_fraction": member_fraction,
            "data_dir": data_dir,
            "download": False,
        },
        "model": {"name": model, "hidden": [64]},
        "train": dict(train or FLAMBY_TRAIN),
        "seed": seed,
    }
    return parse_experiment(raw)


def summarise(metrics: dict, site_names) -> dict:
    sites = {s: metrics[f"utility/site/{s}/accuracy"] for s in site_names}
    return {
        "test_accuracy": metrics["utility/test_accuracy"],
        "balanced_accuracy": metrics["utility/test_balanced_accuracy"],
        "auroc": metrics["utility/test_auroc"],
        "mean_site_accuracy": statistics.fmean(sites.values()),
        "worst_site_accuracy": min(sites.values()),
        "sites": sites,
    }


def fedavg(cfg) -> tuple[dict, dict]:
    res = run_in_memory(cfg)
    fed, _ = build_federation(cfg.data, Seeds(cfg.seed))
    sizes = {s.name: len(s.train) for s in fed.sites}
    return summarise(res.metrics, fed.site_names), sizes


def pooled(cfg, train: dict) -> dict:
    """Centralised training on the union of the federation's member records.

    Same seed -> same split, same test records, same initial weights as the FedAvg cell; a
    federation with one site holding every member is plain mini-batch training on the union.
    Evaluated on the *original* federation, so per-hospital test accuracies line up.
    """
    seeds = Seeds(cfg.seed)
    fed, _ = build_federation(cfg.data, seeds)
    union = Site(name="pooled", train=Records.concat([s.train for s in fed.sites]), test=fed.test)
    one = Federation(info=fed.info, sites=(union,), test=fed.test, candidates=fed.candidates, population=fed.population)
    train_cfg = dataclasses.replace(cfg.train, **train)
    initial = build_model(fed.info, cfg.model, seeds.torch("init"))
    rec = run_federated(one, initial, [], train_cfg, cfg.privacy, seeds, evaluate=False)
    model = MODELS.get(cfg.model.name).build(fed.info, cfg.model)
    return summarise(utility_metrics(model, rec.final_params, fed), fed.site_names)


def mean_std(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


COLUMNS = ("test_accuracy", "balanced_accuracy", "mean_site_accuracy", "worst_site_accuracy", "auroc")


def print_tables(rows: dict[str, list[dict]], sizes: dict, seeds, member_fraction: float) -> None:
    n_train = sum(sizes.values())
    print(f"\n## privbench, seeds {list(seeds)}: mean ± std (sample std over seeds)\n")
    print(f"members (training records) per hospital: {sizes} (total {n_train}); "
          f"test_fraction {TEST_FRACTION}, member_fraction {member_fraction}\n")
    print("| method | test acc | balanced acc | mean of hospitals' acc | worst hospital acc | AUROC |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | " + " | ".join(mean_std(r[c] for r in runs) for c in COLUMNS) + " |")
    print("\n### accuracy per hospital (mean ± std)\n")
    site_names = list(next(iter(rows.values()))[0]["sites"])
    print("| method | " + " | ".join(site_names) + " |")
    print("|---|" + "---|" * len(site_names))
    for name, runs in rows.items():
        print(f"| {name} | " + " | ".join(mean_std(r["sites"][s] for r in runs) for s in site_names) + " |")

    print("\n## FLamby's published runs (5 seeds, 42-46; results CSVs in owkin/FLamby)\n")
    print("740 records (rows with any missing value dropped; slope/ca/thal removed), 13 features, "
          "486 training records, per-centre standardisation, accuracy at 0.5.\n")
    print("| method | pooled test acc | mean of hospitals' acc | worst hospital acc | " + " | ".join(FLAMBY_SITES) + " |")
    print("|---|---|---|---|" + "---|" * len(FLAMBY_SITES))
    for name, runs in FLAMBY.items():
        cells = [mean_std(p for p, _ in runs), mean_std(statistics.fmean(c) for _, c in runs), mean_std(min(c) for _, c in runs)]
        cells += [mean_std(c[i] for _, c in runs) for i in range(len(FLAMBY_SITES))]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=default_data_dir(),
                    help="folder with UCI's processed.*.data files (default: $PRIVBENCH_DATA_DIR or ../shared/data/uci-heart-disease)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--models", nargs="+", default=["logreg", "mlp"], choices=["logreg", "mlp"])
    ap.add_argument("--member-fraction", type=float, default=0.5,
                    help="share of each hospital's non-test records that train (rest: non-members); 0.8 gives FLamby's ~486 training records")
    ap.add_argument("--json", metavar="FILE", help="also write every per-seed number to FILE")
    args = ap.parse_args(argv)

    torch.set_num_threads(CELL_THREADS)  # as `privbench run`: numbers do not depend on the core count
    t0 = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    sizes: dict = {}
    epochs = FLAMBY_TRAIN["rounds"] * FLAMBY_TRAIN["local_epochs"]
    for model in args.models:
        for seed in args.seeds:
            cfg = experiment(model, seed, args.data_dir, args.member_fraction)
            fa, sizes = fedavg(cfg)
            rows.setdefault(f"FedAvg {model}", []).append(fa)
            rows.setdefault(f"pooled {model} (same budget: SGD, {epochs} epochs)", []).append(pooled(cfg, FLAMBY_TRAIN))
            rows.setdefault(f"pooled {model} (FLamby recipe: Adam, {FLAMBY_POOLED['local_epochs']} epochs)", []).append(pooled(cfg, FLAMBY_POOLED))
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, data {args.data_dir}")
    print(f"FedAvg settings (FLamby's): {FLAMBY_TRAIN}; pooled FLamby recipe: {FLAMBY_POOLED}")
    print_tables(rows, sizes, args.seeds, args.member_fraction)
    print(f"\n{time.perf_counter() - t0:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "member_fraction": args.member_fraction, "sizes": sizes, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
