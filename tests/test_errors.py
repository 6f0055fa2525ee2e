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

import continuum_mqtt

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
    with cluster.client() as c, pytest.raises(continuum_mqtt.UnknownObject) as info:
        c.get("nope").add(1)
    assert info.value.code == "unknown_object"
    still_serving(cluster)


def test_unknown_method_private_and_not_active(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum_mqtt.UnknownMethod):
            obj.no_such_method()
        with pytest.raises(continuum_mqtt.MethodNotActive):
            obj.reset()  # a public method not marked active
        with pytest.raises(AttributeError):
            obj._secret  # noqa: B018 - the stub refuses private names
        # and the node refuses them even when a client sends them anyway; a
        # private name that is no attribute at all is unknown, not "not active"
        for name, refused in [
            ("_secret", continuum_mqtt.MethodNotActive),
            ("__init__", continuum_mqtt.MethodNotActive),
            ("_no_such_thing", continuum_mqtt.UnknownMethod),
        ]:
            req = continuum_mqtt._protocol.Request(name, [], {}, obj=obj._id)
            with pytest.raises(refused):
                c._requester.send(cluster.topics.node_call("n1"), req, 5.0).result()
        assert obj.get() == 0
    still_serving(cluster)


def test_wrong_arguments(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum_mqtt.BadArguments, match="too many positional"):
            obj.add(1, 2, 3)
        with pytest.raises(continuum_mqtt.BadArguments, match="unexpected keyword"):
            obj.add(m=1)
        with pytest.raises(continuum_mqtt.BadArguments):
            c.stub(COUNTER).create(1, 2, 3)
        assert obj.get() == 0
    still_serving(cluster)


def test_exception_inside_the_method(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum_mqtt.RemoteError) as info:
            obj.fail("it broke")
        err = info.value
        assert err.remote_type == "ValueError" and err.message == "it broke"
        assert "raise ValueError(message)" in err.traceback
        assert err.remote_code == "method_error"
    still_serving(cluster)


def test_unencodable_result(cluster: Cluster) -> None:
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum_mqtt.UnencodableResult, match="object"):
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

    # NaN and infinities have no JSON form: unencodable_result, never a bare NaN
    # token that strict parsers reject (the tokens are accepted on input)
    def strict(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token} in a reply")

    for n, token in enumerate(("NaN", "Infinity", "-Infinity")):
        body = f'{{"id":"n{n}","obj":"{obj._id}","method":"echo","args":[{token}]}}'.encode()
        raw.request(cluster.topics.node_call("n1"), body, "application/json")
        reply = json.loads(raw.replies[0][0], parse_constant=strict)
        assert error_of(reply)["code"] == "unencodable_result", reply


def test_payload_over_the_limit(bare_cluster: Cluster, raw: Raw | None = None) -> None:
    cluster = bare_cluster
    cluster.start_gateway()
    cluster.start_node("n1", "--max-payload", "65536")
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        with pytest.raises(continuum_mqtt.PayloadTooLarge) as info:
            obj.echo(b"x" * 100_000)
        assert info.value.data["limit"] == 65536
        assert obj.echo(b"x" * 60_000) == b"x" * 60_000
    # the client checks before publishing
    with (
        cluster.client(max_payload=1000) as c,
        pytest.raises(continuum_mqtt.PayloadTooLarge, match="client limit"),
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
    err = continuum_mqtt._errors.error_from_envelope(
        {"code": "weird", "type": "X", "message": "m", "traceback": "tb"}
    )
    assert isinstance(err, continuum_mqtt.RemoteError)
    assert (err.remote_code, err.remote_type, err.message, err.traceback) == (
        "weird",
        "X",
        "m",
        "tb",
    )
    known = continuum_mqtt._errors.error_from_envelope(
        {"code": "busy", "message": "later", "queue": 3}
    )
    assert isinstance(known, continuum_mqtt.Busy) and known.data == {"queue": 3}


# -- typed application errors ------------------------------------------------------------

THERMOSTAT = "examples.thermostat.Thermostat"
OUT_OF_RANGE = "thermostat.out_of_range"


@pytest.fixture
def app_cluster(bare_cluster: Cluster) -> Cluster:
    bare_cluster.start_gateway()
    bare_cluster.start_node("n1", modules=("examples.counter", "examples.thermostat"))
    return bare_cluster


def test_application_error_on_the_wire(app_cluster: Cluster) -> None:
    """What a non-Python client sees: the class's namespaced code, its name as
    ``type``, the message and the extra fields; the same error again for the same
    request id (exactly-once), in CBOR and in JSON."""
    raw = Raw(app_cluster)
    with app_cluster.client() as c:
        obj = c.stub(THERMOSTAT).create(low=5, high=30)
    topic = app_cluster.topics.node_call("n1")
    call = {"id": "t1", "obj": obj._id, "method": "set", "args": [99]}
    want = {
        "code": OUT_OF_RANGE,
        "type": "OutOfRange",
        "message": "99 is outside [5.0, 30.0]",
        "target": 99,
        "low": 5.0,
        "high": 30.0,
    }
    assert error_of(raw.request(topic, cbor2.dumps(call))) == want
    assert error_of(raw.request(topic, cbor2.dumps(call))) == want  # replayed, not run again
    body = json.dumps({**call, "id": "t2"}).encode()
    assert error_of(raw.request(topic, body, "application/json")) == want
    with app_cluster.client() as c:
        assert c.get(obj._id).get() == 5.0
    # raised by the constructor: relayed by the gateway as the node sent it
    create = {"method": "create", "kwargs": {"cls": THERMOSTAT, "kwargs": {"low": 9, "high": 1}}}
    assert error_of(raw.request(app_cluster.topics.gateway_call, cbor2.dumps(create))) == {
        "code": OUT_OF_RANGE,
        "type": "OutOfRange",
        "message": "low 9 is above high 1",
        "low": 9,
        "high": 1,
    }
    raw.close()
    still_serving(app_cluster)


def test_application_error_typed_when_registered_remote_error_otherwise(
    app_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.thermostat import OutOfRange  # registers the code in this process

    with app_cluster.client() as c:
        obj = c.stub(THERMOSTAT).create()
        with pytest.raises(OutOfRange) as typed:
            obj.set(-40)
        err = typed.value
        assert isinstance(err, continuum_mqtt.ApplicationError) and err.code == OUT_OF_RANGE
        assert err.message == "-40 is outside [5.0, 30.0]"
        assert err.data == {"target": -40, "low": 5.0, "high": 30.0} and err.target == -40

        # a client without the class: RemoteError carrying the code and the fields
        monkeypatch.delitem(continuum_mqtt._errors._REGISTRY, OUT_OF_RANGE)
        with pytest.raises(continuum_mqtt.RemoteError) as untyped:
            obj.set(99)
        rerr = untyped.value
        assert rerr.code == rerr.remote_code == OUT_OF_RANGE
        assert rerr.remote_type == "OutOfRange" and rerr.data["high"] == 30.0
        assert str(rerr) == "OutOfRange: 99 is outside [5.0, 30.0]"
        assert obj.set(21.5) == 21.5
    still_serving(app_cluster)


def test_application_error_in_local_mode() -> None:
    from examples.thermostat import OutOfRange

    with continuum_mqtt.connect("local:") as c:
        obj = c.stub(THERMOSTAT).create(high=25)
        with pytest.raises(OutOfRange) as info:
            obj.set(26)
        assert info.value.code == OUT_OF_RANGE and info.value.high == 25.0
        assert obj.get() == 5.0


def test_forecaster_series_too_short_has_its_code(bare_cluster: Cluster) -> None:
    """The code the edge agent and firmware-sim retry on, whether or not this
    process has imported the forecaster."""
    from continuum_mqtt.samples import SERIES_TOO_SHORT

    bare_cluster.start_gateway()
    bare_cluster.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
    with bare_cluster.client(timeout=30) as c:
        fc = c.stub("continuum_node.forecast.Forecaster").create(
            device="cpu", rows=[[1.0, 2.0]] * 5
        )
        with pytest.raises(continuum_mqtt.ContinuumError) as info:
            fc.train(epochs=1)
        err = info.value
        assert err.code == SERIES_TOO_SHORT, err
        assert (err.data["rows"], err.data["training_rows"], err.data["lookback"]) == (5, 4, 6)


def test_a_retained_request_is_never_run(cluster: Cluster, raw: Raw) -> None:
    """docs/protocol.md §5: a request published with retain is dropped, also
    when the service is subscribed as it is published (the services subscribe
    with Retain As Published, so the flag survives a live delivery)."""
    with cluster.client() as c:
        obj = c.stub(COUNTER).create(start=1)
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = raw.reply + "/x"
    topics = (cluster.topics.node_call("n1"), cluster.topics.gateway_call)
    bodies = (
        {"id": "r1", "obj": obj._id, "method": "add", "args": [10]},
        {"id": "r2", "method": "create", "kwargs": {"cls": COUNTER, "alias": "retained"}},
    )
    try:
        for topic, body in zip(topics, bodies, strict=True):
            raw.c.publish(topic, cbor2.dumps(body), qos=1, retain=True, properties=p)
        time.sleep(1.0)
        assert raw.replies == []
        with cluster.client() as c:
            assert c.get(obj._id).get() == 1
            with pytest.raises(continuum_mqtt.UnknownObject):
                c.get("retained")
        # nor when the broker hands it over with a new subscription
        cluster.stop("n1")
        cluster.start_node("n1")
        time.sleep(0.5)
        assert raw.replies == []
    finally:
        for topic in topics:  # clear the retained messages
            raw.c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    still_serving(cluster)


def test_bind_and_unbind_refuse_a_bad_device_id(cluster: Cluster) -> None:
    """docs/protocol.md §16: an invalid device id is a bad_request, for both."""
    with cluster.client() as c:
        obj = c.stub(COUNTER).create()
        for bad in ("a/b", "+", "#", ""):
            with pytest.raises(continuum_mqtt.BadRequest):
                c.bind_metrics(obj, bad, "add")
            with pytest.raises(continuum_mqtt.BadRequest):
                c.unbind_metrics(obj, bad)
    still_serving(cluster)
