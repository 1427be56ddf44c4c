"""Time K reference federations (vectorised) against one target federation, in one run.

Usage::

    PRIVBENCH_DATA_DIR=/path/to/uci-heart-disease python benchmarks/bench_reference.py
    python benchmarks/bench_reference.py --dataset breast_cancer --defense dp_sgd

The cells are those of ``experiments/membership.yaml`` (same model, FL settings and
defenses). Timings on a shared machine are noisy, so the script prints *ratios* against
the target federation measured in the same run (median of ``--repeats``). Target: K = 16
reference federations ≤ 4× one target federation.

``--part design`` (issue 24 item 5) instead compares LiRA's two reference designs on one
target — heart disease pooled into one hospital (``partition: iid, num_sites: 1``), MLP [64],
SGD lr 0.1, batch 16, 20 rounds × 2 local epochs, no defense, 368 members / 368 non-members —
over ``--seeds`` paired seeds (same target, same reference seed per seed)::

    PRIVBENCH_DATA_DIR=... python benchmarks/bench_reference.py --part design --seeds 20

It prints per seed LiRA's (online, fixed variance) TPR at 1 % and 0 % FPR with independent
and with paired references, RMIA's (online) with paired references, and the correlation of a
complementary pair's signals on the same record; then means, pooled Clopper–Pearson
intervals, the paired difference's 95 % t-interval and the seeds won by each design.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

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


def pooled_target(seed: int):
    """The issue's LiRA target: heart disease in one hospital, MLP [64], 20 rounds × 2 epochs."""
    from bench.config import parse_experiment

    raw = {"data": {"name": "heart_disease", "partition": "iid", "num_sites": 1, "data_dir": os.environ["PRIVBENCH_DATA_DIR"],
                    "download": False},
           "model": {"name": "mlp", "hidden": [64]}, "defenses": [], "attacks": [], "seed": seed,
           "train": {"rounds": 20, "local_epochs": 2, "batch_size": 16, "optimizer": "sgd", "lr": 0.1}}
    return parse_experiment(raw)


def pair_correlation(sig) -> float:
    """Correlation of the "in" and the "out" model of each complementary pair on the same
    record, each centred on the record's own mean over the pairs (paired signals only)."""
    a, b, ia = sig.reference[0::2], sig.reference[1::2], sig.included[0::2]
    rin, rout = np.where(ia, a, b), np.where(ia, b, a)
    rin, rout = rin - rin.mean(0), rout - rout.mean(0)
    return float((rin * rout).sum() / np.sqrt((rin ** 2).sum() * (rout ** 2).sum()))


def design_part(n_seeds: int, k: int) -> None:
    """LiRA with independent vs paired references on the pooled heart target, paired by seed."""
    from attacks.membership.lira import LiRA
    from attacks.membership.rmia import RMIA
    from bench.metrics.membership import clopper_pearson, membership_metrics
    from bench.reference import ReferenceCache
    from bench.types import OutsiderView

    torch.set_num_threads(1)
    cols = {"lira independent": [], "lira paired": [], "rmia paired": [], "rmia independent": []}
    tp0 = {c: [] for c in cols}
    aucs = {c: [] for c in cols}
    members = None
    print("| seed | LiRA TPR@1% independent | LiRA TPR@1% paired | RMIA TPR@1% paired / independent | "
          "LiRA TPR@0% independent / paired | corr(in, out) within a pair |")
    print("|---|---|---|---|---|---|")
    for seed in range(n_seeds):
        cfg = pooled_target(seed)
        seeds = Seeds(seed)
        fed, truth = build_federation(cfg.data, seeds)
        rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), [], cfg.train, cfg.privacy, seeds, evaluate=False)
        many, _ = make_many_simulator(cfg, fed.info)
        model_fn = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
        sizes = {s.name: len(s.train) for s in fed.sites}
        # the runner's reference seed, so these are the numbers a cell of this target logs
        cache = ReferenceCache(model_fn, rec.final_params, fed.population, sizes, seeds.int_seed("reference"), many, None)
        view = OutsiderView(info=fed.info, model_fn=model_fn, final_params=rec.final_params, candidates=fed.candidates,
                            population=fed.population, site_sizes=sizes, reference_signals=cache)
        attacks = {"lira independent": LiRA(LiRA.Params(num_references=k, fixed_variance=True, reference_design="independent")),
                   "lira paired": LiRA(LiRA.Params(num_references=k, fixed_variance=True, reference_design="paired")),
                   "rmia paired": RMIA(RMIA.Params(num_references=k)),
                   "rmia independent": RMIA(RMIA.Params(num_references=k, reference_design="independent"))}
        is_member = truth.candidate_is_member
        members = int(is_member.sum())
        for name, attack in attacks.items():
            out = attack.run(view, seeds.rng("attack", name.split()[0]))
            m = membership_metrics(out.scores, is_member)
            cols[name].append(m["tpr_at_fpr_0.01"])
            aucs[name].append(m["auc"])
            from bench.metrics.membership import tpr_at_fpr_ci

            tp0[name].append(tpr_at_fpr_ci(out.scores, is_member, 0.0)[0])
        print(f"| {seed} | {cols['lira independent'][-1]:.3f} | {cols['lira paired'][-1]:.3f} | {cols['rmia paired'][-1]:.3f} / {cols['rmia independent'][-1]:.3f} | "
              f"{tp0['lira independent'][-1]:.3f} / {tp0['lira paired'][-1]:.3f} | {pair_correlation(cache(k)):+.2f} |", flush=True)
    print()
    print(f"{n_seeds} seeds, K = {k}, {members} members / {len(is_member) - members} non-members, load average {os.getloadavg()}")
    print("| attack | mean TPR@1%FPR [pooled Clopper–Pearson 95%] | mean TPR@0%FPR | mean AUC |")
    print("|---|---|---|---|")
    for name in cols:
        hits = int(round(sum(cols[name]) * members))
        lo, hi = clopper_pearson(hits, members * n_seeds)
        print(f"| {name} | {statistics.mean(cols[name]):.3f} [{lo:.3f}, {hi:.3f}] | {statistics.mean(tp0[name]):.3f} | "
              f"{statistics.mean(aucs[name]):.3f} |")
    from scipy import stats

    for attack in ("lira", "rmia"):
        d = np.asarray(cols[f"{attack} independent"]) - np.asarray(cols[f"{attack} paired"])
        half = stats.t.ppf(0.975, n_seeds - 1) * d.std(ddof=1) / np.sqrt(n_seeds) if n_seeds > 1 else float("nan")
        wins = int((d > 0).sum()), int((d < 0).sum())
        sign_p = stats.binomtest(wins[0], wins[0] + wins[1]).pvalue if sum(wins) else float("nan")
        print(f"{attack} TPR@1%FPR independent − paired: {d.mean():+.4f} [95% t-interval {d.mean() - half:+.4f}, {d.mean() + half:+.4f}]; "
              f"independent higher on {wins[0]} seeds, paired on {wins[1]}, ties {n_seeds - sum(wins)} (sign test p = {sign_p:.3f})")


def digits_cell(model: dict, defense: str, rounds: int):
    """The digits cells of ``benchmarks/bench_fedavg_dp.py`` (3 IID hospitals, batch 16, one local
    epoch, SGD lr 0.1) with ``rounds`` rounds."""
    from bench.config import parse_experiment

    defenses = {"none": [], "dp_sgd": [{"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}]}
    if defense not in defenses:
        raise SystemExit(f"--dataset digits_*: --defense none or dp_sgd, not {defense}")
    return parse_experiment({"data": {"name": "digits", "partition": "iid", "num_sites": 3}, "model": model,
                             "defenses": defenses[defense], "attacks": [], "seed": 0,
                             "train": {"rounds": rounds, "local_epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.1}})


DIGITS = {"digits_cnn": {"name": "cnn", "channels": 8}, "digits_mlp": {"name": "mlp", "hidden": [256, 256]}}


def both_clocks(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process: every thread) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def ratio_part(args) -> None:
    """K reference federations, in one stack (one thread, as before) and in blocks on
    ``--threads`` threads, against one target federation; wall and CPU time, interleaved."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.reference import PARALLEL_MIN_MACS, block_count, blocks, macs_per_record, reference_threads

    torch.set_num_threads(1)  # a cell's intra-op pool (bench.executors.CELL_THREADS)
    load0 = os.getloadavg()
    if args.dataset in DIGITS:
        cfg = digits_cell(DIGITS[args.dataset], args.defense, args.rounds)
    else:
        cfg = pick_cell(args.dataset, args.defense)
    seeds = Seeds(cfg.seed)
    fed, _ = build_federation(cfg.data, seeds)
    model_fn = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
    sizes = {s.name: len(s.train) for s in fed.sites}
    pop = fed.population
    splits, _ = reference_splits(len(pop), sizes, args.references, np.random.default_rng(0))
    site_records = [{n: pop.take(ix) for n, ix in sp.items()} for sp in splits]
    ref_seeds = list(range(100, 100 + args.references))
    probe = build_model(fed.info, cfg.model, seeds.torch("init"))
    macs = macs_per_record(probe, fed.info.input_shape)
    default = reference_threads([s.name for s in cfg.defenses], args.references, macs)
    # compare blocks with one stack even when the load rule would pick one stack right now
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    unloaded = 1 if default == 1 and (macs < PARALLEL_MIN_MACS or args.defense == "dp_sgd") else min(cpus, 4, args.references // 2)
    threads = args.threads or unloaded
    serial, why = make_many_simulator(cfg, fed.info, threads=1)
    parallel, _ = make_many_simulator(cfg, fed.info, threads=threads)
    if serial is None:
        raise SystemExit(f"not vectorisable: {why}")

    def target(evaluate: bool) -> None:
        initial = build_model(fed.info, cfg.model, seeds.torch("init"))
        run_federated(fed, initial, make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=evaluate)

    serial(site_records[:1], ref_seeds[:1])  # warm-up (kernels, Opacus imports)
    target(False)
    same = torch.equal(serial(site_records, ref_seeds), parallel(site_records, ref_seeds))
    parts = blocks(len(site_records), block_count(len(site_records), threads, any(isinstance(m, torch.nn.Conv2d) for m in probe.modules())))

    def block_cpu() -> float:
        """The parallel path's critical path: the largest thread CPU time of one block (each
        block is what a thread of ``parallel`` runs); on an idle machine its wall time."""
        def one(lo_hi):
            t0 = time.thread_time()
            serial(site_records[lo_hi[0]:lo_hi[1]], ref_seeds[lo_hi[0]:lo_hi[1]])
            return time.thread_time() - t0
        with ThreadPoolExecutor(len(parts)) as pool:
            return max(pool.map(one, parts))

    rows = {"target": [], "target_eval": [], "serial": [], "parallel": [], "block": []}
    for _ in range(args.repeats):  # interleaved: a load change hits every column alike
        rows["target"].append(both_clocks(lambda: target(False)))
        rows["target_eval"].append(both_clocks(lambda: target(True)))
        rows["serial"].append(both_clocks(lambda: serial(site_records, ref_seeds)))
        rows["parallel"].append(both_clocks(lambda: parallel(site_records, ref_seeds)))
        rows["block"].append((0.0, block_cpu()))
    wall = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
    k = args.references
    model = f"{cfg.model.name}{list(cfg.model.hidden) if cfg.model.name == 'mlp' else ''}"
    print(f"cell: {args.dataset} {args.defense} model={model} rounds={cfg.train.rounds} local_epochs={cfg.train.local_epochs} "
          f"batch={cfg.train.batch_size} sites={sizes}; {macs} multiply-adds per record (default threads now {default}, at this load); "
          f"median of {args.repeats}; load average before {load0}, after {os.getloadavg()}")
    print(f"one target federation (no evaluation): wall {wall['target']:.3f} s, CPU {cpu['target']:.3f} s; with evaluation: wall "
          f"{wall['target_eval']:.3f} s")
    print(f"K={k} references, one stack (1 thread):  wall {wall['serial']:.3f} s, CPU {cpu['serial']:.3f} s")
    print(f"K={k} references, {len(parts)} blocks/threads:   wall {wall['parallel']:.3f} s, CPU {cpu['parallel']:.3f} s; "
          f"identical to one stack: {same}; largest block's thread CPU {cpu['block']:.3f} s")
    print("| cell | defense | model | target wall s | K refs one stack ÷ target (wall) | K refs in blocks ÷ target (wall) | "
          "one stack ÷ target (CPU) | blocks ÷ target (CPU) | largest block's thread CPU ÷ target CPU | identical |")
    print(f"| {args.dataset} | {args.defense} | {model} | {wall['target']:.3f} | {wall['serial'] / wall['target']:.2f}x | "
          f"**{wall['parallel'] / wall['target']:.2f}x** ({len(parts)} blocks) | {cpu['serial'] / cpu['target']:.2f}x | "
          f"{cpu['parallel'] / cpu['target']:.2f}x | {cpu['block'] / cpu['target']:.2f}x | {same} |")
    if args.sequential:
        sim = make_simulator(cfg, fed, model_fn)
        seq = timed(lambda: [sim(sr, s) for sr, s in zip(site_records, ref_seeds)])
        print(f"K={k} reference federations, sequential simulate(): {seq:.3f} s  "
              f"({seq / wall['target']:.2f}x one target; one-stack speed-up {seq / wall['serial']:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="ratio", choices=["ratio", "design"],
                    help="ratio: K references vs one target (default); design: LiRA's reference designs (issue 24)")
    ap.add_argument("--seeds", type=int, default=20, help="--part design: seeds 0..N-1")
    ap.add_argument("--dataset", default="heart_disease", choices=["heart_disease", "breast_cancer", *DIGITS],
                    help="heart_disease / breast_cancer: the membership suite's cell; digits_cnn / digits_mlp: "
                         "bench_fedavg_dp.py's digits cells (CNN 8 channels, MLP [256, 256])")
    ap.add_argument("--rounds", type=int, default=6, help="digits cells: rounds (the membership cells keep their 20)")
    ap.add_argument("--threads", type=int, default=0, help="reference blocks side by side (default: bench.reference.reference_threads)")
    ap.add_argument("--defense", default="none", choices=sorted(DEFENSE_LABELS))
    ap.add_argument("-k", "--references", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sequential", action="store_true", help="also time K sequential simulate() calls (slow)")
    args = ap.parse_args()
    if args.part == "design":
        design_part(args.seeds, args.references)
        return

    ratio_part(args)


if __name__ == "__main__":
    main()
