"""A small registry: data set name -> metadata and a loader returning plain arrays.

Each loader returns ``Arrays`` (train/test images as ``(N, H, W, C)`` numpy arrays, uint8 in
0..255 or float32 in [0, 1], and int64 labels in file order). The Lightning layer
(``datamodule.py``) does selection, splitting and normalisation on top.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from .cifar import read_cifar10
from .idx import read_idx

__all__ = ["Arrays", "DataSpec", "DATASETS", "get_spec", "candidate_dirs", "resolve_data_dir", "load_arrays",
           "DIGITS_TEST_SIZE", "IDX_FILES"]

DIGITS_TEST_SIZE = 360  # scikit-learn's digits has no test file: its last 360 samples (file order) are the test split
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SYSTEM_DIR = Path("/usr/share/datasets")
ENV_VAR = "DEEPARC_DATA_DIR"


class Arrays(NamedTuple):
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class DataSpec:
    """What a model and an attack need to know about a data set, before any file is read."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folders: tuple[str, ...]  # sub-folder names tried under a data folder
    files: tuple[str, ...]  # required files (empty: bundled data)
    load: Callable[[Path | None], Arrays]
    hflip: bool = False  # horizontal flip is a label-preserving augmentation

    @property
    def clip_values(self) -> tuple[float, float]:
        """(min, max) of normalised pixels over all channels: the box an attack must stay in."""
        lo = min((0.0 - m) / s for m, s in zip(self.mean, self.std))
        hi = max((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return float(lo), float(hi)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    arr = read_idx(path)
    arr.flags.writeable = False  # shared between callers: nobody may change the cache
    return arr


def _idx(path: Path) -> np.ndarray:
    st = path.stat()
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size)


def _load_idx(folder: Path | None) -> Arrays:
    assert folder is not None
    tx, ty, vx, vy = (_idx(folder / f) for f in IDX_FILES)
    for x, y, a, b in ((tx, ty, IDX_FILES[0], IDX_FILES[1]), (vx, vy, IDX_FILES[2], IDX_FILES[3])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{folder}: {a} {x.shape} and {b} {y.shape} do not form an (N, H, W) / (N,) pair")
    return Arrays(tx[..., None], ty.astype(np.int64), vx[..., None], vy.astype(np.int64))


def _load_cifar10(folder: Path | None) -> Arrays:
    assert folder is not None
    tx, ty = read_cifar10(folder, train=True)
    vx, vy = read_cifar10(folder, train=False)
    return Arrays(tx, ty, vx, vy)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Arrays:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # 0..16 -> [0, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    x = x.permute(0, 2, 3, 1).contiguous().numpy()
    y = np.asarray(d.target, dtype=np.int64)
    n = len(y) - DIGITS_TEST_SIZE
    arrays = Arrays(x[:n], y[:n], x[n:], y[n:])
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _load_digits(folder: Path | None) -> Arrays:
    return _digits_arrays()


DATASETS: dict[str, DataSpec] = {
    "digits": DataSpec("digits", 10, 1, 16, (0.3054,), (0.3181,), (), (), _load_digits),
    "mnist": DataSpec("mnist", 10, 1, 28, (0.1307,), (0.3081,), ("mnist",), IDX_FILES, _load_idx),
    "fashion_mnist": DataSpec("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), ("fashion-mnist", "fashion_mnist"),
                              IDX_FILES, _load_idx),
    "cifar10": DataSpec("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                        ("cifar-10-batches-py",), ("data_batch_1", "test_batch"), _load_cifar10, hflip=True),
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10", "cifar_10": "cifar10"}


def get_spec(name: str) -> DataSpec:
    """The registry entry for ``name`` (case-insensitive; ``fashion-mnist`` etc. accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def candidate_dirs(spec: DataSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders tried, in order: ``data_dir`` (and its sub-folders named like the data set) or, when
    None, ``$DEEPARC_DATA_DIR`` (likewise), then ``/usr/share/datasets/<folder>``."""
    def with_subs(base: Path) -> list[Path]:
        return [base] + [base / f for f in spec.folders]

    if data_dir is not None:
        return with_subs(Path(data_dir).expanduser())
    out: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out += with_subs(Path(env).expanduser())
    out += [SYSTEM_DIR / f for f in spec.folders if "_" not in f]
    return out


def resolve_data_dir(spec: DataSpec, data_dir: str | os.PathLike | None) -> Path | None:
    """The first candidate folder holding every required file; ``FileNotFoundError`` naming the
    missing file(s) and every folder looked in otherwise. None for bundled data sets."""
    if not spec.files:
        return None
    cands = candidate_dirs(spec, data_dir)
    for c in cands:
        if all((c / f).is_file() for f in spec.files):
            return c
    existing = [c for c in cands if c.is_dir()]
    missing: Sequence[str] = spec.files
    if existing:
        missing = [f for f in spec.files if not (existing[0] / f).is_file()]
    hint = f" (set data_dir or ${ENV_VAR})" if data_dir is None else ""
    if spec.name == "fashion_mnist":
        hint += "; Debian's package dataset-fashion-mnist installs the files under /usr/share/datasets/fashion-mnist"
    raise FileNotFoundError(f"{spec.name}: missing file(s) {', '.join(missing)}; looked in: "
                            + ", ".join(str(c) for c in cands) + hint)


def load_arrays(name: str, data_dir: str | os.PathLike | None = None) -> Arrays:
    """Train and test arrays of a registered data set, in file order."""
    spec = get_spec(name)
    return spec.load(resolve_data_dir(spec, data_dir))
