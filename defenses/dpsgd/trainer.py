"""``DPTrainer``: one hospital's DP-SGD trainer, with the ``PlainTrainer`` interface.

It chooses the path (``bench.engine`` for models it compiles, else Opacus: ``grad_sample_mode``),
draws the Poisson batches exactly as Opacus's ``UniformWithReplacementSampler`` does, carries the
white-box audit's gradient canaries as rows of the hospital's data, logs the released steps
for the audit and counts every step for accounting. The two paths' local rounds are
:class:`~defenses.dpsgd.engine_path.EnginePath` and :class:`~defenses.dpsgd.opacus_path.OpacusPath`.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Optional, Sequence

from bench.lazy import lazy
from bench.models import flatten, load_flat
from bench.training import local_optimizer, make_optimizer
from bench.types import ConfigError, LocalResult
from defenses.dpsgd.calibration import sample_rate, steps_per_round
from defenses.dpsgd.engine_path import EngineDPOptimizer, EnginePath
from defenses.dpsgd.opacus_path import OpacusPath, opacus_objects

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())

log = logging.getLogger("defenses.dp_sgd")  # the defense's logger (its name before the split)
_FALLBACKS_TOLD: set[str] = set()  # engine fallbacks already warned about in this process

# Opacus computes the noise std as noise_multiplier * max_grad_norm, and 0 * inf is NaN.
# "No clipping" is therefore represented by a finite bound no gradient reaches.
_NO_CLIP = 1e30


#: ``grad_sample_mode`` values: ``auto`` (the engine for models it compiles, else Opacus ``ew``,
#: tagged), ``engine`` (refuses models it cannot compile), and Opacus's ``ew``/``hooks``/``ghost``.
GRAD_SAMPLE_MODES = ("auto", "engine", "ew", "hooks", "ghost")


class DPTrainer(EnginePath, OpacusPath):
    """A hospital's DP-SGD trainer with the ``PlainTrainer`` interface.

    Opacus objects are built once per hospital (Opacus must never wrap a model twice) and
    live for the whole run: the global parameters are loaded into the wrapped model at the
    start of every round, the optimizer's state (momentum, Adam moments) is reset each
    round exactly as ``PlainTrainer`` does, and every local step is counted for accounting.
    The two paths' rounds are inherited (``_train_engine``, ``_explicit_sum``: :class:`EnginePath`;
    ``_train_opacus``, ``_step``, ``_insert_canaries``, ``_empty_step``: :class:`OpacusPath`); the
    seams both share (``_batches``, ``_step_noise_std``, ``_privatize``, ``_split``) are here, so a
    subclass (``tests/mutants.py``) that overrides one changes either path.

    Args:
        plain: the hospital's :class:`bench.training.PlainTrainer` (model, data, settings).
        noise_multiplier: σ (noise std = σ·C on the sum of clipped per-sample gradients).
        max_grad_norm: per-sample clipping bound C (``inf``: no clipping, needs σ = 0).
        sampling: ``"poisson"`` (each record joins each step with probability q; the
            accountant's assumption) or ``"shuffle"`` (PlainTrainer's batches; no ε).
        grad_sample_mode: ``"auto"`` (default: ``bench.engine`` for models it compiles, else
            Opacus ``"ew"``, the reason kept in ``fallback_reason``), ``"engine"`` (refuses a
            model it cannot compile, naming the layer), or Opacus's ``"ew"`` (expanded weights),
            ``"hooks"`` or ``"ghost"`` (ghost clipping; no per-sample gradients stored). The
            engine and Opacus draw the same Poisson batches and noise from ``generator`` and
            give the same parameters to float rounding (``tests/test_one_engine.py``).
        clip_scales: group-aware clipping: one factor s_i ≥ 1 per record of ``plain.data``;
            record i is clipped to C·s_i. Needs ``max_scale``.
        max_scale: max_g s_g over every configured subgroup (not only those present here):
            the noise std becomes σ·C·max_scale, so noise / sensitivity stays σ. Gradient
            canaries are still clipped to C.
    """

    def __init__(
        self,
        plain: Any,
        noise_multiplier: float,
        max_grad_norm: float,
        sampling: str = "poisson",
        grad_sample_mode: str = "auto",
        clip_scales: Optional[torch.Tensor] = None,
        max_scale: float = 1.0,
    ) -> None:
        self.model: nn.Module = plain.model
        self.data = plain.data
        self.settings = plain.settings
        self.sampling = sampling
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        n, b = len(self.data), self.settings.batch_size
        self.n = n
        self.sample_rate = sample_rate(n, b)
        self.round_steps = steps_per_round(n, b, self.settings.epochs)
        self.steps_taken = 0
        self.rounds_taken = 0
        clip = _NO_CLIP if math.isinf(self.max_grad_norm) else self.max_grad_norm
        self.row_bounds: Optional[torch.Tensor] = None
        self.max_scale = float(max_scale)
        if clip_scales is not None:
            if grad_sample_mode == "ghost" or math.isinf(self.max_grad_norm):
                raise ConfigError("defenses.dp_sgd.group_clip: needs a finite max_grad_norm and grad_sample_mode auto, engine, ew or hooks")
            if len(clip_scales) != n or float(clip_scales.max()) > self.max_scale + 1e-12 or float(clip_scales.min()) < 1:
                raise ValueError("dp_sgd: clip_scales needs one factor in [1, max_scale] per record")
            self.row_bounds = (clip * clip_scales.to(torch.float64)).float()
        self.clip = clip
        # Opacus divides the noisy sum by the *expected* batch size q·n under Poisson
        # sampling (the actual size would leak how many records were sampled).
        opt_kw = dict(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=clip * self.max_scale if self.row_bounds is not None else clip,  # the noise's scale
            expected_batch_size=max(1, round(self.sample_rate * n)),
            loss_reduction="mean",
        )
        torch_opt = lambda: make_optimizer(self.model.parameters(), self.settings)  # noqa: E731 - Opacus wraps a torch.optim optimizer
        self.loss_fn = nn.CrossEntropyLoss()
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"defenses.dp_sgd.grad_sample_mode: got {grad_sample_mode!r}; expected one of {', '.join(GRAD_SAMPLE_MODES)}")
        self.program = None  # bench.engine's compiled model (engine path), else None (Opacus)
        self.fallback_reason: Optional[str] = None
        if grad_sample_mode in ("auto", "engine"):
            from bench.engine import compile_model

            try:
                self.program = compile_model(self.model)
            except ValueError as exc:
                if grad_sample_mode == "engine":
                    raise ConfigError(f"defenses.dp_sgd.grad_sample_mode: 'engine' cannot run this model: {exc}; use ew or hooks") from None
                self.fallback_reason = str(exc)
                if self.fallback_reason not in _FALLBACKS_TOLD:  # once per process and reason, not per hospital and reference
                    _FALLBACKS_TOLD.add(self.fallback_reason)
                    log.warning("dp_sgd: %s; using Opacus (grad_sample_mode ew) for this model (tag dp_sgd_per_sample)", exc)
                grad_sample_mode = "ew"
        self.grad_sample_mode = "engine" if self.program is not None else grad_sample_mode  # the mode in use
        if self.program is not None:
            # no Opacus objects: the engine computes the clipped sums (bench.engine), this
            # stand-in carries DPOptimizer's knobs and the base optimizer
            self.module = self.model
            base_opt = local_optimizer(self.model.parameters(), self.settings)  # (no torch.optim object: no torch._dynamo import)
            self.optimizer = EngineDPOptimizer(base_opt, **{k: v for k, v in opt_kw.items() if k != "loss_reduction"})
        else:  # Opacus (defenses/dpsgd/opacus_path.py)
            self.module, self.optimizer, self.loss_fn = opacus_objects(
                self.model, grad_sample_mode, torch_opt, opt_kw, clip, self.row_bounds is not None, self.loss_fn
            )
        self.canaries = None
        if getattr(plain, "canaries", None) is not None:
            if grad_sample_mode == "ghost":
                raise ConfigError(
                    "defenses.dp_sgd.grad_sample_mode: 'ghost' stores no per-sample gradients, so gradient canaries "
                    "cannot be inserted; use grad_sample_mode: ew for the white-box audit"
                )
            from bench.canaries import GradientCanaryRows

            self.canaries = GradientCanaryRows(plain.canaries, clip, [p.shape for p in self.model.parameters()])
        # the rows the sampler draws from: the records, then the included gradient canaries
        # (the white-box audit's canaries are rows of this hospital's data: bench.canaries)
        self.n_rows = n + (len(self.canaries) if self.canaries is not None else 0)
        # the audited hospital logs every privatized step (the release the accountant assumes)
        self.step_log: Optional[list[torch.Tensor]] = [] if self.canaries is not None else None

    def _split(self, idx: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A step's sampled rows as (record indices, canary positions or None)."""
        if self.canaries is None:
            return idx, None
        is_record = idx < self.n
        canary = idx[~is_record] - self.n
        return idx[is_record], (canary if canary.numel() else None)

    def _record_bound(self) -> Any:
        """The per-sample clipping bound of this step's rows: C (or C·s_i with group_clip)."""
        opt = self.optimizer
        return opt.clip_bound.unsqueeze(0) if opt.clip_bound is not None else self.clip

    def _step_noise_std(self) -> float:
        # read every step, as DPOptimizer does (the noise mutants change noise_multiplier)
        return self.optimizer.noise_multiplier * self.optimizer.max_grad_norm

    def _privatize(self, summed, noise_std: float, ebs: float, gens) -> tuple[torch.Tensor, ...]:
        """The released step: (clipped sum + N(0, noise_std²)) / expected batch size."""
        from bench.engine import noisy_mean

        return noisy_mean(summed, noise_std, ebs, gens)

    def _log_step(self, grads: Sequence[torch.Tensor]) -> None:
        if self.step_log is not None:
            self.step_log.append(torch.cat([g.detach().reshape(-1) for g in grads]).clone())

    def _batches(self, generator: torch.Generator):
        """Each step's sampled rows (indices into the records, then the audit's canary rows)."""
        if self.sampling == "poisson":
            # Poisson sampling exactly as Opacus's ``UniformWithReplacementSampler`` draws it
            # (one ``torch.rand(n) < q`` mask per step from the same generator, interleaved with
            # the noise draws in the same order), without its list round trip per step.
            n, q = self.n_rows, self.sample_rate
            for _ in range(self.round_steps):
                yield (torch.rand(n, generator=generator) < q).nonzero().view(-1)
            return
        # "shuffle": exactly PlainTrainer's order (same generator calls), for equivalence tests
        b = self.settings.batch_size
        for _ in range(self.settings.epochs):
            order = torch.randperm(self.n_rows, generator=generator)
            for start in range(0, self.n_rows, b):
                yield order[start : start + b]

    def train(self, global_params: torch.Tensor, generator: torch.Generator) -> LocalResult:
        """Start from ``global_params``; return the DP-trained parameters.

        All randomness (Poisson batches and Gaussian noise) comes from ``generator``.
        """
        load_flat(self.model, global_params)
        self.model.train()
        self.optimizer.original_optimizer.state = collections.defaultdict(dict)
        self.optimizer.generator = generator
        if self.step_log is not None:
            self.step_log = []
        if self.program is not None:
            steps, mean_loss = self._train_engine(generator)
        else:
            steps, mean_loss = self._train_opacus(generator)
        self.steps_taken += steps
        self.rounds_taken += 1
        step_updates = torch.stack(self.step_log) if self.step_log else None
        return LocalResult(params=flatten(self.model), num_steps=steps, num_samples=self.n, mean_loss=mean_loss,
                           step_updates=step_updates)

    def steps_per_round(self) -> int:
        """Local steps per round (the PlainTrainer interface)."""
        return self.round_steps
