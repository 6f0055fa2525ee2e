"""Every documented error code, end to end; the services keep serving after each."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum

from ._cluster import Cluster

COUNTER = "examples.counter.Counter"


class Raw:
    """A bare MQTT 5 client publishing hand-made requests."""

    def __init__(self, cluster: Cluster) -> None:
        host, port = cluster.url.removeprefix("mqtt://").split(":")
        self.reply = cluster.topics.reply("raw-tester")
        self.replies: list[tuple[Any, Any]] = []
        self.got = threading.Event()
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="raw-tester", protocol=paho.MQTTv5
        )
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(host, int(port))
        self.c.loop_start()
        self.c.subscribe(self.reply + "/#", 1)
        assert subscribed.wait(5)

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        self.replies.append((msg.payload, msg.properties))
        self.got.set()

    def request(
        self, topic: str, payload: bytes, content_type: str | None = None, **props: Any
    ) -> Any:
        self.got.clear()
        self.replies.clear()
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = self.reply + "/x"
        p.CorrelationData = b"corr-1"
        if content_type:
            p.ContentType = content_type
        for k, v in props.items():
            setattr(p, k, v)
        self.c.publish(topic, payload, qos=1, properties=p)
        assert self.got.wait(10), "no reply"
        body, rprops = self.replies[0]
        assert rprops.CorrelationData == b"corr-1"
        return json.loads(body) if content_type == "application/json" else cbor2.loads(body)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def raw(cluster: Cluster) -> Iterator[Raw]:
    r = Raw(cluster)
    yield r
    r.close()


def still_serving(cluster: Cluster) -> None:
    assert cluster.alive("n1") and cluster.alive("gateway")
    with cluster.client() as c:
        assert c.stub(COUNTER).create(start=1).add(1) == 2


def error_of(reply: Any) -> dict[str, Any]:
    assert reply["kind"] == "error", reply
    return reply["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("payload", [b"\xff\x00garbage", b"\x9f\x01", b"\x82\x01\x02", b"\xa1\x01"])
def test_malformed_cbor_to_node_and_gateway(cluster: Cluster, raw: Raw, payload: bytes) -> None:
    for topic in (cluster.topics.node_call("n1"), cluster.topics.gateway_call):
        err = error_of(raw.request(topic, payload))
        assert err["code"] == "bad_request" and err["type"] == "BadRequest"
    still_serving(cluster)


def test_malformed_json(cluster: Cluster, raw: Raw) -> None:
    err = error_of(raw.request(cluster.topics.node_call("n1"), b"{not json", "application/json"))
    assert err["code"] == "bad_request"
    still_serving(cluster)


def test_deeply_nested_payload(cluster: Cluster, raw: Raw) -> None:
    payload = b"\x81" * 10_000 + b"\x01"
    err = error_of(raw.request(cluster.topics.node_call("n1"), payload))
    assert err["code"] == "bad_request"
    still_serving(cluster)


def test_unknown_object(cluster: Cluster, raw: Raw) -> None:
    body = cbor2.dumps({"id": "1", "obj": "nope", "method": "add"})
    err = error_of(raw.request(cluster.topics.node_call("n1"), body))
    assert err["code"] == "object_not_here" and err["node"] == "n1"
    with cluster.client() as c, pytest.raises(continuum.UnknownObject) as info:
        c.get("nope").add(1)
    assert info.value.code == "unknown_object"
    still_serving(cluster)


def test_unknown_method_private_and_not_active(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum.UnknownMethod):
            obj.no_such_method()
        with pytest.raises(continuum.MethodNotActive):
            obj.reset()  # a public method not marked active
        with pytest.raises(AttributeError):
            obj._secret  # noqa: B018 - the stub refuses private names
        # and the node refuses them even when a client sends them anyway
        raw_call = c._requester.send(
            cluster.topics.node_call("n1"),
            continuum._protocol.Request("_secret", [], {}, obj=obj._id),
            5.0,
        )
        with pytest.raises(continuum.MethodNotActive):
            raw_call.result()
        with pytest.raises(continuum.MethodNotActive):
            c._requester.send(
                cluster.topics.node_call("n1"),
                continuum._protocol.Request("__init__", [], {}, obj=obj._id),
                5.0,
            ).result()
        assert obj.get() == 0
    still_serving(cluster)


def test_wrong_arguments(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum.BadArguments, match="too many positional"):
            obj.add(1, 2, 3)
        with pytest.raises(continuum.BadArguments, match="unexpected keyword"):
            obj.add(m=1)
        with pytest.raises(continuum.BadArguments):
            c.stub(COUNTER).create(1, 2, 3)
        assert obj.get() == 0
    still_serving(cluster)


def test_exception_inside_the_method(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum.RemoteError) as info:
            obj.fail("it broke")
        err = info.value
        assert err.remote_type == "ValueError" and err.message == "it broke"
        assert "raise ValueError(message)" in err.traceback
        assert err.remote_code == "method_error"
    still_serving(cluster)


def test_unencodable_result(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum.UnencodableResult, match="object"):
            obj.unencodable()
    still_serving(cluster)


def test_unencodable_result_as_json(cluster: Cluster, raw: Raw) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        obj.add(1)
    body = json.dumps({"id": "j", "obj": obj._id, "method": "echo", "args": ["text"]}).encode()
    assert raw.request(cluster.topics.node_call("n1"), body, "application/json") == {
        "id": "j", "kind": "result", "value": "text"
    }  # fmt: skip


def test_payload_over_the_limit(bare_cluster: Cluster, raw: Raw | None = None) -> None:
    cluster = bare_cluster
    cluster.start_gateway()
    cluster.start_node("n1", "--max-payload", "65536")
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum.PayloadTooLarge) as info:
            obj.echo(b"x" * 100_000)
        assert info.value.data["limit"] == 65536
        assert obj.echo(b"x" * 60_000) == b"x" * 60_000
    # the client checks before publishing
    with (
        cluster.client(max_payload=1000) as c,
        pytest.raises(continuum.PayloadTooLarge, match="client limit"),
    ):
        c.get(obj._id).echo(b"x" * 2000)
    still_serving(cluster)


def test_deadline_expired_is_answered_by_the_node(cluster: Cluster, raw: Raw) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
    body = cbor2.dumps({"id": "d", "obj": obj._id, "method": "add", "timeout_ms": 0})
    err = error_of(raw.request(cluster.topics.node_call("n1"), body))
    assert err["code"] == "deadline_expired"
    with cluster.client() as c:
        assert c.get(obj._id).get() == 0
    still_serving(cluster)


def test_bad_envelope_fields(cluster: Cluster, raw: Raw) -> None:
    for body in (
        {"obj": "x"},  # no method
        {"method": "add", "obj": "x", "args": {"a": 1}},
        {"method": "add", "obj": "x", "kwargs": [1]},
        {"method": "add", "obj": 5},
        {"method": "add", "obj": "x", "timeout_ms": "soon"},
        [1, 2, 3],
    ):
        err = error_of(raw.request(cluster.topics.node_call("n1"), cbor2.dumps(body)))
        assert err["code"] == "bad_request", body
    err = error_of(
        raw.request(
            cluster.topics.gateway_call, cbor2.dumps({"method": "create", "kwargs": {"nope": 1}})
        )
    )
    assert err["code"] == "bad_arguments"
    err = error_of(raw.request(cluster.topics.gateway_call, cbor2.dumps({"method": "drop_tables"})))
    assert err["code"] == "unknown_method"
    still_serving(cluster)


def test_reply_topic_outside_the_reply_tree_is_never_used(cluster: Cluster, raw: Raw) -> None:
    """A request cannot make the node publish on an arbitrary topic."""
    seen: list[str] = []
    raw.c.on_message = lambda c, u, m: None if m.retain else seen.append(m.topic)
    raw.c.subscribe(cluster.root + "/#", 0)
    time.sleep(0.2)
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = cluster.root + "/node/n1/status"
    raw.c.publish(
        cluster.topics.node_call("n1"), cbor2.dumps({"method": "add", "obj": "x"}), 1, properties=p
    )
    time.sleep(0.5)
    assert seen == [cluster.topics.node_call("n1")]
    still_serving(cluster)


def test_remote_error_for_unknown_codes() -> None:
    err = continuum._errors.error_from_envelope(
        {"code": "weird", "type": "X", "message": "m", "traceback": "tb"}
    )
    assert isinstance(err, continuum.RemoteError)
    assert (err.remote_code, err.remote_type, err.message, err.traceback) == (
        "weird",
        "X",
        "m",
        "tb",
    )
    known = continuum._errors.error_from_envelope({"code": "busy", "message": "later", "queue": 3})
    assert isinstance(known, continuum.Busy) and known.data == {"queue": 3}
