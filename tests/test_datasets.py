"""Datasets (issue 16): blocks as active objects placed across the live
nodes and found again by name; fan-out with per-block arguments; a node
dying mid-fan-out (a per-block error, or a completed result through a
replica). Real mosquitto, gateway and nodes (continuum_dev.testing)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt import (
    BadRequest,
    ContinuumError,
    Dataset,
    FanOutResult,
    UnknownObject,
    create_dataset,
    open_dataset,
)
from continuum_mqtt._datasets import block_alias, place

from ._cluster import Cluster

BLOCK = "continuum_node.ml.Block"
DRIVER = "continuum_node.ml.Driver"
COUNTER = "examples.counter.Counter"
ML = ["continuum_node.ml", "examples.counter"]


# -- placement, no processes -----------------------------------------------------------
def test_round_robin_placement_cycles_over_the_nodes() -> None:
    assert place(["a", "b", "c"], 5) == ["a", "b", "c", "a", "b"]


def test_size_placement_balances_bytes() -> None:
    got = place(["a", "b"], 4, "size", sizes=[10, 1, 1, 8])
    loads = {n: sum(s for s, m in zip([10, 1, 1, 8], got, strict=True) if m == n) for n in "ab"}
    assert got[0] != got[3] and loads == {"a": 10, "b": 10}


def test_placement_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError):
        place(["a"], 2, "size")  # no sizes
    with pytest.raises(ValueError):
        place(["a"], 2, "random")
    with pytest.raises(ContinuumError):
        place([], 2)


def test_datasets_in_local_mode() -> None:
    """Local mode (no broker) lists no classes per node: its gateway places."""
    with continuum_mqtt.connect("local:") as c:
        ds = create_dataset(c, "local-points", BLOCK, 3, kwargs={"cols": 2})
        r = ds.fan_out(
            "generate", rows=5, cols=2, per_block=[{"seed": i, "rows": i + 1} for i in range(3)]
        )
        assert r.ok and [r[b] for b in ds.refs] == [1, 2, 3]
        assert open_dataset(c, "local-points").refs == ds.refs


# -- end to end --------------------------------------------------------------------------
def _start(c: Cluster, nodes: list[str]) -> None:
    c.start(nodes, modules=ML)


def test_dataset_is_placed_found_by_name_and_fanned_out(bare_cluster: Cluster) -> None:
    _start(bare_cluster, ["n1", "n2"])
    with bare_cluster.client() as c:
        ds = c.create_dataset("points", BLOCK, 6, kwargs={"cols": 3})
        assert isinstance(ds, Dataset) and len(ds) == 6
        assert ds.nodes() == {"n1": 3, "n2": 3}
        # per-block arguments: each block its own seed and size
        r = ds.fan_out(
            "generate", rows=50, cols=3, per_block=[{"seed": i, "rows": 10 + i} for i in range(6)]
        )
        assert isinstance(r, FanOutResult) and r.ok
        assert [r[b] for b in ds.refs] == [10 + i for i in range(6)]
        shapes = ds.fan_out("shape")
        assert [shapes[b] for b in ds.refs] == [[10 + i, 3] for i in range(6)]
        with pytest.raises(ValueError):
            ds.fan_out("shape", per_block=[{}])
        # found again by name, from another client, blocks in the same order
        with bare_cluster.client() as other:
            again = other.dataset("points")
            assert again.refs == ds.refs
            assert other.get(block_alias("points", 5))._id == ds.refs[5]
        with pytest.raises(UnknownObject):
            open_dataset(c, "nothing-by-this-name")
        with pytest.raises(BadRequest):
            c.create_dataset("bad#name", BLOCK, 1)
        # a failed create takes back the blocks it made: the name stays free
        with pytest.raises(ContinuumError):
            create_dataset(c, "half", BLOCK, 2, per_block=[{"cols": 1}, {"cols": -1}])
        with pytest.raises(UnknownObject):
            c.dataset("half")
        # placement by size, on the nodes given
        sized = c.create_dataset(
            "sized", BLOCK, 3, placement="size", sizes=[5, 3, 2], nodes=["n2", "n1"]
        )
        assert sized.nodes() == {"n1": 1, "n2": 2}  # 5 -> n1 (ties by id), 3 and 2 -> n2
        sized.delete()
        with pytest.raises(UnknownObject):
            c.dataset("sized")


def test_fan_out_takes_per_object_arguments(cluster: Cluster) -> None:
    with cluster.client() as c:
        objs = [c.stub(COUNTER).create(start=100 * i, alias=f"pc-{i}") for i in range(3)]
        keys = [objs[0]._id, "pc-1", "pc-2"]  # a proxy's id, aliases as given
        r = c.fan_out(
            [objs[0], "pc-1", "pc-2"], "add", n=1, per_object={keys[0]: {"n": 5}, "pc-2": {"n": 7}}
        )
        assert r.ok and [r[k] for k in keys] == [5, 101, 207]


def _fan_out_in_thread(ds: Dataset, out: dict[str, FanOutResult]) -> threading.Thread:
    def run() -> None:
        out[ds.name] = ds.fan_out("summary", delay=1.5, window=2, timeout=40)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_node_dying_mid_fan_out(bare_cluster: Cluster) -> None:
    """Blocks without a replica on the dead node fail with a clear per-block
    error, the others answer; blocks with a replica complete through it. A
    driver then refuses to compute over part of the data."""
    _start(bare_cluster, ["n1", "n2"])
    with bare_cluster.client(timeout=30, offline_grace=1.0) as c:
        plain = c.create_dataset("plain", BLOCK, 4, kwargs={"cols": 2})
        safe = c.create_dataset("safe", BLOCK, 4, kwargs={"cols": 2}, replicas=1)
        for ds in (plain, safe):
            assert ds.fan_out(
                "generate", rows=40, cols=2, per_block=[{"seed": i} for i in range(4)]
            ).ok
        on_n2 = {b._id for b in plain.blocks if c._node_of(b) == "n2"}
        assert len(on_n2) == 2
        out: dict[str, FanOutResult] = {}
        threads = [_fan_out_in_thread(ds, out) for ds in (plain, safe)]
        time.sleep(0.7)  # every first call running (window 2 per node)
        bare_cluster.kill("n2")
        for t in threads:
            t.join(60)
        lost = out["plain"]
        assert set(lost.errors) == on_n2, lost
        assert all(e.code in ("unavailable", "deadline_expired") for e in lost.errors.values())
        assert all(v["rows"] == 40 for v in lost.results.values())
        kept = out["safe"]
        assert kept.ok and len(kept) == 4, kept
        assert all(v["rows"] == 40 for v in kept.results.values())
        # the driver's all-or-nothing answer names the blocks that failed
        driver = c.stub(DRIVER).create(node="n1")
        # (RemoteError here, or BlocksFailed where continuum_node.ml is imported)
        with pytest.raises(ContinuumError) as err:
            plain.reduce(driver, "cascade_svm", timeout=30)
        assert err.value.code == "ml.blocks_failed"
        failed: dict[str, Any] = err.value.data["errors"]
        assert set(failed) == on_n2
        assert all(e["code"] in ("unavailable", "deadline_expired") for e in failed.values())
        # the replicated dataset still computes in full
        model = safe.reduce(driver, "cascade_svm", timeout=30)
        assert model["blocks"] == 4
