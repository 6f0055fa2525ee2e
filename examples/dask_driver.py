"""Driving continuum objects from an existing task engine: Dask's distributed
scheduler runs a Cascade SVM task graph whose leaves are active calls to the
blocks of a dataset (each block fits where it lives), and whose merges run in
Dask's workers, here. Beside it, the same computation with continuum's own
reduce on a node (``Driver.cascade_svm``), which keeps the intermediate
results node to node. Both give the same support vectors; the difference is
where the support vectors travel and who schedules.

    python -m examples.dask_driver                      # its own mosquitto, gateway, 2 nodes
    python -m examples.dask_driver mqtt://127.0.0.1:1883 [ROOT]   # a deployment with
                                                         # nodes hosting continuum_node.ml

Needs the ``ml`` extra here too (the merges are scikit-learn fits in the Dask
workers) and ``dask[distributed]`` (a dev dependency). What it costs, printed
at the end: every block's support vectors cross into this process (the
reduce-on-a-node way moves them to the driver's node instead), and Dask adds
its scheduling (a few ms per task, the first graph more); a general graph
(any shape, retries, work stealing) is what it buys. No home-made scheduler:
the locality comes from calling each block where it lives.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from continuum_node import ml

import continuum_mqtt

BLOCK = "continuum_node.ml.Block"
DRIVER = "continuum_node.ml.Driver"
PARAMS = {"C": 1.0, "gamma": 0.125, "kernel": "rbf"}

_clients: dict[tuple[str, str], continuum_mqtt.Client] = {}
_lock = threading.Lock()
moved = {"bytes": 0}


def _client(url: str, root: str) -> continuum_mqtt.Client:
    """One continuum client per Dask worker process (here: this process)."""
    with _lock:
        c = _clients.get((url, root))
        if c is None:
            c = _clients[(url, root)] = continuum_mqtt.Client(url, root=root, timeout=120)
            c.connect()
        return c


def fit_block(url: str, root: str, ref: str) -> Any:
    """A leaf task: the block fits its SVC where it lives; its support vectors come here."""
    sv = _client(url, root).get(ref).svm_fit(params=PARAMS)
    with _lock:
        moved["bytes"] += len(sv["x"]["data"]) + len(sv["y"]["data"])
    return ml.support_of(sv)


def merge(a: Any, b: Any) -> Any:
    """A merge task, in the Dask worker: an SVC on both sets of support vectors."""
    return ml.svm_merge(a, b, ml.SVMParams.of(PARAMS))


def cascade_graph(url: str, root: str, refs: list[str]) -> Any:
    """The graph of ``continuum_node.ml.cascade``: leaves, then pairs level by level."""
    from dask import delayed

    level = [delayed(fit_block)(url, root, r, pure=False) for r in refs]
    while len(level) > 1:
        nxt = [delayed(merge)(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = nxt + ([level[-1]] if len(level) % 2 else [])
    return level[0]


@contextlib.contextmanager
def _deployment(argv: list[str]) -> Iterator[tuple[str, str]]:
    if argv:
        yield argv[0], argv[1] if len(argv) > 1 else continuum_mqtt.DEFAULT_ROOT
        return
    from continuum_dev.testing import Deployment

    with Deployment() as dep:
        dep.start(["n1", "n2"], modules=["continuum_node.ml"])
        yield dep.url, dep.root


def main(argv: list[str]) -> dict[str, Any]:
    from distributed import Client as DaskClient

    blocks, rows, cols = 8, 4000, 8
    with _deployment(argv) as (url, root), continuum_mqtt.Client(url, root=root, timeout=120) as c:
        name = f"dask-demo-{time.time_ns() % 10**9}"
        ds = c.create_dataset(name, BLOCK, blocks, kwargs={"cols": cols})
        try:
            seeds = [{"seed": i} for i in range(blocks)]
            ds.fan_out(
                "generate", rows=rows, cols=cols, shape="slab", per_block=seeds
            ).raise_first()
            driver = c.stub(DRIVER).create()
            ds.reduce(driver, "cascade_svm", params=PARAMS)  # warm-up: scikit-learn on every node
            t0 = time.monotonic()
            native = ds.reduce(driver, "cascade_svm", params=PARAMS)
            native_s = time.monotonic() - t0
            with DaskClient(
                processes=False, n_workers=1, threads_per_worker=4, dashboard_address=None
            ) as dc:
                graph = cascade_graph(url, root, ds.refs)
                dc.compute(graph).result()  # warm-up: the scheduler's first graph
                moved["bytes"] = 0
                t0 = time.monotonic()
                x, y = dc.compute(cascade_graph(url, root, ds.refs)).result()
                dask_s = time.monotonic() - t0
            nx, ny = ml.support_of(native)
            same = bool(x.shape == nx.shape and (x == nx).all() and (y == ny).all())
            client_bytes = len(native["x"]["data"]) + len(native["y"]["data"])
            c.delete(driver)
        finally:
            ds.delete()
            for cl in _clients.values():
                cl.close()
            _clients.clear()
    return {
        "blocks": blocks,
        "points": blocks * rows,
        "reduce_on_node_s": round(native_s, 3),
        "dask_s": round(dask_s, 3),
        "same_model": same,
        "bytes_into_this_process_dask": moved["bytes"],
        "bytes_into_this_process_reduce_on_node": client_bytes,
    }


if __name__ == "__main__":
    # Through the package, so that Dask ships the tasks by reference (a
    # function of ``__main__`` is pickled by value, with this module's lock).
    from examples.dask_driver import main as run

    for key, value in run(sys.argv[1:]).items():
        print(f"{key:40} {value}")
