"""Reference federations for LiRA / RMIA, trained K at a time.

The outsider's reference models must come from *the same pipeline* as the target (model,
FedAvg settings, defenses, per-hospital data sizes) on random halves of the population.
Training K federations one after another costs K target runs; here the K federations are
trained together: their flat parameters are stacked into a ``(K, P)`` tensor and every
local SGD step is one call over all K: ``bench.engine.summed_gradient`` (batched products
and grouped convolutions, the engine's hand-written backward pass) for the models the engine
runs by hand (logreg, mlp, cnn), a ``torch.func.vmap`` of a ``functional_call`` with one
reverse pass otherwise. The Python loop runs once per (round, hospital, step), as for one
federation.

Semantics match :func:`bench.federated.run_federated` + :class:`bench.training.PlainTrainer`
(same seeds streams ``("init",)``, ``("select", r)``, ``("train", site, r)``; shuffled
mini-batches of ``batch_size``; SGD with momentum / weight decay, state reset each round;
aggregation weights by sample count or uniform; ``server_lr``). ``tests/test_lira_rmia.py``
checks that K = 1 with no defense reproduces ``run_federated`` (to float rounding), and
``tests/test_one_engine.py`` that it does for every stacked defense, noise on.

Defenses act on the ``(K, P)`` stack through their own stacked hooks (``defenses.base``:
the same functions the target runs with K = 1; DP-SGD's local steps are ``bench.engine``'s,
reached through ``DPSGD.private_gradient_stack``); :class:`VectorDefense` only adapts them.
When a configured defense (or the optimizer) has no stacked form, :class:`ReferenceCache`
falls back to the sequential ``simulate`` and says so in the log and in
``ReferenceSignals.method``.
"""

from __future__ import annotations

import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap

from bench.models import build_model, flatten
from bench.seeding import Seeds
from bench.types import ConfigError, Records, ReferenceSignals

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- defenses on stacks


class VectorDefense:
    """A defense acting on K reference federations at once: a thin adapter over the defense's
    own stacked hooks (``Defense.update_stack``, ``aggregate_stack``,
    ``aggregate_noise_stack`` and, for dp_sgd, ``private_gradient_stack``): the math is the
    defense's, written once, and the target runs it with K = 1 (secure aggregation: the sum its
    protocol reveals). What is specific to references is only which generators the hooks get.

    ``defense`` is the real defense instance after ``setup(facts)`` (so that derived values,
    e.g. dp_sgd's calibrated σ, come from the defense itself).
    """

    def __init__(self, defense: Any) -> None:
        self.defense = defense

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> Optional[torch.Tensor]:
        """Replace the weighted sum of ``updates`` (S, K, P) with ``weights`` (K, S), or None."""
        return self.defense.aggregate_stack(updates, weights)

    def private_step(self) -> Optional[Callable[..., torch.Tensor]]:
        """The defense's stacked DP-SGD step ``(program, params, x, y, gens) -> (K, P)``, or None."""
        return getattr(self.defense, "private_gradient_stack", None)

    def transform_update(self, updates: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
        return self.defense.update_stack(updates, gens)

    def transform_aggregate(self, aggregate: torch.Tensor, participants: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
        return self.defense.aggregate_noise_stack(aggregate, [int(m) for m in participants.sum(dim=1)], gens)


def vectorizable(defenses: Sequence[tuple[str, Any]], optimizer: str) -> Optional[str]:
    """None when every ``(name, params)`` defense and the optimizer can be vectorised,
    else the reason why not."""
    from bench.components import component_class

    if optimizer != "sgd":
        return f"optimizer {optimizer!r} has no vectorised form (sgd only)"
    for name, params in defenses:
        why = component_class("defense", name).stacked_unsupported(params)
        if why:
            return why
    return None


# --------------------------------------------------------------------------- the trainer


def _unflatten(model: torch.nn.Module) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, sizes)
        return {n: t.view(s) for n, t, s in zip(names, parts, shapes)}

    return unflat


def _batch_grad(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Mean cross-entropy gradient of each of K models on its own mini-batch.

    The K models are independent, so one reverse pass over Σ_k loss_k yields every
    per-model gradient at once (cheaper than ``vmap(grad(.))``, same numbers).
    """
    unflat = _unflatten(model)
    forward = vmap(lambda f, x: functional_call(model, unflat(f), (x,)))

    def batch_grad(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            p = params.detach().requires_grad_(True)
            logits = forward(p, x)  # (K, b, C)
            k, b = y.shape
            loss = torch.nn.functional.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1), reduction="none")
            (g,) = torch.autograd.grad(loss.view(k, b).mean(1).sum(), p)
        return g

    return batch_grad


def train_many(
    site_records: Sequence[Mapping[str, Records]],
    seeds: Sequence[int],
    info: Any,
    model_cfg: Any,
    train_cfg: Any,
    privacy_cfg: Any,
    defenses: Sequence[tuple[str, Any]],
) -> torch.Tensor:
    """Train K federations at once; return their final flat parameters, shape ``(K, P)``.

    Args:
        site_records: for each of the K federations, hospital name -> training records; every
            federation has the same hospitals with the same numbers of records.
        seeds: root seed of each federation (its streams as in ``run_federated``).
        info, model_cfg, train_cfg, privacy_cfg: as for the target.
        defenses: ``(name, fresh Defense instance)`` in the configured order; each must have
            a stacked form (``Defense.stacked_unsupported`` is None).
    """
    from bench.federated import federation_facts
    from bench.types import Federation, Site

    k = len(site_records)
    if k == 0 or len(seeds) != k:
        raise ValueError("train_many: need one seed per federation and at least one federation")
    names = tuple(site_records[0])
    sizes = {n: len(site_records[0][n]) for n in names}
    for sr in site_records:
        if tuple(sr) != names or any(len(sr[n]) != sizes[n] for n in names):
            raise ValueError("train_many: every federation needs the same hospitals and sizes")
    model = build_model(info, model_cfg, torch.Generator().manual_seed(0))
    roots = [Seeds(int(s)) for s in seeds]
    params = torch.stack([flatten(build_model(info, model_cfg, r.torch("init"))) for r in roots])

    # defenses see the facts of the reference federation (same sizes as the target's)
    empty = Records(ids=np.zeros(0, np.int64), x=site_records[0][names[0]].x[:0], y=site_records[0][names[0]].y[:0])
    fake = Federation(info=info, sites=tuple(Site(n, site_records[0][n], empty) for n in names), test=empty, candidates=empty, population=empty)
    facts = federation_facts(fake, train_cfg, privacy_cfg, params.shape[1])
    vdefs = []
    for name, d in defenses:
        d.setup(facts)
        vdefs.append(VectorDefense(d))
    private = next((v.private_step() for v in vdefs if v.private_step() is not None), None)
    from bench.engine import compile_model, join_flat, split_flat, summed_gradient

    program = None
    if private is not None:
        program = compile_model(model)  # make_many_simulator checked that it compiles
    else:
        # plain steps: the engine's hand-written backward (K = 16 step: MLP [256, 256] 9.3 -> 4.1
        # ms, the CNN as groups of channels 5.9 -> 5.2 ms); vmap + autograd for any other model
        try:
            program = compile_model(model)
        except ValueError:
            program = None
        if program is not None and not program.manual_many:
            program = None
    batch_grad = _batch_grad(model) if program is None else None  # (K,P),(K,b,..),(K,b) -> (K,P)
    uniform = any(getattr(d, "uniform_weights", False) for _, d in defenses)

    xs = {n: torch.stack([sr[n].x for sr in site_records]) for n in names}  # (K, n, ...)
    ys = {n: torch.stack([sr[n].y for sr in site_records]) for n in names}
    b, lr, mom, wd = train_cfg.batch_size, train_cfg.lr, train_cfg.momentum, train_cfg.weight_decay
    m = facts.sites_per_round
    idx_k = torch.arange(k)
    for r in range(1, train_cfg.rounds + 1):
        chosen = torch.zeros(k, len(names), dtype=torch.bool)
        for i, root in enumerate(roots):
            chosen[i, root.rng("select", r).choice(len(names), m, replace=False)] = True
        updates = torch.zeros(len(names), k, params.shape[1])
        for s, name in enumerate(names):
            n = sizes[name]
            gens = [root.torch("train", name, r) for root in roots]
            local = params.clone()
            buf = None
            if private is not None:
                # dp_sgd: epochs·⌈n/b⌉ Poisson steps on the whole local data set
                steps = train_cfg.local_epochs * ((n + b - 1) // b)
                batches = [None] * steps
            else:
                batches = []
                for _ in range(train_cfg.local_epochs):
                    order = torch.stack([torch.randperm(n, generator=g) for g in gens])  # (K, n)
                    batches += [order[:, st : st + b] for st in range(0, n, b)]
            for idx in batches:
                if idx is None:
                    g = private(program, local, xs[name], ys[name], gens)
                elif program is not None:
                    xb, yb = xs[name][idx_k[:, None], idx], ys[name][idx_k[:, None], idx]
                    g = join_flat(summed_gradient(program, split_flat(local, program.shapes), xb, yb)).div_(idx.shape[1])
                else:
                    g = batch_grad(local, xs[name][idx_k[:, None], idx], ys[name][idx_k[:, None], idx])
                # torch.optim.SGD: d = g + wd·p; buf = mom·buf + d (buf = d on the first step);
                # p -= lr·d. In place on fresh (K, P) tensors, and no add(alpha=): its vectorised
                # loop may fuse the multiply-add where the scalar tail does not, so an entry's
                # rounding would depend on its position, and K = 16 would not equal 16 × K = 1
                if wd:
                    g = g + wd * local
                if mom:
                    if buf is None:
                        buf = g
                    else:
                        buf.mul_(mom).add_(g)
                    g = buf
                local.sub_(lr * g)
            upd = local - params
            for v in vdefs:
                upd = v.transform_update(upd, [root.torch("defense", "vector", name, r) for root in roots])
            updates[s] = upd
        sz = torch.tensor([float(sizes[n]) for n in names])
        w = chosen.to(params.dtype) * (torch.ones(len(names)) if uniform else sz)  # (K, S)
        w = w / w.sum(dim=1, keepdim=True)
        agg = next((a for a in (v.aggregate(updates, w) for v in vdefs) if a is not None), None)
        if agg is None:
            agg = torch.einsum("ks,skp->kp", w, updates)
        for v in reversed(vdefs):
            agg = v.transform_aggregate(agg, chosen, [root.torch("server", r) for root in roots])
        params = params + train_cfg.server_lr * agg
    return params


# --------------------------------------------------------------------------- splits and signals


REFERENCE_DESIGNS = ("paired", "independent")


def reference_splits(
    n: int, site_sizes: Mapping[str, int], k: int, rng: np.random.Generator, design: str = "paired"
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """K random training sets drawn from ``n`` population records, each cut into hospitals of
    ``site_sizes`` (every reference holds as many records as the target).

    ``design``:

    * ``"paired"``: complementary pairs (reference 2i+1 trains on what 2i left out), so each
      record is "in" for exactly half of the references when the hospitals hold n/2 records.
      The two models of a pair see complementary data (label balance, neighbours), so their
      signals on the same record are negatively correlated (−0.6 on heart disease,
      ``docs/bench-membership.md``): good for an average over all references (RMIA's p(x)),
      bad for a difference of "in" and "out" means (LiRA's), whose variance it inflates.
    * ``"independent"``: each reference draws its own random subset (SACRO-ML's and the LiRA
      paper's shadow models): a record is "in" for Binomial(K, total/n) references.

    Returns ``(splits, included)``: per reference, hospital -> population indices, and the
    ``(K, n)`` inclusion mask.
    """
    if design not in REFERENCE_DESIGNS:
        raise ConfigError(f"reference_design: got {design!r}; use one of {', '.join(REFERENCE_DESIGNS)}")
    total = sum(site_sizes.values())
    if total > n:
        raise ConfigError(f"reference models: hospitals hold {total} records but the population has {n}; use more population data")
    splits, included = [], np.zeros((k, n), bool)
    perm = None
    for i in range(k):
        if design == "independent":
            chosen = rng.permutation(n)[:total]
        elif i % 2 == 0:
            perm = rng.permutation(n)
            chosen = perm[:total]
        else:
            chosen = perm[n - total :]  # the complement of the previous half
        chosen = rng.permutation(chosen)
        included[i, chosen] = True
        cuts = np.cumsum(list(site_sizes.values()))[:-1]
        splits.append(dict(zip(site_sizes, np.split(chosen, cuts))))
    return splits, included


@torch.no_grad()
def logit_confidence(model: torch.nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ = log p_y − log(1 − p_y) of every record under each of the ``(K, P)`` parameter sets,
    computed stably as z_y − logsumexp(z_{≠y}) (Carlini et al. 2022). Shape ``(K, N)``."""
    unflat = _unflatten(model)
    params = params if params.dim() == 2 else params.unsqueeze(0)
    logits = vmap(lambda f: functional_call(model, unflat(f), (x,)))(params)  # (K, N, C)
    z_y = logits.gather(2, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(2)
    others = logits.scatter(2, y.view(1, -1, 1).expand(logits.shape[0], -1, 1), float("-inf"))
    return z_y - torch.logsumexp(others, dim=2)


class ReferenceCache:
    """``view.reference_signals(K)``: trains K reference federations once per cell and K,
    keeps their per-record signals (not the models) and serves every attack that asks.

    Args:
        model_fn: builds the architecture (for ``functional_call``).
        final_params: the released model.
        population: the records references train on and are scored on.
        site_sizes: hospital -> number of training records of the target.
        seed: the cell's reference seed (independent of which attack asks first).
        simulate_many: vectorised trainer ``(site_records list, seeds) -> (K, P)`` or None.
        simulate: sequential fallback ``(site_records, seed) -> (P,)``.
        fallback_reason: why ``simulate_many`` is None (logged).
    """

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        final_params: torch.Tensor,
        population: Records,
        site_sizes: Mapping[str, int],
        seed: int,
        simulate_many: Optional[Callable[..., torch.Tensor]],
        simulate: Optional[Callable[..., torch.Tensor]],
        fallback_reason: str = "",
    ) -> None:
        self.model_fn = model_fn
        self.final_params = final_params
        self.population = population
        self.site_sizes = dict(site_sizes)
        self.seed = seed
        self.simulate_many = simulate_many
        self.simulate = simulate
        self.fallback_reason = fallback_reason
        self.cache: dict[tuple[int, str], ReferenceSignals] = {}

    def __call__(self, num_references: int, design: str = "paired") -> ReferenceSignals:
        """The signals of ``num_references`` references drawn with ``design`` (see
        :func:`reference_splits`), trained on the first request and kept for the cell."""
        if num_references < 1:
            raise ConfigError(f"num_references: got {num_references}; need at least 1 (16 is typical)")
        key = (num_references, design)
        if key not in self.cache:
            self.cache[key] = self._compute(num_references, design)
        return self.cache[key]

    def _compute(self, k: int, design: str = "paired") -> ReferenceSignals:
        pop = self.population
        seeds = Seeds(self.seed)
        # the paired design keeps its stream (and so its numbers); the independent one has its own
        stream = ("reference", "splits", k) if design == "paired" else ("reference", "splits", k, design)
        splits, included = reference_splits(len(pop), self.site_sizes, k, seeds.rng(*stream), design)
        site_records = [{name: pop.take(ix) for name, ix in split.items()} for split in splits]
        ref_seeds = [seeds.int_seed("reference", "federation", i) for i in range(k)]
        t0 = time.perf_counter()
        if self.simulate_many is not None:
            params = self.simulate_many(site_records, ref_seeds)
            method = "vectorized"
        elif self.simulate is not None:
            log.warning("reference models: training %d federations sequentially (%s)", k, self.fallback_reason)
            params = torch.stack([self.simulate(sr, s) for sr, s in zip(site_records, ref_seeds)])
            method = f"sequential ({self.fallback_reason})"
        else:
            raise ConfigError("reference models: this view cannot simulate the federation; use an attack without references")
        seconds = time.perf_counter() - t0
        log.info("reference models: K=%d federations (%s) in %.2fs (%s)", k, design, seconds, method)
        model = self.model_fn()
        phi_ref = logit_confidence(model, params, pop.x, pop.y).numpy().astype(np.float64)
        phi_t = logit_confidence(model, self.final_params, pop.x, pop.y)[0].numpy().astype(np.float64)
        return ReferenceSignals(ids=pop.ids.copy(), target=phi_t, reference=phi_ref, included=included, seconds=seconds, method=method)

    @staticmethod
    def _name(k: int, design: str) -> str:
        # the paired design keeps the names it shipped with (K16); the independent one is K16_independent
        return f"K{k}" if design == "paired" else f"K{k}_{design}"

    def artifacts(self) -> dict[str, bytes]:
        """``reference/signals_K<k>[_independent].npz`` for every (K, design) computed in this cell."""
        out = {}
        for (k, design), s in self.cache.items():
            buf = io.BytesIO()
            np.savez_compressed(buf, ids=s.ids, target=s.target, reference=s.reference, included=s.included, seconds=s.seconds)
            out[f"reference/signals_{self._name(k, design)}.npz"] = buf.getvalue()
        return out

    def metrics(self) -> dict[str, float]:
        out = {}
        for (k, design), s in self.cache.items():
            out[f"cost/reference/{self._name(k, design)}/seconds"] = s.seconds
            out[f"cost/reference/{self._name(k, design)}/vectorized"] = float(s.method == "vectorized")
        return out


PARALLEL_MIN_MACS = 20_000  # multiply-adds per record of one forward pass: below, a step is Python-bound


def macs_per_record(model: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of one record through ``model``'s Linear and Conv2d
    layers (a measure of how much arithmetic a step has to share between threads)."""
    total = 0

    def count(m: torch.nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, torch.nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total


def reference_threads(defenses: Sequence[str], k: int, macs: Optional[int] = None) -> int:
    """How many threads train K reference federations: each trains its own contiguous block of
    the K (``train_many`` on fewer federations; torch's kernels release the GIL, so the blocks
    run on separate cores while the cell's intra-op pool stays at one thread).

    A federation's numbers do not depend on which others share its stack for plain local steps
    and the update-level defenses (batched products act per federation;
    ``tests/test_lira_rmia.py`` checks equality bit for bit), so the split is invisible in the
    results. Grouped convolutions are exact only when each block holds a multiple of 8
    federations (the first convolution, one input channel per group, takes another kernel for
    4 or 5 groups than for 8 or 16: measured with AVX-512, AVX2 and scalar ATen kernels), so
    models with a convolution split K only into such blocks (:func:`block_count`). DP-SGD's stacked step pads every federation's Poisson batch to
    the longest in the stack, and the padded width changes the last bits of the clipped sums,
    so with ``dp_sgd`` the K federations stay in one stack (one thread).

    Threads pay only when a step is compute-bound: each block runs the whole Python loop of a
    federation's steps, and the blocks share the GIL between kernels. A model with fewer than
    :data:`PARALLEL_MIN_MACS` multiply-adds per record (``macs``; the tabular MLPs have ~2k) stays
    in one stack: its K = 16 references are 1.5× one target in one stack and 2.5× in two
    blocks (``docs/bench-scale.md``).

    The default: the CPUs this process may use (``os.sched_getaffinity``) that are not already
    busy (the 1-minute load average, this process counted as one), at most 4, at most ``k // 2``
    (a block of one federation gains nothing from batching). On a busy machine (``--workers 2``
    on 2 cores, or other jobs) blocks only time-share the same cores and were measured slower
    than one stack, so there the default is one stack; the results are the same either way.
    ``PRIVBENCH_REFERENCE_THREADS`` overrides the default (and the ``macs`` and load rules).
    """
    if "dp_sgd" in defenses or k < 2:
        return 1
    env = os.environ.get("PRIVBENCH_REFERENCE_THREADS")
    if env:
        try:
            want = int(env)
        except ValueError:
            raise ConfigError(f"PRIVBENCH_REFERENCE_THREADS: got {env!r}; use a whole number of threads, e.g. 2") from None
        if want < 1:
            raise ConfigError(f"PRIVBENCH_REFERENCE_THREADS: got {want}; use 1 (serial) or more")
    elif macs is not None and macs < PARALLEL_MIN_MACS:
        return 1
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        idle = cpus - os.getloadavg()[0] + 1 if hasattr(os, "getloadavg") else cpus
        want = min(cpus, 4, k // 2, max(1, int(idle)))
    return max(1, min(want, k))


def block_count(k: int, threads: int, convolutional: bool) -> int:
    """The number of blocks (at most ``threads``) to cut K federations into: for a model with
    convolutions, only counts whose blocks all hold a multiple of 8 federations (else 1)."""
    n = max(1, min(threads, k))
    if convolutional:
        while n > 1 and k % (8 * n):
            n -= 1
    return n


def blocks(k: int, threads: int) -> list[tuple[int, int]]:
    """``threads`` contiguous ``[lo, hi)`` blocks of ``range(k)``, sizes differing by at most one."""
    edges = [round(i * k / threads) for i in range(threads + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def make_many_simulator(cfg: Any, info: Any, threads: Optional[int] = None) -> tuple[Optional[Callable[..., torch.Tensor]], str]:
    """The vectorised simulator for ``cfg`` (fresh defense instances per call), or
    ``(None, reason)`` when something in ``cfg`` cannot be vectorised.

    ``threads``: blocks of the K federations trained side by side (default
    :func:`reference_threads`; 1 trains all K in one stack); the result is the same.
    """
    from bench.components import component_class

    reason = vectorizable([(s.name, s.params) for s in cfg.defenses], cfg.train.optimizer)
    if reason is not None:
        return None, reason
    if any(s.name == "dp_sgd" for s in cfg.defenses):
        from bench.engine import compile_model

        try:  # the vectorised DP-SGD step is bench.engine's
            compile_model(build_model(info, cfg.model, torch.Generator().manual_seed(0)))
        except ValueError as exc:
            return None, f"dp_sgd on a model bench.engine cannot compile ({exc})"

    probe = build_model(info, cfg.model, torch.Generator().manual_seed(0))
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in probe.modules())
    macs = macs_per_record(probe, info.input_shape)

    def block(site_records: Sequence[Mapping[str, Records]], seeds: Sequence[int]) -> torch.Tensor:
        defenses = [(s.name, component_class("defense", s.name)(s.params)) for s in cfg.defenses]
        return train_many(site_records, seeds, info, cfg.model, cfg.train, cfg.privacy, defenses)

    def simulate_many(site_records: Sequence[Mapping[str, Records]], seeds: Sequence[int]) -> torch.Tensor:
        k = len(site_records)
        n = threads if threads is not None else reference_threads([s.name for s in cfg.defenses], k, macs)
        parts = blocks(k, block_count(k, n, convolutional))
        if len(parts) == 1:
            return block(site_records, seeds)
        with ThreadPoolExecutor(len(parts), thread_name_prefix="references") as pool:
            done = [pool.submit(block, site_records[lo:hi], seeds[lo:hi]) for lo, hi in parts]
            return torch.cat([f.result() for f in done])

    return simulate_many, ""


def reference_artifacts(views: Mapping[str, Any]) -> tuple[dict[str, bytes], dict[str, float]]:
    """Artifacts and cost metrics of the reference signals computed in this cell (if any)."""
    view = views.get("outsider")
    cache = getattr(view, "reference_signals", None)
    if not isinstance(cache, ReferenceCache):
        return {}, {}
    return cache.artifacts(), cache.metrics()
