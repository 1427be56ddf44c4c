"""DP-SGD steps without per-sample gradients where a closed form exists (issue 15).

One DP-SGD step (Abadi et al. 2016, with Opacus's ``DPOptimizer`` arithmetic) is

    Σ_i f_i·g_i + N(0, σ²C²)   divided by the expected batch size,
    f_i = min(1, C / (‖g_i‖ + 1e-6)),

where g_i is record i's gradient over *all* parameters. Opacus materialises every g_i
(``GradSampleModule``). Here, for an ``nn.Linear`` layer with input a_i (one row per record)
and output gradient e_i, g_i restricted to that layer is e_i a_iᵀ (and e_i for the bias), so

    ‖g_i‖²  = ‖e_i‖² (‖a_i‖² + 1)          (the "ghost norm"),
    Σ_i f_i g_i = (f·e)ᵀ a,  Σ_i f_i e_i     (one matrix product per layer),

and no parameter gradient is ever computed: only the layers' output gradients e, by a
hand-written backward pass for models of Linear layers and elementwise activations (autograd's
own kernels, without autograd's per-call overhead) or otherwise by one ``torch.autograd.grad``
with respect to the layers' outputs. Layers without this closed form (``Conv2d``,
``GroupNorm``, any other layer with parameters) get per-sample gradients *for that layer
only* (the engine's own batched-matmul rules for Conv2d and GroupNorm, Opacus's per-layer
grad sampler for other types, or ``torch.func`` with ``fallback="func"``): a hybrid.

Everything acts on a stack of K models: parameters ``(K, *shape)``, inputs ``(K, B, ...)``;
the same functions train the target (K = 1) and LiRA/RMIA's reference federations (K > 1),
with K-batched matrix products. Randomness (Poisson sampling, noise) comes from one
``torch.Generator`` per federation, drawn exactly as Opacus draws it
(``UniformWithReplacementSampler``: one ``torch.rand(n) < q`` mask per step; ``DPOptimizer``:
one ``torch.normal`` per parameter in parameter order, nothing drawn when the std is 0), so
the K = 1 engine consumes the same random stream as ``defenses.dp_sgd.DPTrainer``.

Opacus stays the reference (``tests/test_engine.py`` compares against its
``GradSampleModule`` + ``DPOptimizer``) and its accountants give ε: the mechanism, and hence
the DP event, is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Bound = Union[float, torch.Tensor]  # a clipping bound: one number, or one per row (K, B)

_MINUS_ONE = torch.tensor(-1.0)

# Layers with randomness or cross-sample state make "per-sample gradient" meaningless.
_REFUSED = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


# --------------------------------------------------------------------------- the program

# Backward passes of parameter-free layers, (output gradient, input, output) -> input gradient:
# the kernels autograd itself calls, so the manual path computes what autograd would.
_BACKWARD: dict[type, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda e, a, h: torch.ops.aten.threshold_backward(e, h, 0.0),
    nn.Tanh: lambda e, a, h: torch.ops.aten.tanh_backward(e, h),
    nn.Sigmoid: lambda e, a, h: torch.ops.aten.sigmoid_backward(e, h),
    nn.Flatten: lambda e, a, h: e.reshape(a.shape),
    nn.Identity: lambda e, a, h: e,
}


# Parameter-free layers whose backward kernel needs images as (B, C, H, W) (the target's layout,
# or K models as groups of channels).
_BACKWARD_SINGLE: dict[type, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    nn.AdaptiveAvgPool2d: lambda e, a, h: torch.ops.aten._adaptive_avg_pool2d_backward(e, a),
}


def _conv_ok(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)


# Sampled layers run by hand: forward (keeping what the backward needs) and the gradient with
# respect to the layer's input, with the kernels autograd itself calls. ``k`` is None in the
# target's layout (B, C, H, W); for K models it is K, and images are laid out as K groups of
# channels, (B, K·C, H, W): a convolution with K times its groups, a group norm with K times its
# groups, each model's weights stacked along the channels, compute all K models in one call.
def _grouped(t: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    return t if k is None else t.reshape(-1, *t.shape[2:])


def _conv_forward(m, ps, a, k):
    bias = _grouped(ps[1], k) if len(ps) == 2 else None
    return F.conv2d(a, _grouped(ps[0], k), bias, m.stride, m.padding, m.dilation, m.groups * (k or 1)), None


def _conv_backward(m, ps, a, e, aux, k):
    return torch.ops.aten.convolution_backward(e, a, _grouped(ps[0], k), None, m.stride, m.padding, m.dilation, False, [0, 0],
                                               m.groups * (k or 1), [True, False, False])[0]


def _group_norm_forward(m, ps, a, k):
    n, c = a.shape[:2]
    out, mean, rstd = torch.native_group_norm(a, _grouped(ps[0], k) if ps else None, _grouped(ps[1], k) if len(ps) == 2 else None,
                                              n, c, a[0, 0].numel(), m.num_groups * (k or 1), m.eps)
    return out, (mean, rstd)


def _group_norm_backward(m, ps, a, e, aux, k):
    n, c = a.shape[:2]
    mean, rstd = aux
    return torch.ops.aten.native_group_norm_backward(e.contiguous(), a, mean, rstd, _grouped(ps[0], k) if ps else None, n, c,
                                                     a[0, 0].numel(), m.num_groups * (k or 1), [True, False, False])[0]


_SAMPLED_MANUAL: dict[type, tuple[Callable, Callable]] = {
    nn.Conv2d: (_conv_forward, _conv_backward),
    nn.GroupNorm: (_group_norm_forward, _group_norm_backward),
}


def _to_groups(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C, H, W) -> (B, K·C, H, W): the K models' images as groups of channels."""
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


def _from_groups(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K·C, ...) -> (K, B, C, ...) (a view)."""
    return t.view(t.shape[0], k, t.shape[1] // k, *t.shape[2:]).transpose(0, 1)


def _grouped_ok(layers: Sequence["Layer"]) -> bool:
    """Whether K models can run by hand as groups of channels: image layers (Conv2d, GroupNorm,
    elementwise activations, adaptive pooling) up to one ``Flatten``, then Linear layers and
    elementwise activations (privbench's cnn)."""
    if not any(l.kind == "sampled" for l in layers):
        return False
    images = True
    for l in layers:
        m = l.module
        if images:
            if l.kind == "linear":
                return False
            if type(m) is nn.Flatten:
                if not (m.start_dim == 1 and m.end_dim == -1):
                    return False
                images = False
            elif l.kind == "stateless" and not (type(m) in _ELEMENTWISE or type(m) is nn.AdaptiveAvgPool2d):
                return False
        elif l.kind != "linear" and not (l.kind == "stateless" and type(m) in _ELEMENTWISE):
            return False
    return not images


def _manual_single_ok(layer: "Layer") -> bool:
    m = layer.module
    if layer.kind == "linear":
        return True
    if layer.kind == "stateless":
        return type(m) in _BACKWARD or type(m) in _BACKWARD_SINGLE
    if type(m) is nn.Conv2d:
        return _conv_ok(m)
    return type(m) is nn.GroupNorm and (m.affine or not layer.params)


@dataclass(frozen=True)
class Layer:
    """One leaf module of a sequential model.

    Attributes:
        kind: ``"linear"`` (ghost norm, closed form), ``"sampled"`` (per-sample gradients for
            this layer only) or ``"stateless"`` (no parameters: applied per record).
        module: the module itself; for parametrised layers it provides hyperparameters only
            (the parameter values always come from the ``params`` stack).
        params: positions of this layer's parameters in ``model.parameters()`` order.
        names: their names inside ``module`` (``weight``, ``bias``).
    """

    kind: str
    module: nn.Module
    params: tuple[int, ...] = ()
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Program:
    """A sequential model compiled for the engine (see :func:`compile_model`).

    Attributes:
        layers: the model's leaf modules in order.
        shapes: every parameter's shape, in ``model.parameters()`` order.
        fallback: ``"opacus"`` or ``"func"``: how ``sampled`` layers get per-sample gradients.
        manual: every layer is ``linear`` or a parameter-free layer of :data:`_BACKWARD`: the
            output gradients come from a hand-written backward pass (no autograd), K at a time.
        manual_single: the same for the target's layout (K = 1) only, where Conv2d, GroupNorm
            and adaptive average pooling have hand-written passes too (the CNN).
        manual_grouped: the CNN's hand-written passes for K > 1 models too, their images laid
            out as K groups of channels (see :func:`_grouped_ok`).
    """

    layers: tuple[Layer, ...]
    shapes: tuple[torch.Size, ...]
    fallback: str = "opacus"
    manual: bool = False
    manual_single: bool = False
    manual_grouped: bool = False

    @property
    def manual_many(self) -> bool:
        """K > 1 models run by hand: Linear layers only, or the CNN as groups of channels."""
        return self.manual or self.manual_grouped

    @property
    def closed_form(self) -> bool:
        """True when no layer needs per-sample gradients (pure ghost clipping)."""
        return all(layer.kind != "sampled" for layer in self.layers)


def _leaves(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    if any(True for _ in module.children()):
        raise ValueError(
            f"engine: {type(module).__name__} has submodules and is not nn.Sequential; the engine runs "
            "sequential models only (privbench's logreg, mlp and cnn are)"
        )
    return [module]


def compile_model(model: nn.Module, fallback: str = "opacus") -> Program:
    """Compile an ``nn.Sequential`` of leaf modules into a :class:`Program`.

    ``nn.Linear`` on 2-D inputs gets the closed form; any other layer with parameters is
    ``sampled`` (Opacus must have a grad sampler for it when ``fallback="opacus"``);
    parameter-free modules must act on each record separately (activations, ``Flatten``,
    pooling). BatchNorm and dropout are refused.

    Raises:
        ValueError: a non-sequential container, BatchNorm or dropout, an unknown fallback,
            a frozen parameter, or a layer Opacus cannot sample.
    """
    if fallback not in ("opacus", "func"):
        raise ValueError(f"engine: fallback {fallback!r}; expected 'opacus' or 'func'")
    if not all(p.requires_grad for p in model.parameters()):
        raise ValueError("engine: every parameter must be trainable (requires_grad); frozen parameters are not supported")
    position = {id(p): i for i, p in enumerate(model.parameters())}
    layers = []
    for m in _leaves(model):
        if isinstance(m, _REFUSED):
            raise ValueError(f"engine: {type(m).__name__} mixes records or draws randomness; per-sample clipping needs neither")
        named = list(m.named_parameters(recurse=False))
        if not named:
            layers.append(Layer("stateless", m))
            continue
        idx, names = tuple(position[id(p)] for _, p in named), tuple(n for n, _ in named)
        if type(m) is nn.Linear:
            layers.append(Layer("linear", m, idx, names))
        else:
            if fallback == "opacus":
                from opacus.grad_sample import GradSampleModule

                if type(m) not in GradSampleModule.GRAD_SAMPLERS:
                    raise ValueError(f"engine: Opacus has no per-sample gradient for {type(m).__name__}; use fallback='func'")
            layers.append(Layer("sampled", m, idx, names))
    manual = all(l.kind == "linear" or (l.kind == "stateless" and type(l.module) in _BACKWARD) for l in layers)
    manual_single = all(_manual_single_ok(l) for l in layers)
    grouped = manual_single and _grouped_ok(layers)
    return Program(tuple(layers), tuple(p.shape for p in model.parameters()), fallback, manual, manual_single, grouped)


# --------------------------------------------------------------------------- forward, K models at once


# Elementwise layers applied directly in the (K, B, ...) layout (no module call, no reshape).
_ELEMENTWISE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu,
    nn.Tanh: torch.tanh,
    nn.Sigmoid: torch.sigmoid,
    nn.Identity: lambda h: h,
}


# Layouts: "many" is (K, B, ...) with parameters (K, *shape); "single" (K = 1, the target) is
# (B, ...) with parameters (*shape): the same layers, called without the model dimension, so
# the target pays no batched-product or vmap overhead and no extra select/unsqueeze nodes in
# its autograd graph. Results are put back in the (K, B, ...) layout at the boundary.


def _stateless(module: nn.Module, h: torch.Tensor, single: bool) -> torch.Tensor:
    fast = _ELEMENTWISE.get(type(module))
    if fast is not None:
        return fast(h)
    lead = 1 if single else 2
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return h if h.dim() == lead + 1 else h.flatten(lead)
    if single:
        return module(h)
    # (K, B, ...) -> (K·B, ...) -> module -> (K, B, ...): the module acts on each record
    k, b = h.shape[:2]
    out = module(h.reshape(k * b, *h.shape[2:]))
    return out.reshape(k, b, *out.shape[1:])


def _linear(ps: Sequence[torch.Tensor], a: torch.Tensor, single: bool) -> torch.Tensor:
    if a.dim() != (2 if single else 3):
        raise ValueError(f"engine: nn.Linear on inputs of shape {tuple(a.shape[1 if single else 2:])} per record; the closed form needs one row per record")
    w = ps[0]
    if single:
        return F.linear(a, w, ps[1] if len(ps) == 2 else None)
    if len(ps) == 1:
        return torch.bmm(a, w.transpose(1, 2))
    return torch.baddbmm(ps[1].unsqueeze(1), a, w.transpose(1, 2))


# Functional forms of common sampled layers (one model): avoids functional_call's overhead.
_FUNCTIONAL: dict[type, Callable[..., torch.Tensor]] = {
    nn.Conv2d: lambda m, p, x: F.conv2d(x, p["weight"], p.get("bias"), m.stride, m.padding, m.dilation, m.groups),
    nn.GroupNorm: lambda m, p, x: F.group_norm(x, m.num_groups, p.get("weight"), p.get("bias"), m.eps),
}


def _one_model(layer: Layer) -> Callable[[dict, torch.Tensor], torch.Tensor]:
    m = layer.module
    form = _FUNCTIONAL.get(type(m))
    if form is not None and getattr(m, "padding_mode", "zeros") == "zeros":
        return lambda p, x: form(m, p, x)
    return lambda p, x: torch.func.functional_call(m, p, (x,))


def _sampled(layer: Layer, ps: Sequence[torch.Tensor], a: torch.Tensor, single: bool) -> torch.Tensor:
    one = _one_model(layer)
    if single:
        return one(dict(zip(layer.names, ps)), a)
    return torch.func.vmap(lambda pk, ak: one(dict(zip(layer.names, pk)), ak))(tuple(ps), a)


def forward(program: Program, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``(K, B, classes)`` of K models ``params`` (each ``(K, *shape)``) on ``x`` ``(K, B, ...)``."""
    if x.shape[0] == 1:
        return _run(program, [p[0] for p in params], x[0], single=True)[0].unsqueeze(0)
    return _run(program, params, x, single=False)[0]


def _run(program: Program, params: Sequence[torch.Tensor], x: torch.Tensor, single: bool, keep: bool = False):
    h, inputs, outputs = x, [], []
    for layer in program.layers:
        if layer.kind == "stateless":
            h = _stateless(layer.module, h, single)
            continue
        ps = [params[i] for i in layer.params]
        z = _linear(ps, h, single) if layer.kind == "linear" else _sampled(layer, ps, h, single)
        if keep:
            if not z.requires_grad:  # the first parametrised layer: its output is the graph's leaf
                z.requires_grad_(True)
            inputs.append(h)
            outputs.append(z)
        h = z
    return h, inputs, outputs


# --------------------------------------------------------------------------- per-layer rules


def _patches(m: nn.Conv2d, a: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
    """The unfolded input ``(N, C_in·kh·kw, T)`` (``F.unfold``'s layout), by a strided view of
    the zero-padded input and one copy: faster than ``im2col`` on CPU at these sizes."""
    (kh, kw), (dh, dw), (sh, sw), (ph, pw) = m.kernel_size, m.dilation, m.stride, m.padding
    p = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    n, c = p.shape[:2]
    s0, s1, s2, s3 = p.stride()
    view = p.as_strided((n, c, kh, kw, *out_hw), (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
    return view.reshape(n, c * kh * kw, out_hw[0] * out_hw[1])


def _conv2d_rows(m: nn.Conv2d, a: torch.Tensor, e: torch.Tensor) -> dict[str, torch.Tensor]:
    # the weight's gradient of record n is e_n (C_out, T) times the unfolded input (T, C_in·k²)
    n = a.shape[0]
    u = _patches(m, a, e.shape[2:])
    e = e.reshape(n, e.shape[1], -1)
    return {"weight": torch.bmm(e, u.transpose(1, 2)).view(n, *m.weight.shape), "bias": e.sum(-1)}


def _group_norm_rows(m: nn.GroupNorm, a: torch.Tensor, e: torch.Tensor) -> dict[str, torch.Tensor]:
    # weight: Σ over positions of e·x̂ per channel (x̂: the normalised input); bias: Σ of e
    n, c = a.shape[:2]
    xhat = F.group_norm(a, m.num_groups, eps=m.eps)
    return {"weight": (e * xhat).view(n, c, -1).sum(-1), "bias": e.reshape(n, c, -1).sum(-1)}


def _rows_rule(m: nn.Module) -> Optional[Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]]:
    """The engine's own per-sample rule for this layer (the same algebra as Opacus's grad
    sampler, with batched matrix products instead of einsum), or None: use Opacus's."""
    if _conv_ok(m) and m.groups == 1:
        return _conv2d_rows
    if type(m) is nn.GroupNorm:
        return _group_norm_rows
    return None


def _per_sample_rows(layer: Layer, a: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients of one layer for the K·B records, as ``(K, B, *shape)``.

    These rules are linear in the output gradient and do not read the parameter values, so
    the template module serves every one of the K models.
    """
    k, b = a.shape[:2]
    m = layer.module
    a, e = a.reshape(k * b, *a.shape[2:]), e.reshape(k * b, *e.shape[2:])
    rule = _rows_rule(m)
    if rule is not None:
        out = rule(m, a, e)
        return [out[n].reshape(k, b, *getattr(m, n).shape) for n in layer.names]
    from opacus.grad_sample import GradSampleModule

    out = GradSampleModule.GRAD_SAMPLERS[type(m)](m, [a], e)
    return [out[getattr(m, n)].reshape(k, b, *getattr(m, n).shape) for n in layer.names]


def _per_sample_func(layer: Layer, ps: Sequence[torch.Tensor], a: torch.Tensor, e: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients of this layer by ``torch.func``: vmap over records of a vjp."""
    one = _one_model(layer)

    def record(pk, ai, ei):
        _, vjp = torch.func.vjp(lambda p: one(dict(zip(layer.names, p)), ai.unsqueeze(0)), tuple(pk))
        return vjp(ei.unsqueeze(0))[0]

    per_model = torch.func.vmap(record, in_dims=(None, 0, 0))
    return list(torch.func.vmap(per_model)(tuple(ps), a, e))


# --------------------------------------------------------------------------- output gradients


def _errors(program, params, x, y, weight):
    """Each parametrised layer's input a and output gradient e = ∂Σ_i w_i·loss_i/∂z, in the
    (K, B, ...) layout, and the per-sample losses (K, B) (times ``weight``)."""
    if x.shape[0] == 1 and weight is None:  # the target's layout
        fn = _errors_manual if program.manual_single else _errors_autograd
        inputs, errs, losses = fn(program, [p[0] for p in params], x[0], y[0], None, True)
        return [a.unsqueeze(0) for a in inputs], [e.unsqueeze(0) for e in errs], losses.unsqueeze(0)
    fn = _errors_manual if program.manual_many else _errors_autograd
    return fn(program, params, x, y, weight, False)


def _errors_autograd(program, params, x, y, weight, single):
    """Output gradients from one ``torch.autograd.grad`` with respect to the layers' outputs
    (no parameter gradients are computed)."""
    with torch.enable_grad():
        logits, inputs, outputs = _run(program, params, x, single, keep=True)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)
        if weight is not None:
            losses = losses * weight
        errs = torch.autograd.grad(losses.sum(), outputs)
    return inputs, errs, losses.detach()


def _errors_manual(program, params, x, y, weight, single):
    """As :func:`_errors_autograd`, by hand: the cross-entropy gradient is softmax − one-hot, a
    Linear layer passes e·W back, the activations use autograd's own backward kernels, and
    Conv2d, GroupNorm and adaptive pooling pass e back through ``convolution_backward``,
    ``native_group_norm_backward`` and ``_adaptive_avg_pool2d_backward``, the kernels autograd
    calls (K > 1 models: as groups of channels, :func:`_to_groups`). Saves autograd's per-call
    overhead, which dominates at these model sizes."""
    with torch.no_grad():
        k = None if single else x.shape[0]
        grouped = k is not None and program.manual_grouped
        h, trace = (_to_groups(x) if grouped else x), []
        for layer in program.layers:
            aux, was_grouped = None, grouped
            m = layer.module
            if layer.kind == "linear":
                z = _linear([params[i] for i in layer.params], h, single)
            elif layer.kind == "sampled":  # (manual_single, or grouped)
                z, aux = _SAMPLED_MANUAL[type(m)][0](m, [params[i] for i in layer.params], h, k)
            elif grouped and type(m) is nn.Flatten:  # groups of channels -> (K, B, features)
                z = h.reshape(h.shape[0], k, -1).transpose(0, 1)
                grouped = False
            elif grouped:
                z = m(h)  # elementwise, or pooling per channel
            else:
                z = _stateless(m, h, single)
            trace.append((layer, h, z, aux, was_grouped))
            h = z
        logp = torch.log_softmax(h, dim=-1)
        yi = y.unsqueeze(-1)
        losses = logp.gather(-1, yi).squeeze_(-1).neg_()
        minus_one = _MINUS_ONE if logp.dtype == _MINUS_ONE.dtype else _MINUS_ONE.to(logp.dtype)
        e = logp.exp_().scatter_add_(-1, yi, minus_one.expand(yi.shape))  # softmax − one-hot
        if weight is not None:
            losses = losses * weight
            e = e * weight.unsqueeze(-1)
        inputs, errs = [], []
        remaining = sum(1 for l in program.layers if l.kind != "stateless")
        for layer, a, z, aux, in_groups in reversed(trace):
            m = layer.module
            if layer.kind == "stateless":
                if in_groups and type(m) is nn.Flatten:
                    e = e.transpose(0, 1).reshape(a.shape)
                else:
                    rule = _BACKWARD.get(type(m)) or _BACKWARD_SINGLE[type(m)]
                    e = rule(e, a, z)
                continue
            inputs.append(_from_groups(a, k) if in_groups else a)
            errs.append(_from_groups(e, k) if in_groups else e)
            remaining -= 1
            if remaining == 0:
                break
            ps = [params[i] for i in layer.params]
            if layer.kind == "linear":
                e = e.mm(ps[0]) if single else torch.bmm(e, ps[0])
            else:
                e = _SAMPLED_MANUAL[type(m)][1](m, ps, a, e, aux, k)
    return inputs[::-1], errs[::-1], losses


# --------------------------------------------------------------------------- clipped sums


@dataclass(frozen=True)
class ClippedSum:
    """Σ_i f_i·g_i of one step for each of K models.

    Attributes:
        grads: per parameter, ``(K, *shape)``.
        norms: ``(K, B)`` per-sample gradient norms before clipping (0 for padding rows).
        losses: ``(K, B)`` per-sample losses (0 for padding rows).
    """

    grads: tuple[torch.Tensor, ...]
    norms: torch.Tensor
    losses: torch.Tensor


def clip_factors(norms: torch.Tensor, bound: Bound) -> torch.Tensor:
    """f = min(1, C / (‖g‖ + 1e-6)): Opacus's ``clip_and_accumulate`` arithmetic.

    ``bound`` is one C or one per row (group-aware clipping), broadcast against ``norms``.
    """
    if isinstance(bound, torch.Tensor):
        return (bound / (norms + 1e-6)).clamp(max=1.0)
    # float / tensor is reciprocal() * float in torch (Tensor.__rdiv__): the same numbers,
    # without the Python-level wrapper and scalar conversions
    return (norms + 1e-6).reciprocal_().mul_(bound).clamp_(max=1.0)


def zero_grads(shapes: Sequence[torch.Size], k: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """Zero clipped sums ``(K, *shape)`` per parameter (an empty batch)."""
    return tuple(torch.zeros((k, *s), dtype=dtype) for s in shapes)


def clipped_sum(
    program: Program,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    bound: Bound,
    weight: Optional[torch.Tensor] = None,
) -> ClippedSum:
    """The clipped, summed cross-entropy gradient of K models on their own batches.

    Args:
        program: from :func:`compile_model`.
        params: per parameter ``(K, *shape)``; never modified (read without autograd).
        x, y: ``(K, B, ...)`` inputs and ``(K, B)`` labels.
        bound: clipping bound C, or ``(K, B)`` per-row bounds.
        weight: ``(K, B)`` 1 for real rows, 0 for padding (batches of unequal size); None: all real.

    Returns:
        :class:`ClippedSum`. Equals Opacus's ``clip_and_accumulate`` on its per-sample
        gradients of the same loss (up to float rounding in the order of the sums).
    """
    k, b = y.shape
    if b == 0:
        z = torch.zeros(k, 0)
        return ClippedSum(zero_grads(program.shapes, k, params[0].dtype), z, z)
    params = [p.detach() for p in params]
    inputs, errs, losses = _errors(program, params, x, y, weight)
    with torch.no_grad():
        layers = [l for l in program.layers if l.kind != "stateless"]
        parts: list[torch.Tensor] = []  # per-sample squared norms of the Linear layers
        rows: list[torch.Tensor] = []  # materialised per-sample gradients, (K, B, numel) each
        row_params: list[int] = []
        for layer, a, e in zip(layers, inputs, errs):
            if layer.kind == "linear":
                e2 = torch.linalg.vecdot(e, e)
                a2 = torch.linalg.vecdot(a, a)
                parts.append(torch.addcmul(e2, e2, a2) if len(layer.params) == 2 else e2 * a2)
            else:
                gs = _per_sample_rows(layer, a, e) if program.fallback == "opacus" else _per_sample_func(layer, [params[i] for i in layer.params], a, e)
                rows.extend(g.reshape(k, b, -1) for g in gs)
                row_params.extend(layer.params)
        # the sampled layers' rows side by side: one norm and one product for all of them
        table = (rows[0] if len(rows) == 1 else torch.cat(rows, dim=-1)) if rows else None
        if table is not None:
            parts.append(torch.linalg.vecdot(table, table))
        sq = parts[0]
        for t in parts[1:]:
            sq = sq + t
        norms = sq.sqrt()
        f = clip_factors(norms, bound)
        out: list[Optional[torch.Tensor]] = [None] * len(program.shapes)
        for layer, a, e in zip(layers, inputs, errs):
            if layer.kind == "linear":  # Σ_b f_b e_b a_bᵀ = (f·e)ᵀ a, and Σ_b f_b e_b
                fe = e * f.unsqueeze(-1)
                out[layer.params[0]] = torch.bmm(fe.transpose(1, 2), a)
                if len(layer.params) == 2:
                    out[layer.params[1]] = fe.sum(1)
        if table is not None:  # Σ_b f_b g_b as (K, 1, B) x (K, B, D)
            summed = torch.bmm(f.unsqueeze(1), table).squeeze(1)
            for i, part in zip(row_params, torch.split(summed, [r.shape[-1] for r in rows], dim=-1)):
                out[i] = part.view(k, *program.shapes[i])
    return ClippedSum(tuple(out), norms, losses.detach())


def summed_gradient(program: Program, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Σ_i ∂loss_i/∂θ of K models on their own batches, unclipped (plain SGD's gradient times
    the batch size), per parameter ``(K, *shape)``: eᵀa and Σ e for Linear layers, one grouped
    ``convolution_backward`` for Conv2d, the per-sample rows summed for other sampled layers
    (GroupNorm's are one number per channel). The reference federations' plain step (``bench.reference.train_many``),
    where the hand-written backward pass saves autograd's overhead; equals autograd's gradient
    up to float rounding."""
    k, b = y.shape
    if b == 0:
        return zero_grads(program.shapes, k, params[0].dtype)
    params = [p.detach() for p in params]
    inputs, errs, _ = _errors(program, params, x, y, None)
    out: list[Optional[torch.Tensor]] = [None] * len(program.shapes)
    with torch.no_grad():
        layers = [l for l in program.layers if l.kind != "stateless"]
        for layer, a, e in zip(layers, inputs, errs):
            if layer.kind == "linear":
                out[layer.params[0]] = torch.bmm(e.transpose(1, 2), a)
                if len(layer.params) == 2:
                    out[layer.params[1]] = e.sum(1)
            elif _conv_ok(layer.module):  # the batch's sum directly, no per-sample rows
                for i, g in zip(layer.params, _conv_summed(layer, a, e, k)):
                    out[i] = g
            else:
                gs = _per_sample_rows(layer, a, e) if program.fallback == "opacus" else _per_sample_func(layer, [params[i] for i in layer.params], a, e)
                for i, g in zip(layer.params, gs):
                    out[i] = g.sum(1)
    return tuple(out)


# Conv2d's summed (not per-sample) gradient for K models, a and e ``(K, B, ...)``: with the
# images as K groups of channels (:func:`_to_groups`; free when they come from the grouped
# hand-written pass), one grouped ``convolution_backward`` gives the K weight gradients.
def _conv_summed(layer: Layer, a: torch.Tensor, e: torch.Tensor, k: int) -> list[torch.Tensor]:
    m = layer.module
    w = m.weight.detach()
    grouped_w = w.expand(k, *w.shape).reshape(k * w.shape[0], *w.shape[1:])  # shapes only: not read for these outputs
    has_bias = len(layer.params) == 2
    _, gw, gb = torch.ops.aten.convolution_backward(
        _to_groups(e), _to_groups(a), grouped_w, [k * w.shape[0]] if has_bias else None, m.stride, m.padding, m.dilation,
        False, [0, 0], m.groups * k, [False, True, has_bias])
    out = {"weight": gw.view(k, *w.shape)}
    if has_bias:
        out["bias"] = gb.view(k, -1)
    return [out[n] for n in layer.names]


def clip_rows(rows: Sequence[torch.Tensor], bound: Bound) -> tuple[torch.Tensor, ...]:
    """Clip and sum explicit per-sample gradient rows (e.g. the audit's gradient canaries).

    Args:
        rows: per parameter ``(K, m, *shape)``: m rows of every parameter for each model.
        bound: C (or ``(K, m)`` bounds).

    Returns:
        per parameter ``(K, *shape)``: Opacus's ``clip_and_accumulate`` of these rows.
    """
    k, m = rows[0].shape[:2]
    if m == 0:
        return tuple(torch.zeros((k, *r.shape[2:]), dtype=r.dtype) for r in rows)
    per_param = torch.stack([r.reshape(k, m, -1).norm(2, dim=-1) for r in rows], dim=-1)
    f = clip_factors(per_param.norm(2, dim=-1), bound)
    return tuple(torch.einsum("km,km...->k...", f.to(r.dtype), r) for r in rows)


# --------------------------------------------------------------------------- sampling and noise


@dataclass(frozen=True)
class PoissonBatch:
    """One Poisson-sampled step of K federations, padded to the largest batch.

    Attributes:
        index: ``(K, W)`` record indices; each federation's sampled records first, in
            increasing order (as Opacus lists them), then padding.
        weight: ``(K, W)`` 1 for sampled rows, 0 for padding; None when K = 1 (no padding).
        sizes: how many records each federation sampled (may be 0).
    """

    index: torch.Tensor
    weight: Optional[torch.Tensor]
    sizes: tuple[int, ...]


def poisson_batch(n: int, q: float, generators: Sequence[torch.Generator]) -> PoissonBatch:
    """Every record of every federation joins independently with probability q.

    One ``torch.rand(n, generator=g) < q`` per federation: exactly the draw of Opacus's
    ``UniformWithReplacementSampler`` (and of ``DPTrainer``), empty batches included.
    """
    if len(generators) == 1:
        index = (torch.rand(n, generator=generators[0]) < q).nonzero().view(1, -1)
        return PoissonBatch(index, None, (index.shape[1],))
    mask = torch.stack([torch.rand(n, generator=g) for g in generators]) < q  # (K, n)
    counts = mask.sum(1)
    sizes = tuple(int(c) for c in counts)
    width = max(sizes)
    # a stable sort on "not sampled" puts each federation's sampled records first, in order
    index = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    weight = (torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)).to(torch.get_default_dtype())
    return PoissonBatch(index, weight, sizes)


def gaussian_noise(
    shapes: Sequence[torch.Size], std: float, generators: Sequence[torch.Generator], dtype=torch.float32
) -> Optional[tuple[torch.Tensor, ...]]:
    """N(0, std²) per parameter ``(K, *shape)``, drawn as Opacus's ``DPOptimizer.add_noise``
    draws it: per federation, one normal draw per parameter in order (``torch.normal(0, std,
    size, generator)`` is ``empty(size).normal_(0, std, generator)``, which fills row k here);
    at std = 0 nothing is drawn (None) and the generators are left untouched, as in Opacus."""
    if std == 0:
        return None
    k = len(generators)
    if k == 1:
        return tuple(torch.normal(0.0, std, size=(1, *s), generator=generators[0], dtype=dtype) for s in shapes)
    out = tuple(torch.empty((k, *s), dtype=dtype) for s in shapes)
    for j, g in enumerate(generators):
        for z in out:
            z[j].normal_(0.0, std, generator=g)
    return out


@dataclass(frozen=True)
class PrivateGradient:
    """One DP-SGD step's gradient for K models.

    Attributes:
        grads: per parameter ``(K, *shape)``: (Σ_i f_i g_i [+ extra rows] + noise) / expected batch size.
        norms: ``(K, B)`` per-sample norms before clipping (0 on padding rows).
        losses: ``(K, B)`` per-sample losses (0 on padding rows).
    """

    grads: tuple[torch.Tensor, ...]
    norms: torch.Tensor
    losses: torch.Tensor


def noisy_mean(
    summed: Sequence[torch.Tensor], noise_std: float, expected_batch_size: float, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, ...]:
    """(summed + N(0, noise_std²)) / expected_batch_size, per parameter (``add_noise`` then
    ``scale_grad`` of Opacus's DPOptimizer with ``loss_reduction="mean"``, same arithmetic)."""
    noise = gaussian_noise([s.shape[1:] for s in summed], noise_std, generators, summed[0].dtype)
    ebs = float(expected_batch_size)  # x / 16 and x / 16.0 are the same numbers; the float skips a conversion
    if noise is None:
        return tuple(s / ebs for s in summed)
    # in place on the fresh noise buffers: these tensors are large for K models
    return tuple(z.add_(s).div_(ebs) for s, z in zip(summed, noise))


def private_gradient(
    program: Program,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bound: Bound,
    noise_std: float,
    expected_batch_size: float,
    generators: Sequence[torch.Generator],
    weight: Optional[torch.Tensor] = None,
    extra: Optional[Sequence[torch.Tensor]] = None,
) -> PrivateGradient:
    """One DP-SGD gradient for each of K models on an already sampled batch.

    Args:
        program, params, x, y, bound, weight: as for :func:`clipped_sum`.
        noise_std: σ·C (Opacus: ``noise_multiplier * max_grad_norm``; group-aware clipping:
            σ·C·max_scale).
        expected_batch_size: Opacus's ``expected_batch_size`` (round(q·n) under Poisson).
        generators: one per model, for the noise (after the batch was drawn from it).
        extra: already clipped rows to add before the noise, per parameter ``(K, *shape)``
            (the audit's gradient canaries: :func:`clip_rows`).
    """
    s = clipped_sum(program, params, x, y, bound, weight)
    summed = s.grads if extra is None else tuple(e + g for e, g in zip(extra, s.grads))
    grads = noisy_mean(summed, noise_std, expected_batch_size, generators)
    return PrivateGradient(grads, s.norms, s.losses)


def poisson_step(
    program: Program,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    q: float,
    bound: Bound,
    noise_std: float,
    expected_batch_size: float,
    generators: Sequence[torch.Generator],
    extra: Optional[Callable[[PoissonBatch], Optional[Sequence[torch.Tensor]]]] = None,
) -> PrivateGradient:
    """Draw a Poisson batch from each federation's ``n`` records ``x`` ``(K, n, ...)`` and
    return its DP-SGD gradient: the whole of one step of Opacus's pipeline, K at a time.

    ``bound`` may be ``(K, n)`` per-record bounds (group-aware clipping); ``extra`` gets the
    drawn batch and returns clipped extra rows (``clip_rows``) or None.
    """
    k, n = y.shape
    batch = poisson_batch(n, q, generators)
    if k == 1:  # the target: plain indexing, no padding
        idx = batch.index[0]
        xb, yb = x[0][idx].unsqueeze(0), y[0][idx].unsqueeze(0)
        if isinstance(bound, torch.Tensor) and bound.dim() == 2:
            bound = bound[0][idx].unsqueeze(0)
    else:
        rows = torch.arange(k).unsqueeze(1)
        xb, yb = x[rows, batch.index], y[rows, batch.index]
        if isinstance(bound, torch.Tensor) and bound.dim() == 2:
            bound = bound[rows, batch.index]
    return private_gradient(
        program,
        params,
        xb,
        yb,
        bound=bound,
        noise_std=noise_std,
        expected_batch_size=expected_batch_size,
        generators=generators,
        weight=batch.weight,
        extra=extra(batch) if extra is not None else None,
    )


# --------------------------------------------------------------------------- flat (K, P) adapter


def split_flat(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    """Views of a ``(K, P)`` stack as per-parameter ``(K, *shape)`` tensors (no copy)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return [t.view(flat.shape[0], *s) for t, s in zip(torch.split(flat, sizes, dim=1), shapes)]


def join_flat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-parameter ``(K, *shape)`` tensors as one ``(K, P)`` stack."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def flat_poisson_step(
    program: Program,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    q: float,
    bound: Bound,
    noise_std: float,
    expected_batch_size: float,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """:func:`poisson_step` on flat ``(K, P)`` parameters (``bench.reference``'s layout);
    returns the ``(K, P)`` private gradients."""
    step = poisson_step(
        program, split_flat(params, program.shapes), x, y, q=q, bound=bound, noise_std=noise_std,
        expected_batch_size=expected_batch_size, generators=generators,
    )
    return join_flat(step.grads)
