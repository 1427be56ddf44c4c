"""``analytic``: exact inversion of a fully connected input layer with bias."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.base import ATTACKS, Attack
from attacks.inversion.common import (
    FlatModel, InversionParams, Problem, Solved, check_replayable, check_sites, run_inversion,
)
from bench.types import ConfigError, DatasetInfo, InputLayer, Reconstructions, ServerView
from bench.lazy import lazy

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())


def input_layer(fm: FlatModel, info: DatasetInfo) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Offsets of the weight and bias of the first layer, which must be ``Linear`` on the
    flattened input; also its number of units."""
    for prefix, mod in fm.module.named_modules():
        own = list(mod.parameters(recurse=False))
        if not own:
            continue
        linear = isinstance(mod, torch.nn.Linear)
        refuse_input_layer(InputLayer(prefix, "Linear" if linear else type(mod).__name__,
                                      mod.in_features if linear else None, mod.bias is not None if linear else True), info)
        off = fm.offsets()
        pre = f"{prefix}." if prefix else ""
        return off[pre + "weight"], off[pre + "bias"], mod.out_features
    raise ConfigError("model: no parameters; the analytic attack needs a fully connected input layer with bias")


def refuse_input_layer(layer: InputLayer, info: DatasetInfo) -> None:
    """``ConfigError`` unless ``layer`` (a model's first layer with parameters) is ``Linear`` with
    bias on the whole record."""
    if layer.type != "Linear" or not layer.bias or layer.in_features != info.num_inputs:
        if layer.type != "Linear":
            what = layer.type
        elif not layer.bias:
            what = "Linear without bias"
        else:  # e.g. a layer applied to parts of the record (tokens, visits): it never sees a whole record
            what = f"Linear on {layer.in_features} inputs, not on the whole record"
        named = f" ({layer.path})" if layer.path and not layer.path.isdigit() else ""
        raise ConfigError(
            f"model: the first layer with parameters{named} is {what}; the analytic attack needs a fully connected input layer "
            "with bias that sees the whole record (use logreg or mlp, or a gradient-matching attack: inverting_gradients, dlg)"
        )


def invert_linear(dw: torch.Tensor, db: torch.Tensor, k: int, rel_tol: float = 1e-6) -> torch.Tensor:
    """Records x = ΔW_i / Δb_i from the ``k`` units with the largest |Δb_i|.

    For one record and one SGD step, ΔW_i = −lr·(∂L/∂z_i)·x and Δb_i = −lr·∂L/∂z_i, so the
    ratio is x exactly for every unit with ∂L/∂z_i ≠ 0 (Phong et al. 2017). For a batch,
    each unit yields the mixture of the records that activate it (exact only for a unit
    that one record alone activates, Fowl et al. 2022).
    """
    dw64, db64 = dw.double(), db.double()
    order = torch.argsort(db64.abs(), descending=True)
    keep = [int(i) for i in order if db64[i].abs() > rel_tol * db64.abs().max()][: max(k, 1)]
    if not keep:
        return torch.zeros(max(k, 1), dw.shape[1])
    out = torch.stack([dw64[i] / db64[i] for i in keep]).float()
    if len(keep) < k:  # fewer informative units than records: repeat the last (scored honestly)
        out = torch.cat([out, out[-1:].expand(k - len(keep), -1)])
    return out


@ATTACKS.register("analytic")
class Analytic(Attack):
    """Phong, Aono, Hayashi, Wang, Moriai (2017), "Privacy-Preserving Deep Learning via
    Additively Homomorphic Encryption" (IEEE TIFS), Sec. 3: the input of a fully connected
    layer with bias is the ratio of its weight and bias gradients.

    Threat model: honest-but-curious server. View: :class:`~bench.types.ServerView` (each
    hospital's update or, under secure aggregation, their sum). Disclosure needed: the
    number of local records (how many to return); nothing else (the learning rate cancels).
    Exact for one record and one local step — the known-answer baseline of inversion;
    for batches or several steps it returns mixtures (labels: iDLG / LLG from the head).
    Models: ``logreg`` or ``mlp`` (a fully connected first layer with bias).
    """

    name = "analytic"
    threat_model = "server"
    kind = "reconstruction"

    @dataclass(frozen=True)
    class Params(InversionParams):
        pass

    @classmethod
    def check(cls, params, cfg) -> None:
        check_replayable(params, cfg)

    @classmethod
    def check_sites(cls, params, names) -> None:
        check_sites(params, names, cls.name)

    @classmethod
    def check_model(cls, params, model: torch.nn.Module, info: DatasetInfo) -> None:
        """Before training: the model's first layer must be fully connected with bias (the
        same test the attack makes on the server's model), e.g. not a CNN."""
        input_layer(FlatModel.of(lambda: model), info)

    @classmethod
    def check_input_layer(cls, params, layer: InputLayer, info: DatasetInfo) -> None:
        """:meth:`check_model` on a model's first layer described without building it (a built-in
        model's ``input_layer``): the same decision and message, without torch."""
        refuse_input_layer(layer, info)

    def solve(self, fm: FlatModel, info: DatasetInfo, prob: Problem, gen: torch.Generator) -> Solved:
        (ws, we), (bs, be), units = input_layer(fm, info)
        xs = []
        for t in prob.targets:
            dw = t.update[ws:we].reshape(units, info.num_inputs)
            xs.append(invert_linear(dw, t.update[bs:be], prob.batch).reshape(1, prob.batch, *info.input_shape))
        return Solved(x=torch.stack(xs), objective=torch.zeros(len(xs), 1), iterations=0)

    def run(self, view: ServerView, rng: np.random.Generator) -> Reconstructions:
        return run_inversion(view, rng, self.params, self.solve)
