"""Cascade SVM and k-means over a dataset's blocks (issue 16), three ways:
active (each block computes where it lives, a driver on a chosen node merges),
shipping (the blocks' points fetched to the driver's node, computed there) and
one process: the same model, bit for bit, for a seed. Real mosquitto, gateway
and two nodes; the arrays' wire form and the steps' checks in-process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from continuum_node import ml
from continuum_node.ml import BadBlock, pack, unpack

from ._cluster import Cluster

BLOCK = "continuum_node.ml.Block"
DRIVER = "continuum_node.ml.Driver"
SEEDS = [11, 12, 13, 14, 15]  # five blocks: the cascade has an odd one out
ROWS, COLS = 80, 3


def _same_support(a: dict[str, Any], b: dict[str, Any]) -> None:
    ax, ay = ml.support_of(a)
    bx, by = ml.support_of(b)
    assert ax.shape == bx.shape and len(ax) > 0
    assert np.array_equal(ax, bx) and np.array_equal(ay, by)
    assert a["levels"] == b["levels"] and a["iterations"] == b["iterations"]


# -- in-process ------------------------------------------------------------------------
def test_arrays_cross_as_bytes_and_shape() -> None:
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    wire = pack(a)
    assert wire == {"dtype": "<f8", "shape": [2, 3], "data": a.tobytes()}
    assert np.array_equal(unpack(wire, ndim=2), a)
    for bad in (
        {"dtype": "<f8", "shape": [2, 3], "data": b"short"},
        {"dtype": "object", "shape": [1], "data": b"\0" * 8},
        {"dtype": "<f8", "shape": [1, 1, 1], "data": b"\0" * 8},
        [1, 2],
    ):
        with pytest.raises(BadBlock):
            unpack(bad)
    with pytest.raises(BadBlock):
        unpack(wire, ndim=1)
    block = ml.Block(cols=3)  # a plain object in-process
    with pytest.raises(BadBlock):
        block.append(pack(np.zeros((2, 2))), pack(np.zeros(2)))  # not its width
    assert block.append(pack(a), pack(np.zeros(2))) == 2 and block.shape() == [2, 3]


def test_local_cascade_is_deterministic_and_learns() -> None:
    blocks = ml.blocks_of(SEEDS, ROWS, COLS)
    one = ml.cascade_svm_local(blocks, max_iter=2)
    _same_support(one, ml.cascade_svm_local(blocks, max_iter=2))
    assert one["levels"] == 3 and one["blocks"] == 5
    x, y = ml.make_points(99, 500, COLS)
    assert ml.accuracy(one, x, y) > 0.7
    with pytest.raises(BadBlock):
        ml.cascade_svm_local(blocks, params={"C": -1})
    with pytest.raises(BadBlock):
        ml.cascade_svm_local(blocks, params={"degree": 3})


# -- three ways on a deployment ----------------------------------------------------------------
def test_three_ways_give_the_same_model(bare_cluster: Cluster) -> None:
    bare_cluster.start(["n1", "n2"], modules=["continuum_node.ml"])
    local_blocks = ml.blocks_of(SEEDS, ROWS, COLS)
    with bare_cluster.client(timeout=60) as c:
        ds = c.create_dataset("svm", BLOCK, len(SEEDS), kwargs={"cols": COLS})
        assert ds.nodes() == {"n1": 3, "n2": 2}
        filled = ds.fan_out(
            "generate", rows=ROWS, cols=COLS, per_block=[{"seed": s} for s in SEEDS]
        )
        assert filled.ok
        # a block filled from a client's bytes equals the generated one
        x0, y0 = local_blocks[0]
        uploaded = c.stub(BLOCK).create(cols=COLS, node="n2")
        assert uploaded.append(pack(x0[:30]), pack(y0[:30])) == 30
        assert uploaded.append(pack(x0[30:]), pack(y0[30:])) == ROWS
        assert uploaded.rows() == ds.blocks[0].rows()
        with pytest.raises(BadBlock):
            uploaded.append(pack(x0[:2, :2]), pack(y0[:2]))  # another width

        driver = c.stub(DRIVER).create(node="n2")
        steps: list[Any] = []
        active = ds.reduce(driver, "cascade_svm", max_iter=2, on_progress=steps.append)
        shipped = ds.reduce(driver, "cascade_svm", max_iter=2, ship=True)
        local = ml.cascade_svm_local(local_blocks, max_iter=2)
        _same_support(active, local)
        _same_support(shipped, local)
        assert {s["step"] for s in steps} == {"svm_fit"} and steps[-1]["done"] == len(SEEDS)

        km_active = ds.reduce(driver, "kmeans", k=4, max_iter=10)
        km_shipped = ds.reduce(driver, "kmeans", k=4, max_iter=10, ship=True)
        km_local = ml.kmeans_local(local_blocks, 4, max_iter=10)
        for other in (km_shipped, km_local):
            assert np.array_equal(unpack(km_active["centres"]), unpack(other["centres"]))
            assert km_active["inertia"] == other["inertia"]
            assert km_active["iterations"] == other["iterations"]
