"""VGG-11/13/16/19 with batch norm, CIFAR style (Simonyan & Zisserman 2015; BN as in torchvision).

``features`` holds conv units (each ``Sequential(conv3x3, BN, ReLU)``, one DeepArc layer) and
max-pools. A max-pool is inserted only while the feature map is at least 2x2, so 28x28 (MNIST-like)
and 16x16 inputs work; the head is global average pooling and ``Linear(512, num_classes)``.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from deeparc_pl.models.registry import register_model
from deeparc_pl.models.resnet import init_weights

__all__ = ["VGG", "VGG_CONFIGS"]

M = "M"
VGG_CONFIGS: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg13": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "vgg19": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}


def _conv_unit(cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


class VGG(nn.Module):
    """VGG from a config list of channel counts and ``"M"`` (max-pool) markers."""

    def __init__(
        self, config: list[Union[int, str]], num_classes: int, in_channels: int = 3, image_size: int = 32
    ):
        super().__init__()
        entries: list[nn.Module] = []
        cin, size = in_channels, image_size
        for item in config:
            if item == M:
                if size >= 2:
                    entries.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    size //= 2
            else:
                entries.append(_conv_unit(cin, int(item)))
                cin = int(item)
        self.features = nn.Sequential(*entries)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        self.layer_names: list[str] = [
            f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Sequential)
        ]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.avgpool(self.features(x))))


def _register(name: str) -> None:
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
        return VGG(VGG_CONFIGS[name], num_classes, in_channels, image_size)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name.upper()} with batch norm, CIFAR style."
    register_model(name)(factory)


for _name in VGG_CONFIGS:
    _register(_name)
