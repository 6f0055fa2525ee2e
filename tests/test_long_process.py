"""Long calls in worker processes (``continuum-node --long-calls process``,
continuum_node._longproc): the method runs in a worker process on a snapshot
of the object, the object comes back; progress, deadlines, a worker's death
and a SIGKILL of the node behave as for a call on a thread."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from continuum_dev.testing import Deployment

from continuum_mqtt import Cancelled, DeadlineExpired, RemoteError

from ._cluster import wait_for

MODEL = "examples.model.Regressor"
OPTS = ("--long-calls", "process", "--intra-op-threads", "1", "--long-workers", "1")


def _node(d: Deployment, *extra: str, durable: bool = False) -> None:
    d.start_gateway()
    state = d.tmp / "n1" if durable else None
    d.start_node("n1", *OPTS, *extra, modules=("examples.model",), state_dir=state)


def _children(pid: int) -> list[int]:
    import psutil

    return [
        c.pid
        for c in psutil.Process(pid).children()
        if "resource_tracker" not in " ".join(c.cmdline())
    ]


def test_a_long_call_runs_in_a_worker_process_and_its_object_comes_back(
    bare_cluster: Deployment,
) -> None:
    _node(bare_cluster)
    node_pid = bare_cluster.pid("n1")
    with bare_cluster.client(timeout=120) as c:
        m = c.stub(MODEL).create(hidden=8)
        updates: list[Any] = []
        r = m.train.options(on_progress=updates.append)(rows=64, epochs=3)
        assert r["pid"] != node_pid and r["pid"] in _children(node_pid)
        assert r["torch_threads"] == 1  # the node's setting holds in the worker
        assert updates == [{"epoch": e, "of": 3} for e in range(3)]
        assert m.threads()["pid"] == node_pid  # light calls stay in the node
        assert len(m.predict([[0.1, 0.2, 0.3]])) == 1  # the trained weights came back
        again = m.train(rows=64, epochs=1)
        assert again["pid"] == r["pid"]  # the same worker, started with the node


def test_a_light_call_is_answered_while_a_long_call_computes_in_a_worker(
    bare_cluster: Deployment,
) -> None:
    _node(bare_cluster, "--workers", "3", "--caller-workers", "3")
    with bare_cluster.client(timeout=300) as c:
        m1, m2 = (c.stub(MODEL).create(hidden=32) for _ in range(2))
        training = threading.Event()
        long: Future[Any] = m1.train.options(on_progress=lambda u: training.set()).future(
            rows=2000, epochs=40
        )
        assert training.wait(120)
        for _ in range(3):
            m2.ping()
        assert not long.done()  # every light reply came while the training ran
        assert long.result()["loss"] >= 0


def test_a_deadline_cancels_the_call_in_the_worker(
    bare_cluster: Deployment,
) -> None:
    _node(bare_cluster)
    with bare_cluster.client(timeout=120) as c:
        m = c.stub(MODEL).create(hidden=32)
        with pytest.raises((Cancelled, DeadlineExpired)):
            m.train.options(timeout=1.5)(rows=4000, epochs=1000)  # (hours of work)
        # the worker stopped at its next check: it serves the next call at once
        assert m.train.options(timeout=60)(rows=64, epochs=1)["loss"] >= 0


def test_a_worker_that_dies_fails_the_call_clearly_and_is_replaced(
    bare_cluster: Deployment,
) -> None:
    _node(bare_cluster)
    node_pid = bare_cluster.pid("n1")
    with bare_cluster.client(timeout=120) as c:
        m = c.stub(MODEL).create(hidden=32)
        m.train(rows=64, epochs=1)
        weights = m.predict([[0.5, 0.5, 0.5]])
        started = threading.Event()
        doomed: Future[Any] = m.train.options(on_progress=lambda u: started.set()).future(
            rows=4000, epochs=1000
        )
        assert started.wait(60)
        (worker,) = _children(node_pid)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(RemoteError) as err:
            doomed.result(60)
        assert err.value.remote_type == "WorkerDied"
        assert m.predict([[0.5, 0.5, 0.5]]) == weights  # the object as before the call
        wait_for(lambda: len(_children(node_pid)) == 1, timeout=60)
        assert m.train(rows=64, epochs=1)["pid"] != worker


def test_an_idle_worker_exits_and_the_next_long_call_starts_one(
    bare_cluster: Deployment,
) -> None:
    """--long-idle-exit: the worker's memory goes back while no training runs;
    light calls never needed it, the next long call starts a fresh one."""
    _node(bare_cluster, "--long-idle-exit", "1")
    node_pid = bare_cluster.pid("n1")
    with bare_cluster.client(timeout=120) as c:
        m = c.stub(MODEL).create(hidden=8)
        first = m.train(rows=64, epochs=1)["pid"]
        weights = m.predict([[0.1, 0.2, 0.3]])
        wait_for(lambda: _children(node_pid) == [], timeout=60)
        assert m.predict([[0.1, 0.2, 0.3]]) == weights  # light calls never needed it
        again = m.train(rows=64, epochs=1)
        assert again["pid"] != first and again["pid"] in _children(node_pid)
        assert again["torch_threads"] == 1 and again["loss"] >= 0  # set up as the first


def test_what_a_worker_trained_is_durable(bare_cluster: Deployment) -> None:
    _node(bare_cluster, durable=True)
    with bare_cluster.client(timeout=120) as c:
        m = c.stub(MODEL).create(hidden=8, alias="m")
        m.train(rows=64, epochs=2)
        out = m.predict([[0.1, 0.2, 0.3]])
    bare_cluster.stop("n1", signal.SIGKILL)
    bare_cluster.start_node(
        "n1", *OPTS, modules=("examples.model",), state_dir=bare_cluster.tmp / "n1"
    )
    with bare_cluster.client(timeout=120) as c:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert c.get("m").predict([[0.1, 0.2, 0.3]]) == out
                break
            except AssertionError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
