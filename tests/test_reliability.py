"""Exactly-once calls and backpressure."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum_mqtt

from ._cluster import REPO, Cluster, start_durable

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


def test_exactly_once_survives_a_node_restart(durable_cluster: Cluster) -> None:
    c = durable_cluster
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=0)
    body = {"id": "twice:restart", "obj": obj._id, "method": "add", "args": [7]}
    assert [r["value"] for r in publish_twice(c, body, 1)] == [7]
    c.stop("n1", signal.SIGKILL)
    start_durable(c)
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
            except continuum_mqtt.Busy as exc:
                outcomes.append(exc.code)
        blocker.result()
        done = [o for o in outcomes if o != "busy"]
        assert "busy" in outcomes and 1 <= len(done) <= 5
        assert obj.get() == len(done)  # busy calls never ran
        assert obj.add(1) == len(done) + 1  # and the object serves again


def test_calls_in_flight_survive_a_broker_restart(tmp_path: Path) -> None:
    """Clients, nodes and the gateway reconnect and resend what was in flight
    (same request ids): calls complete and none runs twice. (A new call made
    while the client still believes the node offline fails at once with
    Unavailable; such a call may or may not have run.)"""
    from continuum_dev.testing import LocalBroker

    broker = LocalBroker().start()
    port = broker.port
    c = Cluster(broker.url, tmp_path, cwd=REPO)
    try:
        c.start_gateway()
        c.start_node("n1")
        with c.client(timeout=30.0) as client:
            obj = client.stub(COUNTER).create()
            acked, errors = [0], []
            unavailable = [0]
            stop = threading.Event()

            def hammer() -> None:
                while not stop.is_set():
                    try:
                        obj.add(1)
                        acked[0] += 1
                    except continuum_mqtt.Unavailable:
                        unavailable[0] += 1
                        time.sleep(0.05)
                    except continuum_mqtt.ContinuumError as exc:  # pragma: no cover - reported
                        errors.append(exc)

            t = threading.Thread(target=hammer)
            t.start()
            time.sleep(0.5)
            broker.stop()
            time.sleep(1.5)
            broker = LocalBroker(port=port).start()
            before = acked[0]
            deadline = time.monotonic() + 20
            while acked[0] < before + 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            t.join(35)
            assert not errors, errors[:3]
            assert acked[0] >= before + 100
            assert acked[0] <= obj.get() <= acked[0] + unavailable[0]
    finally:
        c.close()
        broker.stop()


def test_gateway_requests_are_exactly_once(cluster: Cluster) -> None:
    """A create resent with the same request id creates one object."""
    with cluster.client() as client:
        req = continuum_mqtt._protocol.Request(
            "create", [], {"cls": COUNTER, "alias": "once"}, id="twice:create"
        )
        first = client._requester.send(cluster.topics.gateway_call, req, 10.0).result()
        again = continuum_mqtt._protocol.Request(
            "create", [], {"cls": COUNTER, "alias": "once"}, id="twice:create"
        )
        second = client._requester.send(cluster.topics.gateway_call, again, 10.0).result()
        assert first == second
        assert [o["id"] for o in client.objects()] == [first["id"]]


def test_a_restarted_client_with_the_same_client_id_is_not_answered_from_the_past(
    cluster: Cluster,
) -> None:
    """Request ids are <cid>:<random per instance>:<n>: a process that comes back
    with the same client id (the edge agent's is stable) must not get the
    remembered outcome of its previous life's call number n."""
    with cluster.client() as c:
        obj = c.stub("examples.counter.Counter").create(start=0)
    for expected in (1, 2, 3):
        with cluster.client(client_id="stable-id") as c:
            assert c.get(obj._id).add(1) == expected
