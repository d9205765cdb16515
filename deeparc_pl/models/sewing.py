"""``Sewing``: a small learnable adapter that stands in for a removed span of layers whose input and
output shapes differ (paper section II-B). Trained by ``deeparc_pl.restructure.sewing``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["Sewing"]


class Sewing(nn.Module):
    """Map a tensor of per-sample shape ``in_shape`` to ``out_shape``.

    Images (C, H, W): a strided 1x1 convolution (adaptive average pooling first when the spatial
    sizes do not divide) followed by batch norm, the cheapest map that matches a ResNet shortcut.
    Vectors (D,): a linear layer.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        if len(self.in_shape) == 3 and len(self.out_shape) == 3:
            (c_in, h_in, w_in), (c_out, h_out, w_out) = self.in_shape, self.out_shape
            if h_in % h_out == 0 and w_in % w_out == 0 and h_in // h_out == w_in // w_out:
                self.pool = nn.Identity()
                stride = h_in // h_out
            else:
                self.pool = nn.AdaptiveAvgPool2d((h_out, w_out))
                stride = 1
            self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(c_out)
        elif len(self.in_shape) == 1 and len(self.out_shape) == 1:
            self.linear = nn.Linear(self.in_shape[0], self.out_shape[0])
        else:
            raise ValueError(
                f"no sewing layer for shapes {self.in_shape} -> {self.out_shape}: "
                "supported are (C, H, W) -> (C, H, W) and (D,) -> (D,)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "linear"):
            return self.linear(x)
        return self.bn(self.conv(self.pool(x)))

    def extra_repr(self) -> str:
        return f"{self.in_shape} -> {self.out_shape}"
