"""White-box one-run audits: gradient canaries inside DP-SGD, canary clients inside client_dp.

Both insert thousands of canaries (crafted unit directions in parameter space, each included
with probability ½; ``bench.canaries``), train the cell once, and score each canary by how
much of its direction the adversary's observations contain. Scoring (``bench.metrics.audit``)
turns the scores into a certified ε lower bound, an ε estimate and the ceiling of the
analysis, each stated at the audit's δ beside the accountant's ε.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from attacks.base import ATTACKS, Attack
from bench.canaries import insert_audit_canaries
from bench.types import AuditScores, ConfigError, Federation, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def _defense(cfg, name: str):
    return next((d for d in cfg.defenses if d.name == name), None)


def _directions(view: ServerView, attack: str):
    if view.canary_directions is None:
        raise ConfigError(f"attacks.{attack}: no canaries in this federation (the prepare step did not run)")
    return view.canary_directions


WHITE_BOX = ("dpsgd_audit", "client_canary_audit")


def _one_white_box_audit(cfg) -> None:
    names = [a.name for a in cfg.attacks if a.name in WHITE_BOX]
    if len(names) > 1:
        raise ConfigError(f"attacks: {names[0]!r} and {names[1]!r} both insert canaries into the mechanism; run each in its own cell")


def _check_size(attack: str, m: int, num_params: int) -> None:
    if m > num_params:
        raise ConfigError(
            f"attacks.{attack}.num_canaries: got {m}, but the model has only {num_params} parameters (one orthogonal "
            f"direction per canary); lower num_canaries to <= {num_params} or widen the model (e.g. model.hidden: [256])"
        )


def _released_deltas(view: ServerView) -> list[torch.Tensor]:
    """θ_r − θ_{r−1} for every round: the released models' differences (noise included)."""
    models = [r.global_params for r in view.rounds] + [view.final_params]
    return [b - a for a, b in zip(models[:-1], models[1:])]


@ATTACKS.register("dpsgd_audit")
class DPSGDAudit(Attack):
    """White-box audit of record-level DP-SGD with gradient canaries: Nasr, Hayes, Steinke,
    Balle, Tramèr, Jagielski, Carlini, Terzis (2023), "Tight auditing of differentially private
    machine learning" (USENIX Security); Steinke, Nasr, Jagielski (2023), "Privacy auditing
    with one (1) training run" (NeurIPS), white-box setting.

    Before training (``prepare``), ``num_canaries`` canaries are crafted in one hospital's
    DP-SGD (``site``; default: the hospital with the most records): canary i is a
    per-sample gradient of norm ``canary_norm``·C along a unit direction dᵢ (a Dirac on one
    parameter, or a random orthonormal vector), included with probability ½. An included
    canary is a row of the hospital's training data (``bench.canaries.GradientCanaryRows``):
    the records' own sampler draws it into steps, and the records' clipping, summing and noise
    act on it — so any bug there acts on the canaries too. The model needs at least
    ``num_canaries`` parameters (e.g. an MLP with 256 hidden units on heart disease has 7,938).

    Threat model: the honest-but-curious server (``ServerView``), which knows the directions
    it crafted (and the clip C they were crafted against) but not which canaries went in.
    Three observations, scored separately:

    * ``every_step``: every privatized step of the audited hospital — the release the
      accountant's threat model assumes (a server that sees each step, or the hospital's own
      logging); each step projected on each direction in units of C / expected batch size,
      scored by the summed per-step likelihood ratio with each step's noise scale estimated
      from the data (``bench.metrics.audit.step_llr_scores``), so a step released with too
      little noise is not averaged away;
    * ``all_rounds``: the audited hospital's update every round (under secure aggregation,
      only the sum of all updates); score −Σ_r ⟨Δ_r, dᵢ⟩ (local SGD moves against the
      gradient, so an included canary pushes the update along −dᵢ);
    * ``final_model``: only the released model; score −⟨θ_T − θ_0, dᵢ⟩.

    With plain SGD the ``all_rounds`` score is, in units of C·lr/(q·n), the number of steps
    the canary was sampled in plus N(0, σ²·steps) noise plus the records' gradients along
    dᵢ: the idealized mechanism whose analysis is the audit's ceiling.
    """

    name = "dpsgd_audit"
    threat_model = "server"
    kind = "audit"

    @dataclass(frozen=True)
    class Params:
        num_canaries: int = field(default=1000, metadata={"ge": 10})
        directions: Literal["dirac", "random"] = "random"
        site: Optional[str] = None
        canary_norm: float = field(default=2.0, metadata={"ge": 1})
        p_value: float = field(default=0.05, metadata={"gt": 0, "lt": 1})

    @classmethod
    def check(cls, params, cfg) -> None:
        _one_white_box_audit(cfg)
        dp = _defense(cfg, "dp_sgd")
        if dp is None:
            raise ConfigError("attacks.dpsgd_audit: audits record-level DP-SGD; add a dp_sgd defense (or use canary_audit)")
        if dp.params.sampling != "poisson":
            raise ConfigError("attacks.dpsgd_audit: dp_sgd.sampling 'shuffle' has no epsilon to audit; use sampling: poisson")
        if dp.params.grad_sample_mode == "ghost":
            raise ConfigError(
                "attacks.dpsgd_audit: dp_sgd.grad_sample_mode 'ghost' stores no per-sample gradients to add canaries to; use ew"
            )

    @classmethod
    def label(cls, params) -> str:
        return f"dpsgd_audit(m={params.num_canaries})"

    @classmethod
    def check_federation(cls, params, fed: Federation, num_params: int) -> None:
        """Refuse, once the data is loaded, an audited hospital that does not exist or a model
        with fewer parameters than canaries."""
        if params.site is not None and params.site not in fed.site_names:
            raise ConfigError(f"attacks.dpsgd_audit.site: got {params.site!r}; allowed: {', '.join(fed.site_names)}")
        _check_size(cls.name, params.num_canaries, num_params)

    def prepare(self, fed: Federation, rng: np.random.Generator, num_params: int, cfg=None, **_) -> tuple[Federation, dict]:
        """Craft the canaries for the audited hospital's DP-SGD; ground truth keeps which went in."""
        site = self.params.site or max(fed.sites, key=lambda s: len(s.train)).name
        clip = float(_defense(cfg, "dp_sgd").params.max_grad_norm) if cfg is not None else None
        return insert_audit_canaries(
            fed, "gradient", self.params.num_canaries, num_params, rng, self.params.directions, site, self.params.canary_norm,
            clip=clip,
        )

    @staticmethod
    def _every_step(view: ServerView, dirs) -> Optional[np.ndarray]:
        """Per-canary likelihood-ratio scores from every privatized step of the audited
        hospital; ``None`` when no step was logged (the hospital never took part)."""
        from bench.metrics.audit import step_llr_scores

        site, clip = view.canary_site, view.canary_clip
        logged = [(r.step_updates[site], r.disclosures[site]) for r in view.rounds if r.step_updates and site in r.step_updates]
        if not logged or clip is None or not np.isfinite(clip):
            return None
        d = logged[0][1]
        q = min(1.0, d.batch_size / max(d.num_samples, 1))  # the protocol's Poisson rate q = b / n
        unit = clip / max(1, round(q * d.num_samples))  # a canary's clipped share of one released step
        steps = torch.cat([s for s, _ in logged])
        return step_llr_scores(dirs.project_many(steps) / unit, q)

    def run(self, view: ServerView, rng: np.random.Generator) -> AuditScores:
        dirs = _directions(view, self.name)
        site = view.canary_site
        total = torch.zeros(dirs.num_params, dtype=torch.float64)
        for r in view.rounds:
            if view.updates_hidden:  # secure aggregation: the server sees only the sum
                total += r.aggregate.to(torch.float64)
            elif site in r.participants:
                total += r.updates[site].to(torch.float64)
        final = (view.final_params - view.rounds[0].global_params).to(torch.float64)
        obs = {"all_rounds": -dirs.project(total), "final_model": -dirs.project(final)}
        steps = self._every_step(view, dirs)
        if steps is not None:
            obs["every_step"] = steps
        return AuditScores(ids=dirs.ids.copy(), observations=obs, unit="record", party=site, p_value=self.params.p_value,
                           step_observations=("every_step",) if steps is not None else ())


@ATTACKS.register("client_canary_audit")
class ClientCanaryAudit(Attack):
    """Client-level audit of ``client_dp`` with canary clients: Andrew, Kairouz, Oh, Oprea,
    McMahan, Suriyakumar (2024), "One-shot empirical privacy estimation for federated
    learning" (ICLR).

    Before training, ``num_canaries`` canary clients are crafted: canary i's update is a
    random isotropic unit vector dᵢ (orthonormal to the others) scaled to client_dp's clip
    C; each is included with probability ½ and then joins every round (client_dp lets every
    hospital join every round), through the same client hooks as a hospital, weighted 1/m
    like one (m = the hospitals per round, a fixed public denominator). Adding or removing
    one canary is client_dp's add/remove neighbouring relation.

    Threat model: an observer of the released global models (client_dp is central DP: the
    server that adds the noise is trusted; what it releases is audited). Scores, per
    Andrew et al.: ``all_rounds``, Σ_r cos(θ_r − θ_{r−1}, dᵢ) over the rounds the canary may
    have entered; ``final_model``, cos(θ_T − θ_0, dᵢ). With full participation the two see
    the same signal; they differ in how rounds are weighted.
    """

    name = "client_canary_audit"
    threat_model = "server"
    kind = "audit"

    @dataclass(frozen=True)
    class Params:
        num_canaries: int = field(default=1000, metadata={"ge": 10})
        p_value: float = field(default=0.05, metadata={"gt": 0, "lt": 1})

    @classmethod
    def check(cls, params, cfg) -> None:
        _one_white_box_audit(cfg)
        dp = _defense(cfg, "client_dp")
        if dp is None:
            raise ConfigError("attacks.client_canary_audit: audits client-level DP; add a client_dp defense")
        if dp.params.adaptive:
            raise ConfigError(
                "attacks.client_canary_audit: adaptive clipping moves C each round from the clients' own bits; "
                "audit a fixed clip (client_dp.adaptive: false)"
            )

    @classmethod
    def label(cls, params) -> str:
        return f"client_canary_audit(m={params.num_canaries})"

    @classmethod
    def check_federation(cls, params, fed: Federation, num_params: int) -> None:
        _check_size(cls.name, params.num_canaries, num_params)

    def prepare(self, fed: Federation, rng: np.random.Generator, num_params: int, cfg=None, **_) -> tuple[Federation, dict]:
        """Craft the canary clients (norm = client_dp's clip); ground truth keeps which joined."""
        clip = float(_defense(cfg, "client_dp").params.clip_norm)
        return insert_audit_canaries(fed, "client", self.params.num_canaries, num_params, rng, "random", None, clip)

    def run(self, view: ServerView, rng: np.random.Generator) -> AuditScores:
        dirs = _directions(view, self.name)
        deltas = _released_deltas(view)
        all_rounds = np.zeros(len(dirs))
        for d in deltas:
            norm = float(torch.linalg.vector_norm(d))
            if norm > 0:
                all_rounds += dirs.project(d) / norm
        final = view.final_params - view.rounds[0].global_params
        fnorm = float(torch.linalg.vector_norm(final))
        obs = {"all_rounds": all_rounds, "final_model": dirs.project(final) / max(fnorm, 1e-30)}
        return AuditScores(ids=dirs.ids.copy(), observations=obs, unit="client", party="federation", p_value=self.params.p_value)
