"""Shared machinery of the gradient-inversion attacks (threat model ``server``).

* :func:`select_targets`: which (round, hospital) updates to attack, with the protocol's
  disclosure (optionally overridden by attack parameters: what the attacker assumes).
  Under secure aggregation the only target per round is the aggregate, treated as one
  large batch of every participant's records.
* :func:`make_replay`: the hospital's local training replayed from the disclosure as a
  differentiable function (unrolled SGD via :func:`torch.func.functional_call`), so that
  a dummy batch can be optimised until its simulated update matches the observed one.
* :func:`recover_labels`: iDLG (Zhao et al. 2020) for one record, and the last-layer
  count estimate for batches (Wainakh et al. 2022, "LLG"; Geiping et al.'s "bias-corrected").
* :func:`optimise`: restarts and targets as one batch dimension (``torch.func.vmap``).

Nothing here sees ground truth: attacks receive a :class:`~bench.types.ServerView` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from bench.types import ConfigError, DatasetInfo, Disclosure, Reconstructions, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
functional_call = lazy("torch.func:functional_call", globals())
grad = lazy("torch.func:grad", globals())
grad_and_value = lazy("torch.func:grad_and_value", globals())
vmap = lazy("torch.func:vmap", globals())


AGGREGATE = "aggregate"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class InversionParams:
    """Parameters every inversion attack shares (YAML keys beside ``name``).

    Attributes:
        rounds: which FedAvg rounds to attack (1-based; the first by default).
        sites: which hospitals to attack; empty = every participant of the round. Ignored
            under secure aggregation, where the only target is the aggregate.
        num_samples, local_epochs, local_steps, batch_size, lr: what the attacker assumes
            about local training; ``null`` = what the protocol disclosed (``Disclosure``).
        write_records: opt in to a CSV artifact of reconstructed records for user data
            (public benchmark data always gets one; reconstructed patients are sensitive).
    """

    rounds: tuple[int, ...] = (1,)
    sites: tuple[str, ...] = ()
    num_samples: Optional[int] = field(default=None, metadata={"ge": 1})
    local_epochs: Optional[int] = field(default=None, metadata={"ge": 1})
    local_steps: Optional[int] = field(default=None, metadata={"ge": 1})
    batch_size: Optional[int] = field(default=None, metadata={"ge": 1})
    lr: Optional[float] = field(default=None, metadata={"gt": 0})
    write_records: bool = False


def check_replayable(params: InversionParams, cfg) -> None:
    """Refuse local optimisers the replay cannot reproduce (it unrolls plain SGD)."""
    if cfg.train.optimizer != "sgd" or cfg.train.momentum > 0 or cfg.train.weight_decay > 0:
        raise ConfigError(
            f"train.optimizer: got {cfg.train.optimizer!r} (momentum {cfg.train.momentum}, weight_decay "
            f"{cfg.train.weight_decay}); inversion replays plain SGD; use optimizer: sgd, momentum: 0, weight_decay: 0"
        )
    if not params.rounds or min(params.rounds) < 1 or max(params.rounds) > cfg.train.rounds:
        raise ConfigError(f"attacks.rounds: got {list(params.rounds)}; expected rounds between 1 and train.rounds ({cfg.train.rounds})")


def check_sites(params: InversionParams, names: Sequence[str], attack: str) -> None:
    """Refuse hospitals in ``params.sites`` that the federation does not have (checked before
    training: at load time when the names are known from the config, else once the data is)."""
    unknown = [s for s in params.sites if s not in names]
    if unknown:
        raise ConfigError(
            f"attacks.{attack}.sites: {unknown[0]!r} is not a hospital of this federation; choose from "
            f"{', '.join(names)} (or leave sites empty to attack every participant)"
        )


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One observed update to invert, with what the attacker assumes produced it."""

    round: int
    name: str
    sites: tuple[str, ...]
    global_params: torch.Tensor
    update: torch.Tensor
    disclosure: Disclosure


def assumed(d: Disclosure, p: InversionParams) -> Disclosure:
    """The disclosure with the attack's overrides applied (``None`` keeps the protocol's)."""
    over = {k: getattr(p, k) for k in ("num_samples", "local_epochs", "local_steps", "batch_size", "lr") if getattr(p, k) is not None}
    return dataclasses.replace(d, **over)


def aggregate_disclosure(ds: Sequence[Disclosure]) -> Disclosure:
    """The aggregate seen as one large batch.

    With weights nᵢ/N and one full-batch step per hospital, Σᵢ (nᵢ/N)·(−lr·∇Lᵢ) is exactly
    −lr times the gradient of the mean loss over all N records. With several local steps
    the sum is only approximately one client's replay: the steps are those of the longest.
    """
    n = sum(d.num_samples for d in ds)
    steps = max(d.local_steps for d in ds)
    per_step = sum(min(d.batch_size, d.num_samples) for d in ds)
    d0 = ds[0]
    return Disclosure(
        num_samples=n, local_epochs=d0.local_epochs, local_steps=steps, batch_size=per_step, lr=d0.lr,
        optimizer=d0.optimizer, labels_known=all(d.labels_known for d in ds),
    )


def select_targets(view: ServerView, p: InversionParams) -> list[Target]:
    """The (round, hospital) updates to attack, or each round's aggregate under secure aggregation."""
    by_round = {r.round: r for r in view.rounds}
    missing = [r for r in p.rounds if r not in by_round]
    if missing:
        raise ConfigError(f"attacks.rounds: round {missing[0]} was not trained; pick from 1..{len(view.rounds)}")
    unknown = [s for s in p.sites if s not in view.site_names]
    if unknown:
        raise ConfigError(f"attacks.sites: {unknown[0]!r} is not a hospital; choose from {list(view.site_names)}")
    out = []
    for r in p.rounds:
        rnd = by_round[r]
        if rnd.updates is None:
            d = aggregate_disclosure([rnd.disclosures[s] for s in rnd.participants])
            out.append(Target(r, AGGREGATE, rnd.participants, rnd.global_params, rnd.aggregate, assumed(d, p)))
            continue
        for s in rnd.participants:
            if p.sites and s not in p.sites:
                continue
            out.append(Target(r, s, (s,), rnd.global_params, rnd.updates[s], assumed(rnd.disclosures[s], p)))
    if not out:
        raise ConfigError(f"attacks.sites: none of {list(p.sites)} took part in rounds {list(p.rounds)}; pick participating hospitals")
    return out


def disclosure_record(targets: Sequence[Target]) -> dict[str, float]:
    """What the attack assumed, flattened for logging (``<round>.<target>.<field>``)."""
    out: dict[str, float] = {}
    for t in targets:
        for k, v in dataclasses.asdict(t.disclosure).items():
            out[f"{t.round}.{t.name}.{k}"] = v
    return out


# --------------------------------------------------------------------------- functional model


@dataclass(frozen=True)
class FlatModel:
    """A stateless view of an architecture: flat vector <-> named parameters."""

    module: torch.nn.Module
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @staticmethod
    def of(model_fn: Callable[[], torch.nn.Module]) -> "FlatModel":
        m = model_fn()
        named = list(m.named_parameters())
        return FlatModel(m, tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = flat[o : o + k].reshape(s)
            o += k
        return out

    def offsets(self) -> dict[str, tuple[int, int]]:
        out, o = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = (o, o + k)
            o += k
        return out

    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (x,))


def make_replay(fm: FlatModel, d: Disclosure) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``replay(theta0, x, y) -> update``: the hospital's local SGD on batch (x, y), unrolled.

    The record order inside an epoch is unknown to the server; the replay uses a fixed
    order (Geiping et al. 2020, Sec. 6 make the same assumption). With one full-batch
    step the result is exactly ``-lr * grad``.
    """
    steps, b, lr = d.local_steps, d.batch_size, d.lr

    def loss(params, xb, yb):
        return torch.nn.functional.cross_entropy(fm.logits(params, xb), yb)

    g = grad(loss)

    def replay(theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        bb = max(1, min(b, n))
        chunks = [(s, min(s + bb, n)) for s in range(0, n, bb)]
        params = fm.unflatten(theta0)
        for k in range(steps):
            s, e = chunks[k % len(chunks)]
            gr = g(params, x[s:e], y[s:e])
            params = {nm: params[nm] - lr * gr[nm] for nm in fm.names}
        return torch.cat([params[nm].reshape(-1) for nm in fm.names]) - theta0

    return replay


# --------------------------------------------------------------------------- labels


def head_bias(fm: FlatModel, num_classes: int) -> tuple[int, int]:
    """Offsets of the output layer's bias (the last parameter, one entry per class)."""
    name = fm.names[-1]
    if tuple(fm.shapes[-1]) != (num_classes,):
        raise ConfigError(f"model: the last parameter {name!r} is not a {num_classes}-class bias; label recovery needs a linear head with bias")
    return fm.offsets()[name]


def recover_labels(
    fm: FlatModel, info: DatasetInfo, t: Target, batch: int, generator: torch.Generator, probes: int = 256
) -> torch.Tensor:
    """Labels of the ``batch`` records behind update ``t`` from the head's bias alone.

    ``∂L/∂b_c = mean_i (p_ic − 1[y_i = c])``. For one record only the true class is negative
    (iDLG, Zhao et al. 2020). For a batch, n_c ≈ B·(p̄_c − ∂L/∂b_c), where p̄ is the model's
    mean softmax, estimated on random probe inputs (no auxiliary data; Wainakh et al. 2022
    "LLG" use auxiliary data instead); every class with a negative entry gets at least one.
    Several local steps are read as their average gradient, −Δb / (lr · steps).
    """
    s, e = head_bias(fm, info.num_classes)
    d = t.disclosure
    g = -t.update[s:e].double() / (d.lr * max(d.local_steps, 1))
    if batch == 1:
        return torch.argmin(g).reshape(1)
    probe = random_inputs(info, (probes,), generator)
    with torch.no_grad():
        pbar = torch.softmax(fm.logits(fm.unflatten(t.global_params), probe), dim=1).mean(0).double()
    want = (batch * (pbar - g)).clamp(min=0)
    counts = torch.zeros(info.num_classes, dtype=torch.long)
    for c in torch.argsort(g)[: batch]:
        if g[c] < 0:
            counts[c] = 1
    while int(counts.sum()) < batch:
        c = int(torch.argmax(want - counts.double()))
        counts[c] += 1
    return torch.repeat_interleave(torch.arange(info.num_classes), counts)


# --------------------------------------------------------------------------- dummies


def random_inputs(info: DatasetInfo, lead: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random records of the data's range: images uniform in [0, 1], tabular standard normal."""
    shape = (*lead, *info.input_shape)
    if info.modality == "image":
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a batch of images (B, C, H, W); 0 for tabular."""
    if x.dim() < 4:
        return x.new_zeros(())
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def cosine_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) over the coordinates in ``mask``."""
    a, b = a * mask, b * mask
    return 1.0 - (a * b).sum() / (a.norm() * b.norm() + 1e-12)


def relative_l2(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """‖a − b‖² / ‖b‖² over ``mask``: DLG's L2 matching, scale-free across learning rates."""
    diff = (a - b) * mask
    return (diff * diff).sum() / ((b * mask).pow(2).sum() + 1e-20)


def observed_mask(update: torch.Tensor, mask_zeros: bool) -> torch.Tensor:
    """Coordinates to match. A sparsified update's exact zeros carry no gradient: the
    adaptive attacker matches only the coordinates that were sent."""
    if not mask_zeros:
        return torch.ones_like(update)
    return (update != 0).to(update.dtype)


# --------------------------------------------------------------------------- batched optimisation


@dataclass(frozen=True)
class Problem:
    """A group of targets with the same disclosure (so one replay function serves them all)."""

    targets: tuple[Target, ...]
    labels: torch.Tensor  # (T, B)
    batch: int


def group_targets(targets: Sequence[Target], batches: Sequence[int], labels: Sequence[torch.Tensor]) -> list[Problem]:
    groups: dict[tuple, list[int]] = {}
    for i, (t, b) in enumerate(zip(targets, batches)):
        groups.setdefault((b, t.disclosure), []).append(i)
    return [
        Problem(tuple(targets[i] for i in idx), torch.stack([labels[i] for i in idx]), batches[idx[0]])
        for (_, _), idx in groups.items()
    ]


@dataclass(frozen=True)
class Solved:
    """Per target: every restart's decoded records and final objective."""

    x: torch.Tensor  # (T, R, B, *input_shape)
    objective: torch.Tensor  # (T, R)
    iterations: int


def objective_fn(
    fm: FlatModel, d: Disclosure, match: Callable, decode: Callable[[torch.Tensor], torch.Tensor], tv_weight: float
) -> Callable:
    """``f(z, theta0, target, mask, y) -> loss`` for one restart of one target."""
    replay = make_replay(fm, d)

    def f(z, theta0, target, mask, y):
        x = decode(z)
        loss = match(replay(theta0, x, y), target, mask)
        if tv_weight:
            loss = loss + tv_weight * total_variation(x)
        return loss

    return f


def stack_problem(p: Problem, restarts: int, mask_zeros: bool) -> tuple[torch.Tensor, ...]:
    """Targets × restarts flattened into one batch dimension of size T·R."""
    theta = torch.stack([t.global_params for t in p.targets]).repeat_interleave(restarts, 0)
    target = torch.stack([t.update for t in p.targets]).repeat_interleave(restarts, 0)
    mask = torch.stack([observed_mask(t.update, mask_zeros) for t in p.targets]).repeat_interleave(restarts, 0)
    y = p.labels.repeat_interleave(restarts, 0)
    return theta, target, mask, y


def optimise_adam(
    f: Callable, z0: torch.Tensor, consts: tuple[torch.Tensor, ...], iterations: int, step: float,
    signed: bool, project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on all (target, restart) rows at once; learning rate ÷10 at 3/8, 5/8, 7/8 of
    the budget (Geiping et al. 2020). ``signed``: Adam on the sign of the gradient, as in
    their reference implementation. Returns the final z and each row's final objective."""
    gv = vmap(grad_and_value(f))
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=step)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(iterations * 3 / 8), int(iterations * 5 / 8), int(iterations * 7 / 8)], gamma=0.1
    )
    for _ in range(iterations):
        g, _ = gv(z.detach(), *consts)
        z.grad = g.sign() if signed else g
        opt.step()
        sched.step()
        if project is not None:
            with torch.no_grad():
                z.copy_(project(z))
    with torch.no_grad():
        final = vmap(f)(z.detach(), *consts)
    return z.detach(), final.detach()


def optimise_lbfgs(f: Callable, z0: torch.Tensor, consts: tuple[torch.Tensor, ...], iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS (Zhu et al. 2019) on the sum of the rows' objectives. The rows are independent
    problems; L-BFGS shares one curvature history and line search across them, which keeps
    them batched at the cost of a joint step length."""
    gv = vmap(grad_and_value(f))
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iterations, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        g, v = gv(z.detach(), *consts)
        z.grad = torch.nan_to_num(g)
        return torch.nan_to_num(v, nan=1e6).sum()

    opt.step(closure)
    with torch.no_grad():
        final = vmap(f)(z.detach(), *consts)
    return z.detach(), torch.nan_to_num(final, nan=float("inf")).detach()


def pick_by_objective(x: torch.Tensor, objective: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target, the restart with the lowest *attack objective* (never by the truth)."""
    best = torch.argmin(objective, dim=1)
    rows = torch.arange(x.shape[0])
    return x[rows, best], objective[rows, best]


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(rng.integers(0, 2**62)))
    return g


# --------------------------------------------------------------------------- the attack loop


def batch_size_of(t: Target) -> int:
    """How many records the attacker reconstructs: the disclosed number of local records."""
    return int(t.disclosure.num_samples)


# torch's types as forward references: the aliases are built at import, torch is not imported then (bench/lazy.py)
Solver = Callable[[FlatModel, DatasetInfo, Problem, "torch.Generator"], "Solved"]
Combiner = Callable[["torch.Tensor", "torch.Tensor", DatasetInfo], tuple["torch.Tensor", "torch.Tensor"]]


class single_thread:
    """Run a block with one intra-op thread, then restore the previous setting.

    The optimisation is thousands of tiny double-backward steps: on 2 shared cores torch's
    intra-op parallelism costs more in synchronisation than it gains (measured: one
    2,000-iteration digits reconstruction 67 s with 2 threads, 14 s with 1; see
    docs/bench-inversion.md).
    """

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
        return False


def run_inversion(view: ServerView, rng: np.random.Generator, p: InversionParams, solve: Solver, combine: Optional[Combiner] = None):
    """Select targets, recover labels, solve every group of targets in one batch, and pick
    (or pool) each target's final reconstruction by the attacker's own objective."""
    with single_thread():
        return _run_inversion(view, rng, p, solve, combine)


def _run_inversion(view, rng, p, solve, combine):
    import time

    from bench.types import Reconstruction

    t0 = time.perf_counter()
    gen = torch_generator(rng)
    fm = FlatModel.of(view.model_fn)
    targets = select_targets(view, p)
    batches = [batch_size_of(t) for t in targets]
    labels = [recover_labels(fm, view.info, t, b, gen) for t, b in zip(targets, batches)]
    items, iters = [], 0
    for prob in group_targets(targets, batches, labels):
        solved = solve(fm, view.info, prob, gen)
        iters = max(iters, solved.iterations)
        if combine is None:
            best, obj = pick_by_objective(solved.x, solved.objective)
        else:
            best, obj = combine(solved.x, solved.objective, view.info)
        for i, t in enumerate(prob.targets):
            items.append(
                Reconstruction(
                    round=t.round, target=t.name, x=best[i], labels=prob.labels[i], objective=float(obj[i]),
                    sites=t.sites, restarts=solved.x[i],
                )
            )
    items.sort(key=lambda r: (r.round, r.target))
    return Reconstructions(
        items=tuple(items), disclosure=disclosure_record(targets), iterations=iters,
        seconds=time.perf_counter() - t0, write_records=p.write_records,
    )


class OptimisationAttack:
    """Mixin of the optimisation attacks (DLG, Inverting Gradients, TabLeak): a curious
    server replays the disclosed local training and optimises inputs to match each update.

    Subclasses give ``Params`` (an :class:`InversionParams`) and ``solve``; ``combine`` pools
    restarts (None: the restart with the lowest objective)."""

    threat_model = "server"
    kind = "reconstruction"
    combine: Optional[Combiner] = None

    @classmethod
    def check(cls, params, cfg) -> None:
        check_replayable(params, cfg)

    @classmethod
    def check_sites(cls, params, names: Sequence[str]) -> None:
        """Before training (bench.components / bench.data.check_data): ``sites`` must exist."""
        check_sites(params, names, cls.name)

    def run(self, view: ServerView, rng: np.random.Generator) -> Reconstructions:
        return run_inversion(view, rng, self.params, self.solve, combine=type(self).combine)
