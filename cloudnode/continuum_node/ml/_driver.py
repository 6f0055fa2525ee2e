"""``Driver``: the reduce step as an active object on a chosen node. One call
from the edge (``driver.cascade_svm(blocks)``) runs the whole computation
from that node: the active way fans the block steps out to where the blocks
live (its node's client, :mod:`continuum_node.peer`) and merges their small
results here; the shipping way (``ship=True``) fetches every block's points
here first, as a store that cannot compute would, and runs the same steps on
them. Either way, only over blocks its caller may call itself (:mod:`._access`).
Both methods are long calls (``@active(long=True)``): on a node run with
``--long-calls process`` they compute in a worker process."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from continuum_mqtt import ActiveObject, Client, active, check_cancelled, progress

from ..peer import peer
from ._access import blocks_for_caller, failed
from ._arrays import unpack
from ._errors import BadBlock
from ._steps import MapFn, cascade_svm, kmeans, local_map

__all__ = ["Driver"]

CHUNK_BYTES = 1 << 20  # the points of one ``rows`` call when shipping


def _check_blocks(blocks: Any) -> list[str]:
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise BadBlock("blocks must be a non-empty list of object ids or aliases", field="blocks")
    if len(set(blocks)) != len(blocks):
        raise BadBlock("a block is listed twice", field="blocks")
    return blocks


class Driver(ActiveObject):
    """Runs Cascade SVM and k-means over the blocks it is given, from its node."""

    def __init__(self) -> None:
        """No state: it only drives computations."""

    # -- maps ----------------------------------------------------------------------
    @staticmethod
    def _fan_out_map(
        client: Client, blocks: list[str], names: dict[str, str], window: int, deadline: float
    ) -> MapFn:
        def run(method: str, kwargs: dict[str, Any]) -> list[Any]:
            check_cancelled()

            def report(done: int, total: int) -> None:
                progress({"step": method, "done": done, "total": total})

            left = max(0.001, deadline - time.monotonic())
            r = client.fan_out(
                blocks, method, window=window, timeout=left, on_progress=report, **kwargs
            )
            if r.errors:
                raise failed(r.errors, names)
            return [r.results[b] for b in blocks]

        return run

    @staticmethod
    def _ship(
        client: Client, blocks: list[str], names: dict[str, str], window: int, deadline: float
    ) -> MapFn:
        """Fetch every block's points here, in slices of about 1 MiB (round
        ``r`` fans out for the ``r``-th slice of every block, each block its
        own range), then a map over them in memory."""
        left = max(0.001, deadline - time.monotonic())
        shapes = client.fan_out(blocks, "shape", window=window, timeout=left)
        if shapes.errors:
            raise failed(shapes.errors, names)
        ranges: dict[str, list[tuple[int, int]]] = {}
        for b in blocks:
            rows, cols = shapes.results[b]
            step = max(1, CHUNK_BYTES // (8 * (cols + 1)))
            ranges[b] = [(s, min(rows, s + step)) for s in range(0, rows, step)]
        got: dict[str, list[Any]] = {b: [] for b in blocks}
        rounds = max(len(r) for r in ranges.values())
        for i in range(rounds):
            check_cancelled()
            mine = {b: {"start": r[i][0], "stop": r[i][1]} for b, r in ranges.items() if i < len(r)}
            left = max(0.001, deadline - time.monotonic())
            r = client.fan_out(list(mine), "rows", window=window, timeout=left, per_object=mine)
            if r.errors:
                raise failed(r.errors, names)
            for b in mine:
                got[b].append(r.results[b])
            progress({"step": "ship", "done": i + 1, "total": rounds})
        data = []
        for b in blocks:
            cols = shapes.results[b][1]
            xs = [unpack(v["x"], ndim=2, name="x") for v in got[b]]
            ys = [unpack(v["y"], ndim=1, name="y") for v in got[b]]
            data.append(
                (
                    np.concatenate(xs) if xs else np.zeros((0, cols)),
                    np.concatenate(ys) if ys else np.zeros(0),
                )
            )
        return local_map(data)

    def _map(self, blocks: Any, ship: bool, window: int, budget: float) -> MapFn:
        refs = _check_blocks(blocks)
        if not 1 <= window <= 256:
            raise BadBlock("window must be in [1, 256]", field="window")
        deadline = time.monotonic() + max(0.001, float(budget))
        client = peer()
        targets = blocks_for_caller(client, refs)  # forbidden before any block is called
        names = dict(zip(targets, refs, strict=True))
        return (self._ship if ship else self._fan_out_map)(client, targets, names, window, deadline)

    # -- computations ----------------------------------------------------------------
    @active(readonly=True, long=True)
    def cascade_svm(
        self,
        blocks: list[str],
        params: dict[str, Any] | None = None,
        max_iter: int = 1,
        ship: bool = False,
        window: int = 4,
        budget: float = 600.0,
    ) -> dict[str, Any]:
        """Cascade SVM over ``blocks`` (ids or aliases, in order): the final
        support vectors (``x``, ``y``: wire arrays), ``levels``,
        ``iterations``, ``blocks``, ``seconds``. ``ship``: fetch the points
        here and compute here instead. ``window``: block calls in flight per
        node; ``budget``: seconds for the block calls (the deadline of the
        fan-outs). ``ml.blocks_failed`` (field ``errors``) when a block fails;
        ``forbidden`` (field ``blocks``) when the caller may not call some
        block itself, before any block is called."""
        t0 = time.monotonic()
        out = cascade_svm(self._map(blocks, ship, window, budget), params, max_iter)
        out["seconds"] = time.monotonic() - t0
        return out

    @active(readonly=True, long=True)
    def kmeans(
        self,
        blocks: list[str],
        k: int,
        max_iter: int = 20,
        tol: float = 1e-6,
        ship: bool = False,
        window: int = 4,
        budget: float = 600.0,
    ) -> dict[str, Any]:
        """k-means over ``blocks``: ``centres`` (wire array), ``inertia``,
        ``iterations``, ``blocks``, ``seconds``; ``ship`` as for
        :meth:`cascade_svm`."""
        t0 = time.monotonic()
        out = kmeans(self._map(blocks, ship, window, budget), k, max_iter, tol)
        out["seconds"] = time.monotonic() - t0
        return out
