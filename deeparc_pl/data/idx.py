"""``read_idx``: the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw.

IDX is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one big-endian
uint32 per dimension, then the row-major payload. Every field is checked, so a truncated download or
a foreign file fails loudly here instead of as a wrong-shaped tensor far downstream.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx"]

# dtype code -> big-endian numpy dtype (the IDX specification's table)
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        raw = fh.read()
    if head == b"\x1f\x8b" or path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err})") from err
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Decode one IDX file (``.gz`` or raw) into a numpy array of its declared dtype and shape.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the
    problem (bad magic, unknown dtype code, no dimensions, payload size mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x} (known: "
                         + ", ".join(f"0x{c:02x}" for c in _DTYPES) + ")")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX payload {what}: shape {shape} of {dtype} needs {expected} bytes, found {got}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)
