"""Layer reduction (Algorithm 2 order, identity spans, sewing layers), RQ2 variants, save/load."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deeparc_pl import SemanticArchitecture, reduce_layers
from deeparc_pl.models import build
from deeparc_pl.models.checkpoint import load_model, save_checkpoint
from deeparc_pl.models.resnet import BasicBlock
from deeparc_pl.models.sewing import Sewing
from deeparc_pl.restructure import (
    duplicate_layers,
    inter_module_candidates,
    intra_module_candidates,
    reduce,
    reduction_plan,
    remove_inter_module_layers,
    remove_intra_module_layers,
)
from deeparc_pl.restructure.sewing import collect_pairs

# resnet20 layers: 0 layer1.0, 1 layer1.1, 2 layer1.2, 3 layer2.0, 4 layer2.1, 5 layer2.2,
#                  6 layer3.0, 7 layer3.1, 8 layer3.2   (layer2.0 and layer3.0 halve the resolution)
GROUPS = [[0], [1, 2], [3], [4, 5, 6], [7, 8]]
PLAN = ["layer1.2", "layer3.0", "layer2.2", "layer3.2"]  # Algorithm 2: modules in order, last layer first


def read_fmnist(folder: Path, n: int, offset: int = 0, split: str = "train") -> TensorDataset:
    """The first ``n`` real Fashion-MNIST samples after ``offset`` as a float TensorDataset."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    x = torch.from_numpy(images[offset : offset + n].astype(np.float32) / 255.0)
    x = (x - 0.2860) / 0.3530
    return TensorDataset(x, torch.from_numpy(labels[offset : offset + n].astype(np.int64)))


def architecture_from_groups(names: list[str], groups: list[list[int]]) -> SemanticArchitecture:
    """A known architecture without CKA: adjacent layers of a group are 0.999 alike, others 0.5."""
    n = len(names)
    sim = np.full((n, n), 0.5)
    for g in groups:
        for a in g:
            for b in g:
                sim[a, b] = 0.999
    np.fill_diagonal(sim, 1.0)
    arch = SemanticArchitecture.from_similarity(names, sim, threshold=0.99, method="progressive")
    assert arch.module_indices == groups
    return arch


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build("resnet20", 10, in_channels=1, image_size=28).eval()


@pytest.fixture(scope="module")
def arch(resnet) -> SemanticArchitecture:
    return architecture_from_groups(resnet.layer_names, GROUPS)


@pytest.fixture(scope="module")
def fmnist(fmnist_dir) -> TensorDataset:
    return read_fmnist(fmnist_dir, 384)


@pytest.fixture(scope="module")
def reduction(resnet, arch, fmnist):
    snap = snapshot(resnet)
    red = reduce(resnet, arch, data=fmnist, samples=384, epochs=1)
    assert_unchanged(resnet, snap)  # the input model is never changed
    return red


def snapshot(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: tuple[str, dict[str, torch.Tensor]]) -> None:
    structure, state = snap
    assert repr(model) == structure
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def test_plan_follows_algorithm_2(arch):
    assert reduction_plan(arch) == PLAN
    assert reduction_plan(arch, k=2) == PLAN[:2]
    assert reduction_plan(arch, k=0) == []
    assert reduction_plan(arch, modules=[3]) == ["layer3.0", "layer2.2"]
    assert reduction_plan(arch, modules=[4, 1]) == ["layer1.2", "layer3.2"]  # model order, whatever was asked
    assert reduction_plan(arch, modules=[3], k=1) == ["layer3.0"]
    with pytest.raises(ValueError, match="single layer"):
        reduction_plan(arch, modules=[0])
    with pytest.raises(ValueError, match="out of range"):
        reduction_plan(arch, k=5)
    with pytest.raises(ValueError, match="out of range"):
        reduction_plan(arch, modules=[9])


def test_reduce_removes_exactly_the_planned_blocks_and_sews_stage_boundary(resnet, reduction, fmnist):
    red = reduction
    model = red.model
    assert red.removed == PLAN
    kinds = {n: type(model.get_submodule(n)) for n in resnet.layer_names}
    assert kinds == {
        "layer1.0": BasicBlock, "layer1.1": BasicBlock, "layer1.2": nn.Identity,
        "layer2.0": BasicBlock, "layer2.1": BasicBlock,
        "layer2.2": Sewing, "layer3.0": nn.Identity,  # module [2.1, 2.2, 3.0] spans the stride-2 block
        "layer3.1": BasicBlock, "layer3.2": nn.Identity,
    }
    sew = model.get_submodule("layer2.2")
    assert (sew.in_shape, sew.out_shape) == ((32, 14, 14), (64, 7, 7))
    assert [(s.layers, s.kind) for s in red.spans] == [
        (["layer1.2"], "identity"), (["layer2.2", "layer3.0"], "sewing"), (["layer3.2"], "identity")]
    assert [e["kind"] for e in model.deeparc_edits] == ["identity", "sewing", "identity", "identity"]
    # kept blocks keep their weights
    assert torch.equal(model.get_submodule("layer3.1").conv1.weight,
                       resnet.get_submodule("layer3.1").conv1.weight)
    out = model.eval()(fmnist.tensors[0][:8])
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    removed = sum(p.numel() for n in ["layer1.2", "layer2.2", "layer3.0", "layer3.2"]
                  for p in resnet.get_submodule(n).parameters())
    added = sum(p.numel() for p in sew.parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in resnet.parameters()) - removed + added


def test_sewing_fitted_on_real_activations_lowers_l2_loss(resnet, arch, reduction, fmnist, fmnist_dir):
    red = reduction
    span = red.spans[1]
    assert span.kind == "sewing" and span.fit.samples == 384
    assert span.fit.loss_after < 0.5 * span.fit.loss_before
    # the fit generalises: on held-out real images it beats an unfitted sewing layer
    held_out = read_fmnist(fmnist_dir, 128, offset=5000)
    x, y = collect_pairs(red.model, resnet, "layer2.2", "layer3.0", [held_out.tensors], samples=128)
    fresh = Sewing((32, 14, 14), (64, 7, 7)).eval()
    fitted = red.model.get_submodule("layer2.2").eval()
    with torch.no_grad():
        assert nn.functional.mse_loss(fitted(x), y) < 0.5 * nn.functional.mse_loss(fresh(x), y)
    # plain gradient training (no closed form) also lowers it
    red_adam = reduce(resnet, arch, modules=[3], data=fmnist, samples=128, epochs=2, method="adam", lr=0.05)
    fit = red_adam.spans[0].fit
    assert fit.loss_after < fit.loss_before and len(fit.losses) == 2


def test_options_k_and_modules(resnet, arch):
    m = reduce_layers(resnet, arch, k=1)  # only layer1.2: identity, no data needed
    assert isinstance(m.get_submodule("layer1.2"), nn.Identity)
    assert all(isinstance(m.get_submodule(n), BasicBlock) for n in resnet.layer_names if n != "layer1.2")
    m = reduce_layers(resnet, arch, modules=[1, 4])
    assert [n for n in resnet.layer_names if isinstance(m.get_submodule(n), nn.Identity)] == ["layer1.2", "layer3.2"]
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="sewing layer must be trained"):
        reduce_layers(resnet, arch, modules=[3])  # stride-2 block removed, but no data given
    with pytest.raises(TypeError, match="unknown sewing options"):
        reduce_layers(resnet, arch, k=1, epoch=3)
    nan = TensorDataset(torch.full((8, 1, 28, 28), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN/inf values on the sewing data"):
        reduce_layers(resnet, arch, modules=[3], data=nan, samples=8, epochs=1)


def test_rq2_variants_change_the_right_layers(resnet, arch):
    snap = snapshot(resnet)
    # intra (Algorithm 2 order) without the stride-2 layer3.0; inter: single-layer modules, not layer2.0
    assert intra_module_candidates(resnet, arch) == ["layer1.2", "layer2.2", "layer3.2"]
    assert inter_module_candidates(resnet, arch) == ["layer1.0"]
    m = remove_intra_module_layers(resnet, arch, 2)
    assert [n for n in resnet.layer_names if isinstance(m.get_submodule(n), nn.Identity)] == ["layer1.2", "layer2.2"]
    m = remove_inter_module_layers(resnet, arch, 1)
    assert [n for n in resnet.layer_names if isinstance(m.get_submodule(n), nn.Identity)] == ["layer1.0"]
    with pytest.raises(ValueError, match="1 shape-compatible inter-module"):
        remove_inter_module_layers(resnet, arch, 2)
    d = duplicate_layers(resnet, arch, 2)
    for name in ["layer1.2", "layer2.2"]:
        seq = d.get_submodule(name)
        assert isinstance(seq, nn.Sequential) and len(seq) == 2
        assert torch.equal(seq[0].conv1.weight, seq[1].conv1.weight)
        assert torch.equal(seq[0].conv1.weight, resnet.get_submodule(name).conv1.weight)
    assert isinstance(d.get_submodule("layer3.2"), BasicBlock)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert d.eval()(x).shape == (4, 10)
        assert not torch.allclose(d(x), resnet(x))
    with pytest.raises(ValueError, match="out of range"):
        duplicate_layers(resnet, arch, 4)
    assert_unchanged(resnet, snap)


def test_save_load_roundtrip_reduced_sewn_masked(reduction, fmnist, tmp_path):
    from deeparc_pl import pruners
    from deeparc_pl.restructure.compress import record_pruning

    red = reduction.model
    pruner = pruners.get("global")
    pruned = pruner.prune(red, 0.6)
    x = fmnist.tensors[0][:16]
    record_pruning(pruned, pruner, x[:1])
    pruned.eval()
    path = save_checkpoint(tmp_path / "reduced.ckpt", pruned, info={"note": "test"})
    loaded, ckpt = load_model(path)
    assert [e["kind"] for e in ckpt["edits"]] == ["identity", "sewing", "identity", "identity", "masks"]
    assert isinstance(loaded.get_submodule("layer2.2"), Sewing)
    assert pruners.sparsity(loaded) == pytest.approx(pruners.sparsity(pruned)) and pruners.sparsity(loaded) > 0.55
    assert hasattr(loaded.get_submodule("layer3.1.conv1"), "weight_mask")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))
    with pytest.raises(FileExistsError):
        save_checkpoint(path, pruned)


class PoolBetween(nn.Module):
    """b2 -> F.max_pool2d -> b3: the pool is not a tapped layer, so removing b2..b3 would move it."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(1, 4, 3, padding=1)
        self.b2 = nn.Conv2d(4, 4, 3, padding=1)
        self.b3 = nn.Conv2d(4, 4, 3, padding=1)
        self.b4 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b2(torch.relu(self.b1(x))))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.b4(torch.relu(self.b3(x))))
        return self.fc(x.flatten(1))


def test_an_untapped_op_inside_a_removed_span_is_refused_not_silently_moved():
    torch.manual_seed(0)
    model = PoolBetween()
    arch = architecture_from_groups(["b1", "b2", "b3", "b4"], [[0, 1, 2], [3]])
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"that is not tapped \(a pooling op"):
        reduce_layers(model, arch, data=data, samples=16, epochs=1)
