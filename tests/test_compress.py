"""Iterative compression with and without DeepArc on a tiny real problem (Fashion-MNIST subset)."""
from __future__ import annotations

import copy
import gzip
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deeparc_pl import SemanticArchitecture, compress, pruners
from deeparc_pl.models import build
from deeparc_pl.models.checkpoint import load_model, save_checkpoint
from deeparc_pl.restructure import compare_compression, write_report
from deeparc_pl.restructure.cost import count_prunable, measure_cost

FAST = {"accelerator": "cpu", "devices": 1}


def read_fmnist(folder: Path, n: int, split: str) -> TensorDataset:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)[:n]
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - 0.2860) / 0.3530
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


class TinyData(pl.LightningDataModule):
    """A few hundred real Fashion-MNIST images (train) and test images, as tensors."""

    def __init__(self, folder: Path, n_train: int = 320, n_test: int = 200):
        super().__init__()
        self.train_set = read_fmnist(folder, n_train, "train")
        self.test_set = read_fmnist(folder, n_test, "test")
        self.num_classes = 10

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.test_set, batch_size=200)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=200)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(fmnist_dir) -> TinyData:
    return TinyData(fmnist_dir)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build("resnet14", 10, in_channels=1, image_size=28).eval()


@pytest.fixture(scope="module")
def arch(model) -> SemanticArchitecture:
    # layers: layer1.0 layer1.1 | layer2.0 layer2.1 | layer3.0 layer3.1 -> modules [0 1] [2] [3] [4 5]
    names = model.layer_names
    sim = np.full((6, 6), 0.5)
    for g in ([0, 1], [4, 5]):
        for a in g:
            for b in g:
                sim[a, b] = 0.999
    np.fill_diagonal(sim, 1.0)
    out = SemanticArchitecture.from_similarity(names, sim, 0.99, "progressive")
    assert out.module_indices == [[0, 1], [2], [3], [4, 5]]
    return out


def test_rounds_follow_0_8_power_and_stop_at_target(model, data):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = compress(model, "global", data, target_sparsity=0.45, tolerance=1.0, finetune_epochs=1, lr=0.01,
                   trainer_kwargs=FAST, latency_repeats=3)
    remaining = [h.remaining for h in res.history]
    assert remaining == pytest.approx([0.8, 0.64, 0.55], abs=2e-4)  # 0.8^r, then the target
    assert [h.asked for h in res.history] == pytest.approx([0.2, 0.36, 0.45], abs=1e-9)
    assert res.rounds == 3 and res.stop_reason == "target_sparsity" and not res.deeparc
    assert pruners.sparsity(res.model) == pytest.approx(0.45, abs=2e-4)
    assert res.cost.sparsity == pytest.approx(0.45, abs=2e-4)
    assert res.cost.params_nonzero < res.cost.params_total
    assert res.cost.macs_nonzero < res.cost.macs_dense and res.cost.latency_ms > 0
    assert 0.0 <= res.final_acc <= 1.0 and res.final_acc == res.history[-1].test_acc
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # input untouched
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_stops_on_tolerance_and_keeps_previous_round(model, data, monkeypatch):
    scripted = iter([0.895, 0.85])  # round 1 within 0.02 of 0.9, round 2 not
    compress_module = importlib.import_module("deeparc_pl.restructure.compress")
    monkeypatch.setattr(compress_module, "evaluate", lambda *a, **k: next(scripted))
    res = compress(model, "lamp", data, original_acc=0.9, tolerance=0.02, finetune_epochs=1,
                   trainer_kwargs=FAST, measure=False)
    assert [h.accepted for h in res.history] == [True, False]
    assert res.rounds == 1 and res.stop_reason == "tolerance" and res.final_acc == 0.895 and res.within_tolerance
    assert pruners.sparsity(res.model) == pytest.approx(0.2, abs=2e-4)  # the round-1 model is kept
    assert res.history[1].remaining == pytest.approx(0.64, abs=2e-4)


def test_with_and_without_deeparc_side_by_side(model, arch, data, tmp_path):
    results = compare_compression(model, "global", data, arch, max_rounds=2, tolerance=1.0, finetune_epochs=1,
                                  trainer_kwargs=FAST, latency_repeats=3, sewing={"samples": 128, "epochs": 1})
    plain, deep = results
    assert (plain.deeparc, deep.deeparc) == (False, True) and plain.original_acc == deep.original_acc
    assert deep.reduction["removed"] == ["layer1.1", "layer3.1"]  # both shape-preserving: identity
    assert [s["kind"] for s in deep.reduction["spans"]] == ["identity", "identity"]
    orig = count_prunable(model)[0]
    reduced = orig - sum(model.get_submodule(f"{n}.conv{i}").weight.numel() for n in ("layer1.1", "layer3.1")
                         for i in (1, 2))
    # the same 20 % step: DeepArc remains (reduced / original) * 0.8^r of the ORIGINAL weights
    assert [h.remaining for h in plain.history] == pytest.approx([0.8, 0.64], abs=2e-4)
    assert [h.remaining for h in deep.history] == pytest.approx([reduced / orig * 0.8, reduced / orig * 0.64], abs=2e-4)
    assert deep.cost.params_total < plain.cost.params_total
    assert deep.cost.macs_dense < plain.cost.macs_dense
    rows = write_report(results, tmp_path / "c.md", tmp_path / "c.json", original_cost=measure_cost(
        model, torch.zeros(1, 1, 28, 28), latency_repeats=0))
    assert [r["method"] for r in rows] == ["original", "global", "global+deeparc"]
    assert rows[1]["remaining %"] == pytest.approx(64.0, abs=0.05)
    text = (tmp_path / "c.md").read_text()
    assert "global+deeparc" in text and "| method |" in text
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["results"][1]["reduction"]["removed"] == ["layer1.1", "layer3.1"]
    with pytest.raises(FileExistsError):
        write_report(results, tmp_path / "c.md", tmp_path / "c.json")
    # the final DeepArc model (identity layers + masks) survives a checkpoint round trip
    path = save_checkpoint(tmp_path / "deep.ckpt", deep.model)
    loaded, _ = load_model(path)
    x = data.test_set.tensors[0][:8]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), deep.model.eval()(x))
    assert pruners.sparsity(loaded) == pytest.approx(pruners.sparsity(deep.model))


def test_structured_pruning_is_recorded_and_replayed(model, data, tmp_path):
    res = compress(model, "structured", data, max_rounds=1, tolerance=1.0, finetune_epochs=0,
                   trainer_kwargs=FAST, measure=False, original_acc=0.5)
    (edit,) = [e for e in res.model.deeparc_edits if e["kind"] == "torch_pruning"]
    assert edit["input_shape"] == [1, 28, 28] and edit["history"]
    total, _ = count_prunable(res.model)
    assert total < count_prunable(model)[0]
    path = save_checkpoint(tmp_path / "structured.ckpt", res.model)
    loaded, _ = load_model(path)
    x = data.test_set.tensors[0][:4]
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), res.model.eval()(x))


def test_bad_settings_are_named(model, data):
    with pytest.raises(ValueError, match="step"):
        compress(model, "global", data, step=1.5)
    with pytest.raises(ValueError, match="target_sparsity"):
        compress(model, "global", data, target_sparsity=1.0)
    with pytest.raises(ValueError, match="tolerance must be a finite number"):
        compress(model, "global", data, tolerance=float("nan"))
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters())[0].fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN/inf weights"):
        compress(broken, "global", data)
    with pytest.raises(ValueError, match="needs an architecture"):
        compare_compression(model, "global", data, None, deeparc="with")

