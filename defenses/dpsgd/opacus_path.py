"""DP-SGD through Opacus: ``GradSampleModule`` for per-sample gradients, ``DPOptimizer`` for clipping and noise.

Selected by ``grad_sample_mode`` ew (expanded weights), hooks or ghost (ghost clipping), and
the fallback of ``auto`` for a model ``bench.engine`` cannot compile; it is also the engine's
oracle in the tests. :func:`opacus_objects` builds Opacus's objects for one hospital (Opacus
must never wrap a model twice); :class:`OpacusPath` is the local round of
:class:`defenses.dpsgd.trainer.DPTrainer` on this path (a mixin: it reads the trainer's
attributes).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())

# Opacus's backward hooks fire with no input requiring grad (the data never does); torch warns
# on every step although the per-sample gradients are correct (checked in tests/test_dp_sgd.py).
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


def _group_clip_optimizer(base_cls):
    """``base_cls`` (Opacus's DPOptimizer) whose clipping bound may be a per-row vector.

    ``clip_bound`` (a scalar or one bound per row of the per-sample gradients) replaces
    ``max_grad_norm`` inside ``clip_and_accumulate`` only; ``max_grad_norm`` stays the noise's
    scale (``add_noise``: std = σ·max_grad_norm). Opacus's own arithmetic does the clipping.
    """

    class GroupClipDPOptimizer(base_cls):
        clip_bound: Any = None

        def clip_and_accumulate(self):
            noise_bound = self.max_grad_norm
            if self.clip_bound is not None:
                self.max_grad_norm = self.clip_bound
            try:
                super().clip_and_accumulate()
            finally:
                self.max_grad_norm = noise_bound

    return GroupClipDPOptimizer


def opacus_objects(model: Any, mode: str, base_optimizer: Callable[[], Any], opt_kw: dict, clip: float, per_row_bounds: bool,
                   loss_fn: Any) -> tuple[Any, Any, Any]:
    """Opacus's ``(module, optimizer, loss_fn)`` for one hospital's ``model`` under ``mode`` (ew, hooks, ghost).

    Args:
        model: the hospital's model (wrapped, not copied).
        mode: Opacus's ``grad_sample_mode``.
        base_optimizer: builds the ``torch.optim`` optimizer Opacus wraps.
        opt_kw: ``DPOptimizer``'s knobs (noise_multiplier, max_grad_norm, expected_batch_size, loss_reduction).
        clip: the per-sample clipping bound C (ghost clipping's module needs it).
        per_row_bounds: group-aware clipping: the optimizer takes one bound per row (``clip_bound``).
        loss_fn: the loss for ew and hooks; ghost clipping wraps its own.
    """
    if mode == "ghost":
        # Ghost clipping (Li et al. 2022; Opacus "fast gradient clipping"): per-sample
        # norms from a first backward pass, clipped sum from a second one, without
        # materialising per-sample gradients (fast for wide layers).
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
            GradSampleModuleFastGradientClipping,
        )
        from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        module = GradSampleModuleFastGradientClipping(
            model, loss_reduction="mean", max_grad_norm=clip, use_ghost_clipping=True
        )
        optimizer = DPOptimizerFastGradientClipping(base_optimizer(), **opt_kw)
        return module, optimizer, DPLossFastGradientClipping(module, optimizer, nn.CrossEntropyLoss(), "mean")
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer

    if mode == "ew":
        module = GradSampleModuleExpandedWeights(model, loss_reduction="mean")
    else:
        module = GradSampleModule(model, loss_reduction="mean")
    opt_cls = _group_clip_optimizer(DPOptimizer) if per_row_bounds else DPOptimizer
    base_opt = base_optimizer()
    optimizer = DPOptimizer(base_opt, **opt_kw) if opt_cls is DPOptimizer else opt_cls(base_opt, **opt_kw)
    return module, optimizer, loss_fn


class OpacusPath:
    """:class:`~defenses.dpsgd.trainer.DPTrainer`'s local round through Opacus's objects."""

    def _insert_canaries(self, positions: Optional[torch.Tensor]) -> None:
        # White-box audit: the canaries the records' sampler drew into this step enter as
        # per-sample gradient rows that Opacus's own clip_and_accumulate clips and adds to
        # the step's clipped sum (p.summed_grad) before the records' rows join it in step():
        # the noise then covers both, exactly as if the canaries were records (no copy of
        # the records' per-sample gradients is needed).
        if positions is None:
            return
        rows = self.canaries.rows(positions)
        params = self.optimizer.params
        records = [p.grad_sample for p in params]
        for p, extra in zip(params, rows):
            p.grad_sample = extra.to(p.dtype)
        if self.row_bounds is not None:
            # group_clip: the records' rows get their per-row bounds in step(); canaries stay at C
            records_bound, self.optimizer.clip_bound = self.optimizer.clip_bound, self.clip
            self.optimizer.clip_and_accumulate()
            self.optimizer.clip_bound = records_bound
        else:
            self.optimizer.clip_and_accumulate()
        for p, g in zip(params, records):
            p.grad_sample = g


    def _empty_step(self) -> None:
        # An empty Poisson batch still takes a (noise-only) step: skipping it would make the
        # number of steps depend on the data. Opacus's own loader feeds a 0-row batch; with
        # expanded weights a 0-row forward fails, so set the 0-row per-sample grads directly.
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            p.grad = torch.zeros_like(p)

    def _step(self, canary_positions) -> None:
        self._insert_canaries(canary_positions)
        self.optimizer.step()
        if self.step_log is not None:  # DPOptimizer leaves the released (noisy, scaled) gradient in p.grad
            self._log_step([p.grad for p in self.optimizer.params])


    def _train_opacus(self, generator: torch.Generator) -> tuple[int, float]:
        x, y = self.data.x, self.data.y
        steps, total, counted = 0, 0.0, 0
        for rows_drawn in self._batches(generator):
            self.optimizer.zero_grad(set_to_none=True)
            idx, positions = self._split(rows_drawn)
            if idx.numel() == 0:
                self._empty_step()
            else:
                if self.sampling == "shuffle":
                    # the plain mean over the actual batch, as PlainTrainer computes it
                    self.optimizer.expected_batch_size = int(rows_drawn.numel())
                loss = self.loss_fn(self.module(x[idx]), y[idx])
                loss.backward()
                total += float(loss.detach())
                counted += 1
            if self.row_bounds is not None:
                self.optimizer.clip_bound = self.row_bounds[idx]  # C·s_i for each sampled record
            self._step(positions)
            steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return steps, total / max(counted, 1)
