"""Run by tests/test_callback.py: the CKACallback and Classifier under Lightning DDP (CPU, gloo) or
one process, on sets whose sizes make DistributedSampler pad.

usage: python ddp_cka_script.py OUT.npy DEVICES CASE ESTIMATOR
CASE: validate | predict (one loader of 45), two_loaders (validate on 45 and 17), small (validate on 7,
batches of 4: one rank gets only a batch too small for minibatch), tiny (validate on 2 samples: with 3
ranks one holds padding only), test_acc (Classifier test accuracy on 45)
"""
from __future__ import annotations

import sys

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from deeparc_pl import CKACallback, Classifier
from deeparc_pl.models import build


def loader(n: int, seed: int, batch_size: int = 5) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)  # odd sizes, so DistributedSampler pads under 2 processes
    y = torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def main() -> None:
    out, devices, case, estimator = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.manual_seed(0)
    model = build("resnet8", 4, in_channels=1, image_size=8)
    stage = "predict" if case == "predict" else "validate"
    cb = CKACallback(threshold=0.9, estimator=estimator, stages=(stage,))
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    task = Classifier(model, num_classes=4)
    result = None
    if case == "validate":
        trainer.validate(task, dataloaders=loader(45, 1), verbose=False)
    elif case == "predict":
        trainer.predict(task, dataloaders=loader(45, 1), return_predictions=False)
    elif case == "two_loaders":
        trainer.validate(task, dataloaders=[loader(45, 1), loader(17, 2)], verbose=False)
    elif case == "tiny":  # 2 samples over 3 ranks: rank 2 holds padding only
        trainer.validate(task, dataloaders=loader(2, 1, batch_size=1), verbose=False)
    elif case == "small":
        trainer.validate(task, dataloaders=loader(7, 1, batch_size=4), verbose=False)
    elif case == "test_acc":
        result = np.array([trainer.test(task, dataloaders=loader(45, 1), verbose=False)[0]["test_acc"]])
    if trainer.global_rank == 0:
        np.save(out, cb.similarity if result is None else result)


if __name__ == "__main__":
    main()
