"""Fully connected networks: ``mlp`` (3 hidden layers of 256) and ``mlp{depth}_{width}``.

The input image is flattened (``in_channels * image_size**2`` features); each hidden layer is one
``Sequential(Linear, ReLU)`` entry of ``layers`` (one DeepArc layer), then a Linear head ``fc``.
"""
from __future__ import annotations

import torch
from torch import nn

from deeparc_pl.models.registry import register_model

__all__ = ["MLP"]


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units on a flattened image."""

    def __init__(
        self, depth: int, width: int, num_classes: int, in_channels: int = 3, image_size: int = 32
    ):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"MLP needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        self.flatten = nn.Flatten()
        cin = in_channels * image_size * image_size
        hidden = []
        for _ in range(depth):
            hidden.append(nn.Sequential(nn.Linear(cin, width), nn.ReLU()))
            cin = width
        self.layers = nn.Sequential(*hidden)
        self.fc = nn.Linear(width, num_classes)
        self.layer_names: list[str] = [f"layers.{i}" for i in range(depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.flatten(x)))


@register_model("mlp")
def mlp(num_classes: int, in_channels: int = 3, image_size: int = 32) -> MLP:
    """3 hidden layers of 256 units."""
    return MLP(3, 256, num_classes, in_channels, image_size)


@register_model(pattern=r"mlp(?P<depth>\d+)_(?P<width>\d+)", label="mlp{depth}_{width}")
def mlp_family(depth: int, width: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> MLP:
    """``depth`` hidden layers of ``width`` units, e.g. ``mlp5_64``."""
    if depth < 1 or width < 1:
        raise ValueError(f"invalid model 'mlp{depth}_{width}': depth and width must be >= 1")
    return MLP(depth, width, num_classes, in_channels, image_size)
