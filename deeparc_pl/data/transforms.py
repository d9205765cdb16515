"""Training-set augmentation in plain torch ops (no torchvision): the standard CIFAR/MNIST recipe.

Each transform maps one ``(C, H, W)`` float tensor to a new tensor and draws from torch's global
RNG, which Lightning's ``seed_everything(workers=True)`` seeds per worker.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["RandomCrop", "RandomHorizontalFlip", "Normalize", "Compose", "train_augmentation"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class RandomCrop:
    """Pad by ``padding`` pixels (reflect) and crop back to the original size at a random offset."""

    def __init__(self, padding: int = 4, mode: str = "reflect") -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.mode = int(padding), mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return x.clone()
        p = self.padding
        h, w = x.shape[-2:]
        padded = F.pad(x[None], (p, p, p, p), mode=self.mode)[0]
        i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        return padded[..., i:i + h, j:j + w].contiguous()

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding}, mode={self.mode!r})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if float(torch.rand(())) < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Per-channel ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def train_augmentation(hflip: bool, padding: int = 4) -> Compose:
    """Random crop with reflect padding, plus a horizontal flip where it preserves labels (CIFAR-10)."""
    return Compose([RandomCrop(padding)] + ([RandomHorizontalFlip()] if hflip else []))
