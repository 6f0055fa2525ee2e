"""Exactly-once calls and backpressure."""

from __future__ import annotations

import signal
import threading
import time

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum

from ._cluster import Cluster

COUNTER = "examples.counter.Counter"


def publish_twice(cluster: Cluster, body: dict[str, object], n: int = 2) -> list[dict[str, object]]:
    """Publish the same request ``n`` times; return the replies (one per copy,
    except that a copy arriving while the first still runs gets no reply of its
    own: the first's reply answers both)."""
    host, port = cluster.url.removeprefix("mqtt://").split(":")
    replies: list[dict[str, object]] = []
    got = threading.Event()

    def on_message(c: object, u: object, msg: paho.MQTTMessage) -> None:
        replies.append(cbor2.loads(msg.payload))
        got.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="twice", protocol=paho.MQTTv5)
    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(host, int(port))
    c.loop_start()
    c.subscribe(cluster.topics.reply("twice"), 1)
    assert subscribed.wait(5)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = cluster.topics.reply("twice")
    for _ in range(n):
        c.publish(cluster.topics.node_call("n1"), cbor2.dumps(body), qos=1, properties=props)
    assert got.wait(10), replies
    time.sleep(0.3)  # room for the other copies' replies
    assert 1 <= len(replies) <= n
    c.disconnect()
    c.loop_stop()
    return replies


def test_the_same_request_twice_executes_once(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create(start=0)
    body = {"id": "twice:1", "obj": obj._id, "method": "add", "args": [5]}
    replies = publish_twice(cluster, body, 2)
    assert {r["value"] for r in replies} == {5}
    # and again later (a client retry after a lost reply)
    assert [r["value"] for r in publish_twice(cluster, body, 1)] == [5]
    with cluster.client() as c:
        assert c.get(obj._id).get() == 5


def test_exactly_once_survives_a_node_restart(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state = str(c.tmp / "state")
    c.start_gateway()
    c.start_node("n1", "--state-dir", state)
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=0)
    body = {"id": "twice:restart", "obj": obj._id, "method": "add", "args": [7]}
    assert [r["value"] for r in publish_twice(c, body, 1)] == [7]
    c.stop("n1", signal.SIGKILL)
    c.start_node("n1", "--state-dir", state)
    assert [r["value"] for r in publish_twice(c, body, 1)] == [7]
    with c.client() as client:
        assert client.get(obj._id).get() == 7


def test_a_full_queue_answers_busy(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--max-queue", "4")
    with c.client() as client:
        obj = client.stub(COUNTER).create()
        blocker = obj.slow.future(1.0)
        futures = [obj.add.future(1) for _ in range(12)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except continuum.Busy as exc:
                outcomes.append(exc.code)
        blocker.result()
        done = [o for o in outcomes if o != "busy"]
        assert "busy" in outcomes and 1 <= len(done) <= 5
        assert obj.get() == len(done)  # busy calls never ran
        assert obj.add(1) == len(done) + 1  # and the object serves again
