"""``model_inconsistency``: isolate one hospital's update under secure aggregation.

Pasquini, Francati, Ateniese (CCS 2022), "Eluding Secure Aggregation in Federated Learning
via Model Inconsistency".
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import InversionParams, check_replayable
from attacks.malicious.common import ADVERSARY, check_one_malicious, offsets, participants_of
from bench.types import ConfigError, PlanInputs, Reconstructions, ServerPlan, ServerRound, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


DEAD_BIAS = -1e4  # pre-activations this negative keep every ReLU shut for any standardised input

INNER = ("analytic", "tableak", "inverting_gradients", "dlg")


def dead_layer(model: nn.Module) -> tuple[str, str]:
    """The weight and bias names of the layer feeding the *last* ReLU: zeroing that layer's
    weight and setting its bias to a large negative value shuts every unit, so no gradient
    reaches anything before it, and the layers after it see zeros (their weight gradients
    vanish). Only the output bias still moves (by the hospital's label counts)."""
    mods = list(model.named_modules())
    last_relu = max((i for i, (_, m) in enumerate(mods) if isinstance(m, nn.ReLU)), default=None)
    if last_relu is None:
        raise ConfigError("attacks.model_inconsistency: the model has no ReLU layer to shut; use mlp or cnn (not logreg)")
    for n, m in reversed(mods[:last_relu]):
        if isinstance(m, (nn.Linear, nn.GroupNorm, nn.Conv2d)) and getattr(m, "bias", None) is not None:
            pre = f"{n}." if n else ""
            return pre + "weight", pre + "bias"
    raise ConfigError("attacks.model_inconsistency: no layer with bias feeds the last ReLU; use mlp or cnn")


def vanishing(params: torch.Tensor, weight: tuple[int, int], bias: tuple[int, int]) -> torch.Tensor:
    """``params`` with the dead layer shut (a new vector)."""
    out = params.clone()
    out[weight[0] : weight[1]] = 0.0
    out[bias[0] : bias[1]] = DEAD_BIAS
    return out


@ATTACKS.register("model_inconsistency")
class ModelInconsistency(Attack):
    """Model inconsistency (Pasquini, Francati, Ateniese, CCS 2022), then an existing inversion.

    Threat model: a **malicious** server (``server`` view, adversary ``malicious_server``).
    What it does (capabilities ``send_different_models``, ``alter_parameters``): in the
    attacked rounds it sends the ``target`` hospital the real global model and every other
    hospital a model whose last ReLU layer is shut (zero weights, bias −10⁴), so their updates
    vanish except the output bias. The secure sum Σ wᵢuᵢ is then w_target·u_target plus the
    others' output-bias steps; dividing by the weight it chose itself isolates the target's
    update (exact in every coordinate but the output bias, where the others' label counts
    remain). It then runs ``inversion`` (analytic, tableak, inverting_gradients or dlg) on
    the isolated update as if it were an individual update, and, with ``membership:
    update_cosine`` (the default), scores every candidate record against it with
    ``update_cosine``'s Grad-Cosine score (Li et al., ICLR 2023): the question "was this
    record in the target hospital's training set", which secure aggregation was meant to make
    unanswerable. Scoring compares the target's members with the non-members held out from
    it (``Reconstructions.membership``). Disclosure needed: what the inner attack needs.
    Needs a model with a ReLU (mlp, cnn).
    """

    name = "model_inconsistency"
    threat_model = "server"
    kind = "reconstruction"
    adversary = ADVERSARY
    capabilities = ("send_different_models", "alter_parameters")

    @dataclass(frozen=True)
    class Params(InversionParams):
        """Attributes:
        target: the hospital to isolate (default: the first of the roster).
        inversion: the inversion attack run on the isolated update.
        iterations, restarts: the inner optimisation attack's budget (ignored by analytic).
        membership: the membership attack run on the isolated update (``none``: inversion only).
        """

        target: Optional[str] = None
        inversion: Literal["analytic", "tableak", "inverting_gradients", "dlg"] = "tableak"
        iterations: int = field(default=1500, metadata={"ge": 1})
        restarts: int = field(default=10, metadata={"ge": 1})
        membership: Literal["update_cosine", "none"] = "update_cosine"

    @classmethod
    def check(cls, params, cfg) -> None:
        check_one_malicious(cls.name, cfg)
        check_replayable(params, cfg)
        if cfg.model.name == "logreg":
            raise ConfigError("attacks.model_inconsistency: logreg has no ReLU to shut; use model mlp or cnn")
        if cfg.train.sites_per_round is not None:
            raise ConfigError("train.sites_per_round: model_inconsistency isolates a hospital that must take part; remove sites_per_round")

    @classmethod
    def check_sites(cls, params, names) -> None:
        if params.target is not None and params.target not in names:
            raise ConfigError(f"attacks.model_inconsistency.target: {params.target!r} is not a hospital; choose from {', '.join(names)}")

    def server_plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ServerPlan:
        target = self.params.target or inputs.site_names[0]
        model = inputs.model_fn()
        off = offsets(model)
        w, b = dead_layer(model)
        rounds = set(self.params.rounds)

        def send(r: int, site: str, global_params: torch.Tensor) -> torch.Tensor:
            if r not in rounds or site == target:
                return global_params
            return vanishing(global_params, off[w], off[b])

        return ServerPlan(capabilities=self.capabilities, send=send)

    def isolated_view(self, view: ServerView) -> ServerView:
        """The view with each attacked round's aggregate turned into the target's update."""
        target = self.params.target or view.site_names[0]
        wanted = participants_of(view.rounds, self.params.rounds)
        rounds = []
        for rnd in view.rounds:
            if rnd.round not in wanted or rnd.aborted is not None:
                rounds.append(dataclasses.replace(rnd, updates=None))
                continue
            if target not in rnd.participants:
                raise ConfigError(f"attacks.model_inconsistency.target: {target!r} did not take part in round {rnd.round}")
            w = (rnd.weights or {}).get(target)
            if not w:
                raise ConfigError("attacks.model_inconsistency: the view lacks the server's own aggregation weights")
            rounds.append(ServerRound(
                round=rnd.round, global_params=rnd.global_params, participants=(target,),
                updates={target: rnd.aggregate / w}, aggregate=rnd.aggregate / w,
                disclosures={target: rnd.disclosures[target]},
            ))
        return dataclasses.replace(view, rounds=tuple(rounds), updates_hidden=False)

    def run(self, view: ServerView, rng: np.random.Generator) -> Reconstructions:
        from attacks import ATTACKS as registry

        t0 = time.perf_counter()
        if view.adversary != ADVERSARY:
            raise ConfigError("attacks.model_inconsistency: the server did not act maliciously in this run")
        p = self.params
        aborted = [r.round for r in view.rounds if r.round in p.rounds and r.aborted is not None]
        live = tuple(r for r in p.rounds if r not in aborted)
        target = p.target or view.site_names[0]
        if not live:
            return Reconstructions(items=(), disclosure={"rounds_aborted": len(aborted), "adversary": ADVERSARY},
                                   seconds=time.perf_counter() - t0)
        inner_cls = registry.get(p.inversion)
        names = {f.name for f in dataclasses.fields(inner_cls.Params)}
        given = {k: v for k, v in dataclasses.asdict(p).items() if k in names}
        given.update(rounds=live, sites=(target,))
        isolated = self.isolated_view(view)
        out = inner_cls(inner_cls.Params(**given)).run(isolated, rng)
        disclosure = {**out.disclosure, "rounds_aborted": len(aborted), "adversary": ADVERSARY}
        scores = self.membership_scores(isolated, live, rng) if p.membership != "none" else None
        return dataclasses.replace(out, disclosure=disclosure, seconds=time.perf_counter() - t0,
                                   membership=scores, membership_site=target if scores is not None else None)

    def membership_scores(self, isolated: ServerView, live: tuple[int, ...], rng: np.random.Generator):
        """``update_cosine``'s scores of the candidates against the isolated update of each live
        round (its own code on a view holding only those rounds: one update, the target's)."""
        from attacks.membership.update_cosine import UpdateCosine

        rounds = tuple(r for r in isolated.rounds if r.round in live)
        return UpdateCosine(UpdateCosine.Params()).run(dataclasses.replace(isolated, rounds=rounds), rng)
