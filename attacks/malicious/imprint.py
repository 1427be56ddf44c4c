"""``imprint``: trap weights that make records readable verbatim from an aggregated update.

Fowl, Geiping, Czaja, Goldblum, Goldstein (ICLR 2022), "Robbing the Fed: Directly Obtaining
Private Data in Federated Learning with Modified Models"; Boenisch, Dziedzic, Schuster,
Shamsabadi, Shumailov, Papernot (IEEE EuroS&P 2023), "When the Curious Abandon Honesty".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import AGGREGATE
from attacks.malicious.common import ADVERSARY, check_one_malicious, offsets, participants_of, refuse_outsiders
from bench.types import ConfigError, PlanInputs, Reconstruction, Reconstructions, ServerPlan, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


def __getattr__(name: str):
    """``attacks.malicious.imprint.Imprinted`` still names the module class (defined in
    :mod:`attacks.malicious.imprinted`, imported on first use with torch)."""
    if name == "Imprinted":
        from attacks.malicious.imprinted import Imprinted

        return Imprinted
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trap_parameters(direction: torch.Tensor, thresholds: torch.Tensor, scale: float, coupling: float) -> torch.Tensor:
    """The crafted imprint parameters, flat: rows s·a, biases −s·tᵢ, spread columns c·1/√d.

    ``scale`` s keeps the crafted weights small, so that float32 rounding of the parameters
    (relative 6e-8) stays far below one record's contribution to their update.
    """
    k, d = len(thresholds), len(direction)
    w = (scale * direction).expand(k, d).reshape(-1)
    b = -scale * thresholds
    spread = torch.full((d * k,), coupling / d**0.5)
    return torch.cat([w, b, spread]).float()


def read_bins(dw: torch.Tensor, db: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """Records from cumulative bins: bin i holds the records with tᵢ < a·x ≤ tᵢ₊₁, so the
    differences ΔWᵢ − ΔWᵢ₊₁ and Δbᵢ − Δbᵢ₊₁ are Σ gᵣ xᵣ and Σ gᵣ over that bin; their ratio is
    the record itself when one record alone fell in the bin, a weighted mean otherwise."""
    dw, db = dw.double(), db.double()
    dwd = torch.cat([dw[:-1] - dw[1:], dw[-1:]])
    dbd = torch.cat([db[:-1] - db[1:], db[-1:]])
    keep = dbd.abs() > rel_tol * dbd.abs().max().clamp(min=1e-300)
    return (dwd[keep] / dbd[keep, None]).float()


def looks_single(x: torch.Tensor, info, tol: float) -> torch.Tensor:
    """The attacker's own test (no ground truth) that a read-out is one record, not a mixture:
    every categorical block is one-hot to within ``tol`` (a mixture of records that differ in a
    category is fractional there). Images: values in the data range [0, 1]."""
    if info.modality == "image" or not info.features:
        return ((x >= -tol) & (x <= 1 + tol)).all(dim=1)
    ok = torch.ones(len(x), dtype=torch.bool)
    for f in info.features:
        if f.kind != "categorical":
            continue
        s, e = f.columns
        block = x[:, s:e]
        ok &= ((block - block.round()).abs() <= tol).all(dim=1) & ((block.sum(dim=1) - 1).abs() <= tol)
    return ok


@ATTACKS.register("imprint")
class Imprint(Attack):
    """Trap weights (Fowl et al., ICLR 2022, "Robbing the Fed"; Boenisch et al., EuroS&P 2023).

    Threat model: a **malicious** server (``server`` view, adversary ``malicious_server``).
    What it does (capabilities ``change_architecture``, ``alter_parameters``): it sends every
    hospital the configured model with an imprint module in front — a linear layer of
    ``bins`` ReLU units that all measure one random direction a of the input, with
    thresholds at the quantiles of a·x over population data (what any outsider holds), and
    a residual spread layer — and resets the crafted weights every round. From each update it
    receives (under secure aggregation: only the sum of all hospitals'), the differences of
    neighbouring bins' weight and bias updates give every record that fell alone in its bin,
    verbatim (exact for one local step; with several local steps the bins drift slightly).
    The attacker keeps the read-outs that look like one record (every categorical block
    one-hot), by its own test, never by the truth. Image models get the same linear imprint
    layer on the flattened image, as in the paper. Disclosure needed: none.
    """

    name = "imprint"
    threat_model = "server"
    kind = "reconstruction"
    adversary = ADVERSARY
    capabilities = ("change_architecture", "alter_parameters")

    @dataclass(frozen=True)
    class Params:
        """Attributes:
        rounds: the rounds to read (1-based).
        bins: imprint units (more bins: fewer records share one).
        scale: magnitude of the crafted weights (small: float32 keeps each record's share).
        coupling: weight of the spread layer (small: the configured model barely changes).
        one_hot_tol: the attacker's tolerance for "this categorical block is one-hot".
        """

        rounds: tuple[int, ...] = (1,)
        bins: int = field(default=1024, metadata={"ge": 2})
        scale: float = field(default=1e-3, metadata={"gt": 0})
        coupling: float = field(default=0.1, metadata={"gt": 0})
        one_hot_tol: float = field(default=0.05, metadata={"gt": 0, "lt": 0.5})

    @classmethod
    def check(cls, params, cfg) -> None:
        check_one_malicious(cls.name, cfg)
        refuse_outsiders(cls.name, cfg, "it trains on the architecture the server changed")
        if not params.rounds or min(params.rounds) < 1 or max(params.rounds) > cfg.train.rounds:
            raise ConfigError(f"attacks.imprint.rounds: got {list(params.rounds)}; expected rounds between 1 and train.rounds ({cfg.train.rounds})")

    def server_plan(self, inputs: PlanInputs, rng: np.random.Generator) -> ServerPlan:
        """Crafted before training: a random unit direction and bins at population quantiles."""
        p = self.params
        d = inputs.info.num_inputs
        direction = torch.from_numpy(rng.standard_normal(d)).double()
        direction = direction / direction.norm()
        # Fowl et al. place the bins at the quantiles of a Gaussian fitted to the measurement
        # (its mean and std only): quantiles of the population itself would put a threshold
        # beside every record the population shares with the training data
        h = inputs.population.x.reshape(len(inputs.population), -1).double() @ direction
        normal = torch.distributions.Normal(h.mean(), h.std())
        qs = normal.icdf(torch.linspace(0, 1, p.bins + 1, dtype=torch.float64)[1:-1])
        qs = torch.cat([(h.mean() - 100 * h.std()).reshape(1), qs])  # the lowest unit fires for every record
        trap = trap_parameters(direction.float(), qs.float(), p.scale, p.coupling)
        self.direction = direction

        from attacks.malicious.imprinted import Imprinted

        def model_fn() -> nn.Module:
            return Imprinted(inputs.model_fn(), d, p.bins)

        def initial(honest: torch.Tensor) -> torch.Tensor:
            return torch.cat([trap, honest])

        def send(r: int, site: str, global_params: torch.Tensor) -> torch.Tensor:
            out = global_params.clone()
            out[: len(trap)] = trap  # reset the trap every round (it trained last round)
            return out

        return ServerPlan(capabilities=self.capabilities, send=send, model_fn=model_fn, initial=initial)

    def run(self, view: ServerView, rng: np.random.Generator) -> Reconstructions:
        t0 = time.perf_counter()
        p = self.params
        if view.adversary != ADVERSARY:
            raise ConfigError("attacks.imprint: the server did not act maliciously in this run (no ServerPlan was applied)")
        from attacks.malicious.imprinted import Imprinted

        model = view.model_fn()
        if not isinstance(model, Imprinted):
            raise ConfigError("attacks.imprint: the model the hospitals trained has no imprint module")
        off = offsets(model)
        (ws, we), (bs, be) = off["imprint.weight"], off["imprint.bias"]
        d, k = view.info.num_inputs, p.bins
        items, aborted, claimed, read = [], 0, 0, 0
        for r, rnd in participants_of(view.rounds, p.rounds).items():
            if rnd.aborted is not None:
                aborted += 1
                continue
            targets = [(AGGREGATE, rnd.participants, rnd.aggregate)] if rnd.updates is None else [
                (s, (s,), rnd.updates[s]) for s in rnd.participants
            ]
            for name, sites, update in targets:
                x = read_bins(update[ws:we].reshape(k, d), update[bs:be], 1e-4)
                read += len(x)
                ok = looks_single(x, view.info, p.one_hot_tol)
                x = x[ok] if bool(ok.any()) else x
                claimed += int(ok.sum())
                if len(x) == 0:
                    continue
                items.append(Reconstruction(round=r, target=name, x=x.reshape(len(x), *view.info.input_shape),
                                            labels=None, objective=0.0, sites=tuple(sites)))
        return Reconstructions(
            items=tuple(items),
            disclosure={"rounds_aborted": aborted, "bins_read": read, "records_claimed": claimed, "adversary": ADVERSARY},
            iterations=0, seconds=time.perf_counter() - t0,
        )
