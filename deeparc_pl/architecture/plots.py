"""Figures of a semantic architecture: similarity heatmap (paper Fig. 5), module size by position
(Fig. 10) and modularity versus threshold (Fig. 11). PNG files, written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write  # noqa: E402
from .semantic import SemanticArchitecture  # noqa: E402

__all__ = ["plot_similarity", "plot_module_sizes", "plot_modularity_sweep", "save_figure"]


def save_figure(fig, path: str | Path, overwrite: bool = False) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"), overwrite)
    finally:
        plt.close(fig)


def plot_similarity(arch: SemanticArchitecture, path: str | Path, overwrite: bool = False) -> Path:
    """Heatmap of the layer similarity with module boundaries drawn in."""
    n = arch.num_layers
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(arch.similarity, cmap="magma", vmin=0.0, vmax=1.0, origin="upper")
    fig.colorbar(im, ax=ax, label=f"CKA ({arch.estimator})")
    for idx in arch.module_indices:
        lo, hi = idx[0] - 0.5, idx[-1] + 0.5
        color = "cyan" if len(idx) > 1 else "white"
        ax.add_patch(plt.Rectangle((lo, lo), hi - lo, hi - lo, fill=False, ec=color, lw=1.2 if len(idx) > 1 else 0.4))
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(
        f"{n} layers, {arch.num_modules} modules, Y={arch.modularity:.2f} (th={arch.threshold}, {arch.method})"
    )
    return save_figure(fig, path, overwrite)


def plot_module_sizes(arch: SemanticArchitecture, path: str | Path, overwrite: bool = False) -> Path:
    """Module size by position in the network (multi-layer modules highlighted)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    starts = [idx[0] for idx in arch.module_indices]
    sizes = [len(idx) for idx in arch.module_indices]
    colors = ["tab:blue" if s > 1 else "tab:gray" for s in sizes]
    ax.bar(starts, sizes, width=[max(s, 1) * 0.9 for s in sizes], align="edge", color=colors)
    ax.set_xlabel("first layer of module")
    ax.set_ylabel("module size (layers)")
    ax.set_xlim(-0.5, arch.num_layers)
    ax.set_title(f"module sizes (Y={arch.modularity:.2f})")
    return save_figure(fig, path, overwrite)


def plot_modularity_sweep(
    thresholds: Sequence[float], modularity: Sequence[float], path: str | Path, overwrite: bool = False
) -> Path:
    """Modularity Y versus threshold, with the high-modularity line Y = 1/4."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(list(thresholds), list(modularity), marker="o")
    ax.axhline(0.25, color="red", lw=0.8, ls="--", label="Y = 1/4")
    ax.set_xlabel("threshold")
    ax.set_ylabel("modularity Y")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return save_figure(fig, path, overwrite)
