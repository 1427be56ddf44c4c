"""Time K reference federations (vectorised) against one target federation, in one run.

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_reference.py
    python benchmarks/bench_reference.py --dataset breast_cancer --defense dp_sgd

The cells are those of ``experiments/membership.yaml`` (same model, FL settings and
defenses). Timings on a shared machine are noisy, so the script prints *ratios* against
the target federation measured in the same run (median of ``--repeats``). Target: K = 16
reference federations ≤ 4× one target federation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.data import build_federation
from bench.federated import run_federated
from bench.models import MODELS, build_model
from bench.reference import make_many_simulator, reference_splits
from bench.runner import make_defenses, make_simulator
from bench.seeding import Seeds
from bench.suite import load_suite

SUITE = Path(__file__).resolve().parents[1] / "experiments" / "membership.yaml"
DEFENSE_LABELS = {"none": "no defense", "dp_sgd": "dp_sgd(eps=8", "client_dp": "client_dp", "secure_aggregation": "secure_aggregation"}


def pick_cell(dataset: str, defense: str):
    for cell in load_suite(str(SUITE)).cells:
        cfg = cell.config
        if cfg.data.name == dataset and cfg.seed == 0 and DEFENSE_LABELS[defense] in cell.name and any(a.name == "lira" for a in cfg.attacks):
            return cfg
    raise SystemExit(f"no {dataset}/{defense} LiRA cell in {SUITE}")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="heart_disease", choices=["heart_disease", "breast_cancer"])
    ap.add_argument("--defense", default="none", choices=sorted(DEFENSE_LABELS))
    ap.add_argument("-k", "--references", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequential", action="store_true", help="also time K sequential simulate() calls (slow)")
    args = ap.parse_args()

    cfg = pick_cell(args.dataset, args.defense)
    seeds = Seeds(cfg.seed)
    fed, _ = build_federation(cfg.data, seeds)
    model_fn = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
    sizes = {s.name: len(s.train) for s in fed.sites}
    pop = fed.population
    splits, _ = reference_splits(len(pop), sizes, args.references, np.random.default_rng(0))
    site_records = [{n: pop.take(ix) for n, ix in sp.items()} for sp in splits]
    ref_seeds = list(range(100, 100 + args.references))
    many, why = make_many_simulator(cfg, fed.info)
    if many is None:
        raise SystemExit(f"not vectorisable: {why}")

    def target(evaluate: bool) -> None:
        initial = build_model(fed.info, cfg.model, seeds.torch("init"))
        run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=evaluate)

    many(site_records[:1], ref_seeds[:1])  # warm-up (torch.func tracing, Opacus imports)
    target(False)
    rows = {"target": [], "target_eval": [], "vectorised": []}
    for _ in range(args.repeats):
        rows["target"].append(timed(lambda: target(False)))
        rows["target_eval"].append(timed(lambda: target(True)))
        rows["vectorised"].append(timed(lambda: many(site_records, ref_seeds)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"cell: {cfg.label()}  model={cfg.model.name}{list(cfg.model.hidden) if cfg.model.name == 'mlp' else ''} "
          f"rounds={cfg.train.rounds} local_epochs={cfg.train.local_epochs} batch={cfg.train.batch_size} sites={sizes}")
    print(f"one target federation (no evaluation):   {med['target']:.3f} s")
    print(f"one target federation (with evaluation): {med['target_eval']:.3f} s")
    print(f"K={args.references} reference federations, vectorised: {med['vectorised']:.3f} s")
    print(f"ratio K={args.references} vectorised / one target (no eval):   {med['vectorised'] / med['target']:.2f}x  (target <= 4x)")
    print(f"ratio K={args.references} vectorised / one target (with eval): {med['vectorised'] / med['target_eval']:.2f}x")
    if args.sequential:
        sim = make_simulator(cfg, fed, model_fn)
        seq = timed(lambda: [sim(sr, s) for sr, s in zip(site_records, ref_seeds)])
        print(f"K={args.references} reference federations, sequential simulate(): {seq:.3f} s  "
              f"({seq / med['target']:.2f}x one target; vectorised speed-up {seq / med['vectorised']:.1f}x)")


if __name__ == "__main__":
    main()
