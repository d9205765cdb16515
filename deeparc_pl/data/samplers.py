"""``ShuffledPasses``: several seeded shuffled passes over a data set as one sampler.

The minibatch CKA estimator depends on batch composition; the authors fed shuffled batches of 256
for 10 passes. One sampler for all passes keeps a Lightning loop (and its DistributedSampler
wrapper under DDP) to a single epoch.
"""
from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["ShuffledPasses"]


class ShuffledPasses(Sampler[int]):
    def __init__(self, data: Sized, passes: int = 1, seed: int = 0) -> None:
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        self.n = len(data)
        self.passes = int(passes)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n * self.passes

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.passes):
            yield from torch.randperm(self.n, generator=gen).tolist()
