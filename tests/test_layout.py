"""The channels-last copy ``modularize`` runs on CPU: same matrix, user's model untouched, and a
fallback to the model as given whenever the copy cannot run or disagrees."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from deeparc_pl.architecture.modularize import similarity_matrix
from deeparc_pl.similarity.functional import _memory_order, gram
from deeparc_pl.similarity.layout import wants_channels_last


def test_gram_of_channels_last_activation_equals_nchw():
    torch.manual_seed(0)
    x = torch.randn(12, 5, 7, 6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    flat = _memory_order(cl)  # the channel axis moved last: contiguous, the same storage, no copy
    assert flat.is_contiguous() and flat.data_ptr() == cl.data_ptr()
    ref = x.double().reshape(12, -1)
    ref = ref - ref.mean(0)
    torch.testing.assert_close(gram(cl, center=True), ref @ ref.t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gram(cl, center=True), gram(x, center=True), rtol=1e-5, atol=1e-4)
    x3 = torch.randn(6, 3, 4, 5, 2)
    torch.testing.assert_close(gram(x3.contiguous(memory_format=torch.channels_last_3d)), gram(x3),
                               rtol=1e-5, atol=1e-4)


def test_wants_channels_last_only_for_conv_nets_on_cpu():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert wants_channels_last(conv, "cpu", None)
    assert not wants_channels_last(mlp, "cpu", None)
    assert not wants_channels_last(conv, "cuda", None)
    assert not wants_channels_last(conv, "cpu", False)
    assert wants_channels_last(mlp, "cuda", True)


def test_trained_resnet_same_matrix_either_layout_and_model_untouched(fmnist_resnet):
    model, dm, _ = fmnist_resnet
    model.train()
    loader = DataLoader(Subset(dm.test_set, range(256)), batch_size=64)
    params = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    names, fast, stats_fast = similarity_matrix(model, loader)
    names2, plain, stats_plain = similarity_matrix(model, loader, channels_last=False)
    assert stats_fast["channels_last"] is True and stats_plain["channels_last"] is False
    assert names == names2 and stats_fast["samples"] == stats_plain["samples"] == 256
    assert float((fast - plain).abs().max()) < 1e-6
    assert float((fast - plain).abs().max()) > 0.0  # really two different runs
    for k, v in model.state_dict().items():  # values AND layout as given, mode restored
        assert torch.equal(v, params[k][0]) and v.stride() == params[k][1], k
    assert model.training
    model.eval()


class FlattensWithView(nn.Module):
    """``.view`` after a convolution: fine on NCHW, an error on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


class LayoutDependent(nn.Module):
    """A (contrived) custom op whose result depends on the memory layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.conv(x)
        return self.act(h if h.is_contiguous() else -h)


class DictWithLayoutDependentAux(LayoutDependent):
    """The main output agrees; only a second output in a dict does not."""

    def forward(self, x):
        h = self.conv(x)
        return {"main": self.act(h), "aux": (h.sum(), h if h.is_contiguous() else -h)}


@pytest.mark.parametrize("cls, why", [(FlattensWithView, "copy failed"), (LayoutDependent, "differs"),
                                      (DictWithLayoutDependentAux, "differs")])
def test_falls_back_to_the_model_as_given(cls, why):
    torch.manual_seed(0)
    model = cls()
    data = [torch.randn(16, 1, 6, 6) for _ in range(3)]
    with pytest.warns(UserWarning, match=f"not channels-last: .*{why}"):
        _, sim, stats = similarity_matrix(model, data, layers=["conv", "act"])
    assert stats["channels_last"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, ref, _ = similarity_matrix(model, data, layers=["conv", "act"], channels_last=False)
    torch.testing.assert_close(sim, ref, rtol=0, atol=0)


class Uncopyable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.ReLU()
        self.source = (i for i in range(3))  # generators cannot be deep-copied

    def forward(self, x):
        return self.act(self.conv(x))


def test_uncopyable_model_runs_as_given():
    data = [torch.randn(8, 1, 5, 5)]
    with pytest.warns(UserWarning, match="cannot be copied"):
        _, sim, stats = similarity_matrix(Uncopyable(), data, layers=["conv", "act"])
    assert stats["channels_last"] is False and sim.shape == (2, 2)
