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

This module is the defense a plug-in author reads: its parameters, checks, DP events, tags and
metrics. The machinery lives in ``defenses/dpsgd/`` (``calibration``, ``group_clip``,
``trainer``: :class:`DPTrainer`, ``engine_path``: the engine and :class:`EngineDPOptimizer`,
``opacus_path``: Opacus); every name stays importable from here. A module global is read where
it is defined: patch ``defenses.dpsgd.trainer._NO_CLIP`` for the trainer, and
``defenses.dp_sgd.calibrate_noise`` for :class:`DPSGD`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

from bench.accounting import default_delta
from bench.lazy import lazy
from bench.types import ConfigError, DPEvent, safe_label
from defenses.base import DEFENSES, Defense, FederationFacts
from defenses.dpsgd.calibration import _surely_reachable, calibrate_noise, sample_rate, steps_per_round
from defenses.dpsgd.engine_path import EngineDPOptimizer  # noqa: F401 - re-exported
from defenses.dpsgd.group_clip import GroupClip
from defenses.dpsgd.opacus_path import _group_clip_optimizer  # noqa: F401 - re-exported
from defenses.dpsgd.trainer import _FALLBACKS_TOLD, _NO_CLIP, GRAD_SAMPLE_MODES, DPTrainer  # noqa: F401 - re-exported

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())

log = logging.getLogger(__name__)


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
