"""LayerTaps on models built here: order, exact outputs, errors, hook removal, tracing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deeparc_pl import LayerTaps
from deeparc_pl.taps import LayerNameError


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    """torchvision-style names: layer1.0, layer1.1, layer2.0."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.layer2 = nn.Sequential(Block(4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def test_default_names_torchvision_resnet_and_sequential():
    assert LayerTaps(TinyResNet()).names == ["layer1.0", "layer1.1", "layer2.0"]
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert LayerTaps(seq).names == ["0", "1", "2"]


def test_outputs_are_exactly_what_layers_return_in_order():
    model = TinyResNet().eval()
    x = torch.randn(5, 1, 6, 6)
    with LayerTaps(model, ["layer2.0", "layer1.0"]) as taps:
        model(x)
        out2, out1 = taps.outputs
    with torch.no_grad():
        ref1 = model.layer1[0](model.stem(x))
        ref2 = model.layer2(model.layer1(model.stem(x)))
    assert torch.equal(out1, ref1) and torch.equal(out2, ref2)
    assert not out1.requires_grad


def test_keep_graph_allows_backward():
    model = TinyResNet()
    with LayerTaps(model, ["layer1.1"], keep_graph=True) as taps:
        model(torch.randn(2, 1, 4, 4))
        (out,) = taps.outputs
    out.sum().backward()
    assert model.layer1[0].conv.weight.grad is not None


def test_unknown_name_lists_nearest():
    with pytest.raises(LayerNameError, match=r"layer1\.0"):
        LayerTaps(TinyResNet(), ["layer1.O"])


def test_parameter_name_is_rejected():
    with pytest.raises(LayerNameError, match="parameter, not a module"):
        LayerTaps(TinyResNet(), ["layer1.0.conv.weight"])


def test_hooks_removed_on_exit_and_on_exception():
    model = TinyResNet()
    with pytest.raises(RuntimeError, match="boom"):
        with LayerTaps(model, ["layer1.0"]):
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert len(model._forward_pre_hooks) == 0


def test_no_default_for_arbitrary_module():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match="cannot infer"):
        LayerTaps(Odd())


def test_trace_finds_leaves_between_layers_and_shapes():
    model = TinyResNet()
    taps = LayerTaps(model)
    trace = taps.trace(torch.randn(1, 1, 6, 6))
    assert trace.spans[0] == ["stem", "layer1.0.conv", "layer1.0.bn"]
    assert trace.spans[1] == ["layer1.1.conv", "layer1.1.bn"]
    assert trace.head == ["fc"]
    assert trace.leaves_between(0, 2) == ["layer1.1.conv", "layer1.1.bn", "layer2.0.conv", "layer2.0.bn"]
    params = trace.parameter_names_between(1, 2)
    assert "layer2.0.conv.weight" in params and "layer2.0.bn.running_mean" in params
    assert trace.output_shapes == [(4, 6, 6)] * 3
    assert model.training  # mode restored
