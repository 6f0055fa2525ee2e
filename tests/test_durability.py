"""Durable nodes: objects survive SIGKILL; device feeds lose nothing across a restart."""

from __future__ import annotations

import signal
import time

import cbor2
import paho.mqtt.client as paho

from ._cluster import Cluster, start_durable, wait_for

COUNTER = "examples.counter.Counter"
MODULES = ("examples.counter", "examples.sink")


def test_acknowledged_mutations_survive_sigkill(durable_cluster: Cluster) -> None:
    c = durable_cluster
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=10, alias="durable")
        acked = [obj.add(1) for _ in range(50)]
        assert acked[-1] == 60
        c.stop("n1", signal.SIGKILL)
        start_durable(c)
        assert client.get("durable").get() == 60
        assert obj.add(1) == 61
        client.delete(obj)
    c.stop("n1", signal.SIGKILL)
    start_durable(c)
    with c.client() as client:
        assert (
            client._requester.send(
                c.topics.node_ctl("n1"),
                __import__("continuum_mqtt")._protocol.Request("list", [], {}),
                5.0,
            ).result()
            == []
        )


def test_device_feed_loses_nothing_across_a_node_restart(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    start_durable(c, modules=MODULES)
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
            start_durable(c, modules=MODULES)
        if seq % 50 == 0:
            time.sleep(0.01)
    pub.disconnect()
    pub.loop_stop()
    with c.client() as client:
        sink = client.get("sink")
        wait_for(lambda: len(sink.received()["seqs"]) >= total, timeout=30)
        got = sink.received()
    assert got["seqs"] == list(range(1, total + 1))


def test_journal_and_checkpoints_replay_after_sigkill(bare_cluster: Cluster) -> None:
    """Calls are journaled between checkpoints; a restart replays them, and
    exactly-once answers survive too."""
    c = bare_cluster
    c.start_gateway()
    start_durable(c, "n1", "--checkpoint-every", "7")
    with c.client() as client:
        obj = client.stub(COUNTER).create(start=0)
        for _ in range(52):  # 7 checkpoints and 3 journaled calls
            obj.add(1)
        steps: list[object] = []
        assert obj.count_to.options(on_progress=steps.append)(3) == 55
    c.stop("n1", signal.SIGKILL)
    # a torn write at the journal's end (a crash mid-append) is ignored
    journal = next((c.tmp / "n1-state" / "objects").glob("*.journal"))
    with open(journal, "ab") as fh:
        fh.write(b"\x00\x00\x00\x40\x12\x34")
    start_durable(c, "n1", "--checkpoint-every", "7")
    with c.client() as client:
        assert client.get(obj._id).get() == 55
        assert client.get(obj._id).add(1) == 56


def test_store_journal_unit(tmp_path: object) -> None:
    from pathlib import Path

    from continuum_node._store import Store

    store = Store(Path(str(tmp_path)))
    store.checkpoint("o1", {"id": "o1", "seq": 2, "instance": {"v": 2}})
    for seq in (3, 4):
        store.append("o1", {"seq": seq, "method": "add", "args": [1], "kwargs": {}})
    [(record, entries)] = store.load_all()
    assert record["instance"] == {"v": 2} and [e["seq"] for e in entries] == [3, 4]
    store.checkpoint("o1", {"id": "o1", "seq": 4, "instance": {"v": 4}})
    [(record, entries)] = store.load_all()
    assert record["seq"] == 4 and entries == []
    store.delete("o1")
    assert store.load_all() == []
    store.close()
