"""Plain local training's optimizer: LeanSGD is torch.optim.SGD, bit for bit (bench/training.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.training import LeanSGD


def _run(make_opt, momentum: float, wd: float, steps: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    opt = make_opt(model.parameters(), momentum, wd)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    for s in range(steps):
        idx = torch.randperm(40, generator=g)[:16]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        if s == 3:  # a parameter without a gradient in one step is left alone by both
            model[2].bias.grad = None
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-3), (0.5, 1e-2)])
def test_lean_sgd_equals_torch_sgd_bit_for_bit(momentum, wd):
    ours = _run(lambda ps, m, w: LeanSGD(ps, lr=0.1, momentum=m, weight_decay=w), momentum, wd)
    torchs = _run(lambda ps, m, w: torch.optim.SGD(ps, lr=0.1, momentum=m, weight_decay=w), momentum, wd)
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


def test_lean_sgd_does_not_import_dynamo():
    code = ("import sys, torch; from bench.training import LeanSGD; m = torch.nn.Linear(2, 2); o = LeanSGD(m.parameters(), lr=0.1);"
            "m(torch.zeros(1, 2)).sum().backward(); o.step(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resetting_state_restarts_momentum_like_torch():
    import collections

    def run(make):
        g = torch.Generator().manual_seed(1)
        p = torch.nn.Parameter(torch.randn(5, generator=g))
        opt = make([p])
        for s in range(6):
            if s == 3:  # what DP-SGD's trainer does at the start of each round
                opt.state = collections.defaultdict(dict)
            p.grad = torch.randn(5, generator=g)
            opt.step()
        return p.detach().clone()

    ours = run(lambda ps: LeanSGD(ps, lr=0.1, momentum=0.9))
    torchs = run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    assert torch.equal(ours, torchs)
    assert LeanSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).param_groups[0]["lr"] == 0.1
