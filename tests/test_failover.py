"""Replicated objects fail over when their primary dies; unreplicated ones are
reported unavailable until their node returns."""

from __future__ import annotations

import signal
import threading
import time

import pytest

import continuum_mqtt

from ._cluster import Cluster, start_durable, wait_for

COUNTER = "examples.counter.Counter"


def test_replicated_counter_survives_its_primary(bare_cluster: Cluster) -> None:
    """4 clients hammer a replicated counter while its primary is SIGKILLed:
    the final value equals the number of acknowledged increments exactly."""
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1")
    c.start_node("n2")
    with c.client() as client:
        obj = client.stub(COUNTER).create(replicas=1, alias="replicated")
        info = client._gateway("resolve", ref="replicated")
        primary, replica = info["node"], info["replicas"][0]
    acked = [0] * 4
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        with c.client(timeout=15.0) as cc:
            o = cc.get(obj._id)
            while not stop.is_set():
                try:
                    o.add(1)
                    acked[i] += 1
                except continuum_mqtt.ContinuumError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(acked) >= 200, timeout=20)
    before = sum(acked)
    t_kill = time.monotonic()
    c.stop(primary, signal.SIGKILL)
    wait_for(lambda: sum(acked) >= before + 200, timeout=20)
    recovered = time.monotonic() - t_kill
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert recovered < 10, recovered
    with c.client() as client:
        info = client._gateway("resolve", ref="replicated")
        assert info["node"] == replica and info["replicas"] == []
        assert client.get("replicated").get() == sum(acked)


def test_unreplicated_object_is_unavailable_until_its_node_returns(
    durable_cluster: Cluster,
) -> None:
    c = durable_cluster
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=3)
        assert obj.add(1) == 4
        c.stop("n1", signal.SIGKILL)
        wait_for(lambda: client._node_state.get("n1") == "offline", timeout=10)
        t0 = time.monotonic()
        with pytest.raises(continuum_mqtt.Unavailable, match="offline"):
            obj.add(1)
        assert time.monotonic() - t0 < 2  # a clear error at once, not a timeout
        start_durable(c)
        wait_for(lambda: client._node_state.get("n1") == "online", timeout=10)
        assert obj.add(1) == 5


def test_a_returning_primary_drops_its_stale_copy(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--state-dir", str(c.tmp / "n1"))
    c.start_node("n2", "--state-dir", str(c.tmp / "n2"))
    with c.client() as client:
        obj = client.stub(COUNTER).create(node="n1", replicas=1)
        obj.add(10)
        c.stop("n1", signal.SIGKILL)
        assert obj.add(1) == 11  # re-routed to the promoted replica on n2
        c.start_node("n1", "--state-dir", str(c.tmp / "n1"))

        def n1_dropped_it() -> bool:
            listed = client._requester.send(
                c.topics.node_ctl("n1"), continuum_mqtt._protocol.Request("list", [], {}), 5.0
            ).result()
            return listed == []

        wait_for(n1_dropped_it, timeout=10)
        assert obj.add(1) == 12


def test_a_replica_that_lost_its_copy_is_resynced(bare_cluster: Cluster) -> None:
    """Calls reach replicas as calls; a replica that restarted empty gets the
    whole state at the next call, and can then take over."""
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1")
    c.start_node("n2")
    with c.client() as client:
        obj = client.stub(COUNTER).create(node="n1", replicas=1)
        for _ in range(5):
            obj.add(1)
        c.stop("n2", signal.SIGKILL)  # not durable: its copy is gone
        assert obj.add(1) == 6  # replica offline: the primary carries on
        c.start_node("n2")
        assert obj.add(1) == 7  # n2 is behind (empty): resynced with the whole state
        assert obj.add(1) == 8  # and follows call by call again
        c.stop("n1", signal.SIGKILL)
        assert obj.add(1) == 9  # the promoted replica had everything
