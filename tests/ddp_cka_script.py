"""Run by tests/test_callback.py: the CKACallback under Lightning DDP (CPU, gloo) or one process.

usage: python ddp_cka_script.py OUT.npy DEVICES STAGE ESTIMATOR
"""
from __future__ import annotations

import sys

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from deeparc_pl import CKACallback, Classifier
from deeparc_pl.models import build


def main() -> None:
    out, devices, stage, estimator = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.manual_seed(0)
    model = build("resnet8", 4, in_channels=1, image_size=8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(45, 1, 8, 8, generator=g)  # 45: odd, so DistributedSampler pads under 2 processes
    y = torch.randint(0, 4, (45,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    cb = CKACallback(threshold=0.9, estimator=estimator, stages=(stage,))
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    task = Classifier(model, num_classes=4)
    if stage == "validate":
        trainer.validate(task, dataloaders=loader, verbose=False)
    else:
        trainer.predict(task, dataloaders=loader, return_predictions=False)
    if trainer.global_rank == 0:
        np.save(out, cb.similarity)


if __name__ == "__main__":
    main()
