"""``SemanticArchitecture``: the modules of a network, with the evidence they were drawn from."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fileio import write_json
from ..similarity.functional import ESTIMATORS
from .partition import METHODS, partition, validate_similarity, validate_threshold

__all__ = ["SemanticArchitecture", "FORMAT", "MANUAL"]

FORMAT = "deeparc_pl.semantic_architecture/v1"
#: ``method`` of a partition given by hand (not drawn from the similarity by a rule).
MANUAL = "manual"


def _names(value: Any, what: str) -> list[str]:
    """A list of non-empty layer names (a bare string is refused: it would split into letters)."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a list of layer names, got {type(value).__name__} {value!r}")
    value = list(value)  # lists, tuples, omegaconf ListConfig, numpy arrays of names
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"{what} must hold non-empty strings (layer names), got {bad[:3]}")
    return [str(v) for v in value]


@dataclass
class SemanticArchitecture:
    """Layer names, their similarity matrix and the partition of the layers into modules.

    ``modules`` are lists of layer names in model order; ``similarity[i, j]`` is the similarity
    of layers ``i`` and ``j`` (CKA under ``estimator``). ``meta`` records how it was measured
    (model, data, samples, batch size, passes, seed).
    """

    layer_names: list[str]
    modules: list[list[str]]
    similarity: np.ndarray
    threshold: float
    method: str
    estimator: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer_names = _names(self.layer_names, "layer_names")
        repeated = sorted({n for n in self.layer_names if self.layer_names.count(n) > 1})
        if repeated:
            raise ValueError(f"layer_names repeat {repeated}: each layer appears once")
        if isinstance(self.modules, (str, bytes)) or not isinstance(self.modules, (list, tuple)):
            raise TypeError(f"modules must be a list of lists of layer names, got {type(self.modules).__name__}")
        self.modules = [_names(m, f"module {k}") for k, m in enumerate(self.modules)]
        empty = [k for k, m in enumerate(self.modules) if not m]
        if empty:
            raise ValueError(f"modules {empty} are empty: every module holds at least one layer")
        self.similarity = validate_similarity(self.similarity)
        self.threshold = validate_threshold(self.threshold)
        if self.method not in METHODS and self.method != MANUAL:
            raise ValueError(f"unknown partition method {self.method!r}; one of {sorted(METHODS)} or {MANUAL!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown CKA estimator {self.estimator!r}; one of {list(ESTIMATORS)}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")
        n = len(self.layer_names)
        if self.similarity.shape != (n, n):
            raise ValueError(f"similarity is {self.similarity.shape} but there are {n} layer names")
        flat = [name for mod in self.modules for name in mod]
        if flat != list(self.layer_names):
            raise ValueError("modules must cover every layer exactly once, in order")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_similarity(
        cls,
        layer_names: Sequence[str],
        similarity,
        threshold: float = 0.99,
        method: str = "progressive",
        estimator: str = "minibatch",
        meta: dict[str, Any] | None = None,
    ) -> "SemanticArchitecture":
        sim = validate_similarity(similarity)
        names = _names(layer_names, "layer_names")
        if sim.shape != (len(names), len(names)):
            raise ValueError(f"similarity is {sim.shape} but there are {len(names)} layer names")
        groups = partition(sim, threshold, method)
        return cls(names, [[names[i] for i in g] for g in groups], sim, threshold, method, estimator, dict(meta or {}))

    def repartition(self, threshold: float | None = None, method: str | None = None) -> "SemanticArchitecture":
        """The same measurements, partitioned again (threshold sweeps need no new forward passes)."""
        if method is None and self.method == MANUAL:
            raise ValueError("this partition was given by hand (method 'manual'): name the method to repartition with")
        return SemanticArchitecture.from_similarity(
            self.layer_names,
            self.similarity,
            self.threshold if threshold is None else threshold,
            self.method if method is None else method,
            self.estimator,
            self.meta,
        )

    # -- views ---------------------------------------------------------------------------------
    @property
    def module_indices(self) -> list[list[int]]:
        pos = {n: i for i, n in enumerate(self.layer_names)}
        return [[pos[n] for n in mod] for mod in self.modules]

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def multi_layer_modules(self) -> list[list[str]]:
        return [m for m in self.modules if len(m) > 1]

    @property
    def num_multi_layer_modules(self) -> int:
        return len(self.multi_layer_modules)

    @property
    def num_single_layer_modules(self) -> int:
        return self.num_modules - self.num_multi_layer_modules

    @property
    def modularity(self) -> float:
        """Y = layers in multi-layer modules / all layers (paper RQ1); Y >= 1/4 is "high"."""
        return sum(len(m) for m in self.multi_layer_modules) / self.num_layers

    def module_of(self, layer: str | int) -> int:
        """Index of the module holding a layer (by name or index)."""
        name = self.layer_names[layer] if isinstance(layer, int) else layer
        for k, mod in enumerate(self.modules):
            if name in mod:
                return k
        raise KeyError(f"layer {layer!r} is not in this architecture; layers: {self.layer_names}")

    def module_similarity(self, k: int) -> float:
        idx = self.module_indices[k]
        if len(idx) < 2:
            return 0.0
        return float(np.mean([self.similarity[a, b] for a, b in zip(idx[:-1], idx[1:])]))

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per module, for tables."""
        rows = []
        for k, (mod, idx) in enumerate(zip(self.modules, self.module_indices)):
            rows.append(
                {
                    "module": k,
                    "layers": f"{idx[0]}-{idx[-1]}" if len(idx) > 1 else f"{idx[0]}",
                    "size": len(mod),
                    "first": mod[0],
                    "last": mod[-1],
                    "sim_module": round(self.module_similarity(k), 6),
                }
            )
        return rows

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "layer_names": list(self.layer_names),
            "modules": [list(m) for m in self.modules],
            "similarity": self.similarity.tolist(),
            "threshold": self.threshold,
            "method": self.method,
            "estimator": self.estimator,
            "modularity": self.modularity,
            "num_modules": self.num_modules,
            "num_multi_layer_modules": self.num_multi_layer_modules,
            "meta": self.meta,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the documented JSON atomically (never over an existing file unless ``overwrite``)."""
        return write_json(path, self.to_dict(), overwrite=overwrite)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "SemanticArchitecture":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a deeparc_pl semantic architecture (expected format {FORMAT!r})")
        missing = [k for k in ("layer_names", "modules", "similarity", "threshold", "method", "estimator") if k not in data]
        if missing:
            raise ValueError(f"{source} lacks the field(s) {missing}")
        try:
            sim = np.asarray(data["similarity"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: field 'similarity' is not a numeric matrix ({exc})") from None
        for key, kind in (("method", str), ("estimator", str), ("meta", dict)):
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{source}: field {key!r} must be a {kind.__name__}, got {data[key]!r}")
        if isinstance(data["threshold"], bool) or not isinstance(data["threshold"], (int, float)):
            raise ValueError(f"{source}: field 'threshold' must be a number in (0, 1], got {data['threshold']!r}")
        try:
            return cls(data["layer_names"], data["modules"], sim, data["threshold"], data["method"],
                       data["estimator"], dict(data.get("meta", {})))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source} is not a valid semantic architecture: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "SemanticArchitecture":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no architecture file at {path}")
        if not path.is_file():
            raise ValueError(f"{path} is not a file (an architecture is a JSON file from `deeparc modularize`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path))

    def __repr__(self) -> str:
        return (
            f"SemanticArchitecture({self.num_layers} layers, {self.num_modules} modules, "
            f"{self.num_multi_layer_modules} multi-layer, modularity={self.modularity:.3f}, "
            f"threshold={self.threshold}, method={self.method!r}, estimator={self.estimator!r})"
        )
