"""``dp_sgd``: record-level differential privacy inside each hospital (DP-SGD with Opacus).

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016. The clipped, noised sums
come from ``bench.engine`` by default (``grad_sample_mode: auto``/``engine``: ghost norms for
Linear layers, per-layer rules for Conv2d/GroupNorm, no per-sample gradients stored) with
Opacus's arithmetic and random stream; Opacus (``GradSampleModule`` for per-sample gradients,
``DPOptimizer`` for clipping and noise) remains selectable (``ew``, ``hooks``, ``ghost``) and
is the engine's oracle in the tests. Poisson batches are drawn exactly as Opacus's
``UniformWithReplacementSampler`` draws them; Opacus's accountants give ε.

``group_clip``: group-aware clipping, the static form of DPSGD-F (Xu, Du, Wu, "Removing
disparate impact on model accuracy in differentially private stochastic gradient descent",
KDD 2021): records of a listed subgroup are clipped to a larger bound, so that their
gradients lose less to clipping.
"""

from __future__ import annotations

import collections
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import numpy as np

from bench.accounting import default_delta
from bench.models import flatten, load_flat
from bench.training import local_optimizer, make_optimizer
from bench.types import ConfigError, DPEvent, LocalResult, safe_label
from defenses.base import DEFENSES, Defense, FederationFacts
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


log = logging.getLogger(__name__)
_FALLBACKS_TOLD: set[str] = set()  # engine fallbacks already warned about in this process

# Opacus's backward hooks fire with no input requiring grad (the data never does); torch warns
# on every step although the per-sample gradients are correct (checked in tests/test_dp_sgd.py).
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

# Opacus computes the noise std as noise_multiplier * max_grad_norm, and 0 * inf is NaN.
# "No clipping" is therefore represented by a finite bound no gradient reaches.
_NO_CLIP = 1e30


@dataclass(frozen=True)
class GroupClip:
    """dp_sgd's ``group_clip: {attribute: sex, scale: {female: 2.0}}``.

    Attributes:
        attribute: one of the cell's ``fairness.attributes``.
        scale: subgroup label -> factor s_g ≥ 1 on the clipping bound; subgroups not listed
            (and records whose value is missing) keep s = 1.
    """

    attribute: str
    scale: Any

    def __post_init__(self) -> None:
        where = "defenses.dp_sgd.group_clip.scale"
        if not isinstance(self.scale, dict) or not self.scale:
            raise ConfigError(f"{where}: got {self.scale!r}; expected a mapping of subgroup to a factor >= 1, e.g. {{female: 2.0}}")
        clean = {}
        for k, v in self.scale.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
                raise ConfigError(f"{where}.{k}: got {v!r}; expected a finite number >= 1 (subgroups not listed keep 1)")
            clean[str(k)] = float(v)
        object.__setattr__(self, "scale", clean)

    def __hash__(self) -> int:
        return hash((self.attribute, tuple(sorted(self.scale.items()))))

    @property
    def max_scale(self) -> float:
        """max_g s_g (at least 1): the clipped sum's sensitivity is C·max_scale."""
        return max([1.0, *self.scale.values()])

    def describe(self) -> str:
        return f"{self.attribute}:" + ",".join(f"{g}={v:g}" for g, v in sorted(self.scale.items()))

    def check_labels(self, labels: Sequence[str]) -> None:
        """Refuse subgroup names the data does not have (one line)."""
        unknown = [g for g in self.scale if g not in labels]
        if unknown:
            raise ConfigError(
                f"defenses.dp_sgd.group_clip.scale: {unknown[0]!r} is not a subgroup of {self.attribute!r}; "
                f"its subgroups: {', '.join(labels)}"
            )

    def row_scales(self, labels: Sequence[str], codes: np.ndarray) -> torch.Tensor:
        """s of each record with subgroup index ``codes`` (``-1``, missing: 1)."""
        self.check_labels(labels)
        per_group = np.array([self.scale.get(g, 1.0) for g in labels] or [1.0], dtype=np.float64)
        codes = np.asarray(codes, dtype=np.int64)
        return torch.from_numpy(np.where(codes >= 0, per_group[np.clip(codes, 0, None)], 1.0))


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


#: ``grad_sample_mode`` values: ``auto`` (the engine for models it compiles, else Opacus ``ew``,
#: tagged), ``engine`` (refuses models it cannot compile), and Opacus's ``ew``/``hooks``/``ghost``.
GRAD_SAMPLE_MODES = ("auto", "engine", "ew", "hooks", "ghost")


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


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling rate q = batch_size / n (capped at 1: full-batch steps)."""
    return min(1.0, batch_size / max(n, 1))


def steps_per_round(n: int, batch_size: int, epochs: int) -> int:
    """Local steps per round: as many as :class:`bench.training.PlainTrainer` takes."""
    return epochs * ((n + batch_size - 1) // batch_size)


def _surely_reachable(target_epsilon: float, delta: float, steps: int, accountant: str) -> bool:
    """A cheap sufficient condition for :func:`calibrate_noise` to succeed.

    Opacus's search doubles σ from 10 and gives up above 10⁶. At σ = 20480 (on its way) the
    ε it reports is at most that of the *unsampled* Gaussian mechanism (q = 1 only adds
    privacy loss) converted from RDP the classic way, ε ≤ min_α α·T/(2σ²) + log(1/δ)/(α−1),
    over Opacus's own orders α (its conversion is tighter). PRV's estimate may exceed the
    exact ε by its error bound (0.01): 0.02 of slack. False only means "search to be sure"."""
    from opacus.accountants.rdp import RDPAccountant

    sigma = 20480.0
    bound = min(a * steps / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in RDPAccountant.DEFAULT_ALPHAS)
    return bound + (0.0 if accountant == "rdp" else 0.02) <= target_epsilon


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """σ that reaches ``target_epsilon`` at ``delta`` after ``steps`` Poisson-Gaussian steps.

    The σ Opacus's ``get_noise_multiplier`` returns (its search replayed with far fewer and
    cheaper ε evaluations, cached per (target, δ, q, steps, accountant):
    :func:`bench.accounting.noise_multiplier_for`; milliseconds with RDP where Opacus takes
    0.1–1.5 s).

    Raises:
        ValueError: no σ up to 10⁶ reaches the target.
    """
    from bench.accounting import noise_multiplier_for

    return noise_multiplier_for(float(target_epsilon), float(delta), float(q), int(steps), accountant)


class DPTrainer:
    """A hospital's DP-SGD trainer with the ``PlainTrainer`` interface.

    Opacus objects are built once per hospital (Opacus must never wrap a model twice) and
    live for the whole run: the global parameters are loaded into the wrapped model at the
    start of every round, the optimizer's state (momentum, Adam moments) is reset each
    round exactly as ``PlainTrainer`` does, and every local step is counted for accounting.

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
        elif grad_sample_mode == "ghost":
            # Ghost clipping (Li et al. 2022; Opacus "fast gradient clipping"): per-sample
            # norms from a first backward pass, clipped sum from a second one, without
            # materialising per-sample gradients (fast for wide layers).
            from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
                GradSampleModuleFastGradientClipping,
            )
            from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
            from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

            self.module = GradSampleModuleFastGradientClipping(
                self.model, loss_reduction="mean", max_grad_norm=clip, use_ghost_clipping=True
            )
            self.optimizer = DPOptimizerFastGradientClipping(torch_opt(), **opt_kw)
            self.loss_fn = DPLossFastGradientClipping(self.module, self.optimizer, nn.CrossEntropyLoss(), "mean")
        else:
            from opacus import GradSampleModule
            from opacus.grad_sample import GradSampleModuleExpandedWeights
            from opacus.optimizers import DPOptimizer

            if grad_sample_mode == "ew":
                self.module = GradSampleModuleExpandedWeights(self.model, loss_reduction="mean")
            else:
                self.module = GradSampleModule(self.model, loss_reduction="mean")
            opt_cls = _group_clip_optimizer(DPOptimizer) if self.row_bounds is not None else DPOptimizer
            base_opt = torch_opt()
            self.optimizer = DPOptimizer(base_opt, **opt_kw) if opt_cls is DPOptimizer else opt_cls(base_opt, **opt_kw)
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

    def steps_per_round(self) -> int:
        """Local steps per round (the PlainTrainer interface)."""
        return self.round_steps


@DEFENSES.register("dp_sgd")
class DPSGD(Defense):
    """DP-SGD inside every hospital: Poisson sampling, per-sample clipping, Gaussian noise.

    Runs on the client, replacing local training (``wrap_local_training``). Privacy unit:
    one *record* of one hospital. DP events: one ``poisson_gaussian`` event per hospital with
    q = batch_size / n, σ, and every local step of every round that hospital took part in
    (one accountant per hospital across rounds), under the add/remove neighbouring relation
    (one record present or absent: what Opacus's RDP/PRV accountants assume;
    ``privacy.neighbouring: replace_one`` is refused). ε at δ = ``privacy.delta`` or
    min(1e-5, 1/(100·n)) for a hospital of n records (``bench.accounting.default_delta``).
    Hides nothing: the server still sees each (noisy) update.

    Set exactly one of ``noise_multiplier`` and ``target_epsilon``. With ``target_epsilon``
    σ is calibrated per hospital (Opacus ``get_noise_multiplier``'s answer, found by ``bench.accounting.noise_multiplier_for``) for the steps it would
    take if it joined *every* round: when fewer hospitals are sampled per round the realised
    ε is lower than the target (conservative; site sampling is not counted as amplification).

    ``group_clip: {attribute: sex, scale: {female: 2.0}}`` (static DPSGD-F, Xu, Du, Wu 2021):
    each record of subgroup g is clipped to C·s_g (s = 1 for subgroups not listed and for
    records whose value is missing) and the Gaussian noise on the clipped sum has std
    σ·C·max_g s_g. Adding or removing one record moves the clipped sum by at most C·max_g s_g,
    so noise / sensitivity is still σ: the DP events (σ, q, steps), and hence ε, are exactly
    those without ``group_clip``; what changes is the noise every record pays (×max s) against
    the clipping bias the scaled group is spared. The attribute must be one of
    ``fairness.attributes``; each hospital reads its own records' subgroups (the hospital
    knows its patients). Outsider reference federations run the same mechanism (sequentially,
    with the population records' subgroups: the attacker is assumed to know them, as it knows
    the pipeline). Gradient canaries of the white-box audit are still clipped to C, so they
    probe a record of an unscaled group: the audit then tests noise σ·max s per unit of
    canary norm, a weaker (lower-ε) mechanism than the worst record's, and cannot certify the
    full ε.

    ``sampling: shuffle`` uses PlainTrainer's shuffled batches instead of Poisson sampling;
    the Poisson-subsampled accountant does not hold for it, so no ε is claimed (no DP events,
    tag ``dp_sgd_sampling=shuffle``). It exists to check equivalence with plain training.

    ``grad_sample_mode`` chooses how the clipped sums are computed, not the mechanism (same
    batches, same noise draws, same ε): ``auto`` (default) runs ``bench.engine`` on every
    model it compiles (privbench's logreg, mlp, cnn) and Opacus ``ew`` otherwise, with the tag
    ``dp_sgd_engine_fallback`` saying why; ``engine`` refuses such a model; ``ew``, ``hooks``,
    ``ghost`` run Opacus.
    """

    name = "dp_sgd"
    privacy_unit = "record"
    is_dp = True

    @dataclass(frozen=True)
    class Params:
        noise_multiplier: Optional[float] = field(default=None, metadata={"ge": 0})
        target_epsilon: Optional[float] = field(default=None, metadata={"gt": 0})
        max_grad_norm: float = field(default=1.0, metadata={"gt": 0, "inf_ok": "no clipping, with noise_multiplier: 0"})
        sampling: Literal["poisson", "shuffle"] = "poisson"
        grad_sample_mode: Literal["auto", "engine", "ew", "hooks", "ghost"] = "auto"
        group_clip: Optional[GroupClip] = field(default=None, metadata={"omit_if_none": True})

    @classmethod
    def check(cls, params, cfg) -> None:
        gc = params.group_clip
        if gc is not None:
            names = [a.name for a in cfg.fairness.attributes] if cfg.fairness is not None else []
            if gc.attribute not in names:
                raise ConfigError(
                    f"defenses.dp_sgd.group_clip.attribute: got {gc.attribute!r}; it must be one of the cell's "
                    f"fairness.attributes ({', '.join(names) or 'none'}); add it, e.g. fairness: {{attributes: [{gc.attribute}]}}"
                )
            if math.isinf(params.max_grad_norm) or params.grad_sample_mode == "ghost":
                raise ConfigError(
                    "defenses.dp_sgd.group_clip: needs a finite max_grad_norm and per-sample gradients; "
                    "use grad_sample_mode: ew or hooks (or auto / engine)"
                )
        if (params.noise_multiplier is None) == (params.target_epsilon is None):
            raise ConfigError(
                "defenses.dp_sgd: set exactly one of noise_multiplier and target_epsilon, e.g. noise_multiplier: 1.0"
            )
        if math.isinf(params.max_grad_norm) and (params.noise_multiplier != 0 or params.target_epsilon is not None):
            raise ConfigError(
                "defenses.dp_sgd.max_grad_norm: got inf; infinite clipping bound means infinite noise, "
                "use a finite bound or noise_multiplier: 0"
            )
        if params.target_epsilon is not None and params.sampling != "poisson":
            raise ConfigError(
                "defenses.dp_sgd.sampling: got 'shuffle'; target_epsilon needs the Poisson accountant, use sampling: poisson"
            )
        if cfg.privacy.neighbouring == "replace_one":
            # Opacus's Poisson-subsampled accountants are add/remove; replace-one of a subsampled
            # record is a different mechanism (bench.accounting.effective_noise_multiplier)
            raise ConfigError(
                "privacy.neighbouring: got 'replace_one'; dp_sgd accounts records under add/remove only "
                "(replace_one is for client_dp's hospitals), use add_remove or auto"
            )

    @classmethod
    def label(cls, params) -> str:
        core = f"eps={params.target_epsilon:g}" if params.target_epsilon is not None else f"z={params.noise_multiplier:g}"
        extra = "" if params.sampling == "poisson" else ",shuffle"
        if params.group_clip is not None:
            extra += f",group_clip[{params.group_clip.describe()}]"
        return f"dp_sgd({core},C={params.max_grad_norm:g}{extra})"

    @classmethod
    def check_federation(cls, params, fed) -> None:
        """Once the data is loaded: ``group_clip``'s subgroups must exist (one line)."""
        gc = params.group_clip
        if gc is None:
            return
        available = {a.name: a.groups for a in fed.sensitive}
        gc.check_labels(available[cls._attribute(gc, available)])

    @classmethod
    def check_against(cls, params, cfg, fed) -> None:
        """Once the data is loaded, before training: every hospital can reach ``target_epsilon``.

        σ is calibrated per hospital exactly as in training (:meth:`noise_for`: its records,
        steps, δ, accountant); Opacus gives up above σ = 10⁶, and a target it cannot reach
        would otherwise fail only when training starts."""
        if params.target_epsilon is None or params.sampling != "poisson":
            return
        t = cfg.train
        facts = FederationFacts(
            site_names=fed.site_names, site_sizes={s.name: len(s.train) for s in fed.sites},
            sites_per_round=min(t.sites_per_round or len(fed.sites), len(fed.sites)), rounds=t.rounds, num_params=0,
            local_epochs=t.local_epochs, batch_size=t.batch_size, accountant=cfg.privacy.accountant, delta=cfg.privacy.delta,
        )
        probe = cls(params)
        probe.facts = facts
        for name, n in facts.site_sizes.items():
            delta = facts.delta if facts.delta is not None else default_delta(n)
            if _surely_reachable(params.target_epsilon, delta, t.rounds * steps_per_round(n, t.batch_size, t.local_epochs), facts.accountant):
                continue  # the common case, without the search (cheap now: bench.accounting.noise_multiplier_for, milliseconds under RDP; PRV slower)
            try:
                with warnings.catch_warnings():  # Opacus warns about its alpha range while it searches
                    warnings.simplefilter("ignore")
                    probe.noise_for(n)
            except ValueError:
                steps = t.rounds * steps_per_round(n, t.batch_size, t.local_epochs)
                raise ConfigError(
                    f"defenses.dp_sgd.target_epsilon: got {params.target_epsilon:g}; hospital {name!r} ({n} records, "
                    f"{steps} steps) cannot reach it at any noise multiplier the accountant tries (up to 1e6); "
                    "raise target_epsilon, or train fewer rounds"
                ) from None

    @staticmethod
    def _attribute(gc: GroupClip, available) -> str:
        """The key of ``gc.attribute`` among ``available`` (MLflow-safe attribute names)."""
        name = safe_label(gc.attribute)
        if name not in available:
            raise ConfigError(
                f"defenses.dp_sgd.group_clip.attribute: {gc.attribute!r} has no subgroups in this federation; "
                "list it under fairness.attributes"
            )
        return name

    trainer_class = DPTrainer  # the hospital's trainer (tests/mutants.py swaps in broken ones)

    def __init__(self, params) -> None:
        super().__init__(params)
        self.facts: Optional[FederationFacts] = None
        self.trainers: dict[str, DPTrainer] = {}
        self.sigmas: dict[str, float] = {}

    def setup(self, facts: FederationFacts) -> None:
        self.facts = facts
        if self.params.sampling == "shuffle":
            log.warning("dp_sgd with sampling=shuffle: the Poisson accountant does not apply; no epsilon is reported")

    def noise_for(self, n: int) -> float:
        """σ for a hospital with ``n`` records (fixed, or calibrated to ``target_epsilon``)."""
        p = self.params
        if p.noise_multiplier is not None:
            return float(p.noise_multiplier)
        f = self.facts
        if f is None:
            raise RuntimeError("dp_sgd: setup() must run before wrap_local_training()")
        delta = f.delta if f.delta is not None else default_delta(n)
        steps = f.rounds * steps_per_round(n, f.batch_size, f.local_epochs)
        return calibrate_noise(p.target_epsilon, delta, sample_rate(n, f.batch_size), steps, f.accountant)

    def wrap_local_training(self, trainer: Any, site: str) -> Any:
        if site in self.trainers:
            raise RuntimeError(f"dp_sgd: hospital {site!r} wrapped twice; Opacus must wrap a model once")
        sigma = self.noise_for(len(trainer.data))
        gc, scales = self.params.group_clip, None
        if gc is not None:
            groups = getattr(trainer, "groups", {}) or {}
            g = groups[self._attribute(gc, groups)]
            scales = gc.row_scales(g.labels, g.codes)
        wrapped = self.trainer_class(
            trainer, sigma, self.params.max_grad_norm, self.params.sampling, self.params.grad_sample_mode,
            clip_scales=scales, max_scale=gc.max_scale if gc is not None else 1.0,
        )
        self.trainers[site] = wrapped
        self.sigmas[site] = sigma
        return wrapped

    # ---- the math, on a stack of K federations (LiRA/RMIA's references; the target's
    # DPTrainer runs the same bench.engine functions with K = 1)
    has_stacked_form = True

    @classmethod
    def stacked_unsupported(cls, params) -> Optional[str]:
        if params.sampling != "poisson":
            return "dp_sgd with sampling=shuffle"
        if params.group_clip is not None:
            return "dp_sgd with group_clip (per-record clipping bounds of the population are not stacked)"
        return None

    def private_gradient_stack(
        self, program: Any, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """One DP-SGD step of K federations of one hospital's size n: flat parameters ``(K, P)``,
        records ``x`` ``(K, n, ...)``, ``y`` ``(K, n)``; returns the ``(K, P)`` private gradients.

        ``bench.engine.flat_poisson_step``: each federation draws its Poisson mask (q = b/n) and
        its noise (σ·C, σ = :meth:`noise_for`) from its own generator exactly as
        :class:`DPTrainer` does, so federation k is the target pipeline with seed k.
        """
        from bench.engine import flat_poisson_step

        n = int(y.shape[1])
        sigmas = self.__dict__.setdefault("_stack_sigmas", {})
        if n not in sigmas:  # calibrating to target_epsilon runs an accountant search: once per size
            sigmas[n] = float(self.noise_for(n))
        if self.facts is None:
            raise RuntimeError("dp_sgd: setup() must run before private_gradient_stack()")
        q = sample_rate(n, self.facts.batch_size)
        bound = _NO_CLIP if math.isinf(self.params.max_grad_norm) else float(self.params.max_grad_norm)
        return flat_poisson_step(
            program, params, x, y, q=q, bound=bound, noise_std=sigmas[n] * bound,
            expected_batch_size=max(1, round(q * n)), generators=generators,
        )

    def dp_events(self) -> tuple[DPEvent, ...]:
        if self.params.sampling != "poisson":
            return ()
        return tuple(
            DPEvent(
                kind="poisson_gaussian",
                unit="record",
                party=site,
                noise_multiplier=t.noise_multiplier,
                sample_rate=t.sample_rate,
                steps=t.steps_taken,
                population=t.n,
                source=self.name,
                neighbouring="add_remove",
            )
            for site, t in self.trainers.items()
            if t.steps_taken > 0
        )

    def tags(self) -> dict[str, str]:
        modes = sorted({t.grad_sample_mode for t in self.trainers.values()})
        # where the per-sample gradients came from: privbench's engine, or Opacus (a user model the engine cannot compile)
        out = {"dp_sgd_per_sample": ", ".join("bench.engine" if m == "engine" else f"opacus {m}" for m in modes)} if modes else {}
        fell_back = {s: t.fallback_reason for s, t in self.trainers.items() if t.fallback_reason}
        if fell_back:  # grad_sample_mode auto on a model the engine cannot compile: Opacus ew ran
            site, why = next(iter(sorted(fell_back.items())))
            out["dp_sgd_engine_fallback"] = f"opacus ew at {len(fell_back)} hospital(s), e.g. {site}: {why}"[:500]
        if self.params.sampling != "poisson":
            out["dp_sgd_sampling"] = "shuffle"
        if self.params.group_clip is not None:
            out["dp_sgd_group_clip"] = self.params.group_clip.describe()
        return out

    def metrics(self) -> dict[str, float]:
        out = {f"defense/dp_sgd/site/{s}/noise_multiplier": v for s, v in self.sigmas.items()}
        out.update({f"defense/dp_sgd/site/{s}/steps": float(t.steps_taken) for s, t in self.trainers.items()})
        if self.params.group_clip is not None:
            out["defense/dp_sgd/group_clip/max_scale"] = self.params.group_clip.max_scale
            for s, t in self.trainers.items():  # share of the hospital's records clipped to a larger bound
                out[f"defense/dp_sgd/site/{s}/scaled_fraction"] = float((t.row_bounds > t.clip * (1 + 1e-9)).float().mean())
        return out
