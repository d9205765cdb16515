"""``ImageDataModule``: the Lightning layer over the data set registry.

It carries the paper's two data knobs: ``fraction`` (training-data size, a seeded class-stratified
subset of the training file) and ``classes`` (task scale, the first k classes or a list of class
ids relabelled 0..k-1). The test split is always the standard test file in file order (for
``digits``, which has none, its last 360 samples), so results across knobs share one test set.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .sources import Arrays, get_spec, load_arrays
from .transforms import Normalize, train_augmentation

__all__ = ["ImageDataModule", "ArrayDataset", "select_classes", "stratified_fraction"]


class ArrayDataset(Dataset):
    """Images ``(N, H, W, C)`` (uint8 0..255 or float in [0, 1]) and labels, yielding
    ``(x float32 (C, H, W) normalised, y int64)``; ``transform`` runs before normalisation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        imgs = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.images = imgs.contiguous()  # (N, C, H, W), own copy
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).clone()
        self._scale = 255.0 if self.images.dtype == torch.uint8 else 1.0
        self.normalize = Normalize(mean, std)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].to(torch.float32) / self._scale
        if self.transform is not None:
            x = self.transform(x)
        return self.normalize(x), self.labels[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples at once, normalised and without augmentation (for attacks and CKA)."""
        x = self.images.to(torch.float32) / self._scale
        return self.normalize(x), self.labels.clone()


def select_classes(labels: np.ndarray, keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (file order) of samples whose label is in ``keep`` and their labels relabelled to the
    position in ``keep``."""
    lut = np.full(int(max(int(labels.max(initial=0)), max(keep))) + 1, -1, dtype=np.int64)
    lut[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    new = lut[labels]
    idx = np.flatnonzero(new >= 0)
    return idx, new[idx]


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset holding ``round(fraction * n_c)`` (at least 1) of each class."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


class ImageDataModule(pl.LightningDataModule):
    """Image classification data for DeepArc: ``digits`` (default, bundled), ``mnist``,
    ``fashion_mnist`` and ``cifar10``.

    Metadata (``name``, ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``,
    ``clip_values``) is set by ``__init__`` without touching files; ``setup()`` reads the files and
    builds ``train_set``, ``val_set`` and ``test_set``.
    """

    def __init__(self, name: str = "digits", data_dir: str | os.PathLike | None = None, batch_size: int = 128,
                 fraction: float = 1.0, classes: int | Sequence[int] | None = None, augment: bool = False,
                 val_split: float = 0.1, seed: int = 0, num_workers: int = 0, test_size: int | None = None) -> None:
        super().__init__()
        spec = get_spec(name)
        fraction, val_split = float(fraction), float(val_split)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if test_size is not None and (isinstance(test_size, bool) or int(test_size) < 1):
            raise ValueError(f"test_size must be a positive int or None, got {test_size!r}")
        self.spec = spec
        self.name = spec.name
        self.class_ids = self._parse_classes(classes, spec.num_classes)
        self.num_classes = len(self.class_ids)
        self.in_channels = spec.in_channels
        self.image_size = spec.image_size
        self.mean = tuple(spec.mean)
        self.std = tuple(spec.std)
        self.clip_values = spec.clip_values
        self.data_dir = data_dir
        self.batch_size = int(batch_size)
        self.fraction = fraction
        self.augment = bool(augment)
        self.val_split = val_split
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.test_size = None if test_size is None else int(test_size)
        self.train_set: ArrayDataset | None = None
        self.val_set: ArrayDataset | None = None
        self.test_set: ArrayDataset | None = None

    @staticmethod
    def _parse_classes(classes: Any, total: int) -> list[int]:
        if classes is None:
            return list(range(total))
        if isinstance(classes, bool):
            raise TypeError(f"classes must be an int or a list of class ids, got {classes!r}")
        if isinstance(classes, (int, np.integer)):
            k = int(classes)
            if not 1 <= k <= total:
                raise ValueError(f"classes={k}: this data set has classes 0..{total - 1}, so k must be in 1..{total}")
            return list(range(k))
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise TypeError(f"classes must be an int or a list of class ids, got {classes!r}")
        ids = []
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise TypeError(f"class ids must be ints, got {c!r} in {list(classes)}")
            if not 0 <= int(c) < total:
                raise ValueError(f"class {int(c)} does not exist; this data set has classes 0..{total - 1}")
            ids.append(int(c))
        if not ids:
            raise ValueError("classes is an empty list: empty data set")
        if len(set(ids)) != len(ids):
            raise ValueError(f"classes lists a class twice: {ids}")
        return ids

    def _split(self, arrays: Arrays) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                             tuple[np.ndarray, np.ndarray]]:
        tr_idx, tr_y = select_classes(arrays.train_y, self.class_ids)
        keep = stratified_fraction(tr_y, self.fraction, self.seed)
        tr_idx, tr_y = tr_idx[keep], tr_y[keep]
        n_val = int(round(self.val_split * len(tr_idx)))
        perm = np.random.default_rng(self.seed + 1).permutation(len(tr_idx))
        val_pos, fit_pos = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        te_idx, te_y = select_classes(arrays.test_y, self.class_ids)
        if self.test_size is not None:
            te_idx, te_y = te_idx[:self.test_size], te_y[:self.test_size]
        what = f"{self.name} with classes={self.class_ids}, fraction={self.fraction}, val_split={self.val_split}"
        if len(fit_pos) == 0:
            raise ValueError(f"empty data set: no training samples left for {what}")
        if len(te_idx) == 0:
            raise ValueError(f"empty data set: no test samples left for {what}")
        return ((arrays.train_x[tr_idx[fit_pos]], tr_y[fit_pos]),
                (arrays.train_x[tr_idx[val_pos]], tr_y[val_pos]),
                (arrays.test_x[te_idx], te_y))

    def setup(self, stage: str | None = None) -> None:
        """Read the files (once) and build all three splits, whatever the stage."""
        if self.train_set is not None:
            return
        fit, val, test = self._split(load_arrays(self.name, self.data_dir))
        aug = train_augmentation(self.spec.hflip) if self.augment else None
        self.train_set = ArrayDataset(*fit, self.mean, self.std, transform=aug)
        self.val_set = ArrayDataset(*val, self.mean, self.std)
        self.test_set = ArrayDataset(*test, self.mean, self.std)

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, generator=gen,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self, shuffle: bool = True) -> DataLoader:
        return self._loader(self.train_set, shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def __repr__(self) -> str:
        return (f"ImageDataModule({self.name!r}, classes={self.class_ids}, fraction={self.fraction}, "
                f"val_split={self.val_split}, augment={self.augment}, seed={self.seed})")
