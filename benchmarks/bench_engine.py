"""Time bench.engine's DP-SGD step against plain SGD and Opacus, in one run (issue 15).

Usage::

    python benchmarks/bench_engine.py            # ~2 min on a quiet core
    python benchmarks/bench_engine.py --quick    # fewer repeats

One torch thread, batch 16, σ = 1, C = 1. Rows: privbench's models at the issue's sizes
(logreg and MLP [64] on 30 features, as heart disease / breast cancer; MLP [256, 256] and
the CNN on 8x8 digits). Columns, measured side by side and interleaved (so machine load hits
every column alike), each the minimum over ``--repeats`` of the mean per step:

* plain: ``opt.zero_grad(); loss.backward(); opt.step()`` on the bare model;
* Opacus ew / hooks: ``GradSampleModuleExpandedWeights`` / ``GradSampleModule`` +
  ``DPOptimizer`` (DPTrainer's set-up);
* engine: ``bench.engine.private_gradient`` + ``opt.step()`` (the default path: a
  hand-written backward for Linear/activation models, autograd for the CNN);
* engine/autograd: the same with the output gradients from ``torch.autograd.grad``;
* hooks+grad: forward hooks on the real module keep each Linear's input and output, then one
  ``torch.autograd.grad`` to the outputs and the same ghost algebra (Linear-only models);
* full-bw-hooks: ``register_full_backward_hook`` captures the output gradients during a
  plain ``loss.backward()`` (parameter gradients computed and discarded; Linear-only models).

Then a local round (``--n`` records, Poisson q = 16/n, one epoch) of PlainTrainer vs
DPTrainer with Opacus ew vs DPTrainer on the engine, and K = 16 federations in one
``poisson_step`` vs K = 1 (and vs 16 separate K = 1 calls).

Time is each thread's CPU time (``time.thread_time``), which other processes on a shared
machine do not add to (they still slow caches); ratios are of numbers measured side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import ModelConfig
from bench.engine import clip_factors, compile_model, noisy_mean, poisson_step, private_gradient
from bench.models import build_model, flatten
from bench.training import LocalSettings, PlainTrainer
from bench.types import DatasetInfo, Records

warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Using a non-full backward hook")

MODELS = {
    "logreg (30 features)": (DatasetInfo("tab", (30,), 2), ModelConfig("logreg")),
    "mlp [64] (30 features)": (DatasetInfo("tab", (30,), 2), ModelConfig("mlp", hidden=(64,))),
    "mlp [256, 256] (digits 64)": (DatasetInfo("digits", (64,), 10), ModelConfig("mlp", hidden=(256, 256))),
    "cnn (digits 8x8, 8 channels)": (DatasetInfo("digits", (1, 8, 8), 10, modality="image"), ModelConfig("cnn", channels=8)),
}
SIGMA, CLIP, B = 1.0, 1.0, 16


def measure(fns: dict, iters: int, repeats: int) -> dict[str, float]:
    """Best (minimum) over ``repeats`` of the mean thread-CPU seconds per call, the variants
    interleaved. The minimum, as ``timeit`` advises: other jobs on a shared machine only ever
    add time (cache and memory-bandwidth contention), so the least-disturbed repeat is the
    best estimate of each variant's own cost."""
    for fn in fns.values():
        for _ in range(max(3, iters // 10)):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for _ in range(iters):
                fn()
            times[name].append((time.thread_time() - t0) / iters)
    return {k: min(v) for k, v in times.items()}


def fresh(info, cfg) -> nn.Module:
    return build_model(info, cfg, torch.Generator().manual_seed(0))


def plain_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def opacus_step(model, x, y, mode):
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer

    module = GradSampleModuleExpandedWeights(model, loss_reduction="mean") if mode == "ew" else GradSampleModule(model, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), noise_multiplier=SIGMA, max_grad_norm=CLIP,
                      expected_batch_size=B, loss_reduction="mean", generator=torch.Generator().manual_seed(0))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()
        opt.step()

    return step


def engine_step(model, x, y, manual=True):
    program = compile_model(model)
    if not manual:
        program = dataclasses.replace(program, manual=False, manual_single=False, manual_grouped=False)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    xs, ys = x.unsqueeze(0), y.unsqueeze(0)

    def step():
        out = private_gradient(program, [p.detach().unsqueeze(0) for p in params], xs, ys, bound=CLIP,
                               noise_std=SIGMA * CLIP, expected_batch_size=B, generators=[gen])
        for p, g in zip(params, out.grads):
            p.grad = g[0]
        opt.step()

    return step


def _ghost(pairs, gen, params, opt):
    # the engine's algebra on captured (layer, input, output gradient) triples
    sq = None
    for lin, a, e in pairs:
        e2 = e.square().sum(-1)
        t = torch.addcmul(e2, e2, a.square().sum(-1))
        sq = t if sq is None else sq + t
    f = clip_factors(sq.sqrt(), CLIP)
    summed = {}
    for lin, a, e in pairs:
        fe = e * f.unsqueeze(-1)
        summed[lin.weight] = (fe.T @ a).unsqueeze(0)
        summed[lin.bias] = fe.sum(0).unsqueeze(0)
    grads = noisy_mean([summed[p] for p in params], SIGMA * CLIP, B, [gen])
    for p, g in zip(params, grads):
        p.grad = g[0]
    opt.step()


def hooks_grad_step(model, x, y):
    """Forward hooks keep each Linear's input and output; one autograd.grad to the outputs."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    store = {}
    for m in linears:
        m.register_forward_hook(lambda mod, inp, out: store.__setitem__(mod, (inp[0], out)))
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    for p in params:  # the optimizer only reads p.grad; autograd must not compute parameter gradients
        p.requires_grad_(False)

    def step():
        with torch.enable_grad():
            h = x
            first = True
            for mod in model:  # the first Linear's output must be a leaf requiring grad
                h = mod(h)
                if isinstance(mod, nn.Linear) and first:
                    h.requires_grad_(True)
                    store[mod] = (store[mod][0], h)
                    first = False
            loss = F.cross_entropy(h, y, reduction="sum")
            errs = torch.autograd.grad(loss, [store[m][1] for m in linears])
        _ghost([(m, store[m][0], e) for m, e in zip(linears, errs)], gen, params, opt)

    return step


def full_backward_hooks_step(model, x, y):
    """Full backward hooks capture each Linear's output gradient in a plain backward()."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inputs, grads = {}, {}
    for m in linears:
        m.register_forward_hook(lambda mod, inp, out: inputs.__setitem__(mod, inp[0]))
        m.register_full_backward_hook(lambda mod, gin, gout: grads.__setitem__(mod, gout[0]))
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
        _ghost([(m, inputs[m], grads[m]) for m in linears], gen, params, opt)

    return step


def per_step_table(iters: int, repeats: int) -> list[str]:
    rows = ["| model (batch 16) | plain µs/step | Opacus ew | Opacus hooks | engine | engine/autograd | hooks+grad | full-bw-hooks |",
            "|---|---|---|---|---|---|---|---|"]
    for label, (info, cfg) in MODELS.items():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(B, *info.input_shape, generator=g)
        y = torch.randint(0, info.num_classes, (B,), generator=g)
        fns = {
            "plain": plain_step(fresh(info, cfg), x, y),
            "ew": opacus_step(fresh(info, cfg), x, y, "ew"),
            "hooks": opacus_step(fresh(info, cfg), x, y, "hooks"),
            "engine": engine_step(fresh(info, cfg), x, y),
        }
        fns["engine/autograd"] = engine_step(fresh(info, cfg), x, y, manual=False)
        linear_only = cfg.name != "cnn"
        if linear_only:
            fns["hooks+grad"] = hooks_grad_step(fresh(info, cfg), x, y)
            fns["full-bw-hooks"] = full_backward_hooks_step(fresh(info, cfg), x, y)
        t = measure(fns, iters, repeats)
        p = t["plain"]
        cell = lambda k: f"{t[k] / p:.2f}x" if k in t else "—"  # noqa: E731
        rows.append(f"| {label} | {p * 1e6:.0f} | {cell('ew')} | {cell('hooks')} | **{cell('engine')}** | {cell('engine/autograd')} | {cell('hooks+grad')} | {cell('full-bw-hooks')} |")
        print(rows[-1], flush=True)
    return rows


def local_round_table(n: int, repeats: int) -> list[str]:
    from defenses.dp_sgd import DPTrainer

    rows = [f"| local round (n={n}, q={B}/{n}, {-(-n // B)} steps) | plain ms | Opacus ew (DPTrainer) | engine (DPTrainer, grad_sample_mode engine) |", "|---|---|---|---|"]
    settings = LocalSettings(epochs=1, batch_size=B, optimizer="sgd", lr=0.05, momentum=0.9)
    for label, (info, cfg) in MODELS.items():
        g = torch.Generator().manual_seed(1)
        data = Records(ids=np.arange(n), x=torch.randn(n, *info.input_shape, generator=g), y=torch.randint(0, info.num_classes, (n,), generator=g))
        start = flatten(fresh(info, cfg))
        plain = PlainTrainer(fresh(info, cfg), data, settings)
        dp = DPTrainer(PlainTrainer(fresh(info, cfg), data, settings), SIGMA, CLIP, "poisson", "ew")
        engine = DPTrainer(PlainTrainer(fresh(info, cfg), data, settings), SIGMA, CLIP, "poisson", "engine")

        t = measure({"plain": lambda: plain.train(start, torch.Generator().manual_seed(0)),
                     "ew": lambda: dp.train(start, torch.Generator().manual_seed(0)),
                     "engine": lambda: engine.train(start, torch.Generator().manual_seed(0))}, max(5, 400 // n), repeats)
        p = t["plain"]
        rows.append(f"| {label} | {p * 1e3:.2f} | {t['ew'] / p:.2f}x | **{t['engine'] / p:.2f}x** |")
        print(rows[-1], flush=True)
    return rows


def k_table(k: int, n: int, repeats: int) -> list[str]:
    rows = [f"| one Poisson step, n={n} per federation, q={B}/{n} | K=1 µs | K={k} batched | {k} × K=1 calls | noise share of K={k} |", "|---|---|---|---|---|"]
    for label, (info, cfg) in MODELS.items():
        model = fresh(info, cfg)
        program = compile_model(model)
        g = torch.Generator().manual_seed(1)
        params = [p.detach().unsqueeze(0) + 0.01 * torch.randn(k, *p.shape, generator=g) for p in model.parameters()]
        x = torch.randn(k, n, *info.input_shape, generator=g)
        y = torch.randint(0, info.num_classes, (k, n), generator=g)
        gens = [torch.Generator().manual_seed(s) for s in range(k)]
        kw = dict(q=B / n, bound=CLIP, noise_std=SIGMA * CLIP, expected_batch_size=B)
        one = [[p[j : j + 1] for p in params] for j in range(k)]
        zeros = [torch.zeros_like(p) for p in params]
        t = measure({
            "1": lambda: poisson_step(program, one[0], x[:1], y[:1], generators=gens[:1], **kw),
            "k": lambda: poisson_step(program, params, x, y, generators=gens, **kw),
            "seq": lambda: [poisson_step(program, one[j], x[j : j + 1], y[j : j + 1], generators=gens[j : j + 1], **kw) for j in range(k)],
            "noise": lambda: noisy_mean(zeros, SIGMA * CLIP, B, gens),
        }, 20, repeats)
        rows.append(f"| {label} | {t['1'] * 1e6:.0f} | **{t['k'] / t['1']:.2f}x** | {t['seq'] / t['1']:.2f}x | {t['noise'] / t['k']:.0%} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--iters", type=int, default=100, help="steps per repeat in the per-step table")
    ap.add_argument("--n", type=int, default=128, help="records per hospital / federation")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.iters = 5, 30
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    out = per_step_table(args.iters, args.repeats)
    print()
    out += [""] + local_round_table(args.n, args.repeats)
    print()
    out += [""] + k_table(args.k, args.n, args.repeats)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
