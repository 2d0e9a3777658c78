"""A small convolutional network for `bninspect model --model samples/tiny_net.py:make_net`:
three batch norms (two BatchNorm2d after convolutions, one BatchNorm1d after a linear layer),
the shapes of a user's own module. Import-safe: building it runs no data."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 4,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=eps, momentum=momentum)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16, eps=eps, momentum=momentum)
        self.fc = nn.Linear(16, 12)
        self.bn3 = nn.BatchNorm1d(12, eps=eps, momentum=momentum)
        self.head = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = x.mean(dim=(2, 3))
        x = torch.relu(self.bn3(self.fc(x)))
        return self.head(x)


def make_net(
    in_channels: int = 1, classes: int = 4, eps: float = 1e-5, momentum: float | None = 0.1
) -> nn.Module:
    """The network bninspect's docs and tests use (random initialization)."""
    return TinyNet(in_channels, classes, eps, momentum)
