"""Every public function that runs the user's model in eval mode gives back each submodule's own
train/eval flag, not just the root's (a frozen BatchNorm inside a model in train mode stays frozen)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deeparc_pl as da
from deeparc_pl.modes import copy_modes, evaluating, kept_modes
from deeparc_pl.readapt.evaluate import accuracy
from deeparc_pl.taps import LayerTaps

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["conv1", "conv2", "conv3"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(self.drop(x.flatten(1)))


def mixed() -> Net:
    """Train mode at the root, but the BatchNorm and the Dropout switched to eval by the user."""
    torch.manual_seed(0)
    net = Net().train()
    net.bn.eval()
    net.drop.eval()
    return net


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_evaluating_restores_each_flag_also_after_an_error() -> None:
    net = mixed()
    before = flags(net)
    with evaluating(net):
        assert not any(flags(net).values())
    assert flags(net) == before
    with pytest.raises(RuntimeError), kept_modes(net):
        net.train()
        raise RuntimeError("boom")
    assert flags(net) == before
    assert before["bn"] is False and before[""] is True  # the case `model.train(was_training)` got wrong


def test_copy_modes_gives_inserted_layers_their_parents_flag() -> None:
    src = mixed()
    dst = Net().eval()
    dst.conv2 = nn.Sequential(nn.Identity(), nn.Identity())  # an inserted submodule that src lacks
    copy_modes(src, dst)
    got = flags(dst)
    assert got["bn"] is False and got["drop"] is False and got["conv1"] is True
    assert got["conv2"] is True and got["conv2.0"] is True  # from the root, the nearest named ancestor


def test_public_calls_keep_every_submodule_flag() -> None:
    net = mixed()
    before = flags(net)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 3, (64,))
    arch = da.modularize(net, DataLoader(TensorDataset(x), batch_size=32), layers=LAYERS, threshold=0.5)
    assert flags(net) == before
    LayerTaps(net, LAYERS).trace(x[:2])
    assert flags(net) == before
    accuracy(net, (x, y))
    assert flags(net) == before
    da.locate(net, arch, (x[:32], y[:32]), (x[32:], y[32:]), mode="implicit", correct_only=False)
    assert flags(net) == before
    sim = np.full((3, 3), 0.5)
    np.fill_diagonal(sim, 1.0)
    sim[1, 2] = sim[2, 1] = 0.999
    grouped = da.SemanticArchitecture.from_similarity(LAYERS, sim, threshold=0.99, method="adjacent")
    reduced = da.reduce_layers(net, grouped, example=x[:2])
    assert flags(net) == before
    assert {k: v for k, v in flags(reduced).items() if k in before} == before
