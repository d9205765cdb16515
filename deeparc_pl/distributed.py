"""What Lightning's DDP leaves to us: which process writes, and which samples are padding.

Lightning launches ranks >= 1 by re-running the same command with ``LOCAL_RANK`` (and ``NODE_RANK`` /
``RANK`` under other launchers) set, so the rank is known from the environment before any Trainer
exists; every rank computes, only rank 0 writes files and prints. ``DistributedSampler`` pads the
validation and test sets with repeated samples so that every rank gets as many; metrics that must
equal one process's drop them with :func:`padding_mask`.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DistributedSampler

__all__ = ["process_rank", "is_primary", "padding_mask", "loader_sampler", "PaddingTracker", "SPAWNING_STRATEGIES"]

#: Strategies that run the loops in spawned worker processes: state kept in Python attributes
#: (a callback's result, a task's timings) never reaches the calling process.
SPAWNING_STRATEGIES = ("spawn", "fork", "notebook")


#: Where launchers put a process's rank: Lightning and torchrun, SLURM's srun, Open MPI, other MPIs, LSF.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                  "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """0 on the process that writes; under Lightning DDP the other ranks only compute."""
    ranks = [int(os.environ.get(k, "0") or 0) for k in RANK_VARIABLES]
    return max(ranks)


def is_primary() -> bool:
    return process_rank() == 0


def loader_sampler(dataloader: Any) -> Any:
    """The sampler that orders a DataLoader's samples (the batch sampler's, when there is one)."""
    return getattr(getattr(dataloader, "batch_sampler", None), "sampler", None) or getattr(dataloader, "sampler", None)


def padding_mask(sampler: Any, seen: int, batch: int, device: torch.device | None = None) -> torch.Tensor | None:
    """Which of a batch's samples are real, not the duplicates a padded ``DistributedSampler`` adds.

    ``DistributedSampler(drop_last=False)`` repeats the first indices so every rank gets the same
    count; rank ``r``'s ``i``-th sample sits at position ``r + world * i`` of the padded order, and
    positions ``>= len(dataset)`` are repeats. ``seen`` is how many samples this rank already drew
    from the same loader in this epoch. Returns None when nothing can be padding.
    """
    if not isinstance(sampler, DistributedSampler) or getattr(sampler, "drop_last", False):
        return None
    total = len(sampler.dataset)
    world, rank = sampler.num_replicas, sampler.rank
    positions = rank + world * torch.arange(seen, seen + batch, device=device)
    keep = positions < total
    return None if bool(keep.all()) else keep


class PaddingTracker:
    """Counts, per dataloader, the samples this process drew in the current loop, and masks each
    batch's padding repeats with :func:`padding_mask`. Call :meth:`reset` when a loop starts."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def reset(self) -> None:
        self._seen = {}

    def mask(self, dataloader: Any, dataloader_idx: int, n: int, device: torch.device | None = None) -> torch.Tensor | None:
        """This batch's real samples (None: all real), then count the batch as drawn."""
        seen = self._seen.get(dataloader_idx, 0)
        self._seen[dataloader_idx] = seen + n
        return padding_mask(loader_sampler(dataloader), seen, n, device=device)
