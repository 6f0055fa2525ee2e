"""Issue 15: draining a node (protocol.md §16 ``drain``/``undrain``), and the
node's load in its status as the gateway's ``nodes`` passes it on.

Real broker, gateway and three nodes: a drained node gets no new object, its
objects move (a replicated one to its replica, an unreplicated one by a copy
of its state to another node) keeping their state, proxies made before keep
working, and only an admin may drain."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt import BadRequest, Forbidden, NoNodeAvailable, UnknownMethod
from continuum_mqtt.service import BrokerURL

from ._cluster import Cluster, wait_for

COUNTER = "examples.counter.Counter"
ADMIN = "ops"


def as_user(c: Cluster, user: str, **kw: Any) -> continuum_mqtt.Client:
    url = BrokerURL.parse(c.url)
    kw.setdefault("timeout", 15.0)
    return continuum_mqtt.Client(f"mqtt://{user}@{url.host}:{url.port}", root=c.root, **kw)


@pytest.fixture
def trio(bare_cluster: Cluster) -> Cluster:
    c = bare_cluster
    c.start_gateway("--admin", ADMIN)
    for n in ("n1", "n2", "n3"):
        c.start_node(n, "--admin", ADMIN)
    return c


def where(client: continuum_mqtt.Client, ref: str) -> dict[str, Any]:
    return client._gateway("resolve", ref=ref)


def test_a_drained_node_is_emptied_and_skipped(trio: Cluster) -> None:
    c = trio
    with as_user(c, ADMIN) as admin, as_user(c, "dev-a") as user:
        stub = admin.stub(COUNTER)
        replicated = stub.create(start=10, node="n1", replicas=1, alias="ops/replicated")
        alone = stub.create(start=20, node="n1", alias="ops/alone")
        mine = user.stub(COUNTER).create(start=30, node="n1")
        assert replicated.add(5) == 15 and alone.add(7) == 27 and mine.add(1) == 31
        assert {where(admin, o._id)["node"] for o in (replicated, alone, mine)} == {"n1"}

        # the node's load, from its status, passed on by the gateway
        n1 = next(n for n in admin.nodes() if n["id"] == "n1")
        assert n1["draining"] is False
        assert n1["memory"] > 10 << 20
        assert n1["queued"] >= 0 and n1["running"] >= 0 and n1["long_running"] == 0
        assert n1["load"] is None or n1["load"] >= 0

        with pytest.raises(Forbidden):
            user.drain("n1")
        with pytest.raises(BadRequest):
            admin.drain("nowhere")
        assert not any(n["draining"] for n in admin.nodes())

        result = admin.drain("n1")
        assert result["moved"] == 3 and result["left"] == [] and result["reason"] is None
        assert [n["id"] for n in admin.nodes() if n["draining"]] == ["n1"]
        for obj in (replicated, alone, mine):
            info = where(admin, obj._id)
            assert info["node"] != "n1" and "n1" not in info["replicas"]
        # its replica took over, and it has a replica again, on the third node
        moved = where(admin, replicated._id)
        assert len(moved["replicas"]) == 1 and {moved["node"], *moved["replicas"]} == {"n2", "n3"}
        assert admin.objects(node="n1") == []

        # state kept; the proxies made before the drain follow their objects
        assert replicated.add(1) == 16
        assert alone.add(1) == 28
        assert mine.add(1) == 32
        assert user.get(mine._id).get() == 32
        # and the drained node no longer holds them (deleted after the move)
        wait_for(lambda: n1_objects(admin) == 0, timeout=15)

        # nothing new is placed on it; naming it is refused clearly
        placed = [where(admin, stub.create()._id)["node"] for _ in range(4)]
        assert "n1" not in placed
        with pytest.raises(NoNodeAvailable, match="draining"):
            stub.create(node="n1")
        assert admin.drain("n1")["moved"] == 0  # again: nothing left to move

        with pytest.raises(Forbidden):
            user.undrain("n1")
        assert admin.undrain("n1") == {"node": "n1", "draining": False}
        assert not any(n["draining"] for n in admin.nodes())
        back = stub.create(start=1, node="n1")
        assert where(admin, back._id)["node"] == "n1" and back.add(1) == 2


def n1_objects(client: continuum_mqtt.Client) -> int:
    """Objects the node n1 says it holds (its status, through the gateway)."""
    n1 = next(n for n in client.nodes() if n["id"] == "n1")
    return int(n1.get("resident", 0)) + int(n1.get("evicted", 0))


def test_drain_survives_a_gateway_restart_and_reports_what_stays(trio: Cluster) -> None:
    """Draining is recorded in the directory; an object whose node is offline
    and has no replica stays where it is, reported, never lost."""
    c = trio
    with as_user(c, ADMIN) as admin:
        stuck = admin.stub(COUNTER).create(start=3, node="n2")
        c.stop("n2")
        wait_for(lambda: admin._node_state.get("n2") == "offline", timeout=10)
        result = admin.drain("n2")
        assert result["moved"] == 0 and result["left"] == [stuck._id]
        assert "offline" in result["reason"] and stuck._id in result["reasons"]
        assert where(admin, stuck._id)["node"] == "n2"
    c.stop("gateway")
    c.start_gateway("--admin", ADMIN)
    with as_user(c, ADMIN) as admin:
        assert [n["id"] for n in admin.nodes() if n["draining"]] == ["n2"]
        nodes = {where(admin, admin.stub(COUNTER).create()._id)["node"] for _ in range(3)}
        assert "n2" not in nodes


def test_calls_during_a_drain_are_neither_lost_nor_doubled(trio: Cluster) -> None:
    """Two clients keep adding to an unreplicated and a replicated counter
    while their node is drained: each ends at exactly its acknowledged adds."""
    c = trio
    with as_user(c, ADMIN) as admin:
        stub = admin.stub(COUNTER)
        objs = [stub.create(node="n1"), stub.create(node="n1", replicas=1)]
    acked = [0, 0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        with as_user(c, ADMIN) as cc:
            o = cc.get(objs[i]._id)
            while not stop.is_set():
                try:
                    o.add(1)
                    acked[i] += 1
                except continuum_mqtt.ContinuumError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: min(acked) >= 20, timeout=20)
        with as_user(c, ADMIN) as admin:
            assert admin.drain("n1")["moved"] == 2
            before = list(acked)
            wait_for(lambda: all(a >= b + 20 for a, b in zip(acked, before, strict=True)), 20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    with as_user(c, ADMIN) as admin:
        for o, n in zip(objs, acked, strict=True):
            assert where(admin, o._id)["node"] != "n1"
            assert admin.get(o._id).get() == n
        # the replica given back by the drain is a real one: it takes over
        info = where(admin, objs[1]._id)
        assert len(info["replicas"]) == 1 and "n1" not in info["replicas"]
        c.stop(info["node"], signal.SIGKILL)
        wait_for(lambda: where(admin, objs[1]._id)["node"] == info["replicas"][0], timeout=20)
        assert admin.get(objs[1]._id).get() == acked[1]


def test_local_mode_has_no_nodes_to_drain() -> None:
    with continuum_mqtt.connect("local") as client, pytest.raises(UnknownMethod):
        client.drain("n1")
