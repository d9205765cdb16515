"""``deeparc reproduce rq=rq1|rq2|rq3|rq4``: one research question of the paper, end to end.

Each writes ``{out}/<rq>/<rq>.md``, ``<rq>.json`` and PNG figures; its cells (one trained model, one
attack, one probe...) are stored one JSON file each under ``{out}/<rq>/cells/`` as they finish, so an
interrupted run resumes without redoing them. ``seeds=[0,1,2]`` gives mean ± std; ``logger=wandb``
logs cells, tables and figures to W&B (offline unless WANDB_MODE=online). Recipes: ``recipes/rq*_*.yaml``.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from .modularize import KEYS as MODULARIZE_KEYS

__all__ = ["run", "KEYS", "HELP", "POSITIONAL", "RQS"]

HELP = "reproduce a research question of the paper: rq1, rq2, rq3, rq4"
#: A bare word on the command line (``deeparc reproduce rq1``) sets this key.
POSITIONAL = "rq"
RQS = ("rq1", "rq2", "rq3", "rq4")

KEYS: dict[str, tuple[Any, str]] = {
    "rq": (None, "research question: rq1, rq2, rq3 or rq4 (also positional: `deeparc reproduce rq1`)"),
    "threads": (None, "torch CPU threads while running (None: torch's default; 1 avoids oversubscription on busy CPUs)"),
    "seeds": (None, "list of seeds, e.g. [0,1,2] (mean ± std over them); default [seed]"),
    "threshold": (0.99, "similarity threshold th_s of the partition"),
    "method": ("progressive", "partition rule: progressive (Algorithm 1), adjacent (authors' code), optimal"),
    "cka.estimator": ("minibatch", "minibatch (unbiased HSIC_1, authors), exact or paper"),
    "cka.batch_size": (256, "batch size of the CKA passes (authors: 256)"),
    "cka.passes": (1, "shuffled passes over the CKA samples (authors: 10)"),
    "cka.split": ("test", "split feeding the CKA: test, train or val"),
    "cka.samples": (1000, "first N samples of that split (None: all)"),
    "cka.channels_last": MODULARIZE_KEYS["cka.channels_last"],
    "train.optimizer": ("sgd", "sgd (momentum, cosine decay) or adam"),
    "train.lr": (0.05, "learning rate"),
    "train.momentum": (0.9, "SGD momentum"),
    "train.weight_decay": (5e-4, "L2 weight decay"),
    # RQ1
    "rq1.models": (["resnet8", "resnet14", "resnet20", "resnet32"], "model sizes MS, smallest first (paper: resnet14/44/86/110/152)"),
    "rq1.fractions": ([0.2, 0.4, 0.6, 0.8, 1.0], "data sizes DS: fractions of the training file (paper: 0.2..1.0)"),
    "rq1.classes": ([2, 4, 6, 8, 10], "task scales TS: first k classes (paper: 0.2N..N)"),
    "rq1.design": ("full", "full (factorial grid, paper) or axes (one variable at a time around the middle)"),
    "rq1.thresholds": ("0.90:0.99:0.01", "threshold sweep of Fig. 11 (repartition, no new forward passes)"),
    # RQ2
    "rq2.model": ("resnet20", "subject model (paper: resnet110, wrn38, vgg19)"),
    "rq2.weights": (None, "use this trained checkpoint instead of training (one model for every seed)"),
    "rq2.fraction": (1.0, "training data fraction of the subject model"),
    "rq2.classes": (None, "first k classes (None: all)"),
    "rq2.max_intra_remove": (None, "at most this many intra-module layers removed (None: all compatible)"),
    "rq2.max_intra_add": (None, "at most this many intra-module layers duplicated"),
    "rq2.max_inter_remove": (None, "at most this many inter-module layers removed"),
    "rq2.eval_train_samples": (2000, "train samples for the accuracy of variants"),
    "rq2.eval_test_samples": (2000, "test samples for the accuracy of variants"),
    "rq2.attacks": (["fgsm", "pgd", "deepfool", "cw"], "attacks of Fig. 13"),
    "rq2.attack_samples": (200, "N adversarial samples of the original model (paper: 1000)"),
    "rq2.attack_params": ({}, "per-attack options, e.g. rq2.attack_params.cw.max_iter=5"),
    "rq2.probe.enabled": (True, "linear probes per layer (Table I)"),
    "rq2.probe.train_samples": (1000, "train samples fitting each probe"),
    "rq2.probe.test_samples": (500, "test samples scoring each probe"),
    "rq2.probe.pool": (2, "average-pool feature maps to pool x pool before flattening"),
    "rq2.probe.C": (1.0, "inverse L2 strength of the logistic regression"),
    "rq2.probe.max_iter": (300, "lbfgs iterations of the logistic regression"),
    "rq2.probe.score": ("test_acc", "probe accuracy compared in Table I: test_acc (held out) or train_acc"),
    # RQ3 (subject: model.name, default resnet20, or model.weights, on data.*) takes `deeparc compress`'s keys
    # RQ4 (same subject) takes `deeparc enhance/repair`'s readapt.*, locate.*, mutate.tolerance keys
    "rq4.attacks": (["fgsm", "pgd", "deepfool", "cw"], "enhancement: one `deeparc enhance` run per attack"),
    "rq4.attack_params": ({}, "per-attack options, e.g. rq4.attack_params.cw.max_iter=5 (attack.params applies to attack.method)"),
    "rq4.drops": ([0.1, 0.3, 0.5], "repair: training-accuracy drops of the mutants (one `deeparc repair` run each)"),
    "rq4.mutants": (3, "repair: mutants per drop (paper: 3)"),
}


def _borrowed_keys(module: str, skip: tuple[str, ...]) -> dict[str, tuple[Any, str]]:
    """The keys of another command (rq3 takes `deeparc compress`'s, rq4 `deeparc enhance/repair`'s)."""
    import importlib

    try:
        keys = dict(getattr(importlib.import_module(module), "KEYS", {}) or {})
    except ImportError:  # that command is not installed: its research question will say so when run
        return {}
    return {k: v for k, v in keys.items() if k not in skip and k not in KEYS}


KEYS.update(_borrowed_keys("deeparc_pl.cli.compress", ("architecture", "repartition", "default.epochs")))
KEYS.update({k: v for k, v in _borrowed_keys("deeparc_pl.cli.readapt", ()).items()
             if k.startswith(("readapt.", "locate.")) or k == "mutate.tolerance"})


def _rq(cfg: DictConfig) -> str:
    rq = cfg.get("rq")
    if rq is None:
        raise ValueError(f"which research question? give one of {', '.join(RQS)} (e.g. `deeparc reproduce rq1`)")
    rq = str(rq).lower()
    if rq not in RQS:
        raise ValueError(f"unknown research question {rq!r}; choose one of {', '.join(RQS)}")
    return rq


def run(cfg: DictConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one research question; returns {folder, computed, reused, report}."""
    rq = _rq(cfg)
    threads = cfg.get("threads")
    if threads is None:
        return _dispatch(rq, cfg, overwrite)
    import torch

    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return _dispatch(rq, cfg, overwrite)
    finally:
        torch.set_num_threads(before)


def _dispatch(rq: str, cfg: DictConfig, overwrite: bool) -> dict[str, Any]:
    if rq == "rq1":
        from ..reproduce.rq1 import run_rq1

        return run_rq1(cfg, overwrite=overwrite)
    if rq == "rq2":
        from ..reproduce.rq2 import run_rq2

        return run_rq2(cfg, overwrite=overwrite)
    if rq == "rq3":
        from ..reproduce.rq3 import run_rq3

        return run_rq3(cfg, overwrite=overwrite)
    from ..reproduce.rq4 import run_rq4

    return run_rq4(cfg, overwrite=overwrite)
