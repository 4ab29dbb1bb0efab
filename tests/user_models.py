"""Models a user might bring, reached by dotted path as ``model._target_``: one traceable, one not.

``build`` is a small CNN with one residual block (so its graph is a DAG, not a chain); ``build_untraceable`` has
data-dependent control flow, which torch.fx cannot trace. Both take a 3-channel image, e.g. 1x3x64x64.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualCNN(nn.Module):
    """stem conv -> residual block (two convs + identity add) -> global pool -> linear."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem_bn(self.stem(x)))
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = self.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


class DataDependentCNN(nn.Module):
    """Branches on the value of its input: fine in eager mode, untraceable by torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


def build(width: int = 8, num_classes: int = 10) -> nn.Module:
    """The factory a user names in ``model._target_``: ``tests.user_models.build``."""
    return ResidualCNN(width=width, num_classes=num_classes)


def build_untraceable() -> nn.Module:
    return DataDependentCNN()


class ManySmallLayers(nn.Module):
    """A long chain of small convolutions: each node costs little next to the per-node work of timing it alone."""

    def __init__(self, depth: int = 60, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel_size=3, padding=1)
        self.layers = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU()) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def build_many_small(depth: int = 60, width: int = 16) -> nn.Module:
    return ManySmallLayers(depth, width)
