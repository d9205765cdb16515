"""CIFAR-10 in its standard python-pickle batches (``cifar-10-batches-py/``): read and write.

Batches are unpickled with a restricted unpickler that only builds plain containers and numpy
arrays, so a
foreign or malicious pickle cannot run code; anything that is not a dict with ``b"data"`` and
``b"labels"`` raises ``ValueError``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write

__all__ = ["read_cifar10", "write_cifar10_batch", "read_cifar10_batch", "cifar10_folder",
           "CIFAR10_TRAIN_FILES", "CIFAR10_TEST_FILES"]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
_FOLDER = "cifar-10-batches-py"
_PIXELS = 32 * 32 * 3


# The only globals a CIFAR batch needs: numpy's array reconstruction (old and new module paths).
_ALLOWED = {
    ("_codecs", "encode"),  # how protocol 2 stores bytes under Python 3
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only; any other global (code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def cifar10_folder(folder: str | os.PathLike) -> Path:
    """``folder`` itself when it holds the batches, else its ``cifar-10-batches-py`` sub-folder."""
    folder = Path(folder)
    sub = folder / _FOLDER
    if not (folder / "test_batch").exists() and not (folder / "data_batch_1").exists() and sub.is_dir():
        return sub
    return folder


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> ``(N, 32, 32, 3)`` uint8 images and int64 labels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 pickle batch ({err})") from err
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(map(repr, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels', got {keys})")
    data = obj[b"data"]
    if isinstance(data, (bytes, bytearray)):  # written without numpy
        data = np.frombuffer(data, dtype=np.uint8)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.size % _PIXELS:
        raise ValueError(f"{path}: b'data' must be uint8 with {_PIXELS} values per image, "
                         f"got {data.dtype} of size {data.size}")
    data = data.reshape(-1, _PIXELS)
    labels = np.asarray(obj[b"labels"], dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R,G,B planes -> HWC
    return np.ascontiguousarray(images), labels


def read_cifar10(folder: str | os.PathLike, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """All training batches (``data_batch_1..5``, in order) or the ``test_batch`` of a folder.

    ``folder`` may be ``cifar-10-batches-py`` itself or its parent. Returns ``(N, 32, 32, 3)``
    uint8 images and int64 labels. Every file is required: a missing one (say, a half-extracted
    archive) raises ``FileNotFoundError`` naming each missing file, rather than training on less data.
    """
    root = cifar10_folder(folder)
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 file(s) {', '.join(missing)} not found; looked in {root}"
                                + (f" and {Path(folder)}" if root != Path(folder) else ""))
    parts = [read_cifar10_batch(root / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar10_batch(path: str | os.PathLike, images: np.ndarray, labels: Any,
                        overwrite: bool = False) -> Path:
    """Write ``(N, 32, 32, 3)`` uint8 images and labels as one batch in the original format.

    A pickle (protocol 2) of ``{b"batch_label", b"data" (N, 3072) uint8 R,G,B planes,
    b"labels" list[int], b"filenames"}``, written atomically; refuses to replace a file unless
    ``overwrite``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    obj = {
        b"batch_label": f"batch written by deeparc_pl ({Path(path).name})".encode(),
        b"labels": labels,
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), _PIXELS)),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }

    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)

    return atomic_write(path, w, overwrite)
