"""Re-adaption benchmark (issue 6): does training one located module pay, and does location find damage?

    .venv/bin/python benchmarks/readapt.py --data-dir /path/to/fashion-mnist [--model resnet20]

1. Trains a zoo model briefly on a Fashion-MNIST subset, attacks 1,000 training images with FGSM
   (ART) and 500 test images (held out), modularizes it on 1,000 test images and locates the critical
   module (explicit CKA deviation).
2. Enhancement: ModularEnhance on the located module and on the last module, and FullFinetune, in the
   same process with the same data, loss, optimizer and epochs: time per epoch (prefix cached once,
   counted in the total), accuracy on the training FGSM set, on held-out FGSM and on clean test images.
3. Damage location: for each module, noise is added to that module's weights; D' = test images the
   model handled and the damaged one fails; locate(implicit, reference_model=original) should rank
   the damaged module first.
4. Repair of a mutant 10 points worse, located module vs full.
Enhancement and repair also record accuracy after every epoch against training seconds (evaluation
excluded) and report each run's time to reach FullFinetune's final accuracy minus one point
("time at equal accuracy"). Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from deeparc_pl import FullFinetune, ModularEnhance, locate, modularize
from deeparc_pl.models import build
from deeparc_pl.data import read_idx
from deeparc_pl.readapt.attacks import generate
from deeparc_pl.readapt.evaluate import accuracy
from deeparc_pl.readapt.locate import module_deviations
from deeparc_pl.readapt.report import markdown_table, table_row


def load_idx(folder: Path, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(folder / f"{split}-images-idx3-ubyte.gz")[:n].reshape(-1, 1, 28, 28)
    y = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")[:n]
    return torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


class AccuracyCurve(pl.Callback):
    """Accuracy on ``data`` after every epoch, with the training time spent so far (evaluation excluded).

    It keeps its own clock over the epochs. Callbacks' ``on_train_epoch_end`` run before the task's,
    whose epoch clock stops after them, so each evaluation's duration is also recorded for ``fit`` to
    take back out of the task's ``epoch_seconds``.
    """

    def __init__(self, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.data, self.points, self.eval_seconds = data, [], []
        self._trained = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        t0 = time.perf_counter()
        self._trained += t0 - self._epoch_start
        acc = accuracy(task.model, self.data)
        task.train()  # re-applies frozen-leaf eval modes
        self.points.append((round(task.setup_seconds + self._trained, 2), acc))
        self.eval_seconds.append(time.perf_counter() - t0)


def fit(task: pl.LightningModule, epochs: int, curve: AccuracyCurve | None = None) -> float:
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[curve] if curve else None)
    start = time.perf_counter()
    trainer.fit(task)
    wall = time.perf_counter() - start
    if curve is not None:  # take the evaluations back out of the task's epoch clock and the wall time
        task.epoch_seconds[:] = [s - e for s, e in zip(task.epoch_seconds, curve.eval_seconds)]
        wall -= sum(curve.eval_seconds)
    return wall


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds at the first epoch whose accuracy reaches ``target`` (None if never)."""
    return next((t for t, a in points if a >= target - 1e-9), None)


def equal_accuracy_rows(curves: dict[str, list[tuple[float, float]]], full: str = "full") -> list[str]:
    """Time to reach FullFinetune's final accuracy minus one point, each run against full's own."""
    target = curves[full][-1][1] - 0.01
    t_full = time_to(curves[full], target)
    lines = [f"target = full's final accuracy {curves[full][-1][1]:.4f} - 0.01 = {target:.4f}; full reaches it in "
             f"{t_full:.1f}s"]
    for name, pts in curves.items():
        t = time_to(pts, target)
        ratio = "never reached" if t is None else f"{t:.1f}s = {t / t_full:.2f}x full"
        lines.append(f"| {name} | {' '.join(f'{a:.3f}@{s:.0f}s' for s, a in pts)} | {ratio} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-factor", type=int, default=5, help="epochs factor of the time-matched last-module row")
    p.add_argument("--model-cache", type=Path, default=None, help="reuse/save the trained model's state dict here")
    p.add_argument("--skip-last", action="store_true", help="do not also train the last module (saves time)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a deeparc checkpoint trained on normalised Fashion-MNIST (e.g. from `deeparc train`) "
                        "instead of training --model here; inputs and eps are normalised to match")
    p.add_argument("--method", default="progressive", help="partition rule (progressive, adjacent, optimal)")
    p.add_argument("--only-enhance", action="store_true", help="stop after the enhancement comparison")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed)

    x, y = load_idx(args.data_dir, "train", args.train_samples)
    xt, yt = load_idx(args.data_dir, "t10k", 2000)
    clip = (0.0, 1.0)
    if args.checkpoint is not None:
        from deeparc_pl.data.sources import DATASETS
        from deeparc_pl.models.checkpoint import load_model

        spec = DATASETS["fashion_mnist"]
        mean, std = spec.mean[0], spec.std[0]
        x, xt = (x - mean) / std, (xt - mean) / std
        args.eps, clip = args.eps / std, spec.clip_values  # the same pixel-space budget
        model, _ = load_model(args.checkpoint, {})
        model.eval()
        args.model = f"{args.checkpoint.name} ({type(model).__name__})"
    else:
        model = build(args.model, 10, in_channels=1, image_size=28)
        if args.model_cache and args.model_cache.exists():
            model.load_state_dict(torch.load(args.model_cache, weights_only=True))
            model.eval()
        else:
            t0 = time.perf_counter()
            train(model, x, y, args.train_epochs)
            print(f"trained {args.model} in {time.perf_counter() - t0:.1f}s")
            if args.model_cache:
                torch.save(model.state_dict(), args.model_cache)
    print(f"clean test acc {accuracy(model, (xt, yt)):.4f}")

    ds = torch.utils.data.TensorDataset(xt[:1000], yt[:1000])
    arch = modularize(model, torch.utils.data.DataLoader(ds, batch_size=250), threshold=args.threshold,
                      method=args.method)
    # a briefly trained model is very smooth: raise the threshold until there are >= 3 modules
    for th in (args.threshold, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999):
        if th >= args.threshold:
            arch = arch.repartition(threshold=th)
            if arch.num_modules >= 3:
                break
    adjacent = [round(float(arch.similarity[i, i + 1]), 4) for i in range(arch.num_layers - 1)]
    print(arch, arch.modules, "adjacent CKA", adjacent)

    adv = generate(model, (x[: args.samples], y[: args.samples]), "fgsm", eps=args.eps, clip_values=clip)
    held = generate(model, (xt[1000:1500], yt[1000:1500]), "fgsm", eps=args.eps, clip_values=clip)
    clean = (xt[1500:2000], yt[1500:2000])
    t0 = time.perf_counter()
    ranking = locate(model, arch, (adv.x, adv.y), (adv.x_adv, adv.y), mode="explicit")
    print(f"location (explicit, increment) in {time.perf_counter() - t0:.1f}s: {ranking}")

    before = {"acc_before": accuracy(model, (adv.x_adv, adv.y)), "heldout_before": accuracy(model, (held.x_adv, held.y)),
              "clean_before": accuracy(model, clean)}
    candidates = [("modular (located)", ranking[0][0], args.epochs)]
    if arch.num_modules - 1 != ranking[0][0] and not args.skip_last:
        last = arch.num_modules - 1
        candidates.append(("modular (last module)", last, args.epochs))
        candidates.append((f"modular (last module, {args.long_factor}x epochs)", last, args.epochs * args.long_factor))
    rows = []
    opts = dict(lr=args.lr, batch_size=128, seed=args.seed)
    first = None
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, k, epochs in candidates:
        task = ModularEnhance(model, arch, k, None, adv, **opts)
        first = first or task
        curve = AccuracyCurve((held.x_adv, held.y))
        wall = fit(task, epochs, curve)
        curves[name] = curve.points
        rows.append(table_row("enhance", name, task, **before, acc_after=accuracy(task.model, (adv.x_adv, adv.y)),
                              heldout_after=accuracy(task.model, (held.x_adv, held.y)),
                              clean_after=accuracy(task.model, clean)) | {"fit_wall": round(wall, 2)})
    full = FullFinetune.from_task(first)
    curve = AccuracyCurve((held.x_adv, held.y))
    wall = fit(full, args.epochs, curve)
    curves["full"] = curve.points
    rows.append(table_row("enhance", "full", full, **before, acc_after=accuracy(full.model, (adv.x_adv, adv.y)),
                          heldout_after=accuracy(full.model, (held.x_adv, held.y)),
                          clean_after=accuracy(full.model, clean)) | {"fit_wall": round(wall, 2)})
    print(f"\n## enhancement: {args.model}, FGSM eps {args.eps}, {args.samples} pairs, {args.epochs} epochs, "
          f"lr {args.lr}, {args.threads} thread(s)\n")
    print(markdown_table(rows))
    for r in rows:
        print(f"{r['approach']}: fit wall {r['fit_wall']}s, train {r['train_seconds']}s, per epoch {r['epoch_seconds']}s")
    print("\n### enhancement at equal accuracy (held-out FGSM accuracy after each epoch @ training seconds)\n")
    print("\n".join(equal_accuracy_rows(curves)))

    if args.only_enhance:
        return

    # damage location
    print("\n## damage location (implicit, increment, reference_model = undamaged model)\n")
    print("| damaged module | layers | accuracy after damage | broken samples | located first | rank of damaged | deviations |")
    print("|---|---|---|---|---|---|---|")
    ok0 = model(xt[:1000]).argmax(1) == yt[:1000]
    from deeparc_pl.readapt.freezing import module_span, trace_model

    trace = trace_model(model, arch, xt[:2])
    for k in range(arch.num_modules):
        damaged = copy.deepcopy(model)
        span = module_span(damaged, arch, k, trace)
        params = dict(damaged.named_parameters())
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n in span.parameters:
                if params[n].ndim > 1:  # conv / linear weights
                    w = params[n]
                    w.add_(torch.randn(w.shape, generator=g) * w.std() * 0.5)
        with torch.no_grad():
            okd = damaged(xt[:1000]).argmax(1) == yt[:1000]
        broken = ok0 & ~okd
        if int(broken.sum()) < 10:
            print(f"| {k} | {arch.modules[k][0]}..{arch.modules[k][-1]} | {float(okd.float().mean()):.3f} | {int(broken.sum())} | too few | | |")
            continue
        ref, tgt = (xt[:1000][ok0], yt[:1000][ok0]), (xt[:1000][broken], yt[:1000][broken])
        r = locate(damaged, arch, ref, tgt, mode="implicit", reference_model=model)
        devs = module_deviations(damaged, arch, ref, tgt, mode="implicit", reference_model=model, include_input=True)
        pos = [m for m, _ in r].index(k) + 1
        print(f"| {k} | {arch.modules[k][0]}..{arch.modules[k][-1]} | {float(okd.float().mean()):.3f} | {int(broken.sum())} | "
              f"{r[0][0]} | {pos} | {' '.join(f'{d:.2f}' for d in devs)} |")

    # repair: a mutant 10 points worse on 2,000 training images, located module vs full
    from deeparc_pl.readapt.mutants import mutate
    from deeparc_pl.readapt.tasks import ModularRepair

    xr, yr = x[:2000], y[:2000]
    mutant = mutate(model, (xr, yr), 0.1, tolerance=0.03, seed=args.seed)
    with torch.no_grad():
        ok = mutant(xr).argmax(1) == yr
    ref, tgt = (xr[ok], yr[ok]), (xr[~ok], yr[~ok])
    rk = locate(mutant, arch, ref, tgt, mode="implicit")
    print(f"\nrepair location (implicit, increment, mutant only): {rk}")
    before = {"acc_before": accuracy(mutant, (xr, yr)), "clean_before": accuracy(mutant, clean)}
    rows = []
    modular = ModularRepair(mutant, arch, rk[0][0], ref, tgt, **opts)
    curves = {}
    for name, task in (("modular (located)", modular), ("full", FullFinetune.from_task(modular))):
        curve = AccuracyCurve((xr, yr))
        wall = fit(task, args.epochs, curve)
        curves[name] = curve.points
        rows.append(table_row("repair", name, task, drop=0.1, **before, acc_after=accuracy(task.model, (xr, yr)),
                              clean_after=accuracy(task.model, clean)) | {"fit_wall": round(wall, 2)})
    print(f"\n## repair: mutant drop 0.1 (accuracy {before['acc_before']:.4f} on 2,000 training images), "
          f"{args.epochs} epochs\n")
    print(markdown_table(rows))
    print("\n### repair at equal accuracy (accuracy on the 2,000 repaired images after each epoch @ training seconds)\n")
    print("\n".join(equal_accuracy_rows(curves)))


if __name__ == "__main__":
    main()
