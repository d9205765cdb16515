"""Critical-module location and deviation measures, on a small CNN trained for seconds on Fashion-MNIST."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deeparc_pl import SemanticArchitecture, locate
from deeparc_pl.data import read_idx
from deeparc_pl.readapt.deviation import GaussianReference, cka, cka_deviation
from deeparc_pl.readapt.locate import module_deviations, rank
from deeparc_pl.similarity.functional import linear_cka
from deeparc_pl.taps import LayerNameError


def load_idx(folder: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(folder / f"{split}-images-idx3-ubyte.gz")[:n].reshape(-1, 1, 28, 28)
    y = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")[:n]
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)


class TinyNet(nn.Module):
    """Four conv units with batch norm (one DeepArc layer each), global pooling, linear head."""

    def __init__(self, c: int = 8):
        super().__init__()

        def unit(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.blocks = nn.Sequential(unit(1, c, 2), unit(c, c), unit(c, 2 * c, 2), unit(2 * c, 2 * c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2 * c, 10)
        self.layer_names = [f"blocks.{i}" for i in range(4)]
        self.num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.blocks(x))))


def train_tiny(x: torch.Tensor, y: torch.Tensor, epochs: int = 3, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            b = perm[i : i + 100]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(fmnist_dir, one_thread):
    x, y = load_idx(fmnist_dir, "train", 4000)
    xt, yt = load_idx(fmnist_dir, "t10k", 1000)
    model = train_tiny(x, y)
    arch = SemanticArchitecture.from_similarity(model.layer_names, np.eye(4), 0.99)
    return model, arch, xt, yt


def test_differentiable_cka_matches_exact_cka_and_is_zero_deviation_for_identical_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, 4, 4, generator=g)
    b = a * 2.0 + 0.3 * torch.randn(50, 3, 4, 4, generator=g)
    assert float(cka(a, b)) == pytest.approx(float(linear_cka(a, b)), abs=1e-5)
    assert float(cka_deviation(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(cka_deviation(a, torch.randn(50, 3, 4, 4, generator=g))) < 1.0
    a.requires_grad_(True)
    cka_deviation(a, b).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_explicit_deviation_is_zero_for_identical_sets(trained):
    model, arch, xt, yt = trained
    devs = module_deviations(model, arch, (xt[:300], yt[:300]), (xt[:300], yt[:300]), mode="explicit")
    assert len(devs) == arch.num_modules
    assert max(abs(d) for d in devs) < 1e-6
    noisy = (xt[:300] + 0.3 * torch.randn_like(xt[:300])).clamp(0, 1)
    assert min(module_deviations(model, arch, (xt[:300], yt[:300]), (noisy, yt[:300]), mode="explicit")) > 1e-3


def test_gaussian_nll_ranks_atypical_samples_higher_and_is_differentiable():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 20, generator=g) * 4
    y = torch.arange(300) % 3
    feats = centers[y] + torch.randn(300, 20, generator=g)
    ref = GaussianReference.fit(feats, y, dim=8)
    assert abs(float(ref.deviation(feats, y))) < 1e-4  # D itself: 0 by construction
    wrong = feats[:60]
    assert float(ref.deviation(wrong, (y[:60] + 1) % 3)) > 1.0  # under another class's Gaussian
    shifted = (feats[:60] + 3.0).requires_grad_(True)
    dev = ref.deviation(shifted, y[:60])
    assert float(dev) > 0.1
    dev.backward()
    assert shifted.grad is not None and shifted.grad.abs().sum() > 0


def test_locate_ranks_the_damaged_module_first_implicit(trained):
    model, arch, xt, yt = trained
    damaged = copy.deepcopy(model)
    conv = damaged.blocks[3][0]
    with torch.no_grad():
        conv.weight.add_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(3)) * conv.weight.std())
    with torch.no_grad():
        ok0 = model(xt).argmax(1) == yt
        okd = damaged(xt).argmax(1) == yt
    broken = ok0 & ~okd
    assert int(broken.sum()) >= 20
    # D = what the model handled, through the model before the damage; D' = what the damage broke
    ranking = locate(damaged, arch, (xt[ok0], yt[ok0]), (xt[broken], yt[broken]), mode="implicit",
                     reference_model=model)
    assert sorted(k for k, _ in ranking) == list(range(arch.num_modules))  # every module once
    assert ranking[0][0] == 3
    devs = module_deviations(damaged, arch, (xt[ok0], yt[ok0]), (xt[broken], yt[broken]), mode="implicit",
                             reference_model=model)
    assert max(abs(d) for d in devs[:3]) < 0.2 * devs[3]  # no deviation before the damaged module
    scores = [s for _, s in ranking]
    assert scores == sorted(scores, reverse=True)


def test_rank_increment_and_absolute():
    devs = [0.1, 0.5, 0.55, 0.9]
    assert rank(devs, "absolute")[0] == (3, 0.9)
    inc = rank(devs, "increment")
    assert [k for k, _ in inc] == [1, 3, 0, 2]
    assert inc[0][1] == pytest.approx(0.4)
    assert rank(devs, "increment", start=0.2)[-1][0] == 0  # 0.1 - 0.2 < 0


def test_locate_bad_inputs(trained):
    model, arch, xt, yt = trained
    with pytest.raises(ValueError, match="mode"):
        locate(model, arch, (xt[:20], yt[:20]), (xt[:20], yt[:20]), mode="sideways")
    with pytest.raises(ValueError, match="rank_by"):
        locate(model, arch, (xt[:20], yt[:20]), (xt[:20], yt[:20]), rank_by="vibes")
    with pytest.raises(ValueError, match="paired"):
        locate(model, arch, (xt[:20], yt[:20]), (xt[:10], yt[:10]), mode="explicit")
    with pytest.raises(ValueError, match="empty"):
        locate(model, arch, (xt[:20], yt[:20]), (xt[:0], yt[:0]), mode="implicit")
    other = SemanticArchitecture.from_similarity(["features.0", "features.1"], np.eye(2), 0.99)
    with pytest.raises(LayerNameError, match="does not have the architecture's layers"):
        locate(model, other, (xt[:20], yt[:20]), (xt[:20], yt[:20]))
