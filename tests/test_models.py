"""The model zoo: shapes, layer counts, parameter counts, names, errors and block surgery."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from deeparc_pl.models import MLP, ModelRegistry, available, build, register_model
from deeparc_pl.taps import LayerTaps


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- forward shapes ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet8", "wrn10_1", "vgg11", "vgg19", "mlp", "mlp2_32"])
@pytest.mark.parametrize(
    "in_channels,image_size,num_classes", [(1, 28, 10), (3, 32, 10), (1, 16, 10), (3, 8, 7)]
)
def test_forward_shape(name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    model = build(name, num_classes, in_channels=in_channels, image_size=image_size).eval()
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, num_classes)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])  # the logits depend on the input


@pytest.mark.parametrize("image_size,pools", [(32, 5), (28, 4), (16, 4), (8, 3), (1, 0)])
def test_vgg_pools_only_while_spatial_size_at_least_two(image_size: int, pools: int) -> None:
    model = build("vgg11", 10, in_channels=1, image_size=image_size)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == pools
    assert model(torch.randn(2, 1, image_size, image_size)).shape == (2, 10)


# -- layers and parameters -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,layers",
    [("resnet8", 3), ("resnet20", 9), ("resnet56", 27), ("resnet110", 54), ("wrn16_2", 6), ("wrn40_10", 18),
     ("vgg11", 8), ("vgg16", 13), ("vgg19", 16), ("mlp", 3), ("mlp5_64", 5)],
)
def test_layer_counts(name: str, layers: int) -> None:
    model = build(name, 10)
    assert len(model.layer_names) == layers
    modules = dict(model.named_modules())
    assert all(n in modules for n in model.layer_names)
    assert len(set(model.layer_names)) == layers


def test_layer_names_are_blocks_conv_units_and_hidden_layers() -> None:
    r = build("resnet20", 10)
    assert r.layer_names == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    v = build("vgg11", 10)
    assert v.layer_names[:4] == ["features.0", "features.2", "features.4", "features.5"]
    for name in v.layer_names:
        unit = v.get_submodule(name)
        assert [type(m) for m in unit] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    m = build("mlp", 10, in_channels=1, image_size=28)
    assert m.layer_names == ["layers.0", "layers.1", "layers.2"]
    assert m.layers[0][0].in_features == 784 and m.layers[0][0].out_features == 256
    assert [type(x) for x in m.layers[1]] == [nn.Linear, nn.ReLU]


@pytest.mark.parametrize(
    "name,low,high",
    [("resnet110", 1.70e6, 1.76e6), ("resnet14", 0.17e6, 0.18e6), ("vgg19", 19.9e6, 20.1e6),
     ("wrn40_10", 55e6, 57e6)],
)
def test_parameter_counts(name: str, low: float, high: float) -> None:
    assert low <= n_params(build(name, 10)) <= high  # no forward pass on wrn40_10: too slow here


def test_resnet_structure_option_b_shortcuts() -> None:
    model = build("resnet20", 10)
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    assert isinstance(model.layer2[1].shortcut, nn.Identity)
    for stage, (cin, cout) in ((model.layer2, (16, 32)), (model.layer3, (32, 64))):
        conv, bn = stage[0].shortcut
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        assert (conv.in_channels, conv.out_channels) == (cin, cout)
        assert (conv.kernel_size, conv.stride) == ((1, 1), (2, 2))
        assert stage[0].conv1.stride == (2, 2)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 16
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64


def test_wrn_structure() -> None:
    model = build("wrn16_2", 10)
    widths = [model.get_submodule(f"layer{s}.0.conv1").out_channels for s in (1, 2, 3)]
    assert widths == [32, 64, 128]
    assert isinstance(model.layer1[0].shortcut, nn.Conv2d)  # 16 -> 32 changes shape
    assert isinstance(model.layer1[1].shortcut, nn.Identity)
    assert model.layer3[0].shortcut.stride == (2, 2)
    assert model.fc.in_features == 128


def test_kaiming_init_of_convs() -> None:
    conv = build("resnet56", 10).layer3[4].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)


# -- registry ------------------------------------------------------------------------------------
def test_available_lists_names_and_families() -> None:
    names = available()
    expected = ["resnet{6k+2}", "wrn{6N+4}_{width}", "vgg11", "vgg16", "vgg19", "mlp", "mlp{depth}_{width}"]
    assert set(expected) <= set(names)
    assert names == sorted(names)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'densenet'") as err:
        build("densenet", 10)
    for known in ("resnet{6k+2}", "wrn{6N+4}_{width}", "vgg19", "mlp{depth}_{width}"):
        assert known in str(err.value)


@pytest.mark.parametrize(
    "name,valid", [("resnet21", r"6k\+2.*nearest: \[20, 26\]"), ("wrn30_2", r"6N\+4.*nearest: \[28, 34\]")]
)
def test_invalid_depth_says_which_depths_are_valid(name: str, valid: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid depth .*{valid}"):
        build(name, 10)


@pytest.mark.parametrize("kwargs,exc", [({"num_classes": 0}, ValueError), ({"num_classes": 2.5}, TypeError),
                                        ({"num_classes": 10, "image_size": True}, TypeError)])
def test_bad_build_arguments(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        build("resnet8", **kwargs)


def test_checkpoint_attributes_rebuild_the_architecture() -> None:
    model = build("ResNet14", 7, in_channels=1, image_size=28)
    stamped = (model.zoo_name, model.num_classes, model.in_channels, model.image_size)
    assert stamped == ("resnet14", 7, 1, 28)
    clone = build(model.zoo_name, model.num_classes, model.in_channels, model.image_size)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(model.eval()(x), clone.eval()(x))


def test_private_registry_exact_family_and_checks() -> None:
    reg = ModelRegistry()

    @reg.register
    def tiny(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return MLP(1, 4, num_classes, in_channels, image_size)

    @reg.register(pattern=r"deep(?P<depth>\d+)", label="deep{depth}")
    def deep(depth: int, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return MLP(depth, 4, num_classes, in_channels, image_size)

    @reg.register("nolayers")
    def nolayers(num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return nn.Linear(in_channels, num_classes)

    assert reg.available() == ["deep{depth}", "nolayers", "tiny"]
    assert len(reg.build("deep7", 3, 1, 4).layer_names) == 7
    assert reg.build("tiny", 3).zoo_name == "tiny"
    with pytest.raises(TypeError, match="layer_names"):
        reg.build("nolayers", 3)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("tiny")(tiny)
    reg.unregister("deep{depth}")
    assert "deep7" not in reg and "tiny" in reg
    assert "tiny" not in available()  # the package registry is untouched
    assert callable(register_model)


# -- taps and surgery ----------------------------------------------------------------------------
def test_layer_taps_default_names_on_resnet20() -> None:
    model = build("resnet20", 10).eval()
    with LayerTaps(model) as taps, torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
        outs = taps.outputs
    assert len(outs) == 9
    expected = [(16, 32, 32)] * 3 + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3
    assert [tuple(o.shape[1:]) for o in outs] == expected
    assert all(o.shape[0] == 4 and (o >= 0).all() for o in outs)  # block output is after the ReLU


def test_trace_spans_cover_each_block_once() -> None:
    model = build("resnet8", 10)
    trace = LayerTaps(model).trace(torch.randn(1, 3, 16, 16))
    assert trace.spans[0][:3] == ["conv1", "bn1", "relu"]
    assert "layer2.0.shortcut.0" in trace.spans[1]
    assert trace.head == ["avgpool", "flatten", "fc"]


@pytest.mark.parametrize(
    "name,parent,index",
    [("resnet56", "layer2", 3), ("wrn16_2", "layer3", 1), ("vgg16", "features", 1), ("mlp", "layers", 1)],
)
def test_replacing_a_same_shape_block_by_identity_keeps_running(name: str, parent: str, index: int) -> None:
    model = build(name, 10, in_channels=1, image_size=16).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
    cut = copy.deepcopy(model)
    cut.get_submodule(parent)[index] = nn.Identity()
    with torch.no_grad():
        after = cut(x)
        again = model(x)
    assert after.shape == (2, 10)
    assert not torch.allclose(before, after)  # the block mattered
    assert torch.equal(before, again)  # the original is untouched by the deep copy's surgery
    assert isinstance(cut.get_submodule(f"{parent}.{index}"), nn.Identity)
    with LayerTaps(cut) as taps, torch.no_grad():
        cut(x)
        assert len(taps.outputs) == len(model.layer_names)


def test_torch_pruning_traces_the_option_b_shortcuts() -> None:
    tp = pytest.importorskip("torch_pruning")
    model = build("resnet20", 10, in_channels=1, image_size=16)
    example = torch.randn(1, 1, 16, 16)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    before = n_params(model)
    pruner.step()
    assert n_params(model) < 0.4 * before
    conv, _ = model.layer2[0].shortcut
    assert conv.out_channels == model.layer2[0].conv2.out_channels == 16
    assert model.layer2[1].conv1.in_channels == 16
    assert model(example).shape == (1, 10)


def test_deepcopy_is_independent() -> None:
    model = build("vgg11", 10, in_channels=1, image_size=16)
    clone = copy.deepcopy(model)
    assert clone.layer_names == model.layer_names and clone.layer_names is not model.layer_names
    with torch.no_grad():
        clone.fc.weight.add_(1.0)
    assert not torch.equal(clone.fc.weight, model.fc.weight)
