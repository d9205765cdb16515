"""Eq. 6 of the paper: modularity Y as a linear function of model size, data size and task scale.

The paper fits ``Y = 0.78 MS - 0.10 DS - 0.16 TS + 0.31`` without saying how MS, DS and TS are
encoded; the authors' released results fit ``0.69 MS - 0.05 DS - 0.15 TS + 0.04`` with each variable
scaled to 0.2-1.0. We use the same scaling by default, ``encode_levels``: the i-th of L sorted
levels of a variable maps to (i + 1) / L, so five levels give 0.2, 0.4, ..., 1.0 whatever the raw
values (depths, fractions, class counts) are. Since the encodings differ, only the signs and the
ranking of the coefficients by size are comparable, not their values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "VARIABLES",
    "PAPER_EQ6",
    "RELEASED_CODE_FIT",
    "encode_levels",
    "encode_relative",
    "Eq6Fit",
    "fit_eq6",
    "univariate_fit",
    "ranking",
    "comparison_rows",
]

VARIABLES = ("MS", "DS", "TS")
#: The paper's Eq. 6.
PAPER_EQ6: dict[str, float] = {"MS": 0.78, "DS": -0.10, "TS": -0.16, "intercept": 0.31}
#: The fit of the authors' released RQ1 results (the paper's NOTES.md in ../shared/paper/), variables scaled to 0.2-1.0.
RELEASED_CODE_FIT: dict[str, float] = {"MS": 0.69, "DS": -0.05, "TS": -0.15, "intercept": 0.04}


def encode_levels(values: Sequence[Any], levels: Sequence[Any] | None = None, sort: bool = True) -> np.ndarray:
    """Map each value to (rank + 1) / number of levels.

    The rank is among the sorted distinct ``levels`` (default: the distinct values), or their given
    order with ``sort=False`` (model names: ``resnet8`` before ``resnet14``).
    """
    if levels is None:
        levels = sorted(set(values))
    elif sort:
        levels = sorted(set(levels))
    else:
        levels = list(dict.fromkeys(levels))
    if not levels:
        raise ValueError("no levels to encode")
    pos = {v: i for i, v in enumerate(levels)}
    missing = sorted({v for v in values if v not in pos}, key=str)
    if missing:
        raise ValueError(f"values {missing} are not among the levels {levels}")
    return np.array([(pos[v] + 1) / len(levels) for v in values], dtype=np.float64)


def encode_relative(values: Sequence[float]) -> np.ndarray:
    """Map each value to value / max (e.g. parameters / largest model's parameters)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or arr.max() <= 0:
        raise ValueError("relative encoding needs positive values")
    return arr / arr.max()


@dataclass
class Eq6Fit:
    """A fitted ``Y = a MS + b DS + c TS + d``; ``r2`` on the fitted points."""

    coef: dict[str, float]
    intercept: float
    r2: float
    n: int
    encoding: str
    names: tuple[str, ...] = VARIABLES
    extra: dict[str, Any] = field(default_factory=dict)

    def equation(self, digits: int = 2) -> str:
        parts = []
        for name in self.names:
            c = self.coef[name]
            sign = "-" if c < 0 else "+"
            parts.append(f"{sign} {abs(c):.{digits}f} {name}")
        text = " ".join(parts).lstrip("+ ")
        sign = "-" if self.intercept < 0 else "+"
        return f"Y = {text} {sign} {abs(self.intercept):.{digits}f}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x @ np.array([self.coef[n] for n in self.names]) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return {"coef": dict(self.coef), "intercept": self.intercept, "r2": self.r2, "n": self.n,
                "encoding": self.encoding, "equation": self.equation(), "ranking": ranking(self.coef, self.names)}


def fit_eq6(x: np.ndarray, y: Sequence[float], names: Sequence[str] = VARIABLES, encoding: str = "levels") -> Eq6Fit:
    """Ordinary least squares of ``y`` on the columns of ``x`` (scikit-learn ``LinearRegression``)."""
    from sklearn.linear_model import LinearRegression

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"x must have shape (n, {len(names)}) for variables {list(names)}, got {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"{len(y)} responses for {len(x)} points")
    if len(x) < len(names) + 1:
        raise ValueError(f"need at least {len(names) + 1} points to fit {len(names)} slopes and an intercept, got {len(x)}")
    reg = LinearRegression().fit(x, y)
    r2 = float(reg.score(x, y)) if np.var(y) > 0 else float("nan")
    coef = {n: float(c) for n, c in zip(names, reg.coef_)}
    return Eq6Fit(coef, float(reg.intercept_), r2, int(len(x)), encoding, tuple(names))


def univariate_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line of ``y`` on one variable (paper Fig. 9)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(set(x.tolist())) < 2:
        return float("nan"), float(np.mean(y)) if len(y) else float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def ranking(coef: Mapping[str, float], names: Sequence[str] = VARIABLES) -> list[str]:
    """Variables by decreasing absolute coefficient."""
    return sorted(names, key=lambda n: -abs(coef[n]))


def comparison_rows(fit: Eq6Fit) -> list[dict[str, Any]]:
    """Measured coefficients beside the paper's Eq. 6 and the released-code fit, with sign agreement."""
    rows = []
    for name in (*fit.names, "intercept"):
        measured = fit.intercept if name == "intercept" else fit.coef[name]
        paper = PAPER_EQ6.get(name)
        released = RELEASED_CODE_FIT.get(name)
        rows.append({
            "term": name,
            "measured": round(measured, 4),
            "paper_eq6": paper,
            "released_code": released,
            "sign_agrees_with_paper": None if paper is None or name == "intercept" else bool(np.sign(measured) == np.sign(paper)),
        })
    rank = ranking(fit.coef, fit.names)
    rows.append({"term": "ranking by |coef|", "measured": " > ".join(rank),
                 "paper_eq6": " > ".join(ranking(PAPER_EQ6, fit.names)),
                 "released_code": " > ".join(ranking(RELEASED_CODE_FIT, fit.names)),
                 "sign_agrees_with_paper": rank == ranking(PAPER_EQ6, fit.names)})
    return rows
