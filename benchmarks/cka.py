"""Benchmark: all L x L linear-CKA pairs of a random-initialised CIFAR ResNet-n (issue 4).

In ONE process, on the same batches of random inputs, measure
  (a) forward passes alone, of the model as given (what every peer runs),
  (a') forward passes alone of a channels-last copy (what ours runs on CPU by default),
  (b) ours: ``similarity_matrix`` (the path ``modularize`` takes: minibatch estimator, Grams in the
      forward hooks, channels-last copy), (b-) the same with ``channels_last=False``,
  (c) pytorch-cka 1.1.3 (``cka.compute_cka``) and (d) torch-cka 0.21 (``torch_cka.CKA``),
  (e) a float64 reference of the same minibatch estimator (pairwise, written here),
and report wall time, extra peak memory and the largest |deviation| from (e).

Peak memory: a thread samples the process RSS (/proc/self/statm) every 2 ms; we report the
high-water mark minus the RSS just before the phase (after gc and glibc malloc_trim), so the shared
model and inputs are excluded.
Ours is also run at half the samples to show its memory does not grow with n. (a), (a'), (b),
(b-) and (c) run round-robin ``--repeats`` times; the fastest and the median run of each are
reported, and the ratios of the medians (the machine may be shared).

    .venv/bin/python benchmarks/cka.py [--samples 2000 --batch 250 --depth 56]
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import statistics
import sys
import threading
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# This file is named cka.py, like pytorch-cka's package: keep its folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from deeparc_pl.architecture.modularize import similarity_matrix  # noqa: E402
from deeparc_pl.similarity.layout import channels_last_copy, to_channels_last  # noqa: E402
from deeparc_pl.taps import LayerTaps  # noqa: E402


def build_model(depth: int) -> nn.Module:
    """The zoo's CIFAR ResNet (``deeparc_pl.models.build``) or, until it exists, its module directly."""
    try:
        from deeparc_pl.models import build  # type: ignore[attr-defined]

        return build(f"resnet{depth}", 10)
    except ImportError:
        from deeparc_pl.models.resnet import resnet

        return resnet(depth, 10)


class PeakRSS:
    """Sample RSS in a thread; ``extra`` = high-water mark minus RSS at start, in MiB."""

    def __init__(self, period: float = 0.002):
        self.period, self.page = period, os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.period)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        try:  # hand memory freed by earlier phases back to the OS, so every phase starts alike
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra = (self.peak - self.start) / 2**20


def measure(fn: Callable[[], torch.Tensor | None]) -> tuple[float, float, torch.Tensor | None]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    return wall, mem.extra, out


def forward_only(model: nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for x in batches:
            model(x)


def forward_channels_last(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """(a'): the copy ours makes, timed with its making and the input conversion."""
    fast = channels_last_copy(model)
    with torch.no_grad():
        for x in batches:
            fast(to_channels_last(x))


def ours(model: nn.Module, names: list[str], batches: list[torch.Tensor], channels_last: bool = True) -> torch.Tensor:
    """The library's path (``modularize`` calls it): Grams computed in the hooks, channels-last copy."""
    return similarity_matrix(model, batches, names, "minibatch", channels_last=channels_last)[1]


def _hsic1_pair(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 of two float64 Grams (Song et al. 2012, Eq. 5), one pair at a time."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    val = torch.trace(k @ l) + (one.t() @ k @ one) * (one.t() @ l @ one) / ((n - 1) * (n - 2))
    val = val - 2.0 / (n - 2) * (one.t() @ k @ l @ one)
    return val.squeeze() / (n * (n - 3))


def reference64(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> torch.Tensor:
    num = len(names)
    hsic = torch.zeros(num, num, dtype=torch.float64)
    with torch.no_grad(), LayerTaps(model, names) as taps:
        for x in batches:
            model(x)
            feats = [o.reshape(o.shape[0], -1).double() for o in taps.outputs]
            grams = [f @ f.t() for f in feats]
            for i in range(num):
                for j in range(i, num):
                    hsic[i, j] += _hsic1_pair(grams[i], grams[j])
                    hsic[j, i] = hsic[i, j]
    d = hsic.diagonal().sqrt()
    return hsic / torch.outer(d, d)


def pytorch_cka(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> torch.Tensor:
    from cka import compute_cka

    loader = DataLoader(TensorDataset(torch.cat(batches)), batch_size=batches[0].shape[0], shuffle=False)
    return compute_cka(model, model, loader, layers=names, device="cpu", progress=False)[0]


def torch_cka(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> torch.Tensor:
    from torch_cka import CKA

    # torch-cka never removes its hooks and runs model1 and model2 separately: give it copies.
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    loader = DataLoader(TensorDataset(torch.cat(batches)), batch_size=batches[0].shape[0], shuffle=False)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        cka = CKA(m1, m2, "m1", "m2", model1_layers=names, model2_layers=names, device="cpu")
        cka.compare(loader)
    return cka.export()["CKA"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="(a), (b), (c) run round-robin this often; min wall kept")
    p.add_argument("--skip", nargs="*", default=[], help="peers to skip: pytorch-cka torch-cka")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    model = build_model(args.depth).eval()
    names = list(getattr(model, "layer_names"))
    inputs = torch.randn(args.samples, 3, 32, 32)
    batches = list(inputs.split(args.batch))
    half = batches[: max(1, len(batches) // 2)]
    print(f"ResNet-{args.depth}: {len(names)} layers, {args.samples} samples in batches of {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    forward_only(model, batches[:1])  # warm-up (allocator, oneDNN kernels)
    # (a), (a'), (b), (b-) and (c) run round-robin ``--repeats`` times so all see the same machine
    # load; the fastest and the median run of each are reported, the ratios between medians.
    timed = [("(a) forward only (model as given)", "forward", lambda: forward_only(model, batches)),
             ("(a') forward only, channels-last copy", "forward-cl", lambda: forward_channels_last(model, batches)),
             ("(b) ours: similarity_matrix (channels-last copy)", "ours", lambda: ours(model, names, batches)),
             ("(b-) ours, channels_last=False", "ours-nchw", lambda: ours(model, names, batches, False))]
    if "pytorch-cka" not in args.skip:
        timed.append(("(c) pytorch-cka 1.1.3", "pytorch-cka", lambda: pytorch_cka(model, names, batches)))
    runs: dict[str, list] = {key: [] for _, key, _ in timed}
    for _ in range(max(1, args.repeats)):
        for _, key, fn in timed:
            runs[key].append(measure(fn))
    best = {key: min(r, key=lambda x: x[0]) for key, r in runs.items()}
    median = {key: statistics.median(x[0] for x in r) for key, r in runs.items()}
    for key, r in runs.items():
        print(f"{key} runs (s): {[round(x[0], 2) for x in r]}  median {median[key]:.2f}")
    # each method against the forward of the same round (measured seconds apart, under the same load)
    for key, r in runs.items():
        ratios = [x[0] / f[0] for x, f in zip(r, runs["forward"])]
        print(f"{key} / forward per round: {[round(q, 2) for q in ratios]}  median {statistics.median(ratios):.2f}")
    # ratio of medians over the round-robin, where a method ran in every round; else of the one run
    rows = [(label, *best[key], median[key]) for label, key, _ in timed]
    wall_h, mem_h, _ = measure(lambda: ours(model, names, half))
    rows.insert(4, (f"(b') ours at {sum(len(b) for b in half)} samples", wall_h, mem_h, None, wall_h))
    nan = float("nan")
    if "pytorch-cka" in args.skip:
        rows.append(("(c) pytorch-cka 1.1.3 (skipped)", nan, nan, None, nan))
    if "torch-cka" in args.skip:
        rows.append(("(d) torch-cka 0.21 (skipped)", nan, nan, None, nan))
    else:
        try:
            wall_d, mem_d, out_d = measure(lambda: torch_cka(model, names, batches))
            rows.append(("(d) torch-cka 0.21", wall_d, mem_d, out_d, wall_d))
        except Exception as exc:  # report honestly and keep going
            print(f"torch-cka failed: {type(exc).__name__}: {exc}")
            rows.append((f"(d) torch-cka 0.21 (failed: {type(exc).__name__})", nan, nan, None, nan))
    wall_r, mem_r, ref = measure(lambda: reference64(model, names, batches))
    rows.append(("(e) float64 reference (pairwise)", wall_r, mem_r, ref, wall_r))

    base, base_cl = median["forward"], median["forward-cl"]
    print()
    print("| method | fastest (s) | median (s) | x (a), medians | x (a'), medians | extra peak RSS (MiB) "
          "| max abs deviation from (e) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, wall, mem, out, med in rows:
        dev = "" if out is None else f"{float((out.double() - ref).abs().max()):.1e}"
        print(f"| {label} | {wall:.2f} | {med:.2f} | {med / base:.2f} | {med / base_cl:.2f} | {mem:.0f} | {dev} |")

if __name__ == "__main__":
    main()
