"""modularize on a ResNet trained on real data, and its refusals."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from deeparc_pl import modularize
from deeparc_pl.data import ShuffledPasses


def test_trained_resnet_similarity_properties(fmnist_resnet):
    model, dm, _ = fmnist_resnet
    state = copy.deepcopy(model.state_dict())
    ds = Subset(dm.test_set, range(512))
    loader = DataLoader(ds, batch_size=128, sampler=ShuffledPasses(ds, passes=2, seed=0))
    arch = modularize(model, loader, threshold=0.95)
    sim = arch.similarity
    n = sim.shape[0]
    assert n == 6
    np.testing.assert_allclose(np.diag(sim), 1.0)
    assert np.allclose(sim, sim.T)
    assert sim.min() >= -0.05 and sim.max() <= 1.0 + 1e-9
    # neighbouring closeness: adjacent layers are more alike than layers 3+ apart, on average
    adjacent = np.mean([sim[i, i + 1] for i in range(n - 1)])
    distant = np.mean([sim[i, j] for i in range(n) for j in range(i + 3, n)])
    assert adjacent > distant + 0.05, (adjacent, distant)
    assert arch.meta["samples"] == 1024 and arch.meta["passes"] == 1
    # the model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class NaNAfterFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x) * float("nan"))


def test_bad_inputs():
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, torch.zeros(16)), batch_size=8)
    with pytest.raises(ValueError, match="layer 'b'.*NaN"):
        modularize(NaNAfterFirst(), loader, layers=["a", "b"])
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="at least 2 layers"):
        modularize(seq, loader, layers=["0"])
    with pytest.raises(ValueError, match="empty"):
        modularize(seq, DataLoader(TensorDataset(torch.zeros(0, 4)), batch_size=4))
    with pytest.raises(ValueError, match="threshold"):
        modularize(seq, loader, threshold=1.5)
    with pytest.raises(KeyError, match="unknown layer"):
        modularize(seq, loader, layers=["0", "7"])
    with pytest.raises(ValueError, match=r"order the model runs them.*ran \['0', '2'\]"):
        modularize(seq, loader, layers=["2", "0"])
    with pytest.raises(TypeError, match=r"got the string '0'"):
        modularize(seq, loader, layers="0")


def test_mismatched_batch_sizes_are_named():
    from deeparc_pl.similarity import CKAMatrix

    metric = CKAMatrix(["p", "q"])
    with pytest.raises(ValueError, match="q"):
        metric.update([torch.randn(8, 3), torch.randn(7, 3)])


class SharedTwice(nn.Module):
    """`a` is one module called twice: a, b, a, c. Its tapped output is its last call, after b."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.c(torch.relu(self.a(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_a_module_called_twice_is_ordered_by_its_last_call():
    loader = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=8)
    arch = modularize(SharedTwice(), loader, layers=["b", "a", "c"], threshold=0.5)
    assert arch.layer_names == ["b", "a", "c"]
    with pytest.raises(ValueError, match=r"ran \['b', 'a', 'c'\]"):
        modularize(SharedTwice(), loader, layers=["a", "b", "c"])
