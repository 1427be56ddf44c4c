"""Local training inside one hospital (the piece a defense may wrap, e.g. with Opacus)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from bench.models import flatten, load_flat
from bench.types import InsertedCanaries, LocalResult, Records
from bench.lazy import lazy, no_grad

# torch imported on first use (bench/lazy.py): `privbench list` and `validate` load this module without it
torch = lazy("torch", globals())
nn = lazy("torch.nn", globals())


@dataclass(frozen=True)
class LocalSettings:
    """The hyperparameters of local training (from ``train.*``)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def make_optimizer(params, s: LocalSettings) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer (what Opacus's DPOptimizer wraps)."""
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


class LeanSGD:
    """SGD with momentum and weight decay, step for step what ``torch.optim.SGD`` computes on CPU
    (its single-tensor path: dampening 0, no Nesterov), without constructing a ``torch.optim``
    object: the first of those imports ``torch._dynamo``, about a second of CPU per process
    (benchmarks/bench_startup.py). tests/test_training.py checks it bit for bit against SGD.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        # as torch.optim: per-parameter state (the momentum buffer), reset by assigning a new mapping
        self.state: dict = collections.defaultdict(dict)

    @property
    def param_groups(self) -> list[dict]:
        """One group, as ``torch.optim`` lists them (Opacus-style wrappers read the parameters here)."""
        return [{"params": self.params, "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @no_grad  # torch.no_grad(), torch imported at the first call
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            d_p = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    buf.mul_(self.momentum).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-self.lr)


def local_optimizer(params, s: LocalSettings):
    """The optimizer of plain local training: :class:`LeanSGD` for SGD, ``torch.optim.Adam`` for Adam."""
    if s.optimizer == "adam":
        return make_optimizer(params, s)
    return LeanSGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


@dataclass(frozen=True)
class RecordGroups:
    """One sensitive attribute's subgroup of each of a hospital's training records.

    Attributes:
        labels: the subgroup labels (``female``, ``male``), as in :class:`bench.types.SensitiveAttribute`.
        codes: the subgroup index of each record, aligned with the trainer's data rows (``-1``: missing).
    """

    labels: tuple[str, ...]
    codes: np.ndarray


class PlainTrainer:
    """Mini-batch training on one hospital's member records, shuffled each epoch.

    One instance per hospital lives for the whole run; its model is loaded with the global
    parameters at the start of every round.

    Args:
        model: the hospital's own copy of the model architecture.
        data: the hospital's member records.
        settings: local training hyperparameters.
        canaries: gradient canaries of a white-box audit (``bench.canaries``); only a DP-SGD
            trainer can insert them, so plain training refuses to run with them.
        groups: the subgroup of each of ``data``'s records per sensitive attribute (the
            hospital knows its own patients): :class:`RecordGroups` by attribute name. Plain
            training ignores them; dp_sgd's ``group_clip`` reads them.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Records,
        settings: LocalSettings,
        canaries: Optional[InsertedCanaries] = None,
        groups: Optional[Mapping[str, "RecordGroups"]] = None,
    ) -> None:
        self.model = model
        self.data = data
        self.settings = settings
        self.canaries = canaries
        self.groups = dict(groups or {})
        self.loss_fn = nn.CrossEntropyLoss()

    def steps_per_round(self) -> int:
        n, b = len(self.data), self.settings.batch_size
        return self.settings.epochs * ((n + b - 1) // b)

    def train(self, global_params: torch.Tensor, generator: torch.Generator) -> LocalResult:
        """Start from ``global_params``; return the locally trained parameters."""
        if self.canaries is not None:
            raise RuntimeError("gradient canaries are inserted by dp_sgd's trainer; plain training cannot audit them")
        load_flat(self.model, global_params)
        self.model.train()
        opt = local_optimizer(self.model.parameters(), self.settings)
        x, y = self.data.x, self.data.y
        n, b = len(self.data), self.settings.batch_size
        steps, total = 0, 0.0
        for _ in range(self.settings.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, b):
                idx = order[start : start + b]
                opt.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                steps += 1
                total += float(loss.detach())
        return LocalResult(params=flatten(self.model), num_steps=steps, num_samples=n, mean_loss=total / max(steps, 1))
