"""Pruning interface, registry and built-in pruner plugins."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

import deeparc_pl
from deeparc_pl import pruners
from deeparc_pl.pruners import allocation, masks, scoring

UNSTRUCTURED = ["lamp", "global", "uniform_plus", "erk"]


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv + linear layers of quite different sizes (first conv small, so Uniform+ can reach 0.9)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),  # 54
        nn.ReLU(),
        nn.Conv2d(6, 32, 3),  # 1728
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 24, 3),  # 6912
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 120),  # 2880
        nn.ReLU(),
        nn.Linear(120, 10),  # 1200
    )


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # 1x1 conv shortcut, CIFAR ResNet option B
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.layer3 = Block(32, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    return [masks.effective_weight(m).detach() for _, m in masks.prunable_layers(model)]


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- registry


def test_available_lists_builtins_and_get_instantiates():
    assert {"lamp", "global", "uniform_plus", "erk", "structured"} <= set(pruners.available())
    for name in ["lamp", "global", "uniform_plus", "erk", "structured"]:
        p = pruners.get(name)
        assert isinstance(p, pruners.Pruner)
        assert p.name == name


def test_unknown_name_lists_installed():
    with pytest.raises(KeyError) as err:
        pruners.get("no-such-pruner")
    msg = str(err.value)
    assert "no-such-pruner" in msg and "lamp" in msg and "structured" in msg


def test_sparsity_exported_at_top_level():
    assert deeparc_pl.sparsity is masks.sparsity


def _write_dist(root, dist: str, module: str, entries: dict[str, str], code: str | None = None) -> None:
    if code is not None:
        (root / f"{module}.py").write_text(code)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[deeparc_pl.pruners]\n{lines}")


THIRD_PARTY = textwrap.dedent(
    '''
    import torch
    from deeparc_pl.pruners import ScoredPruner, allocation

    class SmallestIndexPruner(ScoredPruner):
        """Toy third-party pruner: new scorer (flat index), reuses an allocator and the masks."""
        name = "by_index"

        def score(self, weight):
            return torch.arange(weight.numel(), dtype=torch.float64).view_as(weight)

        def allocate(self, weights, scores, alive, n_keep):
            caps = [int(a.sum()) for a in alive]
            return allocation.water_fill([float(w.numel()) for w in weights], caps, n_keep)
    '''
)


def test_third_party_plugin_is_discovered_and_used(tmp_path, monkeypatch):
    assert "by_index" not in pruners.available()
    _write_dist(tmp_path, "toyprune", "toyprune_mod", {"by_index": "toyprune_mod:SmallestIndexPruner"}, THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "by_index" in pruners.available()
    assert "toyprune_mod" not in sys.modules  # lazy: listing imports nothing
    p = pruners.get("by_index")
    assert type(p).__name__ == "SmallestIndexPruner"
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    out = p.prune(model, 0.5)
    assert masks.sparsity(out) == pytest.approx(0.5, abs=1e-9)
    # its rule: half of each layer, the highest flat indices survive
    w0, w1 = (w.flatten() for w in weights_of(out))
    assert (w0[:10] == 0).all() and (w0[10:] != 0).all()
    assert (w1[:5] == 0).all() and (w1[5:] != 0).all()
    monkeypatch.delitem(sys.modules, "toyprune_mod", raising=False)


def test_duplicate_name_from_second_distribution_raises(tmp_path, monkeypatch):
    _write_dist(tmp_path, "clashprune", "clash_mod", {"lamp": "clash_mod:X"}, "class X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="'lamp' is registered twice"):
        assert "lamp" in pruners.available()
    with pytest.raises(pruners.DuplicatePrunerError) as err:
        pruners.get("lamp")
    msg = str(err.value)
    assert "'lamp'" in msg and "clashprune" in msg and "deeparc" in msg.lower()
    assert pruners.get("global").name == "global"  # the clash disables only the name it is about


def test_a_broken_plugin_is_named_and_the_others_keep_working(tmp_path, monkeypatch):
    _write_dist(tmp_path, "brokenprune", "broken_mod",
                {"imports_missing": "broken_mod:X", "no_attr": "broken_mod:Missing", "raises": "broken_mod:Boom"},
                "import definitely_not_installed_xyz\n")
    _write_dist(tmp_path, "boomprune", "boom_mod", {"boom": "boom_mod:Boom"},
                "class Boom:\n    name = 'boom'\n    def __init__(self):\n        raise RuntimeError('no GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pruners.PrunerLoadError, match=r"pruner 'imports_missing' from brokenprune .* failed to load: ModuleNotFound"):
        pruners.get("imports_missing")
    with pytest.raises(pruners.PrunerLoadError, match="pruner 'boom' from boomprune .* could not be built with no arguments: RuntimeError: no GPU"):
        pruners.get("boom")
    assert pruners.get("lamp").name == "lamp"
    monkeypatch.delitem(sys.modules, "boom_mod", raising=False)


def test_register_pruner_in_process_and_refuses_duplicates():
    @pruners.register_pruner("toy_global")
    class ToyGlobal(pruners.ScoredPruner):
        name = "toy_global"

        def score(self, weight):
            return scoring.magnitude(weight)

        def allocate(self, weights, scores, alive, n_keep):
            return allocation.global_threshold(weights, scores, alive, n_keep)

    try:
        assert "toy_global" in pruners.available()
        out = pruners.get("toy_global").prune(small_cnn(), 0.3)
        assert masks.sparsity(out) == pytest.approx(0.3, abs=0.005)
        with pytest.raises(pruners.DuplicatePrunerError):
            pruners.register_pruner("toy_global")(ToyGlobal)
        with pytest.raises(pruners.DuplicatePrunerError, match="deeparc"):
            pruners.register_pruner("erk")(ToyGlobal)
    finally:
        pruners.unregister_pruner("toy_global")
    assert "toy_global" not in pruners.available()


def test_a_subclass_registered_under_its_own_name_is_labelled_by_it():
    base = type(pruners.get("global"))
    mine = pruners.register_pruner("my_global")(type("MyGlobal", (base,), {}))
    try:
        assert pruners.get("my_global").name == "my_global"  # not the inherited "global"
        assert base.name == "global" and pruners.get("global").name == "global"
    finally:
        pruners.unregister_pruner("my_global")
    assert mine.name == "global"  # the class itself is left alone


# --------------------------------------------------------------------------- masks


def test_sparsity_counts_conv_and_linear_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        model[0].weight[0].zero_()  # 4 of 8 conv weights
        model[0].bias.zero_()  # biases never count
        model[1].weight.zero_()  # BN never counts
    assert masks.sparsity(model) == pytest.approx(4 / 14)
    assert masks.layer_sparsity(model) == {"0": 0.5, "3": 0.0}
    assert [n for n, _ in masks.prunable_layers(model)] == ["0", "3"]


def test_apply_masks_combines_instead_of_stacking():
    model = nn.Sequential(nn.Linear(3, 2))
    m1 = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    m2 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    a = masks.apply_masks(model, {"0": m1})
    assert not masks.is_masked(model[0])  # input untouched
    b = masks.apply_masks(a, {"0": m2})
    assert torch.equal(b[0].weight_mask, m1 * m2)
    assert len(b[0]._forward_pre_hooks) == 1
    assert torch.equal(b[0].weight_orig, model[0].weight)
    assert masks.sparsity(b) == pytest.approx(2 / 6)
    perm = masks.make_permanent(b)
    assert not masks.is_masked(perm[0]) and masks.sparsity(perm) == pytest.approx(2 / 6)
    with pytest.raises(KeyError, match="no prunable layer"):
        masks.apply_masks(model, {"7": m1})
    with pytest.raises(ValueError, match="shape"):
        masks.apply_masks(model, {"0": torch.ones(3)})


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_masks_survive_state_dict_round_trip(name):
    pruned = pruners.get(name).prune(small_cnn(), 0.7)
    sd = pruned.state_dict()
    assert any(k.endswith("weight_mask") for k in sd)
    fresh = masks.prepare_for_masked_state_dict(small_cnn(seed=1), sd)
    fresh.load_state_dict(sd)
    assert masks.sparsity(fresh) == pytest.approx(masks.sparsity(pruned))
    x = torch.randn(2, 1, 9, 9)
    pruned.eval(), fresh.eval()
    assert torch.allclose(fresh(x), pruned(x))
    for a, b in zip(weights_of(fresh), weights_of(pruned)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- unstructured pruners


@pytest.mark.parametrize("name", UNSTRUCTURED)
@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_reaches_global_sparsity_and_input_untouched(name, target):
    model = small_cnn()
    before = state_copy(model)
    p = pruners.get(name)
    out = p.prune(model, target)
    assert same_state(before, state_copy(model))
    assert masks.sparsity(model) == 0.0
    assert abs(masks.sparsity(out) - target) < 0.005
    assert p.report.global_sparsity == pytest.approx(masks.sparsity(out))
    assert p.report.layer_sparsity == masks.layer_sparsity(out)
    x = torch.randn(3, 1, 9, 9)
    assert out(x).shape == (3, 10)


def _expected_global_masks(weights: list[torch.Tensor], score_fn, target: float) -> list[torch.Tensor]:
    """Independent computation: concatenate all scores, keep those >= the n_keep-th largest."""
    scores = [score_fn(w) for w in weights]
    total = sum(w.numel() for w in weights)
    n_keep = total - round(target * total)
    threshold = torch.cat([s.flatten() for s in scores]).sort(descending=True).values[n_keep - 1]
    return [s >= threshold for s in scores]


def _lamp_reference(w: torch.Tensor) -> torch.Tensor:
    """``_normalize_scores`` of jaeho-lee/layer-adaptive-sparsity (utils/prune.py), transcribed:
    exclusive prefix sums of the ascending squared weights, subtracted from the total."""
    scores = w.double() ** 2
    sorted_scores, sorted_idx = scores.view(-1).sort(descending=False)
    cumsum_temp = sorted_scores.cumsum(dim=0)
    cumsum = torch.zeros(cumsum_temp.shape, dtype=torch.float64)
    cumsum[1:] = cumsum_temp[: len(cumsum_temp) - 1]
    sorted_scores /= scores.sum() - cumsum
    new_scores = torch.zeros(cumsum.shape, dtype=torch.float64)
    new_scores[sorted_idx] = sorted_scores
    return new_scores.view(scores.shape)


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_lamp_and_global_match_independent_thresholds(target):
    model = small_cnn()
    ws = weights_of(model)
    for name, score_fn in [("global", lambda w: w.abs()), ("lamp", _lamp_reference)]:
        out = pruners.get(name).prune(model, target)
        expected = _expected_global_masks(ws, score_fn, target)
        for got, exp in zip(weights_of(out), expected):
            assert torch.equal(got != 0, exp), name


def test_lamp_score_values():
    w = torch.tensor([3.0, -1.0, 2.0])
    # sorted |w|: 1, 2, 3 -> 1/14, 4/13, 9/9
    assert torch.allclose(scoring.lamp(w), torch.tensor([1.0, 1 / 14, 4 / 13], dtype=torch.float64))
    # LAMP allocates differently from global magnitude on this model
    a = pruners.get("lamp").prune(small_cnn(), 0.8)
    b = pruners.get("global").prune(small_cnn(), 0.8)
    assert masks.layer_sparsity(a) != masks.layer_sparsity(b)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_erk_densities_follow_formula(target):
    model = small_cnn()
    p = pruners.get("erk")
    p.prune(model, target)
    layers = masks.prunable_layers(model)
    dens = {n: 1 - s for n, s in p.report.layer_sparsity.items()}
    formula = {n: sum(m.weight.shape) / m.weight.numel() for n, m in layers}
    sparse = [n for n in dens if dens[n] < 1.0]
    dense = [n for n in dens if dens[n] == 1.0]
    assert sparse, "some layer must be pruned"
    ratio = [dens[n] / formula[n] for n in sparse]
    factor = {n: sum(m.weight.shape) for n, m in layers}  # kept = ratio * factor, up to one weight of rounding
    for r, n in zip(ratio, sparse):
        assert r == pytest.approx(ratio[0], abs=1.0 / factor[n] + 1.0 / factor[sparse[0]] + 1e-9)
    # a dense layer is one whose formula density would overflow
    for n in dense:
        assert ratio[0] * formula[n] > 1.0 - 1e-6
    if target == 0.2:
        assert dense  # the small layers overflow at low sparsity
    if target == 0.9:
        assert not dense


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_uniform_plus_rule(target):
    model = small_cnn()
    p = pruners.get("uniform_plus")
    out = p.prune(model, target)
    ls = list(masks.layer_sparsity(out).values())
    assert ls[0] == 0.0  # first layer is a conv: dense
    assert ls[-1] <= 0.8 + 1e-9
    middle = ls[1:-1]
    numels = [m.weight.numel() for _, m in masks.prunable_layers(model)][1:-1]
    for s, n in zip(middle, numels):
        assert s == pytest.approx(middle[0], abs=1.0 / min(numels) + 1e-9)
    if target == 0.9:
        assert ls[-1] == pytest.approx(0.8)  # capped; middle absorbs the rest
        assert middle[0] > 0.9
    else:
        assert ls[-1] == pytest.approx(middle[0], abs=1e-3)


def test_uniform_plus_first_linear_is_pruned():
    mlp = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    out = pruners.get("uniform_plus").prune(mlp, 0.5)
    assert masks.layer_sparsity(out)["0"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_cumulative_pruning_keeps_old_zeros(name):
    p = pruners.get(name)
    first = p.prune(small_cnn(), 0.2)
    x = torch.randn(1, 1, 9, 9)
    first(x)  # a forward pass leaves a non-leaf `weight`; copying must still work
    old_zero = [w == 0 for w in weights_of(first)]
    before = state_copy(first)
    second = p.prune(first, 0.36)
    assert same_state(before, state_copy(first))
    assert abs(masks.sparsity(second) - 0.36) < 0.005
    for old, new in zip(old_zero, weights_of(second)):
        assert (new[old] == 0).all()
    for _, m in masks.prunable_layers(second):
        assert len(m._forward_pre_hooks) == 1
    with pytest.raises(ValueError, match="cannot revive"):
        p.prune(second, 0.1)


def test_already_zero_weights_count_as_pruned():
    model = small_cnn()
    with torch.no_grad():
        model[5].weight[:12].zero_()  # half of the 24 x 32 x 3 x 3 conv: 3456 / 12774 zeros
    s0 = masks.sparsity(model)
    assert s0 == pytest.approx(3456 / 12774)
    out = pruners.get("global").prune(model, 0.5)
    assert abs(masks.sparsity(out) - 0.5) < 0.005
    assert (masks.effective_weight(out[5])[:12] == 0).all()


def test_bad_sparsity_rejected():
    p = pruners.get("lamp")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            p.prune(small_cnn(), bad)
    with pytest.raises(TypeError):
        p.prune(small_cnn(), "0.5")
    with pytest.raises(TypeError):
        p.prune("not a model", 0.5)


def test_water_fill_makes_overflowing_layers_dense():
    # factors 10, 1, 1 with caps 5, 100, 100 and 55 to keep: eps=55/12 -> layer 0 overflows (45.8 > 5),
    # so it is dense and the other two share the remaining 50 equally.
    assert allocation.water_fill([10.0, 1.0, 1.0], [5, 100, 100], 55) == [5, 25, 25]
    assert sum(allocation.water_fill([3.0, 1.0, 7.0], [10, 50, 9], 40)) == 40


# --------------------------------------------------------------------------- structured


def test_structured_shrinks_residual_cnn():
    from plugins.structured import StructuredPruner, replay_pruning_history

    torch.manual_seed(0)
    model = TinyResNet()
    model.eval()
    before = state_copy(model)
    n_before = sum(p.numel() for p in model.parameters())
    p = StructuredPruner(tolerance=0.02)  # what get("structured") builds, with a coarser (faster) search
    out = p.prune(model, 0.5)
    assert same_state(before, state_copy(model))
    n_after = sum(p.numel() for p in out.parameters())
    assert n_after < 0.65 * n_before
    assert abs(p.report.global_sparsity - 0.5) < 0.03
    x = torch.randn(2, 3, 8, 8)
    assert out(x).shape == (2, 10)
    assert out.conv1.in_channels == 3 and out.fc.out_features == 10
    assert out.conv1.out_channels < 16
    # residual coupling: a block's output width equals its shortcut's
    assert out.layer2.conv2.out_channels == out.layer2.shortcut[0].out_channels == out.layer3.conv1.in_channels
    history = p.report.extra["pruning_history"]
    assert history
    rebuilt = replay_pruning_history(TinyResNet(), history)
    rebuilt.load_state_dict(out.state_dict())
    rebuilt.eval(), out.eval()
    assert torch.allclose(rebuilt(x), out(x))


def test_structured_needs_example_inputs():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    with pytest.raises(ValueError, match="example_inputs"):
        pruners.get("structured").prune(plain, 0.3)
    from plugins.structured import StructuredPruner

    out = StructuredPruner(example_inputs=torch.randn(1, 3, 8, 8)).prune(plain, 0.3)
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in plain.parameters())
    assert out(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_entry_point_not_following_protocol_is_rejected(tmp_path, monkeypatch):
    _write_dist(tmp_path, "badprune", "bad_mod", {"bad_one": "bad_mod:NotAPruner"}, "class NotAPruner:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "bad_one" in pruners.available()
    with pytest.raises(TypeError, match="Pruner protocol"):
        pruners.get("bad_one")
    monkeypatch.delitem(sys.modules, "bad_mod", raising=False)


def test_combines_with_torch_native_pruning():
    from torch.nn.utils import prune as torch_prune

    model = small_cnn()
    torch_prune.l1_unstructured(model[5], "weight", amount=0.5)  # torch's own hook, not ours
    zeros_before = masks.effective_weight(model[5]) == 0
    out = pruners.get("lamp").prune(model, 0.6)
    assert abs(masks.sparsity(out) - 0.6) < 0.005
    assert (masks.effective_weight(out[5])[zeros_before] == 0).all()
    assert len(out[5]._forward_pre_hooks) == 1
    assert out(torch.randn(1, 1, 9, 9)).shape == (1, 10)


def test_nan_weights_are_refused_not_pruned_to_a_wrong_sparsity():
    model = small_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    for name in ("lamp", "global", "uniform_plus", "erk"):
        with pytest.raises(ValueError, match="NaN/inf weights"):
            pruners.get(name).prune(model, 0.5)
