"""Adversarial samples through ART on a small MLP trained on real Fashion-MNIST."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from deeparc_pl.data import read_idx
from deeparc_pl.readapt.attacks import AdversarialSet, default_params, generate
from deeparc_pl.readapt.evaluate import accuracy


def _read_idx(path: Path) -> np.ndarray:
    return np.asarray(read_idx(path))


def _fmnist(root: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(root / f"{split}-images-idx3-ubyte.gz")[:n]
    labels = _read_idx(root / f"{split}-labels-idx1-ubyte.gz")[:n]
    x = torch.from_numpy(np.array(images, dtype=np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(np.array(labels, dtype=np.int64))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(fmnist_dir: Path, fmnist_mlp) -> tuple[nn.Module, TensorDataset]:
    model = fmnist_mlp[0]
    xt, yt = _fmnist(fmnist_dir, "t10k", 500)
    test = TensorDataset(xt, yt)
    assert accuracy(model, test) > 0.75
    return model.eval(), test


class _Pairs(Dataset):
    """A plain map-style Dataset yielding (x, y) tuples, to exercise the generic path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fgsm_drops_accuracy_within_eps_and_order(trained):
    model, test = trained
    before = _state(model)
    clean = accuracy(model, test)
    adv = generate(model, test, "fgsm", eps=0.15)
    assert adv.method == "fgsm" and adv.params["eps"] == 0.15
    x, y = test.tensors
    assert torch.equal(adv.x, x) and torch.equal(adv.y, y)  # order and labels preserved
    assert adv.x_adv.shape == x.shape
    lo, hi = adv.params["clip_values"]
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert float(adv.x_adv.min()) >= lo and float(adv.x_adv.max()) <= hi
    assert float(adv.linf().max()) <= 0.15 + 1e-6
    assert float(adv.linf().mean()) > 0.05  # it really perturbed
    adv_acc = accuracy(model, adv.as_dataset())
    assert adv_acc < clean - 0.4, (clean, adv_acc)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_generic_dataset_limit_and_explicit_clip(trained):
    model, test = trained
    x, y = test.tensors
    adv = generate(model, _Pairs(x, y), "FGSM", limit=20, clip_values=(0.0, 1.0))
    assert len(adv) == 20 and torch.equal(adv.y, y[:20]) and torch.equal(adv.x, x[:20])
    assert adv.params["eps"] == pytest.approx(default_params("fgsm")["eps"])
    clean, x_adv, yy = adv.pairs()[3]
    assert torch.equal(clean, x[3]) and torch.equal(x_adv, adv.x_adv[3]) and int(yy) == int(y[3])


# The documented defaults, except a shorter PGD to keep the suite fast.
_FAST = {"pgd": {"max_iter": 10}, "deepfool": {}, "cw": {}}


@pytest.mark.parametrize("method", ["pgd", "deepfool", "cw"])
def test_iterative_attacks_lower_accuracy(trained, method):
    model, test = trained
    x, y = test.tensors
    before = _state(model)
    data = (x[:32], y[:32])
    clean = accuracy(model, data)
    adv = generate(model, data, method, seed=1, **_FAST[method])
    adv_acc = accuracy(model, adv.as_dataset())
    assert adv_acc < clean - 0.3, (method, clean, adv_acc)
    assert float(adv.x_adv.min()) >= float(x[:32].min()) and float(adv.x_adv.max()) <= float(x[:32].max())
    assert torch.equal(adv.y, y[:32])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if method == "pgd":
        assert float(adv.linf().max()) <= adv.params["eps"] + 1e-6
        again = generate(model, data, method, seed=1, **_FAST[method])
        assert torch.equal(again.x_adv, adv.x_adv)  # seeded random start


def test_save_load_roundtrip_and_errors(trained, tmp_path):
    model, test = trained
    adv = generate(model, test, "fgsm", limit=16)
    path = tmp_path / "adv.pt"
    adv.save(path)
    back = AdversarialSet.load(path)
    assert torch.equal(back.x_adv, adv.x_adv) and torch.equal(back.x, adv.x) and torch.equal(back.y, adv.y)
    assert back.method == "fgsm" and back.params == adv.params
    with pytest.raises(FileExistsError):
        adv.save(path)
    adv.save(path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["adv.pt"]  # no temp file left behind
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.pt"):
        AdversarialSet.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt"):
        AdversarialSet.load(foreign)


def test_bad_input(trained):
    model, test = trained
    with pytest.raises(ValueError, match="fgsm, pgd, deepfool, cw"):
        generate(model, test, "jsma")
    with pytest.raises(ValueError, match="empty"):
        generate(model, (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "fgsm")
    with pytest.raises(TypeError, match="max_iter"):
        generate(model, test, "fgsm", max_iter=3)
    with pytest.raises(ValueError, match="clip_values"):
        generate(model, test, "fgsm", clip_values=(1.0, 0.0))
