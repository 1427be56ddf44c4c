"""bench.engine: DP-SGD clipped sums without per-sample gradients, against Opacus.

Opacus is the oracle: its ``GradSampleModule`` + ``DPOptimizer`` (clipped sums, noise),
``UniformWithReplacementSampler`` (Poisson batches) and ``DPTrainer`` (a whole local round).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ModelConfig
from bench.engine import (
    clip_rows,
    clipped_sum,
    compile_model,
    forward,
    gaussian_noise,
    poisson_batch,
    poisson_step,
    private_gradient,
    summed_gradient,
)
from bench.models import build_model, flatten
from bench.training import LocalSettings, PlainTrainer
from bench.types import DatasetInfo, Records

# Opacus's hooks fire with no input requiring grad (the data never does); see defenses/dpsgd/opacus_path.py
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

B = 16

# privbench's models at the sizes of the issue: heart disease / breast cancer (30 features),
# digits (8x8 images, 10 classes)
MODELS = {
    "logreg": (DatasetInfo("tab", (30,), 2), ModelConfig("logreg")),
    "mlp64": (DatasetInfo("tab", (30,), 2), ModelConfig("mlp", hidden=(64,))),
    "mlp256x256": (DatasetInfo("digits", (64,), 10), ModelConfig("mlp", hidden=(256, 256))),
    "cnn": (DatasetInfo("digits", (1, 8, 8), 10, modality="image"), ModelConfig("cnn", channels=8)),
}


def _model(name: str, seed: int = 0) -> tuple[nn.Module, DatasetInfo]:
    info, cfg = MODELS[name]
    model = build_model(info, cfg, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-zero biases and GroupNorm affine: every parameter matters
        g = torch.Generator().manual_seed(seed + 100)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model, info


def _data(info: DatasetInfo, n: int, seed: int = 1, k: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (k, n) if k else (n,)
    return torch.randn(*shape, *info.input_shape, generator=g), torch.randint(0, info.num_classes, shape, generator=g)


def _stack(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().unsqueeze(0) for p in model.parameters()]


def _opacus_clipped_mean(model: nn.Module, x, y, clip: float):
    """Opacus at σ = 0: GradSampleModule (hooks) + DPOptimizer, loss_reduction "mean" and
    expected batch size B, as DPTrainer configures it. Returns (p.grad list, per-sample norms)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=clip,
                      expected_batch_size=len(y), loss_reduction="mean")
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(gsm(x), y).backward()
    rows = [p.grad_sample.reshape(len(y), -1) for p in model.parameters()]
    norms = torch.stack([r.norm(2, dim=1) for r in rows], dim=1).norm(2, dim=1)
    opt.pre_step()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.zero_grad(set_to_none=True)
    gsm._close()
    return grads, norms


def _close(actual, expected, rtol=1e-5):
    # rtol 1e-5 elementwise, with an absolute floor at 1e-6 of the tensor's largest entry:
    # clipped sums cancel, and entries near 0 carry the float error of the large terms
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=1e-6 * float(e.abs().max()) + 1e-12)


# ------------------------------------------------------------------ (a) clipped sums equal Opacus's


@pytest.mark.parametrize("name", list(MODELS))
def test_clipped_mean_equals_opacus_at_zero_noise(name):
    """σ = 0: (Σ_i f_i g_i)/B equals Opacus's, for C clipping every row, some rows, no row."""
    model, info = _model(name)
    x, y = _data(info, B)
    program = compile_model(model)
    assert program.closed_form == (name != "cnn")
    _, norms = _opacus_clipped_mean(model, x, y, 1.0)
    for clip, clipped in [(1e-3 * float(norms.min()), "all"), (float(norms.median()), "some"), (1e3 * float(norms.max()), "none")]:
        expected, opacus_norms = _opacus_clipped_mean(model, x, y, clip)
        n_clipped = int((opacus_norms > clip).sum())
        assert n_clipped == {"all": B, "none": 0}.get(clipped, n_clipped) and (clipped != "some" or 0 < n_clipped < B)
        step = private_gradient(program, _stack(model), x[None], y[None], bound=clip, noise_std=0.0,
                                expected_batch_size=B, generators=[torch.Generator()])
        _close([g[0] for g in step.grads], expected)
        torch.testing.assert_close(step.norms[0], opacus_norms, rtol=1e-5, atol=1e-7)


def test_cnn_torch_func_fallback_equals_opacus():
    model, info = _model("cnn")
    x, y = _data(info, B)
    expected, norms = _opacus_clipped_mean(model, x, y, 1.0)
    clip = float(norms.median())
    expected, _ = _opacus_clipped_mean(model, x, y, clip)
    s = clipped_sum(compile_model(model, fallback="func"), _stack(model), x[None], y[None], clip)
    _close([g[0] / B for g in s.grads], expected)


def test_per_row_bounds_clip_each_record_to_its_own_bound():
    """Group-aware clipping: bound (K, B) clips row i to C_i (DPTrainer's GroupClipDPOptimizer)."""
    model, info = _model("mlp64")
    x, y = _data(info, B)
    _, norms = _opacus_clipped_mean(model, x, y, 1.0)
    bounds = norms * torch.linspace(0.2, 2.0, B)  # half the rows clipped
    rows = _per_sample_rows(model, x, y)
    factor = (bounds / (norms + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("i,i...", factor, r) for r in rows]
    s = clipped_sum(compile_model(model), _stack(model), x[None], y[None], bounds[None])
    _close([g[0] for g in s.grads], expected)


def _per_sample_rows(model, x, y):
    rows = []
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return [torch.stack(r) for r in zip(*rows)]


@pytest.mark.parametrize("name", list(MODELS))
def test_summed_gradient_is_autograds_gradient_of_the_summed_loss(name):
    """The references' plain step: unclipped Σ_i g_i of K = 3 models, each on its own batch,
    equals autograd's gradient of each model's summed loss."""
    models = [_model(name, seed=s)[0] for s in range(3)]
    info = MODELS[name][0]
    x, y = _data(info, B, k=3)
    program = compile_model(models[0])
    params = [torch.stack(ps) for ps in zip(*[[p.detach() for p in m.parameters()] for m in models])]
    got = summed_gradient(program, params, x, y)
    for k, m in enumerate(models):
        m.zero_grad()
        nn.functional.cross_entropy(m(x[k]), y[k], reduction="sum").backward()
        for g, p in zip(got, m.parameters()):
            torch.testing.assert_close(g[k], p.grad, rtol=1e-5, atol=1e-5)


def test_the_targets_cnn_backward_by_hand_equals_autograds():
    """K = 1 (the target) runs the CNN's backward by hand (conv, group norm, pooling kernels);
    every layer's output gradient and the losses equal autograd's."""
    from bench import engine

    model, info = _model("cnn")
    program = compile_model(model)
    assert program.manual_single and not program.manual  # manual: Linear layers only; the CNN at K > 1 is manual_grouped
    x, y = _data(info, B)
    ps = [p.detach() for p in model.parameters()]
    a1, e1, l1 = engine._errors_manual(program, ps, x, y, None, True)
    a2, e2, l2 = engine._errors_autograd(program, ps, x, y, None, True)
    assert len(e1) == len(e2) == 5
    for u, v in zip([*e1, *a1], [*e2, *a2]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(l1, l2)


def test_k_cnns_by_hand_as_groups_of_channels_equal_autograd_with_padding_rows():
    """K > 1 CNNs run by hand as K groups of channels (grouped convolution and group norm): each
    layer's input and output gradient, and the losses, equal autograd's over vmap, padding
    rows (weight 0) included."""
    from bench import engine

    models = [_model("cnn", seed=s)[0] for s in range(3)]
    program = compile_model(models[0])
    assert program.manual_grouped
    info = MODELS["cnn"][0]
    x, y = _data(info, B, k=3)
    weight = torch.ones(3, B)
    weight[1, 10:] = 0.0
    params = [torch.stack(ps) for ps in zip(*[[p.detach() for p in m.parameters()] for m in models])]
    a1, e1, l1 = engine._errors_manual(program, params, x, y, weight, False)
    a2, e2, l2 = engine._errors_autograd(program, params, x, y, weight, False)
    for u, v in zip([*e1, *a1], [*e2, *a2]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l2)


def test_clip_rows_is_opacus_clip_and_accumulate():
    """Extra per-sample rows (the audit's gradient canaries) are clipped as Opacus clips them."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model, _ = _model("mlp64")
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(5, *p.shape, generator=g) * s for p, s in zip(model.parameters(), (0.01, 1.0, 0.1, 3.0))]
    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=2.0, expected_batch_size=5)
    for p, r in zip(model.parameters(), rows):
        p.grad_sample = r.clone()
    opt.clip_and_accumulate()
    expected = [p.summed_grad.clone() for p in model.parameters()]
    gsm._close()
    _close([c[0] for c in clip_rows([r.unsqueeze(0) for r in rows], 2.0)], expected, rtol=1e-6)


def test_forward_equals_the_module():
    for name in MODELS:
        model, info = _model(name)
        x, _ = _data(info, 7, k=3)
        stack = [p.detach().unsqueeze(0).repeat(3, *([1] * p.dim())) for p in model.parameters()]
        torch.testing.assert_close(forward(compile_model(model), stack, x), torch.stack([model(xk) for xk in x]), rtol=1e-5, atol=1e-6)


def test_refuses_what_it_cannot_clip_per_record():
    with pytest.raises(ValueError, match="BatchNorm1d"):
        compile_model(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x):
            return x + self.inner(x)

    with pytest.raises(ValueError, match="nn.Sequential"):
        compile_model(nn.Sequential(Residual(), nn.Linear(3, 2)))


# ------------------------------------------------------------------ (b) noise


def test_noise_mean_and_std_on_zero_gradients():
    """With every batch empty (q = 0) the step is noise only: mean 0, std σC/B_expected."""
    model, info = _model("mlp256x256")  # 85k coordinates per step
    x, y = _data(info, 40)
    sigma, clip, ebs = 1.3, 0.7, 12
    step = poisson_step(compile_model(model), _stack(model), x[None], y[None], q=0.0, bound=clip,
                        noise_std=sigma * clip, expected_batch_size=ebs, generators=[torch.Generator().manual_seed(5)])
    z = torch.cat([g.reshape(-1) for g in step.grads]).double()
    n, std = z.numel(), sigma * clip / ebs
    assert abs(float(z.mean())) < 5 * std / math.sqrt(n)  # 5σ of the sample mean
    assert abs(float(z.std()) / std - 1) < 5 / math.sqrt(2 * n)  # 5σ of the sample std


def test_noise_is_opacus_noise_draw_for_draw():
    """The same generator gives Opacus's DPOptimizer noise exactly (per parameter, in order),
    and σ = 0 draws nothing (the generator is left as Opacus leaves it)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model, _ = _model("mlp64")
    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=1.1, max_grad_norm=0.5,
                      expected_batch_size=9, loss_reduction="mean", generator=torch.Generator().manual_seed(11))
    for p in model.parameters():  # an empty batch, as DPTrainer._empty_step feeds it
        p.grad_sample = torch.zeros((0, *p.shape))
    opt.pre_step()
    expected = [p.grad.clone() for p in model.parameters()]
    gsm._close()
    shapes = [p.shape for p in model.parameters()]
    summed = [torch.zeros(1, *s) for s in shapes]
    from bench.engine import noisy_mean

    got = noisy_mean(summed, 1.1 * 0.5, 9, [torch.Generator().manual_seed(11)])
    assert all(torch.equal(a[0], e) for a, e in zip(got, expected))
    g = torch.Generator().manual_seed(11)
    assert gaussian_noise(shapes, 0.0, [g]) is None and torch.equal(g.get_state(), torch.Generator().manual_seed(11).get_state())


# ------------------------------------------------------------------ (c) Poisson sampling


def test_poisson_batches_are_opacus_batches():
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n, q, steps = 37, 0.2, 30
    sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, steps=steps, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    for expected in sampler:
        assert poisson_batch(n, q, [g]).index[0].tolist() == list(expected)
    # K federations at once: federation j's sampled prefix is its own K = 1 draw
    many = poisson_batch(n, q, [torch.Generator().manual_seed(s) for s in range(4)])
    for j in range(4):
        alone = poisson_batch(n, q, [torch.Generator().manual_seed(j)]).index[0]
        assert many.sizes[j] == len(alone) and torch.equal(many.index[j, : many.sizes[j]], alone)
        assert many.weight[j].sum() == len(alone) and torch.all(many.weight[j, len(alone) :] == 0)


def test_poisson_inclusion_frequency_matches_q_and_batch_sizes_vary():
    n, q, steps = 50, 0.3, 400
    g = torch.Generator().manual_seed(8)
    counts = np.zeros(n)
    sizes = []
    for _ in range(steps):
        idx = poisson_batch(n, q, [g]).index[0].numpy()
        assert len(np.unique(idx)) == len(idx)  # without replacement within a step
        counts[idx] += 1
        sizes.append(len(idx))
    total = n * steps
    assert abs(counts.sum() / total - q) < 4 * math.sqrt(q * (1 - q) / total)  # overall rate: 4σ binomial interval
    per = math.sqrt(steps * q * (1 - q))  # each record: Binomial(steps, q); 4.5σ covers 50 records
    assert np.all(np.abs(counts - steps * q) < 4.5 * per)
    assert len(set(sizes)) > 5 and abs(np.var(sizes) / (n * q * (1 - q)) - 1) < 0.3  # Binomial(n, q) sizes
    g = torch.Generator().manual_seed(0)  # small q: empty batches happen, with probability (1-q)^n
    empties = sum(poisson_batch(10, 0.05, [g]).index.shape[1] == 0 for _ in range(200))
    assert 0.45 < empties / 200 < 0.75  # (0.95)^10 = 0.60


# ------------------------------------------------------------------ (d) K federations at once


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("q", [1.0, 0.3])
def test_k_batched_equals_k_separate_runs(name, q):
    """K = 5 federations in one call give each federation's own K = 1 step: the same batches
    and noise, draw for draw (each generator ends in the same state), and the same gradients
    up to float rounding. Bit-identity is not asserted: the K-batched matrix products (and
    grouped convolutions) may block their sums differently from K = 1, and padding rows change
    the shapes (observed: bit-identical for some shapes, ≤ 1e-7 relative otherwise)."""
    k, n = 5, 24
    model, info = _model(name)
    g = torch.Generator().manual_seed(2)
    params = [p.detach().unsqueeze(0) + 0.05 * torch.randn(k, *p.shape, generator=g) for p in model.parameters()]
    x, y = _data(info, n, k=k)
    program = compile_model(model)
    for noise in (0.0, 0.3):
        kw = dict(q=q, bound=0.5, noise_std=noise, expected_batch_size=round(q * n))
        gens = [torch.Generator().manual_seed(s) for s in range(k)]
        many = poisson_step(program, params, x, y, generators=gens, **kw)
        for j in range(k):
            gen = torch.Generator().manual_seed(j)
            one = poisson_step(program, [p[j : j + 1] for p in params], x[j : j + 1], y[j : j + 1], generators=[gen], **kw)
            assert torch.equal(gens[j].get_state(), gen.get_state())
            for a, b in zip(many.grads, one.grads):
                torch.testing.assert_close(a[j], b[0], rtol=1e-5, atol=1e-6 * float(b.abs().max()))
            width = one.norms.shape[1]
            torch.testing.assert_close(many.norms[j, :width], one.norms[0], rtol=1e-5, atol=1e-7)
            assert torch.all(many.norms[j, width:] == 0) and torch.all(many.losses[j, width:] == 0)


# ------------------------------------------------------------------ a whole local round vs DPTrainer


@pytest.mark.parametrize("name", ["mlp64", "cnn"])
def test_local_round_equals_opacus_dptrainer_with_noise(name):
    """σ > 0, Poisson sampling, SGD with momentum: the engine consumes the generator exactly
    as DPTrainer (Opacus ew) does, so both reach the same parameters."""
    from defenses.dp_sgd import DPTrainer

    model, info = _model(name)
    n = 40
    x, y = _data(info, n)
    data = Records(ids=np.arange(n), x=x, y=y)
    settings = LocalSettings(epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.5)
    start = flatten(model)
    sigma, clip = 0.8, 0.5
    dp = DPTrainer(PlainTrainer(_model(name)[0], data, settings), sigma, clip, "poisson", "ew")
    expected = dp.train(start, torch.Generator().manual_seed(9))

    got = DPTrainer(PlainTrainer(_model(name)[0], data, settings), sigma, clip, "poisson", "engine").train(start, torch.Generator().manual_seed(9))
    steps, loss = got.num_steps, got.mean_loss
    assert steps == expected.num_steps
    torch.testing.assert_close(got.params, expected.params, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(expected.mean_loss, rel=1e-5)


def test_gradient_canaries_join_the_clipped_sum_as_in_dptrainer():
    """The white-box audit's gradient canaries (extra per-sample rows, clipped to C, added
    before the noise) give the same round as DPTrainer._insert_canaries with Opacus."""
    from bench.canaries import make_directions
    from bench.types import InsertedCanaries
    from defenses.dp_sgd import DPTrainer

    model, info = _model("mlp64")
    n = 40
    x, y = _data(info, n)
    data = Records(ids=np.arange(n), x=x, y=y)
    num = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    dirs = make_directions("random", 6, num, 1000, rng)
    canaries = InsertedCanaries(kind="gradient", directions=dirs, included=np.array([1, 1, 0, 1, 1, 1], bool), site="a",
                                scale=2.0, seed=5)  # norm 2C: clipped to C like a record
    settings = LocalSettings(epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.5)
    start = flatten(model)
    sigma, clip = 0.5, 0.5
    dp = DPTrainer(PlainTrainer(_model("mlp64")[0], data, settings, canaries=canaries), sigma, clip, "poisson", "ew")
    expected = dp.train(start, torch.Generator().manual_seed(9))

    got = DPTrainer(PlainTrainer(_model("mlp64")[0], data, settings, canaries=canaries), sigma, clip, "poisson", "engine")
    torch.testing.assert_close(got.train(start, torch.Generator().manual_seed(9)).params, expected.params, rtol=1e-5, atol=1e-6)
    without = DPTrainer(PlainTrainer(_model("mlp64")[0], data, settings), sigma, clip, "poisson", "ew").train(start, torch.Generator().manual_seed(9))
    assert not torch.allclose(without.params, expected.params, atol=1e-4)  # the canaries did change the round


def test_group_clip_round_equals_dptrainer():
    """dp_sgd's group_clip: record i clipped to C·s_i, noise σ·C·max s (GroupClipDPOptimizer)."""
    from defenses.dp_sgd import DPTrainer

    model, info = _model("logreg")
    n = 40
    x, y = _data(info, n)
    data = Records(ids=np.arange(n), x=x, y=y)
    scales = torch.where(torch.arange(n) % 3 == 0, 3.0, 1.0).double()
    settings = LocalSettings(epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.0)
    start = flatten(model)
    sigma, clip = 0.7, 0.05  # small C: most records clipped, so the per-record bounds matter
    dp = DPTrainer(PlainTrainer(_model("logreg")[0], data, settings), sigma, clip, "poisson", "hooks", clip_scales=scales, max_scale=3.0)
    expected = dp.train(start, torch.Generator().manual_seed(4))

    got = DPTrainer(PlainTrainer(_model("logreg")[0], data, settings), sigma, clip, "poisson", "engine", clip_scales=scales, max_scale=3.0)
    torch.testing.assert_close(got.train(start, torch.Generator().manual_seed(4)).params, expected.params, rtol=1e-5, atol=1e-6)
