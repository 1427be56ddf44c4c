"""Models a hospital's ML engineer might bring: defined outside privbench, used by one YAML line
(``model: {name: "clinic_nets:ResidualGN", width: 8}``). Each takes ``(info, **params)``
(``info``: privbench's ``DatasetInfo``: input shape, number of classes)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualGN(nn.Module):
    """A small residual CNN with GroupNorm (no BatchNorm: per-sample gradients stay defined)."""

    def __init__(self, info, width: int = 8, groups: int = 2):
        super().__init__()
        c = info.input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width),
        )
        self.head = nn.Linear(width, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))  # the residual connection
        return self.head(h.mean(dim=(2, 3)))


class VisitAttention(nn.Module):
    """Self-attention over a patient's visits: the record's features are cut into ``visits``
    equal chunks (zero-padded), each chunk a visit token; one attention layer, mean pooling."""

    def __init__(self, info, visits: int = 4, dim: int = 16):
        super().__init__()
        width = info.input_shape[0]
        self.visits = visits
        self.chunk = -(-width // visits)
        self.pad = self.chunk * visits - width
        self.embed = nn.Linear(self.chunk, dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.flatten(1), (0, self.pad)).view(x.shape[0], self.visits, self.chunk)
        t = self.embed(x)
        att = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / t.shape[-1] ** 0.5, dim=-1)
        t = self.norm(t + att @ self.v(t))
        return self.head(t.mean(dim=1))
