"""The gateway's logic in-process: a real :class:`Gateway` (SQLite directory
included) on a :class:`FakeBus`, fake nodes built with the service toolkit,
and a :class:`Requester` as the client. No broker, no subprocess: each test
takes milliseconds. The real-broker tests (test_gateway.py,
test_directory_integrity.py, test_failover.py) cover the same paths end to end."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from continuum_gateway import _records as rec
from continuum_gateway._gateway import Gateway
from continuum_gateway._integrity import DirectoryRefused

import continuum_mqtt
from continuum_mqtt.service import (
    Dispatcher,
    FakeBus,
    FakeTransport,
    Message,
    Request,
    Requester,
    Topics,
    accept,
    decode,
    encode,
    method,
)

COUNTER = "examples.counter.Counter"
TOPICS = Topics("t")


class FakeNode:
    """A node's control methods (§17) over objects in a dict, on the bus."""

    def __init__(self, bus: FakeBus, node_id: str, *, classes: tuple[str, ...] = (COUNTER,)):
        self.id = node_id
        self.classes = classes
        self.objects: dict[str, dict[str, Any]] = {}
        self.quarantined: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.gate: threading.Event | None = None  # set: create waits for it
        self.t = FakeTransport(f"node-{node_id}", bus=bus)
        self.control = Dispatcher(
            "node control", bad_arguments=continuum_mqtt.BadRequest, positional=False
        ).register(self)
        self.t.bind(self._on_message)
        self.t.subscribe(TOPICS.node_ctl(node_id))
        self.t.set_will(
            TOPICS.node_status(node_id), encode({"state": "offline", "node": node_id}), True
        )

    def status(self) -> dict[str, Any]:
        return {
            "state": "online",
            "node": self.id,
            "host": "fake",
            "classes": {c: {"methods": {}} for c in self.classes},
            "objects": len(self.objects) + len(self.quarantined),
            "quarantined": [{"id": i, "reason": r} for i, r in sorted(self.quarantined.items())],
        }

    def start(self) -> FakeNode:
        self.t.start()
        self.announce()
        return self

    def announce(self) -> None:
        self.t.publish(TOPICS.node_status(self.id), encode(self.status()), retain=True)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kw for m, kw in self.calls if m == name]

    def _on_message(self, msg: Message) -> None:
        req, chan = accept(msg, self.t, TOPICS, 1 << 20, 1 << 20)
        if req is not None:
            self.calls.append((req.method, dict(req.kwargs)))
            self.control.serve(req, chan)

    def _held(self, obj: str) -> dict[str, Any]:
        if obj not in self.objects:
            raise continuum_mqtt.ObjectNotHere(
                f"object {obj} is not on node {self.id}", node=self.id
            )
        return self.objects[obj]

    @method
    def create(
        self, obj: str, cls: str, replicas: Any = None, aliases: Any = None, **_: Any
    ) -> Any:
        if self.gate is not None:
            self.gate.wait(5)
        self.objects.setdefault(
            obj,
            {"class": cls, "role": "primary", "replicas": replicas or [], "aliases": aliases or []},
        )
        return {"id": obj, "class": cls, "node": self.id, "replicas": replicas or []}

    @method
    def delete(self, obj: str) -> dict[str, Any]:
        self._held(obj)
        del self.objects[obj]
        return {"id": obj, "deleted": True}

    @method
    def promote(self, obj: str, replicas: list[str] | None = None) -> dict[str, Any]:
        self._held(obj).update(role="primary", replicas=replicas or [])
        return {"id": obj, "node": self.id, "replicas": replicas or []}

    @method
    def aliases(self, obj: str, aliases: list[str]) -> dict[str, Any]:
        self._held(obj)["aliases"] = list(aliases)
        return {"id": obj, "aliases": aliases}

    @method
    def bind(self, obj: str, topic: str, method: str) -> dict[str, Any]:
        self._held(obj)
        return {"id": obj, "feeds": {topic: method}}

    @method
    def unbind(self, obj: str, topic: str) -> dict[str, Any]:
        self._held(obj)
        return {"id": obj, "feeds": {}}

    @method(name="list")
    def listing(self) -> list[dict[str, Any]]:
        return [
            {"id": oid, "feeds": {}, "quarantined": False, "reason": None, **o}
            for oid, o in self.objects.items()
        ]


class Rig:
    """A bus, fake nodes, gateways on one directory file, and a client."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.bus = FakeBus()
        self.nodes: dict[str, FakeNode] = {}
        self.gateways: list[Gateway] = []
        self.ct = FakeTransport("client-1", bus=self.bus)
        self.client = Requester.over(self.ct, TOPICS)
        self.replies: list[dict[str, Any]] = []  # every reply the client received
        self.ct.bind(self._on_reply)
        self.ct.subscribe(self.client.reply_topic)
        self.client.start(self.ct)
        self.ct.start()

    def _on_reply(self, msg: Message) -> None:
        self.replies.append(decode(msg.payload))
        self.client.on_reply(msg)

    def node(self, node_id: str, **kw: Any) -> FakeNode:
        self.nodes[node_id] = FakeNode(self.bus, node_id, **kw).start()
        return self.nodes[node_id]

    def gateway(self, *, start: bool = True, **kw: Any) -> Gateway:
        kw.setdefault("failover_delay", 0.0)
        kw.setdefault("status_wait", 2.0)
        gw = Gateway(FakeTransport("gw-gateway", bus=self.bus), str(self.db), root="t", **kw)
        self.gateways.append(gw)
        if start:
            gw.start()
        return gw

    def idle(self, gw: Gateway) -> None:
        """Everything queued so far has run: statuses, failovers and
        reconciliations, alias pushes."""
        for pool in (gw._status_pool, gw.upkeep.pool, gw._alias_pool, gw._status_pool):
            pool.submit(lambda: None).result(5)
        gw.upkeep.pool.submit(lambda: None).result(5)

    def request(self, op: str, rid: str | None = None, /, **kwargs: Any) -> Any:
        req = Request(op, [], kwargs, id=rid)
        return self.client.send(TOPICS.gateway_call, req, 5.0).result(5)

    def close(self) -> None:
        self.client.stop()
        for gw in self.gateways:
            if not gw._stopping.is_set():
                gw.stop()


def wait_for(check: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "directory.db")
    try:
        yield r
    finally:
        r.close()


# -- the directory methods ------------------------------------------------------------
def test_create_resolve_alias_unalias_delete(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    info = rig.request("create", cls=COUNTER, alias="first", kwargs={"start": 5})
    assert info["node"] == "n1" and info["aliases"] == ["first"] and info["state"] == "ok"
    [created] = n1.of("create")
    assert created["obj"] == info["id"] and created["kwargs"] == {"start": 5}
    assert created["aliases"] == ["first"]  # the node keeps its aliases (its status has objects)
    assert rig.request("resolve", ref="first")["id"] == info["id"]
    assert rig.request("alias", ref=info["id"], name="second")["aliases"] == ["first", "second"]
    rig.request("unalias", name="first")
    rig.request("unalias", name="never-there")  # no error (§16)
    rig.idle(gw)
    assert n1.objects[info["id"]]["aliases"] == ["second"]  # pushed, in order
    with pytest.raises(continuum_mqtt.AliasTaken):
        rig.request("create", cls=COUNTER, alias="second")
    assert rig.request("delete", ref="second") == {"id": info["id"], "deleted": True}
    assert n1.objects == {}
    with pytest.raises(continuum_mqtt.UnknownObject):
        rig.request("resolve", ref="second")
    assert rig.request("objects") == []


def test_placement_listings_and_bind(rig: Rig) -> None:
    rig.node("n1")
    rig.node("n2")
    rig.gateway()
    a = rig.request("create", cls=COUNTER)
    b = rig.request("create", cls=COUNTER, replicas=1)
    assert {a["node"], b["node"]} == {"n1", "n2"}  # least loaded first
    assert b["replicas"] == [{"n1": "n2", "n2": "n1"}[b["node"]]]
    assert [n["id"] for n in rig.request("nodes")] == ["n1", "n2"]
    assert rig.request("classes")[COUNTER]["nodes"] == ["n1", "n2"]
    assert len(rig.request("objects", node="n1")) == 1
    ids = [o["id"] for o in rig.request("objects")]
    assert [o["id"] for o in rig.request("objects", offset=0, limit=1)] == ids[:1]  # pages
    assert [o["id"] for o in rig.request("objects", offset=1, limit=5)] == ids[1:]
    assert rig.request("objects", offset=2, limit=1) == []
    bound = rig.request("bind", ref=a["id"], device="dev-1", method="add")
    assert bound["topic"] == "t/dev/dev-1/metrics"
    with pytest.raises(continuum_mqtt.NoNodeAvailable):
        rig.request("create", cls=COUNTER, replicas=2)
    with pytest.raises(continuum_mqtt.UnknownClass):
        rig.request("create", cls="pkg.Other", node="n1")


# -- exactly-once ---------------------------------------------------------------------
def test_a_resent_create_runs_once_also_across_a_restart(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    first = rig.request("create", "rid-1", cls=COUNTER, alias="once")
    assert rig.request("create", "rid-1", cls=COUNTER, alias="once") == first
    gw.stop()
    rig.gateway()  # a new process on the same directory file
    assert rig.request("create", "rid-1", cls=COUNTER, alias="once") == first
    assert len(n1.of("create")) == 1
    with pytest.raises(continuum_mqtt.AliasTaken):  # an error outcome is replayed too
        rig.request("create", "rid-2", cls=COUNTER, alias="once")
    with pytest.raises(continuum_mqtt.AliasTaken):
        rig.request("create", "rid-2", cls=COUNTER, alias="once")
    assert len(n1.of("create")) == 1


def test_a_resend_while_the_first_runs_gets_no_second_reply(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    claims: list[str] = []
    begin = gw.once.begin

    def seen(rid: str) -> Any:
        claim = begin(rid)
        claims.append(claim.state)
        return claim

    gw.once.begin = seen  # type: ignore[method-assign]
    n1.gate = threading.Event()
    req = Request("create", [], {"cls": COUNTER}, id="rid-slow")
    first = rig.client.send(TOPICS.gateway_call, req, 5.0)
    wait_for(lambda: n1.of("create"))
    # the same request again, published as a resend would be
    rig.client.publish(rig.client.pending("rid-slow"), TOPICS.gateway_call)  # type: ignore[arg-type]
    wait_for(lambda: claims == ["new", "running"])
    n1.gate.set()
    info = first.result(5)
    assert [r["id"] for r in rig.replies] == ["rid-slow"]  # one reply, not two
    assert len(n1.of("create")) == 1 and info["node"] == "n1"


def test_a_create_interrupted_and_not_resent_is_taken_back(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    gw.directory.start_running(
        "rid-3", "create", {"oid": "o3", "holders": ["n1"], "deadline": 0, "owner": "gone"}
    )
    n1.objects["o3"] = {"class": COUNTER, "role": "primary", "replicas": [], "aliases": []}
    gw.upkeep.settle_interrupted()
    wait_for(lambda: "o3" not in n1.objects)  # deleted in the background
    with pytest.raises(continuum_mqtt.DeadlineExpired):
        rig.request("create", "rid-3", cls=COUNTER)  # its resend gets the stored outcome


def test_a_directory_failure_is_storage_and_not_remembered(rig: Rig) -> None:
    rig.node("n1")
    gw = rig.gateway()
    real = gw.directory.set_alias
    info = rig.request("create", cls=COUNTER)

    def full(*a: Any, **k: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    gw.directory.set_alias = full  # type: ignore[method-assign]
    with pytest.raises(continuum_mqtt.StorageError):
        rig.request("alias", "rid-a", ref=info["id"], name="later")
    assert gw.directory.outcome("rid-a") is None  # a retry runs again
    gw.directory.set_alias = real  # type: ignore[method-assign]
    assert rig.request("alias", "rid-a", ref=info["id"], name="later")["aliases"] == ["later"]


# -- liveness, failover, reconciliation ------------------------------------------------
def test_liveness_transitions_and_malformed_statuses(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    assert gw.directory.node_state("n1") == "online"
    n1.t.drop()  # its will
    rig.idle(gw)
    assert gw.directory.node_state("n1") == "offline" and not gw.liveness.is_online("n1")
    n1.t.reconnect()
    n1.announce()
    rig.idle(gw)
    assert gw.directory.node_state("n1") == "online"
    bad = FakeTransport("junk", bus=rig.bus)
    bad.start()
    for payload in (b"\xff\xff", encode([1]), encode({"state": "online", "classes": [1]})):
        bad.publish(TOPICS.node_status("n1"), payload, retain=True)
    bad.publish(TOPICS.node_status("n9"), b"x" * (256 * 1024 + 1))
    rig.idle(gw)
    assert gw.directory.node_state("n1") == "online"  # ignored, not taken for offline
    assert gw.directory.node_state("n9") == "unknown"
    bad.publish(TOPICS.node_status("n1"), b"", retain=True)  # an operator clears it
    rig.idle(gw)
    assert [n["id"] for n in rig.request("nodes")] == []


def test_failover_promotes_a_live_replica(rig: Rig) -> None:
    rig.node("n1")
    n2 = rig.node("n2")
    gw = rig.gateway()
    info = rig.request("create", cls=COUNTER, node="n1", replicas=1)
    n2.objects[info["id"]] = {"class": COUNTER, "role": "replica", "replicas": [], "aliases": []}
    rig.nodes["n1"].t.drop()
    rig.idle(gw)
    assert n2.of("promote") == [{"obj": info["id"], "replicas": []}]
    moved = rig.request("resolve", ref=info["id"])
    assert moved["node"] == "n2" and moved["replicas"] == []
    with gw.directory.transaction() as c:
        assert rec.tombstones_for(c, [info["id"]], "n1")[info["id"]]["what"] == "moved"


def test_no_failover_when_the_node_is_back_within_the_delay(rig: Rig) -> None:
    n1 = rig.node("n1")
    n2 = rig.node("n2")
    gw = rig.gateway(failover_delay=0.2)
    rig.request("create", cls=COUNTER, node="n1", replicas=1)
    n1.t.drop()
    n1.t.reconnect()
    n1.announce()
    rig.idle(gw)
    assert n2.of("promote") == []


def test_reconcile_adopts_unknown_primaries_and_deletes_tombstoned_copies(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    gone = rig.request("create", cls=COUNTER, alias="gone")
    rig.request("delete", ref="gone")
    n1.t.drop()
    rig.idle(gw)
    # while offline it still holds the deleted one and one the directory never saw
    n1.objects[gone["id"]] = {"class": COUNTER, "role": "primary", "replicas": [], "aliases": []}
    n1.objects["stray"] = {"class": COUNTER, "role": "primary", "replicas": [], "aliases": ["s"]}
    n1.t.reconnect()
    n1.announce()
    rig.idle(gw)
    assert n1.of("list")
    assert gone["id"] not in n1.objects  # deleted: it has a tombstone
    assert rig.request("resolve", ref="s")["id"] == "stray"  # adopted, alias included


def test_quarantine_in_a_status_marks_the_object_unavailable(rig: Rig) -> None:
    n1 = rig.node("n1")
    gw = rig.gateway()
    info = rig.request("create", cls=COUNTER)
    n1.quarantined[info["id"]] = "checkpoint damaged"
    n1.announce()
    rig.idle(gw)
    got = rig.request("resolve", ref=info["id"])
    assert got["state"] == "unavailable" and "checkpoint damaged" in got["reason"]
    n1.quarantined.clear()
    n1.announce()
    rig.idle(gw)
    assert rig.request("resolve", ref=info["id"])["state"] == "ok"


def test_an_empty_directory_refuses_nodes_that_hold_objects(rig: Rig) -> None:
    n1 = rig.node("n1")
    n1.objects["o1"] = {"class": COUNTER, "role": "primary", "replicas": [], "aliases": []}
    n1.announce()
    gw = rig.gateway(start=False)
    with pytest.raises(DirectoryRefused, match="node n1 holds 1 object"):
        gw.start()
    assert not gw.transport.subscriptions.get(TOPICS.gateway_call)  # type: ignore[attr-defined]


# -- bad requests ---------------------------------------------------------------------
def test_bad_requests_get_the_right_codes(rig: Rig) -> None:
    rig.node("n1")
    rig.gateway()
    for method_, kwargs, error in [
        ("nope", {}, continuum_mqtt.UnknownMethod),
        ("resolve", {"_rid": "x"}, continuum_mqtt.BadRequest),
        ("resolve", {"ref": "a", "extra": 1}, continuum_mqtt.BadArguments),
        ("create", {"cls": COUNTER, "replicas": -1}, continuum_mqtt.BadRequest),
        ("create", {"cls": ""}, continuum_mqtt.BadRequest),
        ("bind", {"ref": "x", "device": "a/b", "method": "m"}, continuum_mqtt.UnknownObject),
        ("objects", {"limit": 0}, continuum_mqtt.BadRequest),
        ("objects", {"offset": -1, "limit": 5}, continuum_mqtt.BadRequest),
        ("objects", {"limit": True}, continuum_mqtt.BadRequest),
    ]:
        with pytest.raises(error):
            rig.request(method_, **kwargs)


def test_an_internal_type_error_is_method_error_not_bad_arguments(rig: Rig) -> None:
    rig.node("n1")
    gw = rig.gateway()

    def broken(ref: str) -> Any:
        raise TypeError("a bug in the gateway")

    gw.directory.resolve = broken  # type: ignore[method-assign]
    with pytest.raises(continuum_mqtt.RemoteError) as err:
        rig.request("resolve", ref="x")
    assert err.value.remote_type == "TypeError" and "a bug" in str(err.value)


def test_expired_retained_json_and_misdirected_requests(rig: Rig) -> None:
    rig.node("n1")
    rig.gateway()
    gw_call, reply = TOPICS.gateway_call, rig.client.reply_topic
    raw = FakeTransport("raw", bus=rig.bus)
    raw.start()
    got: list[Message] = []
    listen = FakeTransport("listen", bus=rig.bus)
    listen.bind(got.append)
    listen.subscribe("t/reply/#")
    listen.start()
    raw.publish(
        gw_call, encode({"method": "nodes", "id": "r1", "timeout_ms": -1}), response_topic=reply
    )
    raw.publish(gw_call, b'{"method":"nodes","id":"r2"}', response_topic=reply)
    raw.publish(gw_call, encode({"method": "nodes", "id": "r3"}), response_topic="t/node/n1/ctl")
    raw.publish(gw_call, encode({"method": "nodes", "id": "r4"}), response_topic=reply, retain=True)
    raw.publish(gw_call, b"\xff", response_topic=reply, correlation=b"r5")
    wait_for(lambda: len(got) == 3)  # r1 and r2 run on the gateway's pool
    bodies = {}
    for m in got:
        body = decode(m.payload, m.content_type == "application/json")
        bodies[body["id"] or m.correlation.decode()] = body  # type: ignore[union-attr]
    assert bodies["r1"]["error"]["code"] == "deadline_expired"
    assert bodies["r2"]["kind"] == "result"  # JSON in, JSON out
    assert bodies["r5"]["error"]["code"] == "bad_request"
    assert "r3" not in bodies and "r4" not in bodies  # never answered
    assert rig.gateways[0].transport.published_on("t/node/+/ctl") == []  # type: ignore[attr-defined]
