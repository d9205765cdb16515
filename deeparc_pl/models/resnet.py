"""CIFAR-style ResNet-n (He et al. 2016, Sec. 4.2) for any depth n = 6k + 2.

Three stages ``layer1..3`` of k basic blocks (widths 16/32/64). Downsampling blocks use a 1x1 conv +
BN projection (option B) instead of the paper's zero-padding shortcut, so torch-pruning can trace the
dependency; this adds about 3 k parameters (ResNet-110: 1.73 M instead of 1.70 M). Every ReLU is
its own module (never reused), so a traced forward pass sees each leaf in execution order.
"""
from __future__ import annotations

import torch
from torch import nn

from deeparc_pl.models.registry import register_model

__all__ = ["BasicBlock", "ResNet", "init_weights", "check_depth"]


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), unit-gamma BN; Linear keeps torch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_depth(name: str, depth: int, offset: int, rule: str) -> int:
    """Blocks per stage for ``depth = 6 * k + offset`` (k >= 1); ValueError listing valid depths."""
    k, rem = divmod(depth - offset, 6)
    if rem == 0 and k >= 1:
        return k
    examples = ", ".join(str(6 * i + offset) for i in (1, 2, 3, 4, 5, 7, 9, 18))
    lo = max(1, (depth - offset) // 6)
    nearest = sorted({6 * lo + offset, 6 * (lo + 1) + offset})
    raise ValueError(
        f"invalid depth {depth} for {name!r}: depth must be {rule}, at least {6 + offset} "
        f"(valid: {examples}, ...; nearest: {nearest})"
    )


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); ``shortcut`` is Identity or 1x1 conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with ``blocks`` basic blocks per stage (depth = 6 * blocks + 2)."""

    def __init__(
        self,
        blocks: int,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
    ):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"ResNet needs at least one block per stage, got {blocks}")
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        for s, width in enumerate(widths, start=1):
            stride = 1 if s == 1 else 2
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{s}", nn.Sequential(*stage))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        self.layer_names: list[str] = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(blocks)]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model(pattern=r"resnet(?P<depth>\d+)", label="resnet{6k+2}")
def resnet(depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """ResNet-``depth`` (8, 14, 20, 32, 44, 56, 110, ...); ``image_size`` is any size >= 1."""
    return ResNet(check_depth(f"resnet{depth}", depth, 2, "6k+2"), num_classes, in_channels)
