"""DP-SGD's default path: ``bench.engine``'s clipped sums, and a stand-in for Opacus's optimizer.

The engine computes each step's clipped sum in closed form (ghost norms for Linear layers,
per-layer rules for Conv2d/GroupNorm; no per-sample gradients stored) with Opacus's arithmetic
and random stream. :class:`EngineDPOptimizer` carries ``DPOptimizer``'s knobs, read at every
step; :class:`EnginePath` is the local round of :class:`defenses.dpsgd.trainer.DPTrainer` on
this path (a mixin: it reads the trainer's attributes).
"""

from __future__ import annotations

from typing import Any, Optional

from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


class EngineDPOptimizer:
    """The engine path's stand-in for Opacus's ``DPOptimizer``: the same knobs, read at every step.

    ``noise_multiplier``, ``max_grad_norm`` (the noise's scale: std = σ·max_grad_norm),
    ``expected_batch_size`` and ``clip_bound`` (per-row bounds of group-aware clipping) mean
    what they mean on ``DPOptimizer``, and :meth:`clip_and_accumulate` is Opacus's contract on
    explicit per-sample rows ``p.grad_sample`` (adding Σ f_i g_i to ``p.summed_grad``). The
    engine itself never materialises the records' rows: :class:`DPTrainer` computes their
    clipped sum in closed form, *unless* ``clip_and_accumulate`` was replaced on this instance
    (the clipping mutants of ``tests/mutants.py``, written against Opacus's optimizer): then it
    computes explicit per-sample rows and calls the replacement, so a broken clip stays broken
    under the engine and the audits can still catch it.
    """

    def __init__(self, original_optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int) -> None:
        self.original_optimizer = original_optimizer
        self.params = [p for group in original_optimizer.param_groups for p in group["params"]]
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.clip_bound: Any = None
        self.generator: Optional[torch.Generator] = None

    def replaced_clipping(self) -> bool:
        """Whether :meth:`clip_and_accumulate` was replaced on this instance."""
        return "clip_and_accumulate" in vars(self)

    def _get_flat_grad_sample(self, p: torch.Tensor) -> torch.Tensor:
        return p.grad_sample  # Opacus's accessor, for code written against DPOptimizer

    def clip_and_accumulate(self) -> None:
        """Clip the rows ``p.grad_sample`` to ``clip_bound`` (else ``max_grad_norm``) jointly over
        all parameters and add their sum to ``p.summed_grad`` (``bench.engine.clip_rows``)."""
        from bench.engine import clip_rows

        bound = self.clip_bound if self.clip_bound is not None else self.max_grad_norm
        if isinstance(bound, torch.Tensor):
            bound = bound.unsqueeze(0)
        summed = clip_rows([p.grad_sample.to(p.dtype).unsqueeze(0) for p in self.params], bound)
        for p, s in zip(self.params, summed):
            p.summed_grad = s[0] if getattr(p, "summed_grad", None) is None else p.summed_grad + s[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)
        for p in self.params:
            p.grad_sample = None
            p.summed_grad = None

    def step(self) -> None:
        """The base optimizer's step on the ``p.grad`` the trainer set."""
        self.original_optimizer.step()


class EnginePath:
    """:class:`~defenses.dpsgd.trainer.DPTrainer`'s local round through ``bench.engine``."""

    def _train_engine(self, generator: torch.Generator) -> tuple[int, float]:
        """One local round through ``bench.engine`` (the engine path of this trainer):
        per step the same Poisson mask (``_batches``), the clipped sum in closed form, the
        sampled canaries' rows clipped to C, one normal draw per parameter from ``generator``."""
        from bench.engine import clip_rows, clipped_sum

        opt = self.optimizer
        explicit = opt.replaced_clipping()
        params = opt.params
        x, y = self.data.x, self.data.y
        gens = [generator]
        # views of the parameters as a stack of one model, made once: the optimizer updates the
        # parameters in place, so the views always read the current values
        stack = [p.detach().unsqueeze(0) for p in params]
        steps, total, counted = 0, 0.0, 0
        for rows_drawn in self._batches(generator):
            opt.zero_grad(set_to_none=True)
            noise_std = self._step_noise_std()
            ebs = int(rows_drawn.numel()) if self.sampling == "shuffle" else opt.expected_batch_size
            idx, positions = self._split(rows_drawn)
            rows = self.canaries.rows(positions) if positions is not None else None
            if self.row_bounds is not None:
                opt.clip_bound = self.row_bounds[idx]  # C·s_i for each sampled record
            if explicit:
                summed, losses = self._explicit_sum(idx, rows)
            else:
                s = clipped_sum(self.program, stack, x[idx].unsqueeze(0), y[idx].unsqueeze(0), self._record_bound())
                summed, losses = s.grads, s.losses
                if rows is not None:  # gradient canaries: clipped to C whatever the records' bounds
                    extra = clip_rows([r.to(p.dtype).unsqueeze(0) for r, p in zip(rows, params)], self.clip)
                    summed = tuple(e + g for e, g in zip(extra, summed))
            if losses.numel():
                total += float(losses.mean())
                counted += 1
            released = self._privatize(summed, noise_std, ebs, gens)
            for p, g in zip(params, released):
                p.grad = g[0]
            self._log_step(released)
            opt.step()
            steps += 1
        opt.zero_grad(set_to_none=True)
        return steps, total / max(counted, 1)

    def _explicit_sum(self, idx: torch.Tensor, rows) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The clipped sum through ``optimizer.clip_and_accumulate`` on explicit per-sample rows
        (``torch.func``), canaries first at C, then the records: the Opacus path's order. Only
        when that method was replaced (see :class:`EngineDPOptimizer`)."""
        from torch.func import functional_call, grad, vmap

        opt = self.optimizer
        names = [n for n, _ in self.model.named_parameters()]
        values = {n: p.detach() for n, p in self.model.named_parameters()}
        xb, yb = self.data.x[idx], self.data.y[idx]

        def loss(p, xi, yi):
            return nn.functional.cross_entropy(functional_call(self.model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        with torch.no_grad():
            losses = nn.functional.cross_entropy(self.model(xb), yb, reduction="none") if len(idx) else torch.zeros(0)
        if len(idx):
            per = vmap(grad(loss), in_dims=(None, 0, 0))(values, xb, yb)
            record_rows = [per[n] for n in names]
        else:
            record_rows = [torch.zeros((0, *p.shape), dtype=p.dtype) for p in opt.params]
        records_bound = opt.clip_bound
        if rows is not None:
            opt.clip_bound = self.clip
            for p, r in zip(opt.params, rows):
                p.grad_sample = r.to(p.dtype)
            opt.clip_and_accumulate()
            opt.clip_bound = records_bound
        for p, r in zip(opt.params, record_rows):
            p.grad_sample = r
        opt.clip_and_accumulate()
        summed = tuple((p.summed_grad if p.summed_grad is not None else torch.zeros_like(p)).detach().unsqueeze(0) for p in opt.params)
        return summed, losses
