"""`deeparc attack`, `enhance` and `repair` end to end on tiny settings (digits, ResNet-8)."""
from __future__ import annotations

import json

import pytest
import torch

from deeparc_pl.cli.main import main
from deeparc_pl.readapt.attacks import AdversarialSet

TINY = ["data.batch_size=64", "data.test_size=120", "trainer.enable_progress_bar=false", "cka.samples=120",
        "readapt.samples=96", "readapt.heldout=64", "readapt.epochs=1", "readapt.batch_size=32", "threshold=0.99"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rq4")
    assert main(["train", "model.name=resnet8", f"out={out}", "trainer.max_epochs=3",
                 "data.batch_size=64", "trainer.enable_progress_bar=false", "train.optimizer=adam",
                 "train.lr=0.01"]) == 0
    return out


def test_attack_writes_a_readable_set(trained):
    ckpt = trained / "model.ckpt"
    assert main(["attack", f"model.weights={ckpt}", f"out={trained}", "attack.limit=40", "attack.split=test",
                 "trainer.enable_progress_bar=false"]) == 0
    files = list(trained.glob("adversarial_fgsm_test.pt"))
    assert files, list(trained.iterdir())
    adv = AdversarialSet.load(files[0])
    assert adv.x_adv.shape == (40, 1, 16, 16) and torch.equal(adv.y, adv.y.long())
    assert (adv.x_adv - adv.x).abs().amax() > 0


@pytest.mark.parametrize("command", ["enhance", "repair"])
def test_readapt_commands_print_table_iii_rows(trained, command, tmp_path):
    ckpt = trained / "model.ckpt"
    assert main([command, f"model.weights={ckpt}", f"out={tmp_path}", *TINY]) == 0
    report = json.loads((tmp_path / f"readapt_{command}.json").read_text())
    rows = report["rows"] if isinstance(report, dict) else report
    modular = [r for r in rows if r["module"] != "all"]
    full = [r for r in rows if r["module"] == "all"]
    assert modular and full
    # the located module trains a strict subset of the parameters; full training trains them all
    assert 0 < modular[0]["trained_params"] < full[0]["trained_params"]
    assert full[0]["trained_share"] == 1.0 and 0 < modular[0]["trained_share"] < 1
    for r in rows:
        assert 0.0 <= r["acc_before"] <= 1.0 and 0.0 <= r["acc_after"] <= 1.0 and r["train_seconds"] > 0
    assert (tmp_path / f"readapt_{command}.md").exists()
