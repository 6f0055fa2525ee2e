"""The computations themselves, on numpy arrays, shared by the three ways of
running them (active, shipping, one process): the same functions on the same
blocks in the same order give the same bits.

Cascade SVM (the paper's Section 6, dislib's ``CascadeSVM`` with arity 2):
each block trains an SVC on its points (plus, after the first iteration, the
support vectors of the previous one) and keeps its support vectors; those of
neighbouring blocks are merged pairwise, an SVC trained on each union, level
by level, until one set remains: the model's support vectors.

k-means (Lloyd): each block assigns its points to the nearest centre and
returns per-centre sums and counts; the sums of every block, added in block
order, give the next centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import BadBlock

__all__ = [
    "SHAPES",
    "SVMParams",
    "Support",
    "cascade",
    "kmeans_combine",
    "kmeans_init",
    "kmeans_partial",
    "make_points",
    "svm_accuracy",
    "svm_block",
    "svm_merge",
]

Support = tuple[np.ndarray, np.ndarray]
"""Support vectors and their labels: ``(x (n, d) float64, y (n,) float64)``."""


@dataclass(frozen=True)
class SVMParams:
    """The SVC of every step (scikit-learn ``SVC(kernel, C, gamma)``)."""

    C: float = 1.0
    gamma: float = 0.1
    kernel: str = "rbf"

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> SVMParams:
        """From a caller's map; ``bad_block`` for an unknown or bad value."""
        value = dict(value or {})
        unknown = set(value) - {"C", "gamma", "kernel"}
        if unknown:
            raise BadBlock(f"unknown SVM parameters {sorted(unknown)}", field="params")
        p = cls(**value)
        if not (isinstance(p.C, int | float) and 0 < p.C <= 1e6):
            raise BadBlock("C must be a number in (0, 1e6]", field="params")
        if not (isinstance(p.gamma, int | float) and 0 < p.gamma <= 1e6):
            raise BadBlock("gamma must be a number in (0, 1e6]", field="params")
        if p.kernel not in ("rbf", "linear"):
            raise BadBlock("kernel must be 'rbf' or 'linear'", field="params")
        return p

    def wire(self) -> dict[str, Any]:
        return {"C": self.C, "gamma": self.gamma, "kernel": self.kernel}


SHAPES = ("ball", "slab")


def make_points(
    seed: int, rows: int, cols: int, shape: str = "ball"
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic two-class points (a block's worth), deterministic for a seed.
    ``ball``: normal points labelled by whether they lie outside the sphere
    holding about half of them, 5% of the labels flipped (a hard problem for
    an RBF kernel: many support vectors). ``slab``: normal points labelled by
    the side of a hyperplane, each class pushed 1 away from it (a margin: few
    support vectors, the regime where the cascade pays most)."""
    if shape not in SHAPES:
        raise BadBlock(f"shape must be one of {SHAPES}", field="shape")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols))
    if shape == "slab":
        w = np.full(cols, 1.0 / np.sqrt(cols))
        y = (x @ w > 0).astype(np.float64)
        x += np.outer(np.where(y > 0, 1.0, -1.0), w)
        return x, y
    r2 = np.einsum("ij,ij->i", x, x)
    y = (r2 > cols - 2.0 / 3.0).astype(np.float64)
    flip = rng.random(rows) < 0.05
    y[flip] = 1.0 - y[flip]
    return x, y


def _svc(x: np.ndarray, y: np.ndarray, p: SVMParams) -> Any:
    from sklearn.svm import SVC

    model = SVC(C=p.C, gamma=p.gamma, kernel=p.kernel)
    model.fit(x, y)
    return model


def _dedup(x: np.ndarray, y: np.ndarray) -> Support:
    """Drop repeated points (a support vector fed back to its own block), the
    first occurrence kept, order kept."""
    if len(x) == 0:
        return x, y
    both = np.ascontiguousarray(np.column_stack([x, y]))
    _, first = np.unique(both, axis=0, return_index=True)
    keep = np.sort(first)
    return x[keep], y[keep]


def svm_block(
    x: np.ndarray, y: np.ndarray, p: SVMParams, feedback: Support | None = None
) -> Support:
    """The support vectors of an SVC trained on one block (plus ``feedback``);
    a block of one class keeps all its points (there is nothing to separate)."""
    if feedback is not None and len(feedback[0]):
        x, y = _dedup(np.concatenate([x, feedback[0]]), np.concatenate([y, feedback[1]]))
    if len(x) == 0 or len(np.unique(y)) < 2:
        return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    model = _svc(x, y, p)
    sv = np.sort(model.support_)
    return np.array(x[sv], dtype=np.float64), np.array(y[sv], dtype=np.float64)


def svm_merge(a: Support, b: Support, p: SVMParams) -> Support:
    """One cascade step: the support vectors of an SVC trained on both sets."""
    return svm_block(*_dedup(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])), p)


def cascade(parts: Sequence[Support], p: SVMParams) -> tuple[Support, int]:
    """Merge ``parts`` pairwise, level by level (arity 2, neighbours in order;
    an odd one out goes up a level unchanged); returns the last set and the
    number of levels."""
    level = list(parts)
    levels = 0
    if not level:
        raise BadBlock("no blocks to train on")
    while len(level) > 1:
        nxt = [svm_merge(level[i], level[i + 1], p) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels += 1
    return level[0], levels


def svm_accuracy(sv: Support, p: SVMParams, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on ``(x, y)`` of the final model: an SVC trained on the
    cascade's support vectors."""
    if len(np.unique(sv[1])) < 2:
        return float(np.mean(y == (sv[1][0] if len(sv[1]) else 0.0)))
    return float(_svc(sv[0], sv[1], p).score(x, y))


def kmeans_init(seed: int, k: int, cols: int) -> np.ndarray:
    """``k`` starting centres, deterministic for a seed."""
    if not (1 <= k <= 10_000 and 1 <= cols <= 100_000):
        raise BadBlock("k must be in [1, 10000]", field="k")
    return np.random.default_rng(seed).standard_normal((k, cols))


def kmeans_partial(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One block's share of a Lloyd step: per-centre sums of its points,
    per-centre counts, and its inertia (squared distances to the nearest)."""
    if x.shape[1:] != centres.shape[1:]:
        raise BadBlock(f"centres of width {centres.shape[1]} for points of width {x.shape[1]}")
    d2 = (
        np.einsum("ij,ij->i", x, x)[:, None]
        - 2.0 * x @ centres.T
        + np.einsum("ij,ij->i", centres, centres)[None, :]
    )
    nearest = np.argmin(d2, axis=1)
    k = len(centres)
    sums = np.zeros_like(centres)
    np.add.at(sums, nearest, x)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    inertia = float(np.maximum(d2[np.arange(len(x)), nearest], 0.0).sum())
    return sums, counts, inertia


def kmeans_combine(
    centres: np.ndarray, parts: Sequence[tuple[np.ndarray, np.ndarray, float]]
) -> tuple[np.ndarray, float, float]:
    """The next centres from every block's partial (added in block order; an
    empty cluster keeps its centre), the total inertia, and how far the
    centres moved (the largest distance)."""
    sums = np.zeros_like(centres)
    counts = np.zeros(len(centres))
    inertia = 0.0
    for s, c, i in parts:
        sums += s
        counts += c
        inertia += i
    new = centres.copy()
    full = counts > 0
    new[full] = sums[full] / counts[full, None]
    shift = float(np.sqrt(((new - centres) ** 2).sum(axis=1)).max()) if len(new) else 0.0
    return new, inertia, shift
