"""``Block``: one block of a partitioned dataset, an active object holding
its points (float64 ``x`` of shape (rows, cols) and labels ``y``) where it
lives; the algorithms' per-block steps run here, next to the data."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from continuum_mqtt import ActiveObject, active, check_cancelled

from ._algorithms import make_points
from ._arrays import MAX_ELEMENTS, pack, unpack
from ._errors import BadBlock
from ._steps import block_step

__all__ = ["Block"]


class Block(ActiveObject):
    """A block of ``cols`` columns, empty until :meth:`append` or
    :meth:`generate` fills it."""

    def __init__(self, cols: int = 0) -> None:
        if not isinstance(cols, int) or not 0 <= cols <= 100_000:
            raise BadBlock("cols must be an integer in [0, 100000]", field="cols")
        self.x = np.zeros((0, cols))
        self.y = np.zeros(0)

    # -- data ----------------------------------------------------------------
    @active(snapshot=True)
    def append(self, x: dict[str, Any], y: dict[str, Any]) -> int:
        """Add points (wire arrays: ``x`` (n, cols), ``y`` (n,)); returns the rows held."""
        xa = unpack(x, ndim=2, name="x").astype(np.float64)
        ya = unpack(y, ndim=1, name="y").astype(np.float64)
        if len(xa) != len(ya):
            raise BadBlock(f"{len(xa)} points and {len(ya)} labels", field="y")
        if (len(self.x) or self.x.shape[1]) and xa.shape[1] != self.x.shape[1]:
            raise BadBlock(
                f"rows of width {xa.shape[1]}, the block's are {self.x.shape[1]}", field="x"
            )
        if (len(self.x) + len(xa)) * max(1, xa.shape[1]) > MAX_ELEMENTS:
            raise BadBlock(f"a block holds at most {MAX_ELEMENTS} elements", field="x")
        self.x = (
            np.concatenate([self.x.reshape(len(self.x), xa.shape[1]), xa]) if len(self.x) else xa
        )
        self.y = np.concatenate([self.y, ya])
        return len(self.x)

    @active(snapshot=True)
    def generate(self, seed: int, rows: int, cols: int, shape: str = "ball") -> int:
        """Replace the points with ``rows`` synthetic ones (``make_points``,
        deterministic for ``seed``, ``shape`` ``"ball"`` or ``"slab"``);
        returns the rows held."""
        if not (isinstance(seed, int) and isinstance(rows, int) and isinstance(cols, int)):
            raise BadBlock("seed, rows and cols are integers")
        if not (rows >= 0 and 1 <= cols <= 100_000 and rows * cols <= MAX_ELEMENTS):
            raise BadBlock(f"rows * cols must be at most {MAX_ELEMENTS}", field="rows")
        self.x, self.y = make_points(seed, rows, cols, shape)
        return rows

    @active(readonly=True)
    def shape(self) -> list[int]:
        """``[rows, cols]``."""
        return [int(self.x.shape[0]), int(self.x.shape[1])]

    @active(readonly=True)
    def rows(self, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        """Points ``start:stop`` (wire arrays ``x``, ``y``): what a store that
        cannot compute gives out, in slices that fit a message."""
        if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
            raise BadBlock("start and stop are integers", field="start")
        sl = slice(start, stop)
        return {"x": pack(self.x[sl]), "y": pack(self.y[sl])}

    @active(readonly=True)
    def summary(self, delay: float = 0.0) -> dict[str, Any]:
        """Rows, columns and the label sum; waits ``delay`` seconds first (at
        most 60; a stand-in for long work in tests and demos)."""
        end = time.monotonic() + min(max(float(delay), 0.0), 60.0)
        while time.monotonic() < end:
            check_cancelled()
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return {
            "rows": len(self.x),
            "cols": int(self.x.shape[1]),
            "label_sum": float(self.y.sum()),
        }

    # -- the algorithms' steps (continuum_node.ml._steps) --------------------------
    @active(readonly=True)
    def svm_fit(
        self, params: dict[str, Any] | None = None, feedback: dict[str, Any] | None = None
    ) -> Any:
        """Cascade SVM's first level: this block's support vectors (``x``, ``y``)."""
        return block_step(self.x, self.y, "svm_fit", {"params": params, "feedback": feedback})

    @active(readonly=True)
    def kmeans_step(self, centres: dict[str, Any]) -> Any:
        """This block's per-centre sums, counts and inertia for ``centres``."""
        return block_step(self.x, self.y, "kmeans_step", {"centres": centres})

    @active(readonly=True)
    def head(self, n: int) -> Any:
        """The first ``n`` points."""
        return block_step(self.x, self.y, "head", {"n": n})
