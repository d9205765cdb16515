"""Shared fixtures: where the real data lives, and a quiet, deterministic torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_FMNIST_CANDIDATES = [
    ROOT.parent / "shared" / "datasets" / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
]


def _fmnist_dir() -> Path:
    env = os.environ.get("DEEPARC_FMNIST_DIR")
    for cand in ([Path(env)] if env else []) + _FMNIST_CANDIDATES:
        if (cand / "train-labels-idx1-ubyte.gz").exists():
            return cand
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in "
        + ", ".join(str(c) for c in _FMNIST_CANDIDATES)
        + " (install Debian's dataset-fashion-mnist or set DEEPARC_FMNIST_DIR)"
    )


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The folder holding the real Fashion-MNIST IDX .gz files."""
    return _fmnist_dir()


@pytest.fixture(autouse=True)
def _seed_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
