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


@pytest.fixture(scope="session")
def fmnist_resnet(fmnist_dir):
    """A ResNet-14 trained for 2 epochs on 5 % of real Fashion-MNIST, with its data module and
    its test accuracy before training (shared: training it once keeps the suite short)."""
    import pytorch_lightning as pl

    from deeparc_pl import Classifier
    from deeparc_pl.data import ImageDataModule
    from deeparc_pl.models import build
    from deeparc_pl.readapt.evaluate import accuracy

    pl.seed_everything(0)
    dm = ImageDataModule("fashion_mnist", fmnist_dir, batch_size=64, fraction=0.05, test_size=1000)
    dm.setup()
    model = build("resnet14", dm.num_classes, dm.in_channels, dm.image_size)
    before = accuracy(model, dm.test_set)
    task = Classifier(model, optimizer="adam", lr=3e-3, weight_decay=0.0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(task, datamodule=dm)
    model.eval()
    return model, dm, before


@pytest.fixture(scope="session")
def fmnist_mlp(fmnist_dir):
    """A small MLP (784-64-10) trained 5 epochs with Adam on the first 3,000 real Fashion-MNIST training
    images in [0, 1], as ``(model, x, y)`` (shared by the attack and mutant tests; eval mode)."""
    from torch import nn

    from deeparc_pl.data import read_idx

    torch.manual_seed(0)
    images = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz")[:3000]
    labels = read_idx(fmnist_dir / "train-labels-idx1-ubyte.gz")[:3000]
    x = torch.tensor(images, dtype=torch.float32).div(255.0).unsqueeze(1)
    y = torch.tensor(labels, dtype=torch.long)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny models: on a small shared CPU one thread is many times
    faster than two fighting over the cores. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
