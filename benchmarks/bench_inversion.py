"""Speed of gradient inversion: iterations per second, batched against sequential restarts.

1. ``inverting_gradients`` on one digits record (batch 1, the small CNN, 2,000 iterations):
   the absolute time of one reconstruction with R restarts batched by ``torch.func.vmap``.
2. The same objective and optimiser run restart by restart with ordinary autograd
   (``create_graph=True``) — the straightforward implementation — measured in the same run:
   the ratio batched / sequential is what batching buys (timings on a shared machine are
   noisy; ratios of numbers measured side by side are not).
3. ``tableak`` on heart-disease-shaped records (MLP 100-100, batch 8) and a batch-8 digits
   target: iterations per second.

Usage::

    python benchmarks/bench_inversion.py            # about 1.5 minutes on 2 lightly loaded cores
    python benchmarks/bench_inversion.py --quick    # 500 iterations instead of 2,000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attacks import ATTACKS  # noqa: E402
from attacks.inversion.common import FlatModel, cosine_distance, recover_labels, select_targets, total_variation  # noqa: E402
from attacks.inversion.inverting_gradients import InvertingGradients  # noqa: E402
from bench.config import parse_experiment  # noqa: E402
from bench.data import build_federation  # noqa: E402
from bench.federated import run_federated  # noqa: E402
from bench.metrics import score  # noqa: E402
from bench.models import MODELS, build_model, load_flat  # noqa: E402
from bench.runner import make_defenses  # noqa: E402
from bench.seeding import Seeds  # noqa: E402
from bench.views import server_view  # noqa: E402


def setup(data: dict, model: dict, batch: int, attack: dict):
    raw = {"data": {**data, "members_per_site": batch}, "model": model,
           "train": {"rounds": 1, "batch_size": batch, "lr": 0.1}, "attacks": [attack], "seed": 0}
    cfg = parse_experiment(raw)
    seeds = Seeds(0)
    fed, truth = build_federation(cfg.data, seeds)
    mf = lambda: MODELS.get(cfg.model.name).build(fed.info, cfg.model)  # noqa: E731
    rec = run_federated(fed, build_model(fed.info, cfg.model, seeds.torch("init")), make_defenses(cfg), cfg.train, cfg.privacy, seeds, evaluate=False)
    return cfg, server_view(rec, fed, mf), truth


def sequential_ig(view, params, iterations: int, restarts: int) -> float:
    """The same attack without batching: one restart at a time, autograd double backward."""
    fm = FlatModel.of(view.model_fn)
    (t,) = select_targets(view, params)
    y = recover_labels(fm, view.info, t, 1, torch.Generator())
    d = t.disclosure
    t0 = time.perf_counter()
    for r in range(restarts):
        x = torch.rand((1, *view.info.input_shape), generator=torch.Generator().manual_seed(r)).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=params.step_size)
        model = load_flat(view.model_fn(), t.global_params)
        for _ in range(iterations):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            g = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
            sim = -d.lr * torch.cat([gi.reshape(-1) for gi in g])
            obj = cosine_distance(sim, t.update, torch.ones_like(t.update)) + params.tv * total_variation(x)
            (gx,) = torch.autograd.grad(obj, x)
            x.grad = gx.sign()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    iters = 500 if args.quick else 2000
    digits = {"name": "digits", "partition": "iid", "num_sites": 4}
    print(f"torch {torch.__version__}, {args.threads} threads, {iters} iterations")
    print("\n1-2. inverting_gradients, one digits record (CNN), batch 1")
    print(f"{'restarts':>8} {'batched s':>10} {'it/s':>8} {'seq. s':>8} {'batched/seq':>11} {'PSNR dB':>8}")
    for restarts in (1, 4):
        cfg, view, truth = setup(digits, {"name": "cnn"}, 1, {"name": "inverting_gradients", "iterations": iters,
                                                               "restarts": restarts, "sites": ["site1"]})
        attack = InvertingGradients(cfg.attacks[0].params)
        t0 = time.perf_counter()
        out = attack.run(view, np.random.default_rng(0))
        batched = time.perf_counter() - t0
        seq = sequential_ig(view, cfg.attacks[0].params, iters, restarts)
        s = score(out, truth)
        print(f"{restarts:>8} {batched:>10.2f} {iters / batched:>8.1f} {seq:>8.2f} {batched / seq:>11.2f} {s['psnr']:>8.1f}")
    print("\n3. iterations per second on batches of 8 (4 hospitals x restarts, one vmap)")
    print(f"{'attack':>22} {'rows':>5} {'s':>8} {'it/s':>8}")
    heart_dir = os.environ.get("PRIVBENCH_DATA_DIR")
    jobs = [("inverting_gradients", digits, {"name": "cnn"}, {"name": "inverting_gradients", "restarts": 2})]
    if heart_dir:
        jobs.append(("tableak", {"name": "heart_disease", "partition": "natural", "data_dir": heart_dir},
                     {"name": "mlp", "hidden": [100, 100]}, {"name": "tableak", "restarts": 8}))
    else:
        jobs.append(("tableak", {"name": "breast_cancer", "partition": "iid", "num_sites": 4},
                     {"name": "mlp", "hidden": [100, 100]}, {"name": "tableak", "restarts": 8}))
    for name, data, model, att in jobs:
        n = iters // 4
        cfg, view, truth = setup(data, model, 8, {**att, "iterations": n})
        cls = ATTACKS.get(name)
        t0 = time.perf_counter()
        cls(cfg.attacks[0].params).run(view, np.random.default_rng(0))
        dt = time.perf_counter() - t0
        print(f"{name + ' on ' + data['name']:>22} {4 * att['restarts']:>5} {dt:>8.2f} {n / dt:>8.1f}")


if __name__ == "__main__":
    main()
