"""Repair mutants: seeded weight replacement that hits a requested accuracy drop, on real Fashion-MNIST."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deeparc_pl.readapt.mutants import MutationTargetError, mutable_weights, mutate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(fmnist_mlp) -> tuple[nn.Module, TensorDataset]:
    model, x, y = fmnist_mlp
    return model, TensorDataset(x[:2000], y[:2000])  # the paper measures training accuracy


@torch.no_grad()
def _acc(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    return float((model(x).argmax(1) == y).float().mean())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("drop", [0.1, 0.3])
def test_mutant_hits_target_reproducibly(trained, drop):
    model, data = trained
    before = _state(model)
    base = _acc(model, data)
    assert base > 0.75
    mutant = mutate(model, data, drop, tolerance=0.02, seed=0)
    assert mutant is not model
    got = _acc(mutant, data)  # measured independently of mutate's own bookkeeping
    assert abs(got - (base - drop)) <= 0.02 + 1e-9, (base, got)
    info = mutant.mutation_info
    assert info["accuracy"] == pytest.approx(got) and info["base_accuracy"] == pytest.approx(base)
    changed = sum(int((a != b).sum()) for (_, a), (_, b) in zip(mutable_weights(model), mutable_weights(mutant)))
    assert changed == info["mutated"] and 0 < changed < info["total"]
    # biases untouched
    assert torch.equal(mutant[1].bias, model[1].bias) and torch.equal(mutant[3].bias, model[3].bias)
    # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # same seed -> identical mutant; another seed -> another one
    again = mutate(model, data, drop, tolerance=0.02, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(mutant.state_dict().values(), again.state_dict().values()))
    other = mutate(model, data, drop, tolerance=0.02, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(mutant.state_dict().values(), other.state_dict().values()))
    assert abs(_acc(other, data) - (base - drop)) <= 0.02 + 1e-9


def test_impossible_or_bad_targets(trained):
    model, data = trained
    with pytest.raises(MutationTargetError, match="chance"):
        mutate(model, data, 0.95)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="drop"):
            mutate(model, data, bad)
    with pytest.raises(ValueError, match="empty"):
        mutate(model, (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), 0.1)
    with pytest.raises(ValueError, match="Conv/Linear"):
        mutate(nn.Sequential(nn.Flatten(), nn.Softmax(dim=1)), data, 0.1)
