"""The directory survives gateway restarts and follows node liveness."""

from __future__ import annotations

import signal
import sqlite3

import continuum_mqtt

from ._cluster import Cluster, wait_for

COUNTER = "examples.counter.Counter"


def test_directory_survives_a_gateway_restart(cluster: Cluster) -> None:
    with cluster.client() as c:
        objs = [c.stub(COUNTER).create(start=i, alias=f"obj-{i}") for i in range(5)]
        for o in objs:
            o.add(1)
    cluster.stop("gateway")
    cluster.start_gateway()
    with cluster.client() as c:
        for i, o in enumerate(objs):
            found = c.get(f"obj-{i}")
            assert found._id == o._id
            assert found.get() == i + 1
        assert [n["state"] for n in c.nodes()] == ["online"]
    mode = sqlite3.connect(cluster.db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_calls_do_not_need_the_gateway(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        cluster.stop("gateway")
        assert obj.add(5) == 5  # location cached: straight to the node


def test_node_marked_offline_when_its_last_will_arrives(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create(alias="orphan")
        cluster.stop("n1", signal.SIGKILL)

        def offline() -> bool:
            return [n["state"] for n in c.nodes()] == ["offline"]

        wait_for(offline, timeout=10)
        assert c.get("orphan")._id == obj._id  # still in the directory
        info = c._gateway("resolve", ref="orphan")
        assert info["node_state"] == "offline"
        try:
            c.stub(COUNTER).create()
        except continuum_mqtt.NoNodeAvailable:
            pass
        else:  # pragma: no cover
            raise AssertionError("placed an object on a dead node")


def test_graceful_node_stop_publishes_offline(cluster: Cluster) -> None:
    assert cluster.stop("n1") == 0
    with cluster.client() as c:
        wait_for(lambda: [n["state"] for n in c.nodes()] == ["offline"], timeout=10)


def test_object_moved_reresolves_transparently(cluster: Cluster) -> None:
    """A node that answers object_not_here makes the client ask the gateway again."""
    cluster.start_node("n2")
    with cluster.client() as c:
        obj = c.stub(COUNTER).create(node="n1")
        assert obj.add(1) == 1
        # Re-point the directory entry at n2 and create the object there, as a
        # move would; the client's cached location (n1) is now stale.
        c._requester.send(
            cluster.topics.node_ctl("n2"),
            continuum_mqtt._protocol.Request(
                "create", [], {"obj": obj._id, "cls": COUNTER, "kwargs": {"start": 100}}
            ),
            5.0,
        ).result()
        c._requester.send(
            cluster.topics.node_ctl("n1"),
            continuum_mqtt._protocol.Request("delete", [], {"obj": obj._id}),
            5.0,
        ).result()
        db = sqlite3.connect(cluster.db)
        db.execute("update objects set node = 'n2' where id = ?", [obj._id])
        db.commit()
        assert obj.add(1) == 101
        assert c._locations[obj._id] == "n2"


def test_an_oversized_node_status_is_refused_and_nodes_still_answers(cluster: Cluster) -> None:
    """BUG-13: the directory kept a status of any size and nodes()/classes()
    echoed it, so one 1 MB junk status broke those replies for everyone."""
    import cbor2
    import paho.mqtt.client as paho

    host, port = cluster.url.removeprefix("mqtt://").split(":")
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    try:
        junk = {"state": "offline", "host": "x" * (1 << 20)}
        pub.publish(
            cluster.topics.node_status("junk"), cbor2.dumps(junk), qos=1, retain=True
        ).wait_for_publish(5)
        wait_for(lambda: "ignoring malformed status of node junk" in cluster.log("gateway"))
        with cluster.client() as c:
            assert [n["id"] for n in c.nodes()] == ["n1"]
            assert "examples.counter.Counter" in c.classes()
    finally:
        pub.publish(cluster.topics.node_status("junk"), b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
