"""Wide-ResNet WRN-d-w (Zagoruyko & Komodakis 2016) for depth d = 6N + 4, width factor w.

Pre-activation wide basic blocks (BN-ReLU-conv3x3, twice; no dropout), widths 16, 16w, 32w, 64w,
N blocks per stage in ``layer1..3``, a 1x1 conv shortcut where the shape changes (applied to the
pre-activated input, as in the authors' code), then a final BN-ReLU, pooling and ``fc``.

``wrn40_10`` (18 blocks, about 55.8 M parameters) stands in for the DeepArc paper's "WRN-38"
(about 56 M parameters): 38 is not a valid WRN depth (6N + 4), and WRN-40-10 is the standard
network of that size.
"""
from __future__ import annotations

import torch
from torch import nn

from deeparc_pl.models.registry import register_model
from deeparc_pl.models.resnet import check_depth, init_weights

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut; pre-activation, no ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.project = stride != 1 or cin != cout
        self.shortcut: nn.Module = nn.Identity()
        if self.project:
            self.shortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + self.shortcut(pre if self.project else x)


class WideResNet(nn.Module):
    """WRN with ``blocks`` wide blocks per stage (depth = 6 * blocks + 4) and width factor ``width``."""

    def __init__(self, blocks: int, width: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ValueError(f"WideResNet needs blocks >= 1 and width >= 1, got {blocks}, {width}")
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        cin = 16
        for s, w in enumerate(widths, start=1):
            stride = 1 if s == 1 else 2
            stage = [WideBasicBlock(cin, w, stride)] + [WideBasicBlock(w, w) for _ in range(blocks - 1)]
            setattr(self, f"layer{s}", nn.Sequential(*stage))
            cin = w
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        self.layer_names: list[str] = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(blocks)]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


@register_model(pattern=r"wrn(?P<depth>\d+)_(?P<width>\d+)", label="wrn{6N+4}_{width}")
def wide_resnet(
    depth: int, width: int, num_classes: int, in_channels: int = 3, image_size: int = 32
) -> WideResNet:
    """WRN-``depth``-``width``, e.g. ``wrn16_2``, ``wrn28_10``, ``wrn40_10`` (the paper's "WRN-38")."""
    name = f"wrn{depth}_{width}"
    blocks = check_depth(name, depth, 4, "6N+4")
    if width < 1:
        raise ValueError(f"invalid width {width} for {name!r}: the width factor must be >= 1")
    return WideResNet(blocks, width, num_classes, in_channels)
