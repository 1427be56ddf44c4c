"""The imprint module (``imprint``'s trap in front of the configured model), apart from
:mod:`attacks.malicious.imprint` because a ``torch.nn.Module`` subclass needs torch when it is
defined, and ``privbench list`` / ``validate`` load the attack without torch (bench/lazy.py)."""

from __future__ import annotations

import torch
from torch import nn


class Imprinted(nn.Module):
    """The imprint module in front of the configured model (Fowl et al., Sec. 3, "binning").

    ``imprint`` (d -> k, ReLU) measures every record along one direction a: unit i fires when
    a·x exceeds threshold t_i (cumulative bins). ``spread`` (k -> d, no bias) adds its
    activations back onto the record with identical columns, so that every bin receives the
    same output gradient for a given record (the precondition of the read-out); the residual
    connection keeps the configured model's input (and hence its utility) nearly unchanged
    when the coupling is small.
    """

    def __init__(self, inner: nn.Module, num_inputs: int, bins: int) -> None:
        super().__init__()
        self.imprint = nn.Linear(num_inputs, bins)
        self.spread = nn.Linear(bins, num_inputs, bias=False)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        mixed = flat + self.spread(torch.relu(self.imprint(flat)))
        return self.inner(mixed.reshape(x.shape))
