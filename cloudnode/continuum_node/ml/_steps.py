"""The algorithms' loops, over a *map*: a function that runs one block
method on every block and returns the wire results in block order. The
active way maps with a fan-out (each block computes where it lives), the
shipping way and one process map over arrays in memory with the very same
block functions (:func:`block_step`): same inputs, same bits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from continuum_mqtt import check_cancelled

from ._algorithms import (
    Support,
    SVMParams,
    cascade,
    kmeans_combine,
    kmeans_partial,
    svm_block,
)
from ._arrays import pack, unpack
from ._errors import BadBlock

__all__ = ["MapFn", "block_step", "cascade_svm", "kmeans", "local_map"]

MapFn = Callable[[str, dict[str, Any]], list[Any]]
"""``map(method, kwargs)``: the wire result of ``method(**kwargs)`` of every block, in order."""

MAX_ITER = 100


def _support(value: Any, name: str) -> Support:
    if not isinstance(value, dict):
        raise BadBlock(f"{name}: expected a map with x and y", field=name)
    x = unpack(value.get("x"), ndim=2, name=f"{name}.x")
    y = unpack(value.get("y"), ndim=1, name=f"{name}.y")
    if len(x) != len(y):
        raise BadBlock(f"{name}: {len(x)} points and {len(y)} labels", field=name)
    return x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)


def _wire(sv: Support) -> dict[str, Any]:
    return {"x": pack(sv[0]), "y": pack(sv[1])}


def block_step(x: np.ndarray, y: np.ndarray, method: str, kwargs: dict[str, Any]) -> Any:
    """What block method ``method`` returns for a block holding ``(x, y)``."""
    if method == "svm_fit":
        p = SVMParams.of(kwargs.get("params"))
        fb = kwargs.get("feedback")
        return _wire(svm_block(x, y, p, None if fb is None else _support(fb, "feedback")))
    if method == "kmeans_step":
        centres = unpack(kwargs.get("centres"), ndim=2, name="centres").astype(np.float64)
        sums, counts, inertia = kmeans_partial(x, centres)
        return {"sums": pack(sums), "counts": pack(counts), "inertia": inertia}
    if method == "head":
        n = kwargs.get("n", 0)
        if not isinstance(n, int) or n < 0:
            raise BadBlock("n must be an integer >= 0", field="n")
        return {"x": pack(x[:n]), "y": pack(y[:n])}
    raise BadBlock(f"no block step {method!r}")


def local_map(blocks: Sequence[tuple[np.ndarray, np.ndarray]]) -> MapFn:
    """A map over blocks held in this process."""

    def run(method: str, kwargs: dict[str, Any]) -> list[Any]:
        out = []
        for x, y in blocks:
            check_cancelled()
            out.append(block_step(x, y, method, kwargs))
        return out

    return run


def cascade_svm(
    map_fn: MapFn,
    params: dict[str, Any] | None = None,
    max_iter: int = 1,
    on_level: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cascade SVM over the blocks of ``map_fn``: at most ``max_iter``
    iterations, each feeding the last support vectors back to every block,
    stopping early once they no longer change. Returns ``{"x", "y"}`` (the
    support vectors, wire arrays), ``levels``, ``iterations``, ``blocks``."""
    p = SVMParams.of(params)
    if not 1 <= max_iter <= MAX_ITER:
        raise BadBlock(f"max_iter must be in [1, {MAX_ITER}]", field="max_iter")
    feedback: dict[str, Any] | None = None
    sv: Support | None = None
    levels = blocks = iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported
        parts = [
            _support(v, "part")
            for v in map_fn("svm_fit", {"params": p.wire(), "feedback": feedback})
        ]
        blocks = len(parts)
        if on_level is not None:
            on_level("merge")
        check_cancelled()
        new, levels = cascade(parts, p)
        same = sv is not None and np.array_equal(new[0], sv[0]) and np.array_equal(new[1], sv[1])
        sv = new
        if same:
            break
        feedback = _wire(sv)
    assert sv is not None
    return {
        **_wire(sv),
        "levels": levels,
        "iterations": iterations,
        "blocks": blocks,
        "params": p.wire(),
    }


def kmeans(map_fn: MapFn, k: int, max_iter: int = 20, tol: float = 1e-6) -> dict[str, Any]:
    """Lloyd's k-means over the blocks of ``map_fn``, from the first ``k``
    points of the data (block order); stops when no centre moves more than
    ``tol``. Returns ``{"centres", "inertia", "iterations", "blocks"}``."""
    if not 1 <= max_iter <= 1000:
        raise BadBlock("max_iter must be in [1, 1000]", field="max_iter")
    if not 1 <= k <= 10_000:
        raise BadBlock("k must be in [1, 10000]", field="k")
    heads = [_support(v, "head")[0] for v in map_fn("head", {"n": k})]
    first = np.concatenate(heads)[:k] if heads else np.zeros((0, 0))
    if len(first) < k:
        raise BadBlock(f"fewer than k={k} points", field="k")
    centres = np.array(first, dtype=np.float64)
    inertia, iterations = 0.0, 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported
        wire = map_fn("kmeans_step", {"centres": pack(centres)})
        parts = [
            (
                unpack(w["sums"], ndim=2, name="sums"),
                unpack(w["counts"], ndim=1, name="counts"),
                float(w["inertia"]),
            )
            for w in wire
        ]
        check_cancelled()
        centres, inertia, shift = kmeans_combine(centres, parts)
        if shift <= tol:
            break
    return {
        "centres": pack(centres),
        "inertia": inertia,
        "iterations": iterations,
        "blocks": len(heads),
    }
