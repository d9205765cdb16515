"""``deeparc enhance`` / ``deeparc repair``: locate the critical module, train it, compare with full training.

enhance: adversarial samples (``attack.*``, or ``attack.file`` from ``deeparc attack``) paired with their
clean originals; repair: a mutant of the model (``mutate.drop``) and the training samples it fails on.
Both then modularize (or read ``architecture=path``), locate, train the located module and, as the
baseline, the whole model with the same loss and data, and print the paper's Table III rows.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from .common import console, is_primary, make_datamodule, make_trainer, out_dir, plain, print_table, refuse_spawning
from .modularize import KEYS as MODULARIZE_KEYS

__all__ = ["run", "KEYS", "HELP", "COMMAND_AWARE"]

COMMAND_AWARE = True
HELP = "re-adapt a model by training one located module vs full training (enhance: adversarial; repair: mutant)"
KEYS = {
    "readapt.samples": (1000, "samples to adapt to: attacked training samples (enhance) or the training subset the mutant is scored on (repair)"),
    "readapt.heldout": (500, "test samples for held-out accuracy (enhance: attacked too)"),
    "readapt.module": (None, "train this module index instead of the located one"),
    "readapt.alpha": (1.0, "weight of the cross-entropy on D u D'"),
    "readapt.beta": (1.0, "weight of the deviation term Dev(D')"),
    "readapt.deviation": (None, "cka or mse (enhance), nll or mse (repair); default cka / nll"),
    "readapt.lr": (0.01, "SGD learning rate (authors: 1e-4 in Keras)"),
    "readapt.momentum": (0.9, "SGD momentum"),
    "readapt.epochs": (10, "training epochs, modular and full (authors: 10)"),
    "readapt.modular_epochs": (None, "epochs of the modular run only (default readapt.epochs): compare at equal time"),
    "readapt.batch_size": (128, "training batch size (authors: 128)"),
    "readapt.cache": (True, "cache the frozen prefix's output once (inputs never change)"),
    "readapt.full": (True, "also train the whole model as the baseline"),
    "attack.method": ("fgsm", "enhance: fgsm, pgd, deepfool or cw"),
    "attack.params": ({}, "enhance: attack options, e.g. attack.params.eps=0.05"),
    "attack.file": (None, "enhance: read this AdversarialSet (from `deeparc attack`) instead of attacking"),
    "mutate.drop": (0.1, "repair: accuracy drop of the mutant (paper: 0.1, 0.3, 0.5)"),
    "mutate.tolerance": (0.02, "repair: accepted distance to the target accuracy"),
    "mutate.seed": (0, "repair: mutation seed"),
    "architecture": (None, "architecture.json from `deeparc modularize` (default: computed here)"),
    "threshold": (0.99, "similarity threshold when the architecture is computed here"),
    "method": ("progressive", "partition method when the architecture is computed here"),
    "cka.estimator": ("minibatch", "CKA estimator when the architecture is computed here"),
    "cka.samples": (1000, "test samples for the CKA when the architecture is computed here"),
    "cka.channels_last": MODULARIZE_KEYS["cka.channels_last"],
    "locate.mode": (None, "explicit (enhance default) or implicit (repair default)"),
    "locate.rank_by": ("increment", "increment (authors) or absolute"),
    "locate.baseline": ("input", "first module's increment over the inputs' deviation (input) or 0 (zero)"),
    "default.epochs": (4, "built-in default: epochs to train the demo model when no model.weights are given"),
}


def _architecture(cfg: DictConfig, model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor):
    from ..architecture.modularize import modularize
    from ..architecture.semantic import SemanticArchitecture
    from ..data.samplers import ShuffledPasses

    if cfg.get("architecture"):
        return SemanticArchitecture.load(str(cfg.architecture))
    n = min(int(cfg.cka.samples), len(x_test))
    ds = TensorDataset(x_test[:n], y_test[:n])
    loader = DataLoader(ds, batch_size=256, sampler=ShuffledPasses(ds, passes=1, seed=int(cfg.seed)))
    return modularize(model, loader, layers=plain(cfg.model.layers), threshold=float(cfg.threshold),
                      method=str(cfg.method), estimator=str(cfg.cka.estimator),
                      channels_last=plain(cfg.cka.get("channels_last")))


def _fit(cfg: DictConfig, command: str, task: Any, epochs: int) -> float:
    trainer = make_trainer(cfg, command, max_epochs=epochs, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(task)
    return time.perf_counter() - start


def run(cfg: DictConfig, overwrite: bool = False, command: str = "enhance") -> Path:
    from ..readapt.evaluate import accuracy
    from ..readapt.locate import locate, module_deviations
    from ..readapt.report import markdown_table, table_row, write_report
    from ..readapt.tasks import FullFinetune, ModularEnhance, ModularRepair
    from .attack import split_tensors
    from .modularize import obtain_model, refuse_outputs

    if command not in ("enhance", "repair"):
        raise ValueError(f"command must be 'enhance' or 'repair', got {command!r}")
    folder = Path(str(cfg.out))
    refuse_spawning(cfg, command, "the tasks' timings and cache state")
    refuse_outputs(cfg, [folder / f"readapt_{command}.md", folder / f"readapt_{command}.json"], overwrite)
    pl.seed_everything(int(cfg.seed), workers=True)
    dm = make_datamodule(cfg)
    model = obtain_model(cfg, dm, overwrite).eval()
    r = cfg.readapt
    x_test, y_test = split_tensors(dm, "test")
    heldout = (x_test[: int(r.heldout)], y_test[: int(r.heldout)])
    meta: dict[str, Any] = {"title": f"deeparc {command}: modular vs full training (paper Table III)",
                            "model": str(cfg.model.name or cfg.model.weights), "data": str(cfg.data.name)}

    if command == "enhance":
        from ..readapt.attacks import AdversarialSet, generate

        params = dict(plain(cfg.attack.params) or {})
        clip = tuple(dm.clip_values)
        if cfg.attack.file:
            adv = AdversarialSet.load(str(cfg.attack.file))
        else:
            x, y = split_tensors(dm, "train", int(r.samples))
            adv = generate(model, (x, y), str(cfg.attack.method), clip_values=clip, seed=int(cfg.seed), **params)
        same = {k: v for k, v in adv.params.items() if k not in ("clip_values", "seed", "limit")}
        held_adv = generate(model, heldout, adv.method, clip_values=clip, seed=int(cfg.seed) + 1, **same)
        subject = model
        reference, target = (adv.x, adv.y), (adv.x_adv, adv.y)
        adapted = (adv.x_adv, adv.y)  # paper Table III: accuracy on the adversarial samples
        held_eval = (held_adv.x_adv, held_adv.y)
        mode = str(cfg.locate.mode or "explicit")
        meta.update(attack=adv.method, samples=len(adv), heldout_samples=len(held_adv))
        drop = None
    else:
        from ..readapt.mutants import mutate

        x, y = split_tensors(dm, "train", int(r.samples))
        subject = mutate(model, (x, y), float(cfg.mutate.drop), tolerance=float(cfg.mutate.tolerance),
                         seed=int(cfg.mutate.seed))
        with torch.no_grad():
            from ..readapt.evaluate import predict

            pred, _ = predict(subject, (x, y))
        ok = pred == y
        if bool(ok.all()):
            raise ValueError("the mutant fails on no sample: nothing to repair")
        reference, target = (x[ok], y[ok]), (x[~ok], y[~ok])
        adapted = (x, y)
        held_eval = heldout
        mode = str(cfg.locate.mode or "implicit")
        drop = float(cfg.mutate.drop)
        meta.update(samples=len(x), failing=int((~ok).sum()), mutation=getattr(subject, "mutation_info", {}))

    arch = _architecture(cfg, model, x_test, y_test)
    start = time.perf_counter()
    devs = module_deviations(subject, arch, reference, target, mode=mode,
                             include_input=str(cfg.locate.baseline) == "input")
    ranking = locate(subject, arch, reference, target, mode=mode, rank_by=str(cfg.locate.rank_by),
                     baseline=str(cfg.locate.baseline))
    locate_seconds = time.perf_counter() - start
    module = int(r.module) if r.module is not None else ranking[0][0]
    print_table(f"critical-module location ({mode}, {cfg.locate.rank_by})", [
        {"rank": i + 1, "module": k, "layers": f"{arch.modules[k][0]} .. {arch.modules[k][-1]}", "score": s}
        for i, (k, s) in enumerate(ranking)])
    meta.update(architecture=f"{arch.num_modules} modules, modularity {arch.modularity:.3f}",
                location=[[k, round(s, 5)] for k, s in ranking], module=module,
                deviations=[round(d, 5) for d in devs], locate_seconds=round(locate_seconds, 2))

    cls = ModularEnhance if command == "enhance" else ModularRepair
    opts = dict(alpha=float(r.alpha), beta=float(r.beta), deviation=r.deviation, lr=float(r.lr),
                momentum=float(r.momentum), batch_size=int(r.batch_size), seed=int(cfg.seed))
    before = {"acc_before": accuracy(subject, adapted), "heldout_before": accuracy(subject, held_eval),
              "clean_before": accuracy(subject, heldout)}
    rows = []
    tasks = [("modular", cls(subject, arch, module, reference, target, cache_prefix=bool(r.cache), **opts))]
    if bool(r.full):
        tasks.append(("full", FullFinetune.from_task(tasks[0][1])))
    for name, task in tasks:
        epochs = int(r.modular_epochs) if (name == "modular" and r.get("modular_epochs")) else int(r.epochs)
        wall = _fit(cfg, command, task, epochs)
        meta[f"{name}_epochs"] = epochs
        trained = task.model.eval()
        rows.append(table_row(command, name, task, drop=drop, **before,
                              acc_after=accuracy(trained, adapted), heldout_after=accuracy(trained, held_eval),
                              clean_after=accuracy(trained, heldout)))
        meta[f"{name}_fit_wall_seconds"] = round(wall, 2)
    if command == "repair":
        for row in rows:  # held-out = clean test here; keep one pair of columns
            row.pop("heldout_before", None)
            row.pop("heldout_after", None)
    if not is_primary():
        return folder / f"readapt_{command}.md"
    out = out_dir(cfg, command)
    md, js = write_report(out, f"readapt_{command}", rows, meta, overwrite=overwrite)
    console.print(f"\n{meta['title']}\n\n{markdown_table(rows)}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {md} and {js}")
    return md
