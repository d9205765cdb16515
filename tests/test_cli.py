"""The command line end to end on tiny settings, and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deeparc_pl.cli.main import main
from deeparc_pl.cli.modularize import parse_sweep

TINY = ["data.fraction=0.25", "data.batch_size=64", "cka.samples=120", "cka.batch_size=40",
        "trainer.enable_progress_bar=false"]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "modularize", "compress", "attack", "enhance", "repair", "reproduce", "pruners"):
        assert cmd in out


def test_train_then_modularize_from_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "model.name=resnet8", f"out={out}", "trainer.max_epochs=1", *TINY]) == 0
    ckpt = out / "model.ckpt"
    assert ckpt.exists()
    assert main(["train", "model.name=resnet8", f"out={out}", "trainer.max_epochs=1", *TINY]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["modularize", f"model.weights={ckpt}", f"out={out}", "threshold=0.95",
                 "thresholds=0.90:0.99:0.03", *TINY]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert len(arch["layer_names"]) == 3 and arch["threshold"] == 0.95
    assert arch["meta"]["model"] == "resnet8"  # read from the checkpoint, not left empty
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["threshold"] for r in sweep] == [0.9, 0.93, 0.96, 0.99]
    for png in ("similarity.png", "modules.png", "modularity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # on CPU the passes run a channels-last copy by default; the model as given gives the same matrix
    assert arch["meta"]["channels_last"] is True
    plain_out = tmp_path / "plain"
    assert main(["modularize", f"model.weights={ckpt}", f"out={plain_out}", "threshold=0.95",
                 "cka.channels_last=false", *TINY]) == 0
    given = json.loads((plain_out / "architecture.json").read_text())
    assert given["meta"]["channels_last"] is False
    diff = abs(np.array(given["similarity"]) - np.array(arch["similarity"])).max()
    assert 0 < diff < 1e-6


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "model.name=resnet9"], "depth"),
        (["train", "model.name=nosuchnet"], "known"),
        (["modularize", "model.name=resnet8", "threshold=0"], "threshold"),
        (["modularize", "method=greedy"], "unknown partition method"),
        (["modularize", "cka.estimator=rbf"], "rbf"),
        (["modularize", "thresholds=0.9:1.2:0.1"], "threshold"),
        (["modularize", "model.weights=/nonexistent/w.pt"], "no checkpoint"),
        (["train", "model.name=resnet8", "data.name=imagenet"], "imagenet"),
        (["train", "model.name=resnet8", "notakeyvalue"], "key=value"),
        (["modularize", "=3"], "key=value"),
        (["train", "trainer_max_epochs=7"], "'trainer_max_epochs' (did you mean trainer.max_epochs"),
        (["train", "trainer.max_epochs=abc"], "trainer.max_epochs must be an integer, got 'abc'"),
        (["train", "data.augment=maybe"], "data.augment must be true or false"),
        (["modularize", "cka.samples=0"], "cka.samples must be an integer of at least 1, got 0"),
        (["attack", "attack.limit=0"], "attack.limit must be an integer of at least 1"),
        (["train", "model.layers=[layer1.0"], "cannot read the override 'model.layers=[layer1.0'"),
        (["train", "data=3"], "'data' (did you mean"),
        (["modularize", "model.layers=abc"], "model.layers must be a list"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, capsys, tmp_path):
    assert main([*args, f"out={tmp_path}"]) == 1
    assert message in capsys.readouterr().err


def test_recipe_errors_name_the_file(tmp_path, capsys):
    cases = {"list.yaml": ("- a\n- b\n", "must be a mapping"), "broken.yaml": ("a: [\n", "not valid YAML"),
             "typo.yaml": ("modle:\n  name: mlp\n", "'modle.name' (did you mean model.name")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["train", "--config", str(tmp_path / name), f"out={tmp_path}"]) == 1
        err = capsys.readouterr().err
        assert message in err and name in err, err


def test_keys_of_other_commands_are_ignored_with_a_warning():
    from deeparc_pl.cli.config import build_config

    with pytest.warns(UserWarning, match=r"does not use \['cka.samples'\]"):
        cfg = build_config("train", None, ["cka.samples=5", "trainer.max_epochs=2", "trainer.gradient_clip_val=1.0"])
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.gradient_clip_val == 1.0  # trainer.* is open
    cfg = build_config("attack", None, ["attack.params.eps=0.05"])  # keys under a dict-valued key are open
    assert cfg.attack.params.eps == 0.05
    cfg = build_config("compress", None, ["latency.repeats=0", "max_rounds=0"])  # 0: no timing, reduction only
    assert cfg.latency.repeats == 0 and cfg.max_rounds == 0


def test_numbers_from_environment_variables_are_numbers(monkeypatch):
    from deeparc_pl.cli.config import build_config

    monkeypatch.setenv("DEEPARC_TEST_BS", "64")
    assert int(build_config("train", None, ["data.batch_size=${oc.env:DEEPARC_TEST_BS}"]).data.batch_size) == 64


def test_parse_sweep():
    assert parse_sweep("0.90:0.92:0.01") == [0.9, 0.91, 0.92]
    assert parse_sweep([0.5, 0.6]) == [0.5, 0.6]
    with pytest.raises(ValueError):
        parse_sweep("0.9:0.8:0.01")


def test_wandb_offline_logs_the_heatmap(tmp_path):
    out = tmp_path / "wb"
    assert main(["modularize", "logger=wandb", f"out={out}", "default.epochs=1", *TINY]) == 0
    runs = list((out / "logs" / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"
    assert list(runs[0].rglob("media/images/cka/similarity_*.png"))


@pytest.mark.parametrize("command, key", [("modularize", "cka.estimator"), ("compress", "pruner"),
                                          ("repair", "mutate.drop"), ("reproduce", "seeds")])
def test_command_help_explains_its_keys(command, key, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert key in out and "model.weights" in out


def test_existing_outputs_are_refused_before_any_work(tmp_path, capsys):
    """Nothing is trained, attacked or written when an output (or the demo model's checkpoint) exists."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"the user's file")
    cases = [
        (["train", "model.name=mlp"], "model.ckpt already exists"),
        (["modularize"], "pass model.weights="),  # would train a new demo model beside the user's
        (["attack"], "pass model.weights="),
        (["enhance"], "pass model.weights="),
    ]
    for args, message in cases:
        assert main([*args, f"out={tmp_path}"]) == 1
        assert message in capsys.readouterr().err
    ckpt.unlink()
    (tmp_path / "modules.png").write_bytes(b"an earlier plot")
    assert main(["modularize", f"out={tmp_path}"]) == 1
    assert "modules.png already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modules.png"]  # no logs, no model, no partial output
    assert (tmp_path / "modules.png").read_bytes() == b"an earlier plot"


@pytest.mark.parametrize("command", ["compress", "enhance", "repair", "reproduce"])
def test_every_command_that_computes_an_architecture_takes_cka_channels_last(command):
    from deeparc_pl.cli.config import build_config

    assert build_config(command, None, ["cka.channels_last=false"]).cka.channels_last is False


class TinyUserNet(torch.nn.Module):
    """A user class outside the zoo, for the built-in digits (1 x 16 x 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(256, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def test_a_user_class_keeps_its_layers_in_the_checkpoint(tmp_path, capsys):
    name = f"{TinyUserNet.__module__}:TinyUserNet"
    assert main(["train", f"model.name={name}", "model.layers=[fc1,fc2,fc3]", f"out={tmp_path}",
                 "trainer.max_epochs=1", "data.fraction=0.25", "trainer.enable_progress_bar=false"]) == 0
    ckpt = tmp_path / "model.ckpt"
    # no model.layers this time: the ones chosen at training come with the checkpoint
    assert main(["modularize", f"model.weights={ckpt}", f"model.name={name}", f"out={tmp_path / 'm'}",
                 "cka.samples=120", "cka.batch_size=40", "threshold=0.5"]) == 0
    arch = json.loads((tmp_path / "m" / "architecture.json").read_text())
    assert arch["layer_names"] == ["fc1", "fc2", "fc3"] and arch["meta"]["model"] == name
    # without naming the class, the checkpoint alone does not get it imported
    assert main(["modularize", f"model.weights={ckpt}", f"out={tmp_path / 'n'}"]) == 1
    assert f"pass model.name={name}" in capsys.readouterr().err


def test_commands_under_ddp_write_once_from_rank_0(tmp_path):
    """Lightning re-runs the command on rank 1: it trains with rank 0 but neither refuses rank 0's
    files nor writes its own (before the fix, one rank crashed on the other's checkpoint)."""
    import os
    import subprocess
    import sys

    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "deeparc_pl.cli.main", "modularize", "model.name=mlp", "default.epochs=1",
           "data.test_size=45", "cka.samples=45", "cka.batch_size=15", "threshold=0.9", f"out={tmp_path}", *ddp]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 2  # the demo checkpoint, then the architecture: once each
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix) == [
        "architecture.json", "model.ckpt", "modules.png", "similarity.png"]


def test_spawned_workers_are_refused_where_results_live_in_python_objects(tmp_path, capsys):
    for command in ("modularize", "enhance", "repair"):
        assert main([command, "trainer.strategy=ddp_spawn", f"out={tmp_path}"]) == 1
        assert "use trainer.strategy=ddp" in capsys.readouterr().err
