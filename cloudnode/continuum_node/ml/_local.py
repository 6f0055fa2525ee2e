"""The third way: the same computations in one process, on blocks held in
memory (what a laptop would do with all the data), for baselines and for
checking that the active and shipping ways agree with it bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._algorithms import SVMParams, make_points, svm_accuracy
from ._arrays import unpack
from ._steps import cascade_svm, kmeans, local_map

__all__ = ["accuracy", "blocks_of", "cascade_svm_local", "kmeans_local", "support_of"]

Blocks = Sequence[tuple[np.ndarray, np.ndarray]]


def blocks_of(
    seeds: Sequence[int], rows: int, cols: int, shape: str = "ball"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The blocks ``Block.generate(seed, rows, cols, shape)`` makes, one per seed."""
    return [make_points(s, rows, cols, shape) for s in seeds]


def cascade_svm_local(
    blocks: Blocks, params: dict[str, Any] | None = None, max_iter: int = 1
) -> dict[str, Any]:
    """``Driver.cascade_svm``'s result, computed here."""
    return cascade_svm(local_map(blocks), params, max_iter)


def kmeans_local(blocks: Blocks, k: int, max_iter: int = 20, tol: float = 1e-6) -> dict[str, Any]:
    """``Driver.kmeans``'s result, computed here."""
    return kmeans(local_map(blocks), k, max_iter, tol)


def support_of(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The support vectors and labels of a Cascade SVM result."""
    return unpack(result["x"], ndim=2), unpack(result["y"], ndim=1)


def accuracy(result: dict[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    """The accuracy on ``(x, y)`` of a Cascade SVM result's model."""
    return svm_accuracy(support_of(result), SVMParams.of(result.get("params")), x, y)
