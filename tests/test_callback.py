"""CKACallback in a Lightning loop: equals the plain API; under DDP (2 CPU processes, gloo) equals one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from deeparc_pl import CKACallback, Classifier, modularize
from deeparc_pl.architecture.callback import padding_mask
from deeparc_pl.models import build

SCRIPT = Path(__file__).with_name("ddp_cka_script.py")


def _run(tmp_path: Path, devices: int, stage: str, estimator: str) -> np.ndarray:
    out = tmp_path / f"sim_{devices}_{stage}_{estimator}.npy"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), stage, estimator],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def test_validate_exact_ddp_equals_one_process(tmp_path):
    one = _run(tmp_path, 1, "validate", "exact")
    two = _run(tmp_path, 2, "validate", "exact")
    np.testing.assert_allclose(two, one, atol=1e-10)
    assert np.allclose(np.diag(one), 1.0)


def test_predict_exact_ddp_equals_one_process(tmp_path):
    # predict uses Lightning's unrepeated sampler (no padding); the exact estimator gathers every sample.
    one = _run(tmp_path, 1, "predict", "exact")
    two = _run(tmp_path, 2, "predict", "exact")
    np.testing.assert_allclose(two, one, atol=1e-10)


@pytest.mark.parametrize("case", ["two_loaders", "test_acc"])
def test_padded_loaders_give_one_process_results_under_ddp(tmp_path, case):
    """Several validation loaders (padding counted per loader) and the Classifier's test accuracy
    (padding duplicates not counted): 2 processes equal one."""
    one = _run(tmp_path, 1, case, "exact")
    two = _run(tmp_path, 2, case, "exact")
    np.testing.assert_allclose(two, one, atol=1e-10)


def test_a_rank_with_padding_only_still_joins_the_exact_gather(tmp_path):
    one = _run(tmp_path, 1, "tiny", "exact")
    three = _run(tmp_path, 3, "tiny", "exact")
    np.testing.assert_allclose(three, one, atol=1e-10)


def test_a_rank_with_only_a_too_small_batch_does_not_fail_the_run(tmp_path):
    # 7 samples in batches of 4: rank 1 holds 3 real samples (and a padding repeat), too few for the
    # unbiased estimator; the batches summed over both ranks still give a matrix, as one process does.
    two = _run(tmp_path, 2, "small", "minibatch")
    assert np.isfinite(two).all() and np.allclose(np.diag(two), 1.0)


def test_padding_mask_marks_duplicates():
    from torch.utils.data import DistributedSampler

    ds = TensorDataset(torch.zeros(5))
    s1 = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)  # rank 1 gets positions 1, 3, 5(pad)
    assert padding_mask(s1, 0, 2) is None
    assert padding_mask(s1, 2, 1).tolist() == [False]
    s0 = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=False)
    assert padding_mask(s0, 0, 3) is None


def test_callback_equals_modularize_and_tracks_history():
    torch.manual_seed(0)
    model = build("resnet8", 3, in_channels=1, image_size=8)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    cb = CKACallback(threshold=0.95, estimator="minibatch")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb], max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0,
                         enable_checkpointing=False)
    task = Classifier(model, num_classes=3)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=loader)
    assert [h["epoch"] for h in cb.history] == [0, 1]
    arch = modularize(task.model, loader, threshold=0.95, estimator="minibatch")
    np.testing.assert_allclose(cb.similarity, arch.similarity, atol=1e-12)
    assert cb.architecture.modules == arch.modules
    assert cb.state_dict()["history"] == cb.history


def test_callback_says_when_no_batch_was_large_enough():
    model = build("resnet8", 3, in_channels=1, image_size=8)
    loader = DataLoader(TensorDataset(torch.randn(9, 1, 8, 8), torch.zeros(9, dtype=torch.long)), batch_size=3)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[CKACallback()])
    with pytest.raises(ValueError, match="no validate batch was large enough.*skipped 9 samples.*at least 4"):
        trainer.validate(Classifier(model, num_classes=3), dataloaders=loader, verbose=False)


def test_callback_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        CKACallback(threshold=0.0)
    with pytest.raises(ValueError, match="unknown partition method 'bogus'"):
        CKACallback(method="bogus")  # at construction, not after the forward passes
    with pytest.raises(ValueError, match="unknown CKA estimator"):
        CKACallback(estimator="rbf")
    with pytest.raises(ValueError, match=r"stages must be some of \['validate', 'predict'\], got \['bogus'\]"):
        CKACallback(stages=("bogus",))
    with pytest.raises(ValueError, match="every_n_epochs"):
        CKACallback(every_n_epochs=0)
    with pytest.raises(TypeError, match="got the string"):
        CKACallback(layers="layer1")
    with pytest.raises(TypeError, match="model_attr must be the name"):
        CKACallback(model_attr=5)
    assert CKACallback(stages="validate").stages == ("validate",)  # one stage by name, not its letters


def test_callback_names_a_missing_model_attr():
    from deeparc_pl.architecture.callback import _unwrap

    with pytest.raises(AttributeError, match="no nn.Module attribute 'net'"):
        _unwrap(pl.LightningModule(), "net")
