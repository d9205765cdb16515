"""SemanticArchitecture: modularity, persistence, plots, and refusal to clobber files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deeparc_pl import SemanticArchitecture
from deeparc_pl.architecture.plots import plot_module_sizes, plot_modularity_sweep, plot_similarity


def _arch(threshold=0.99):
    names = [f"l{i}" for i in range(6)]
    sim = np.full((6, 6), 0.4)
    sim[1:4, 1:4] = 0.995
    sim[4:6, 4:6] = 0.993
    np.fill_diagonal(sim, 1.0)
    return SemanticArchitecture.from_similarity(names, sim, threshold, "adjacent", "exact", {"model": "toy"})


def test_modules_and_modularity():
    arch = _arch()
    assert arch.modules == [["l0"], ["l1", "l2", "l3"], ["l4", "l5"]]
    assert arch.modularity == pytest.approx(5 / 6)
    assert arch.num_multi_layer_modules == 2 and arch.num_single_layer_modules == 1
    assert arch.module_of("l2") == 1 and arch.module_of(5) == 2
    assert arch.module_similarity(1) == pytest.approx(0.995)
    with pytest.raises(KeyError, match="not in this architecture"):
        arch.module_of("nope")


def test_repartition_sweep_is_monotone_here():
    arch = _arch()
    ys = [arch.repartition(threshold=t).modularity for t in (0.9, 0.994, 0.999)]
    assert ys == [5 / 6, 3 / 6, 0.0]


def test_save_load_round_trip_and_no_overwrite(tmp_path):
    arch = _arch()
    path = arch.save(tmp_path / "a.json")
    data = json.loads(path.read_text())
    assert data["format"].startswith("deeparc_pl.semantic_architecture") and data["modularity"] == pytest.approx(5 / 6)
    back = SemanticArchitecture.load(path)
    assert back.modules == arch.modules and np.array_equal(back.similarity, arch.similarity)
    assert back.meta == {"model": "toy"}
    with pytest.raises(FileExistsError):
        arch.save(path)
    arch.save(path, overwrite=True)


def test_foreign_and_corrupt_files(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a deeparc_pl semantic architecture"):
        SemanticArchitecture.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SemanticArchitecture.load(tmp_path / "y.json")


def test_inconsistent_construction():
    with pytest.raises(ValueError, match="cover every layer"):
        SemanticArchitecture(["a", "b"], [["a"]], np.eye(2), 0.9, "adjacent", "exact")
    with pytest.raises(ValueError, match="threshold"):
        SemanticArchitecture(["a", "b"], [["a"], ["b"]], np.eye(2), 1.5, "adjacent", "exact")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("modules", [["a"], [], ["b", "c"]], "modules \\[1\\] are empty"),
        ("layer_names", ["a", "a", "c"], "repeat \\['a'\\]"),
        ("layer_names", "abc", "list of layer names, got str"),
        ("layer_names", None, "list of layer names"),
        ("method", "bogus", "unknown partition method 'bogus'"),
        ("estimator", "bogus", "unknown CKA estimator 'bogus'"),
        ("threshold", "high", "'threshold' must be a number"),
        ("meta", [], "'meta' must be a dict"),
        ("similarity", [["x"]], "'similarity' is not a numeric matrix"),
    ],
)
def test_a_corrupt_architecture_file_names_the_file_and_the_field(tmp_path, field, value, message):
    data = SemanticArchitecture(["a", "b", "c"], [["a"], ["b", "c"]], np.eye(3), 0.9, "adjacent", "exact").to_dict()
    data[field] = value
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        SemanticArchitecture.load(path)
    assert str(path) in str(err.value)


def test_a_folder_or_a_bare_string_is_not_an_architecture(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        SemanticArchitecture.load(tmp_path)
    with pytest.raises(TypeError, match="list of layer names, got str"):
        SemanticArchitecture.from_similarity("ab", np.eye(2))
    with pytest.raises(ValueError, match=r"similarity is \(2, 2\) but there are 1 layer names"):
        SemanticArchitecture.from_similarity(["a"], np.eye(2))


def test_a_hand_made_partition_is_method_manual():
    arch = SemanticArchitecture(["a", "b", "c"], [["a", "b"], ["c"]], np.eye(3), 0.9, "manual", "exact")
    assert arch.modularity == 2 / 3
    with pytest.raises(ValueError, match="name the method"):
        arch.repartition(0.5)
    assert arch.repartition(0.5, method="adjacent").method == "adjacent"


def test_plots_are_pngs(tmp_path):
    arch = _arch()
    for path in (
        plot_similarity(arch, tmp_path / "s.png"),
        plot_module_sizes(arch, tmp_path / "m.png"),
        plot_modularity_sweep([0.9, 0.95], [0.8, 0.5], tmp_path / "t.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        plot_similarity(arch, tmp_path / "s.png")


def test_written_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = _arch().save(tmp_path / "p.json")
    finally:
        os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_json_never_holds_nan(tmp_path):
    arch = _arch()
    arch.meta["test_acc"] = float("nan")
    arch.save(tmp_path / "a.json")
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and json.loads(text)["meta"]["test_acc"] is None
