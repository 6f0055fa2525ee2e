"""Durable nodes: objects survive SIGKILL; device feeds lose nothing across a restart."""

from __future__ import annotations

import signal
import time

import cbor2
import paho.mqtt.client as paho

from ._cluster import Cluster, wait_for

COUNTER = "examples.counter.Counter"
MODULES = ("examples.counter", "examples.sink")


def test_acknowledged_mutations_survive_sigkill(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state = str(c.tmp / "n1-state")
    c.start_gateway()
    c.start_node("n1", "--state-dir", state)
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=10, alias="durable")
        acked = [obj.add(1) for _ in range(50)]
        assert acked[-1] == 60
        c.stop("n1", signal.SIGKILL)
        c.start_node("n1", "--state-dir", state)
        assert client.get("durable").get() == 60
        assert obj.add(1) == 61
        client.delete(obj)
    c.stop("n1", signal.SIGKILL)
    c.start_node("n1", "--state-dir", state)
    with c.client() as client:
        assert (
            client._requester.send(
                c.topics.node_ctl("n1"),
                __import__("continuum")._protocol.Request("list", [], {}),
                5.0,
            ).result()
            == []
        )


def test_device_feed_loses_nothing_across_a_node_restart(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state = str(c.tmp / "n1-state")
    c.start_gateway()
    c.start_node("n1", "--state-dir", state, modules=MODULES)
    with c.client() as client:
        sink = client.stub("examples.sink.SampleSink").create(alias="sink")
        client.bind_metrics(sink, "dev-1", "ingest")
    host, port = c.url.removeprefix("mqtt://").split(":")
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=paho.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    topic = c.topics.metrics("dev-1")
    total = 600
    for seq in range(1, total + 1):
        pub.publish(
            topic, cbor2.dumps({"dev": "dev-1", "seq": seq, "cpu": 1.0, "mem": 2.0}), qos=1
        ).wait_for_publish(5)
        if seq == 200:
            c.stop("n1", signal.SIGKILL)  # samples 201.. wait in the node's broker session
        if seq == 400:
            c.start_node("n1", "--state-dir", state, modules=MODULES)
        if seq % 50 == 0:
            time.sleep(0.01)
    pub.disconnect()
    pub.loop_stop()
    with c.client() as client:
        sink = client.get("sink")
        wait_for(lambda: len(sink.received()["seqs"]) >= total, timeout=30)
        got = sink.received()
    assert got["seqs"] == list(range(1, total + 1))
