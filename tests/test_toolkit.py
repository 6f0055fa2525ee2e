"""The service toolkit (continuum_mqtt.service) on its own, in-process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt.service import (
    GATEWAY,
    Dispatcher,
    ExactlyOnce,
    FakeBus,
    FakeTransport,
    Liveness,
    MemoryOutcomes,
    Message,
    MqttTransport,
    Request,
    Requester,
    Topics,
    accept,
    answer,
    decode,
    encode,
    method,
    parse_status,
    topic_matches,
)

from ._cluster import REPO

T = Topics("t")


# -- transports ---------------------------------------------------------------------
def test_topic_filters() -> None:
    assert topic_matches("t/node/+/status", "t/node/n1/status")
    assert not topic_matches("t/node/+/status", "t/node/n1/x/status")
    assert topic_matches("t/#", "t/a/b") and topic_matches("t/#", "t")
    assert not topic_matches("#", "$SYS/x") and topic_matches("$SYS/#", "$SYS/x")


def test_a_bus_routes_retains_shares_and_delivers_wills() -> None:
    bus = FakeBus()
    a, b, c = (FakeTransport(n, bus=bus) for n in "abc")
    seen: dict[str, list[Message]] = {"a": [], "b": [], "c": []}
    for t in (a, b, c):
        t.bind(seen[t.client_id].append)
    a.subscribe("t/+/status")
    b.subscribe("$share/g/t/pool")
    c.subscribe("$share/g/t/pool")
    c.set_will("t/c/status", b"gone", retain=True)
    for t in (a, b, c):
        t.start()
    c.publish("t/c/status", b"up", retain=True)
    for _ in range(4):
        a.publish("t/pool", b"job")
    assert [m.payload for m in seen["a"]] == [b"up"]
    assert len(seen["b"]) == len(seen["c"]) == 2  # one member of the group each time
    c.drop()
    assert [m.payload for m in seen["a"]] == [b"up", b"gone"]
    late = FakeTransport("late", bus=bus)
    got: list[Message] = []
    late.bind(got.append)
    late.subscribe("t/#")
    late.start()
    assert [(m.topic, m.payload, m.retain) for m in got] == [("t/c/status", b"gone", True)]
    a.publish("t/c/status", b"", retain=True)  # cleared
    assert "t/c/status" not in bus.retained


def test_a_fake_records_acks_injects_and_queues_while_away() -> None:
    bus = FakeBus()
    t = FakeTransport("svc", bus=bus)
    other = FakeTransport("other", bus=bus)
    got: list[Message] = []
    other.bind(got.append)
    other.subscribe("x")
    other.start()
    t.bind(lambda m: t.ack(m))
    msg = t.inject("anything", b"1", qos=1)
    assert t.acks == [msg] and msg.mid > 0
    assert not t.publish("x", b"lost?", qos=1).wait(1)  # not connected: queued
    t.start()
    assert [m.payload for m in got] == [b"lost?"]
    assert t.publish("x", b"now").wait(1) and t.published_on("x")[-1].payload == b"now"
    t.refuse = True
    t.drop()
    with pytest.raises(continuum_mqtt.NotConnected):
        t.start()


def test_an_mqtt_transport_is_built_without_connecting() -> None:
    t = MqttTransport("mqtt://user@127.0.0.1:1", "svc-1", manual_ack=True)
    assert (t.client_id, t.username, t.broker) == ("svc-1", "user", "mqtt://user@127.0.0.1:1")
    assert not t.connected
    t.set_will("t/svc/status", b"x", retain=True)
    t.subscribe("t/a")
    assert t.subscriptions == {"t/a": 1}
    with pytest.raises(continuum_mqtt.NotConnected):
        t.start(timeout=1)


# -- requests and replies -------------------------------------------------------------
class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.seen: list[Any] = []

    @method(changes=True, context=("rid", "deadline"))
    def add(self, k: int, _rid: str | None = None, _deadline: float | None = None) -> int:
        self.n += k
        self.seen.append((_rid, _deadline is not None))
        return self.n

    @method(name="fail")
    def failing(self) -> None:
        raise TypeError("inside the method")

    @method
    def refuse(self) -> None:
        raise continuum_mqtt.Busy("later", node="x")

    def not_registered(self) -> None: ...


def _serve(bus: FakeBus, obj: Any, *, once: ExactlyOnce | None = None, **options: Any) -> Any:
    t = FakeTransport("svc", bus=bus)
    d = Dispatcher("counter", **options).register(obj)

    def on_message(msg: Message) -> None:
        req, chan = accept(msg, t, T, 1024, 1024)
        if req is not None:
            d.serve(req, chan, once=once)

    t.bind(on_message)
    t.subscribe("t/svc/call")
    t.start()
    return d


def _client(bus: FakeBus) -> Requester:
    t = FakeTransport("cli", bus=bus)
    r = Requester.over(t, T)
    t.bind(r.on_reply)
    t.subscribe(r.reply_topic)
    r.start(t)
    t.start()
    return r


def test_dispatch_binds_first_and_blames_the_right_party() -> None:
    bus = FakeBus()
    c = Counter()
    d = _serve(bus, c, once=ExactlyOnce())
    assert d.names() == ["add", "fail", "refuse"]
    r = _client(bus)
    try:

        def call(method_: str, *args: Any, rid: str | None = None, **kw: Any) -> Any:
            return r.send("t/svc/call", Request(method_, list(args), kw, id=rid), 2).result(2)

        assert call("add", 2, rid="r1") == 2
        assert call("add", 2, rid="r1") == 2  # exactly once: the first outcome
        assert c.seen == [("r1", True)]
        for args, kw, error in [
            ((), {}, continuum_mqtt.BadArguments),
            ((1, 2), {}, continuum_mqtt.BadArguments),
            ((), {"_rid": "x"}, continuum_mqtt.BadRequest),
        ]:
            with pytest.raises(error):
                call("add", *args, **kw)
        with pytest.raises(continuum_mqtt.RemoteError) as err:
            call("fail")
        assert err.value.remote_type == "TypeError" and err.value.code == "method_error"
        with pytest.raises(continuum_mqtt.Busy):
            call("refuse")
        with pytest.raises(continuum_mqtt.UnknownMethod):
            call("not_registered")
    finally:
        r.stop()


def test_node_control_style_dispatch() -> None:
    c = Counter()
    d = Dispatcher("node control", bad_arguments=continuum_mqtt.BadRequest, positional=False)
    d.register(c)
    with pytest.raises(continuum_mqtt.BadRequest):
        d.dispatch(Request("add", [5], {}))  # positional args are ignored: k missing
    assert d.dispatch(Request("add", [], {"k": 5})) == 5
    d.add(lambda: "hi", name="hello")
    assert d.outcome(Request("hello", [], {})) == (True, "hi")
    translated = Dispatcher("x", translate=lambda e: continuum_mqtt.StorageError(str(e)))
    translated.add(lambda: 1 / 0, name="div")
    ok, env = translated.outcome(Request("div", [], {}))
    assert not ok and env["code"] == "storage"


def test_accept_checks_and_answers() -> None:
    t = FakeTransport("svc")
    reply = T.reply("cli")
    req, chan = accept(Message("t/svc/call", b"\xff", response_topic=reply), t, T, 100, 300)
    assert req is None and decode(t.published[-1].payload)["error"]["code"] == "bad_request"
    big = Message("t/svc/call", b"x" * 101, response_topic=reply)
    assert accept(big, t, T, 100, 300)[0] is None
    assert decode(t.published[-1].payload)["error"]["code"] == "payload_too_large"
    t.clear()
    body = b'{"method":"m","id":"j1"}'
    req, chan = accept(Message("t/svc/call", body, response_topic=reply), t, T, 100, 300)
    assert req is not None and req.id == "j1" and chan.json
    chan.result("x" * 400)  # too large for the reply limit: an error instead
    assert decode(t.published[-1].payload, True)["error"]["code"] == "payload_too_large"
    answer(chan, (False, continuum_mqtt.AliasTaken("taken", alias="a").to_envelope()))
    assert decode(t.published[-1].payload, True)["error"]["alias"] == "a"
    elsewhere = Message("t/svc/call", encode({"method": "m"}), response_topic="t/node/n/ctl")
    t.clear()
    assert accept(elsewhere, t, T, 100, 100)[0] is None and t.published == []  # not run either
    mine = Message("t/svc/call/dev-a", encode({"method": "m"}), response_topic="t/reply/dev-b/c")
    assert accept(mine, t, T, 100, 100, "dev-a")[0] is None  # another account's replies
    mine = Message("t/svc/call/dev-a", encode({"method": "m"}), response_topic="t/reply/dev-a/c")
    req, _ = accept(mine, t, T, 100, 100, "dev-a")
    assert req is not None and req.caller == "dev-a" and t.published == []
    silent = Message("t/svc/call", encode({"method": "m"}))
    assert accept(silent, t, T, 100, 100)[0] is not None  # fire and forget: run, no reply


# -- exactly-once ----------------------------------------------------------------------
def test_exactly_once_claims_and_the_storage_rule() -> None:
    once = ExactlyOnce()
    assert once.begin("a").new and once.begin("a").running and once.running("a")
    once.finish("a", (True, 1))
    claim = once.begin("a")
    assert claim.done and claim.outcome == (True, 1)
    assert once.begin("s").new
    once.finish("s", (False, continuum_mqtt.StorageError("disk full").to_envelope()))
    assert once.begin("s").new  # not stored: a retry runs again
    once.abandon("s")
    once.finish(None, (True, 0))  # no id: nothing to do
    assert once.inflight == frozenset()


def test_memory_outcomes_are_bounded_by_entries_and_bytes() -> None:
    store = MemoryOutcomes(max_entries=3, max_bytes=10_000)
    for i in range(5):
        store.put(f"r{i}", "m", (True, i))
    assert list(store) == ["r2", "r3", "r4"]
    store.put("r4", "m", (True, "second"))  # the first outcome wins
    assert store.get("r4") == (True, 4)
    store.put("big", "m", (True, b"x" * 20_000))
    assert list(store) == ["big"]  # the newest is always kept
    again = MemoryOutcomes(store.snapshot())
    assert again.get("big") == (True, b"x" * 20_000) and again.bytes == store.bytes


def test_memory_outcomes_are_kept_encoded_and_come_back_as_the_wire_has_them() -> None:
    store = MemoryOutcomes()
    result = {"losses": [0.5, 0.25], "params": {"hidden": 64}, "hash": "ab" * 32, "pair": (1, 2)}
    store.put("c/1", "train", (True, result))
    kept, size = store._items["c/1"]
    assert isinstance(kept[1], bytes) and size == len(kept[1]) + 16
    assert store.get("c/1") == (True, {**result, "pair": [1, 2]})  # as a resend's reply carries it
    odd = object()  # not encodable (a node journals such outcomes by snapshot): kept as it is
    store.put("c/2", "m", (True, odd))
    assert store.get("c/2") == (True, odd)
    assert MemoryOutcomes(store.snapshot()).get("c/1") == store.get("c/1")


def test_exactly_once_is_thread_safe() -> None:
    once = ExactlyOnce()
    wins: list[str] = []

    def claim() -> None:
        if once.begin("same").new:
            wins.append("me")

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wins == ["me"]


# -- liveness ----------------------------------------------------------------------------
def test_liveness_tracks_transitions_and_ignores_junk() -> None:
    changes: list[tuple[str, bool, str]] = []
    ups: list[str] = []
    downs: list[str] = []
    lv = Liveness(
        T,
        gateway=True,
        on_change=lambda c: changes.append((c.node, c.online, c.was)),
        on_online=ups.append,
        on_offline=downs.append,
    )
    assert lv.subscriptions == ["t/node/+/status", "t/gateway/status"]
    online = encode({"state": "online", "classes": {"a.B": {}}})
    assert lv.on_message(Message("t/node/n1/status", online, retain=True)).retained  # type: ignore[union-attr]
    lv.on_message(Message("t/gateway/status", encode({"state": "online"})))
    lv.on_message(Message("t/node/n1/status", encode({"state": "offline"})))
    lv.on_message(Message("t/other", online))
    assert lv.state("n1") == "offline" and lv.is_online(GATEWAY) and lv.state("n2") == "unknown"
    assert ups == ["n1", GATEWAY] and downs == ["n1"]
    for junk in (b"\xff", encode([1]), encode({"state": "online", "host": 5}), b"x" * 300_000):
        assert lv.update("n1", junk) is None
    assert lv.state("n1") == "offline"
    change = lv.update("n1", b"")
    assert change is not None and change.cleared and not change.online
    lv.update("n1", online)
    assert lv.statuses()["n1"] == {"state": "online", "classes": {"a.B": {}}}
    lv.reset()
    assert lv.states() == {}
    assert changes[0] == ("n1", True, "unknown")


def test_parse_status_limits() -> None:
    assert parse_status(encode({"state": "online"})) == {"state": "online"}
    with pytest.raises(continuum_mqtt.BadRequest, match="classes"):
        parse_status(encode({"classes": {"a": 1}}))
    with pytest.raises(continuum_mqtt.BadRequest, match="limit"):
        parse_status(encode({"state": "online"}), limit=5)


# -- the package -----------------------------------------------------------------------
def test_public_names_resolve_and_load_lazily() -> None:
    import continuum_mqtt.service as svc

    for name in svc.__all__:
        assert getattr(svc, name) is not None, name
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, continuum_mqtt.service as s; s.Requester; s.Liveness; s.MqttTransport;"
            "print(sorted(m for m in ('continuum_mqtt._invoke', 'continuum_mqtt._model')"
            " if m in sys.modules))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # what a client needs does not load the object model


def test_a_call_routed_after_it_was_registered_carries_the_time_left() -> None:
    """A call registered without publishing (re-routed before its first send,
    its cached node known offline) is published later with the time left in
    timeout_ms, not its full timeout (protocol.md section 9)."""
    bus = FakeBus()
    r = _client(bus)
    try:
        r.send("t/svc/call", Request("add", [1], {}, id="late"), 10.0, publish=False)
        time.sleep(0.3)
        p = r.pending("late")
        assert p is not None
        r.publish(p, "t/svc/call")
        [sent] = [m for m in r.transport.published if m.topic == "t/svc/call"]  # type: ignore[union-attr]
        timeout_ms = decode(sent.payload)["timeout_ms"]
        assert 9000 < timeout_ms <= 9750, timeout_ms
    finally:
        r.stop()
