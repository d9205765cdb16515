"""`deeparc reproduce`: tiny recipes write their documented files, runs resume cell by cell, Eq. 6 fits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deeparc_pl.cli.config import build_config
from deeparc_pl.reproduce.cells import CellStore, cell_key
from deeparc_pl.reproduce.regression import PAPER_EQ6, comparison_rows, encode_levels, fit_eq6, ranking
from deeparc_pl.reproduce.report import aggregate, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _cfg(rq: str, out: Path, *extra: str):
    return build_config("reproduce", str(ROOT / "recipes" / f"{rq}_tiny.yaml"), [f"out={out}", *extra])


def _run(cfg, overwrite: bool = False):
    from deeparc_pl.cli.reproduce import run

    return run(cfg, overwrite=overwrite)


# -- the cell store ------------------------------------------------------------------------------
def test_cell_key_is_stable_and_order_free():
    a = {"model": "resnet8", "seed": 0, "data": {"name": "digits", "fraction": 0.5}}
    b = {"data": {"fraction": 0.5, "name": "digits"}, "seed": 0, "model": "resnet8"}
    assert cell_key(a) == cell_key(b)
    assert cell_key(a) != cell_key({**a, "seed": 1})
    assert len(cell_key(a)) == 16
    with pytest.raises(TypeError):
        cell_key({"x": object()})


def test_cell_store_computes_once_and_resumes(tmp_path):
    calls = []

    def work(i):
        calls.append(i)
        return {"value": i * 2, "bad": float("nan")}

    store = CellStore(tmp_path / "cells")
    for i in range(3):
        assert store.compute({"i": i}, lambda i=i: work(i))["value"] == 2 * i
    assert store.computed == 3 and calls == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == sorted(f"{cell_key({'i': i})}.json" for i in range(3))
    record = json.loads((tmp_path / "cells" / f"{cell_key({'i': 1})}.json").read_text())
    assert record["config"] == {"i": 1} and record["result"]["value"] == 2 and record["result"]["bad"] is None

    (tmp_path / "cells" / f"{cell_key({'i': 1})}.json").unlink()
    again = CellStore(tmp_path / "cells")
    out = [again.compute({"i": i}, lambda i=i: work(i))["value"] for i in range(3)]
    assert out == [0, 2, 4]
    assert (again.computed, again.reused) == (1, 2)
    assert calls == [0, 1, 2, 1]


# -- regression ----------------------------------------------------------------------------------
def test_session_refuses_an_existing_report_and_counts_cells(tmp_path):
    from omegaconf import OmegaConf

    from deeparc_pl.reproduce.session import ReproduceSession

    cfg = OmegaConf.create({"out": str(tmp_path), "logger": "csv"})
    (tmp_path / "rqx").mkdir()
    (tmp_path / "rqx" / "rqx.md").write_text("finished")
    with pytest.raises(FileExistsError, match="rqx.md"):
        ReproduceSession(cfg, "rqx", ["rqx.md"], overwrite=False)
    calls = []
    with ReproduceSession(cfg, "rqx", ["rqx.md"], overwrite=True) as session:
        first = session.run([({"k": 1}, lambda: calls.append(1) or {"v": 2})], progress=False)
        again = session.run([({"k": 1}, lambda: calls.append(1) or {"v": 3})], progress=False)
    assert first == again == [{"v": 2}] and calls == [1]
    assert session.counts() == {"folder": tmp_path / "rqx", "computed": 1, "reused": 1}
    assert session.cell_counts(5, skipped=0) == {"total": 5, "computed": 1, "reused": 1, "skipped": 0}
    assert (tmp_path / "rqx" / "rqx.md").read_text() == "finished"  # nothing written over it yet


def test_run_logger_logs_every_table_and_only_existing_figures(tmp_path):
    from deeparc_pl.reproduce.report import RunLogger

    logger = RunLogger("csv", tmp_path, "t")
    calls = []
    logger.log_table = lambda name, rows: calls.append(("table", name, len(rows)))
    logger.log_image = lambda name, path: calls.append(("image", name, Path(path).name))
    (tmp_path / "fig1_a.png").write_bytes(b"png")
    logger.log_tables("rq9", {"t1": [{"a": 1}], "t2": [{"a": 1}, {"a": 2}]})
    logger.log_figures(tmp_path, ["fig1_a.png", "fig2_missing.png"])
    assert calls == [("table", "rq9/t1", 1), ("table", "rq9/t2", 2), ("image", "fig1_a", "fig1_a.png")]


def test_eq6_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    levels = [0.2, 0.4, 0.6, 0.8, 1.0]
    x = np.array([[a, b, c] for a in levels for b in levels for c in levels] * 4)
    truth = {"MS": 0.78, "DS": -0.10, "TS": -0.16}
    y = x @ np.array([truth["MS"], truth["DS"], truth["TS"]]) + 0.31 + rng.normal(0, 0.01, len(x))
    fit = fit_eq6(x, y)
    for name, value in truth.items():
        assert fit.coef[name] == pytest.approx(value, abs=0.01)
    assert fit.intercept == pytest.approx(0.31, abs=0.01)
    assert fit.r2 > 0.95
    assert ranking(fit.coef) == ["MS", "TS", "DS"] == ranking(PAPER_EQ6)
    rows = {r["term"]: r for r in comparison_rows(fit)}
    assert all(rows[n]["sign_agrees_with_paper"] for n in ("MS", "DS", "TS"))
    assert fit.equation() == "Y = 0.78 MS - 0.10 DS - 0.16 TS + 0.31"
    with pytest.raises(ValueError):
        fit_eq6(x[:3], y[:3])


def test_encode_levels_maps_to_point_two_steps():
    assert encode_levels([0.1, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5]).tolist() == pytest.approx([0.2, 1.0, 0.6])
    assert encode_levels(["resnet8", "resnet32"], ["resnet8", "resnet14", "resnet32"], sort=False).tolist() == \
        pytest.approx([1 / 3, 1.0])
    with pytest.raises(ValueError):
        encode_levels([7], [1, 2])


def test_aggregate_mean_and_sample_std():
    rows = [{"g": "a", "v": 1.0}, {"g": "a", "v": 3.0}, {"g": "b", "v": 5.0}]
    agg = aggregate(rows, ["g"], ["v"])
    assert agg[0]["v_mean"] == 2.0 and agg[0]["v_std"] == pytest.approx(np.sqrt(2.0)) and agg[0]["n"] == 2
    assert agg[1]["v_std"] == 0.0
    assert "| a | 2 | 2.000 ± 1.414 |" in markdown_table(agg)


# -- end to end on tiny recipes ------------------------------------------------------------------
def _tiny_run(tmp_path_factory, rq: str):
    """(out folder, config, result) of a tiny recipe run once for a module's tests."""
    out = tmp_path_factory.mktemp(rq)
    cfg = _cfg(rq, out)
    return out, cfg, _run(cfg)


@pytest.fixture(scope="module")
def rq1_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory, "rq1")


def test_rq1_tiny_writes_documented_files(rq1_run):
    out, cfg, res = rq1_run
    folder = out / "rq1"
    for name in ("rq1.md", "rq1.json", "fig9_modularity_vs_variables.png", "fig10_module_sizes.png",
                 "fig11_modularity_vs_threshold.png"):
        assert (folder / name).stat().st_size > 100, name
    data = json.loads((folder / "rq1.json").read_text())
    tables = data["tables"]
    cells = tables["cells"]
    assert len(cells) == 4 == res["computed"]  # axes design: middle point + one more level per variable
    for row in cells:
        assert {"model", "params", "fraction", "classes", "n", "modularity_mean", "modularity_std", "test_acc_mean"} <= set(row)
        assert 0.0 <= row["modularity_mean"] <= 1.0
    assert [r["term"] for r in tables["eq6"]][:4] == ["MS", "DS", "TS", "intercept"]
    assert {"paper_eq6", "released_code", "measured"} <= set(tables["eq6"][0])
    assert tables["eq6"][0]["paper_eq6"] == 0.78
    sweep = tables["threshold_sweep"]
    assert sorted({r["threshold"] for r in sweep}) == pytest.approx([0.90, 0.93, 0.96, 0.99])
    assert {r["model"] for r in sweep} == {"resnet8", "resnet14"}
    md = (folder / "rq1.md").read_text()
    assert "Y = 0.78 MS - 0.10 DS - 0.16 TS + 0.31" in md and "Eq. 6" in md
    # the stored matrices give the same modularity at the run's threshold as the cells reported
    from deeparc_pl.architecture.semantic import SemanticArchitecture

    for f in (folder / "cells").glob("*.json"):
        rec = json.loads(f.read_text())
        r = rec["result"]
        sim = np.asarray(r["similarity"])
        assert sim.shape == (r["num_layers"], r["num_layers"])
        arch = SemanticArchitecture.from_similarity(r["layer_names"], sim, 0.99, "progressive")
        assert arch.modularity == pytest.approx(r["modularity"])


def test_rq1_resumes_without_recomputing(rq1_run):
    out, cfg, _ = rq1_run
    from deeparc_pl.cli.reproduce import run

    with pytest.raises(FileExistsError):
        run(cfg, overwrite=False)  # reports exist; nothing is recomputed to find out
    cells = sorted((out / "rq1" / "cells").glob("*.json"))
    assert len(cells) == 4
    cells[2].unlink()
    res = run(cfg, overwrite=True)
    assert (res["computed"], res["reused"]) == (1, 3)
    cfg.logger = "wandb"  # nothing left to compute: the report is redrawn and logged to an offline W&B run
    res = run(cfg, overwrite=True)
    assert (res["computed"], res["reused"]) == (0, 4)
    assert list((out / "rq1" / "logs" / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def rq2_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory, "rq2")


def test_rq2_tiny_writes_documented_files(rq2_run):
    out, cfg, res = rq2_run
    folder = out / "rq2"
    for name in ("rq2.md", "rq2.json", "fig12_accuracy_intra.png", "fig13_robustness.png",
                 "fig15_intra_vs_inter.png", "probe_per_layer.png"):
        assert (folder / name).stat().st_size > 100, name
    tables = json.loads((folder / "rq2.json").read_text())["tables"]
    intra = tables["accuracy_intra"]
    ks = [r["k"] for r in intra]
    assert 0 in ks and ks == sorted(ks)
    for row in intra:
        assert {"k", "n", "train_acc_mean", "train_acc_std", "test_acc_mean", "test_acc_std"} <= set(row)
        assert 0.0 <= row["test_acc_mean"] <= 1.0
    rob = tables["robustness"]
    assert {r["attack"] for r in rob} == {"fgsm", "deepfool"}
    assert {"attack", "k", "robustness_change_mean", "robustness_change_std"} <= set(rob[0])
    # k = 0 is the original model: no adversarial sample that fooled it is recovered
    for r in rob:
        if r["k"] == 0 and r["recovered_of_fooled_mean"] is not None:
            assert r["recovered_of_fooled_mean"] == 0.0
    t1 = tables["table1"][0]
    assert {"model", "data", "p_intra_mean", "p_intra_std", "p_inter_mean", "p_inter_std"} <= set(t1)
    layers = tables["probe_per_layer"]
    assert len(layers) == 6  # resnet14: 6 blocks
    assert all(0.0 <= r["probe_test_acc_mean"] <= 1.0 for r in layers)
    assert {r["family"] for r in tables["intra_vs_inter"]} == {"intra_remove", "inter_remove"}
    assert res["computed"] == 1 + 3 + 2 + 1  # subject, 3 accuracy families, 2 attacks, probe


def test_rq2_resumes_without_recomputing(rq2_run):
    out, cfg, _ = rq2_run
    cells = sorted((out / "rq2" / "cells").glob("*.json"))
    probe = [c for c in cells if json.loads(c.read_text())["config"].get("kind") == "probe"]
    probe[0].unlink()
    res = _run(cfg, overwrite=True)
    assert (res["computed"], res["reused"]) == (1, 6)


def test_reproduce_rejects_unknown_rq(tmp_path, capsys):
    from deeparc_pl.cli.main import main

    assert main(["reproduce", "rq=rq9", f"out={tmp_path}"]) == 1
    assert "unknown research question 'rq9'" in capsys.readouterr().err
    assert main(["reproduce", f"out={tmp_path}"]) == 1
    assert "which research question" in capsys.readouterr().err


def test_reproduce_takes_the_rq_as_a_bare_word(tmp_path, capsys):
    """`deeparc reproduce rq1` (also after --config) is `rq=rq1`: cli/main.py maps a bare word to the
    command module's POSITIONAL key."""
    from deeparc_pl.cli.main import main

    recipe = str(ROOT / "recipes" / "rq1_tiny.yaml")
    assert main(["reproduce", "rq9", f"out={tmp_path}"]) == 1
    assert "unknown research question 'rq9'" in capsys.readouterr().err
    assert main(["reproduce", "--config", recipe, "rq9", f"out={tmp_path}"]) == 1
    assert "unknown research question 'rq9'" in capsys.readouterr().err


def test_rq3_tiny_writes_table2(tmp_path):
    res = _run(_cfg("rq3", tmp_path))
    data = json.loads((tmp_path / "rq3" / "rq3.json").read_text())
    rows = data["tables"]["table2"]
    assert [(r["pruner"], r["deeparc"]) for r in rows] == [("global", False), ("global", True)]
    for r in rows:
        assert {"remaining_pct_mean", "rounds_mean", "test_acc_pct_mean", "paper_rate_pct", "paper_rounds"} <= set(r)
        assert 0.0 < r["remaining_pct_mean"] <= 100.0
    assert rows[0]["layers_removed_mean"] == 0 and rows[1]["layers_removed_mean"] >= 1
    assert {"d_remaining_pct_mean", "d_rounds_mean", "d_acc_pct_mean"} <= set(data["tables"]["deltas"][0])
    assert res["computed"] == 3 and (tmp_path / "rq3" / "rq3.md").exists()
    assert (tmp_path / "rq3" / "table2_rounds.png").stat().st_size > 1000
    assert "table2_rounds.png" in (tmp_path / "rq3" / "rq3.md").read_text()
    cells = [json.loads(p.read_text())["result"] for p in (tmp_path / "rq3" / "cells").glob("*.json")]
    starts = sorted(c["start_remaining"] for c in cells if "start_remaining" in c)
    assert starts[-1] == 1.0 and 0.0 < starts[0] < 1.0  # the reduced model starts smaller than the original


def test_rq4_tiny_writes_table3(tmp_path):
    res = _run(_cfg("rq4", tmp_path))
    tables = json.loads((tmp_path / "rq4" / "rq4.json").read_text())["tables"]
    enh = tables["enhance"]
    assert [r["approach"] for r in enh] == ["modular", "full"]
    assert {"attack", "trained_params_mean", "acc_before_mean", "acc_after_mean", "heldout_after_mean",
            "train_seconds_mean"} <= set(enh[0])
    assert enh[0]["trained_params_mean"] < enh[1]["trained_params_mean"]  # one module versus everything
    assert enh[1]["trained_share_mean"] == 1.0
    rep = tables["repair"]
    assert [r["approach"] for r in rep] == ["modular", "full"]
    # the mutant lost about 30 points of training accuracy (mutate's tolerance is 2 points)
    records = [json.loads(p.read_text()) for p in (tmp_path / "rq4" / "cells").glob("*.json")]
    repair = [r for r in records if r["config"].get("kind") == "repair"][0]["result"]
    mutation = repair["meta"]["mutation"]
    assert mutation["base_accuracy"] - mutation["accuracy"] == pytest.approx(0.3, abs=0.021)
    assert {r["task"] for r in tables["time_change"]} == {"enhance", "repair"}
    assert res["computed"] == 3
    assert list((tmp_path / "rq4" / "runs").glob("*/readapt_enhance.md"))
    assert (tmp_path / "rq4" / "table3_time_accuracy.png").stat().st_size > 1000
