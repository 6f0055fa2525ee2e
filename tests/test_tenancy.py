"""Issue 13: owners and rights, with two device accounts attacking each other.

Real broker, gateway and node. The broker here is a development one (no
passwords, no ACL), so a client's username is only its claim; what these
tests show is that the *services* enforce the rights for the caller a request
carries (the topic's caller level), the node on its own as well as the
gateway. That the broker pins the caller level to the account is the secured
deployment's part (tests/test_deploy.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum_mqtt
from continuum_mqtt import BadRequest, Forbidden, UnknownObject
from continuum_mqtt.service import MAX_ALIAS_CHARS, MAX_ALIASES, BrokerURL

from ._cluster import Cluster, wait_for

COUNTER = "examples.counter.Counter"
SHARED = "tests._nodekit.Shared"
ADMIN = "ops"


@pytest.fixture
def fleet(bare_cluster: Cluster) -> Cluster:
    c = bare_cluster
    c.start_gateway("--admin", ADMIN)
    c.start_node("n1", "--admin", ADMIN, modules=("examples.counter", "tests._nodekit"))
    return c


def as_user(c: Cluster, user: str | None, **kw: Any) -> continuum_mqtt.Client:
    url = BrokerURL.parse(c.url)
    who = f"{user}@" if user else ""
    kw.setdefault("timeout", 10.0)
    return continuum_mqtt.Client(f"mqtt://{who}{url.host}:{url.port}", root=c.root, **kw)


@pytest.fixture
def dev_a(fleet: Cluster) -> Iterator[continuum_mqtt.Client]:
    with as_user(fleet, "dev-a") as client:
        yield client


@pytest.fixture
def dev_b(fleet: Cluster) -> Iterator[continuum_mqtt.Client]:
    with as_user(fleet, "dev-b") as client:
        yield client


def direct(client: continuum_mqtt.Client, oid: str, node: str = "n1") -> Any:
    """A proxy for ``oid`` on ``node`` without asking the gateway: what an
    attacker who learnt the id could send straight to the node."""
    client._locations[oid] = node
    return continuum_mqtt.ObjectProxy(client, oid, COUNTER)


def test_each_device_sees_and_uses_only_its_own(
    dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    mine = dev_a.stub(COUNTER).create(alias="dev-a/counter")
    assert mine._owner == "dev-a"
    assert mine.add(5) == 5
    theirs = dev_b.stub(COUNTER).create(alias="dev-b/counter")
    assert [o["id"] for o in dev_b.objects()] == [theirs._id]
    assert [o["id"] for o in dev_a.objects()] == [mine._id]
    assert dev_a.objects()[0]["owner"] == "dev-a"
    for ref in ("dev-a/counter", mine._id):
        with pytest.raises(UnknownObject):
            dev_b.get(ref)
    # the node checks on its own: the id alone gets dev-b nothing
    with pytest.raises(Forbidden):
        direct(dev_b, mine._id).add(1000)
    with pytest.raises(Forbidden):
        direct(dev_b, mine._id).get()
    assert mine.get() == 5


def test_a_device_cannot_manage_anothers_object(
    dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    mine = dev_a.stub(COUNTER).create(alias="dev-a/c")
    for attempt in (
        lambda: dev_b.delete(mine._id),
        lambda: dev_b.alias(mine._id, "dev-b/stolen"),
        lambda: dev_b.bind_metrics(mine._id, "dev-b", "add"),
    ):
        with pytest.raises(UnknownObject):  # it cannot even see it
            attempt()
    dev_b.unalias("dev-a/c")  # as for a missing alias: neither done nor confirmed
    assert dev_a.get("dev-a/c")._id == mine._id
    assert mine.add(1) == 1


def test_aliases_are_namespaced_and_bounded(
    dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    with pytest.raises(Forbidden):  # squatting another device's name
        dev_b.stub(COUNTER).create(alias="dev-a/forecaster")
    with pytest.raises(Forbidden):
        dev_b.stub(COUNTER).create(alias="forecaster-dev-a")
    obj = dev_a.stub(COUNTER).create(alias="dev-a/forecaster")
    with pytest.raises(BadRequest):
        dev_a.alias(obj, "dev-a/" + "x" * MAX_ALIAS_CHARS)
    for i in range(MAX_ALIASES - 1):
        dev_a.alias(obj, f"dev-a/n{i}")
    with pytest.raises(BadRequest):
        dev_a.alias(obj, "dev-a/one-too-many")
    assert len(dev_a.get("dev-a/forecaster")._aliases) == MAX_ALIASES


def test_binding_a_devices_metrics_needs_that_device(
    dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    theirs = dev_b.stub(COUNTER).create()
    with pytest.raises(Forbidden):  # the confused deputy: dev-b reading dev-a's stream
        dev_b.bind_metrics(theirs, "dev-a", "add")
    dev_b.bind_metrics(theirs, "dev-b", "add")


def test_grants_and_open_methods(
    fleet: Cluster, dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    counter = dev_a.stub(COUNTER).create()
    dev_a.grant(counter, "dev-b")
    assert dev_b.get(counter._id).add(2) == 2
    with pytest.raises(Forbidden):  # a grantee calls; only the owner manages
        dev_b.grant(counter._id, "dev-c")
    with pytest.raises(Forbidden):
        dev_b.delete(counter._id)
    dev_a.revoke(counter, "dev-b")
    with pytest.raises(Forbidden):
        direct(dev_b, counter._id).add(2)
    with pytest.raises(UnknownObject):
        dev_b.get(counter._id)

    model = dev_a.stub(SHARED).create(3.0, alias="dev-a/model")
    shared = dev_b.get("dev-a/model")  # a class with open methods: visible to all
    assert shared.predict(2.0) == 6.0
    with pytest.raises(Forbidden):
        shared.update(0.0)
    assert model.predict(1.0) == 3.0


def test_admins_see_all_and_give_objects_away(
    fleet: Cluster, dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    with as_user(fleet, None) as anon:
        legacy = anon.stub(COUNTER).create(alias="legacy")  # e.g. from a 0.1 directory
    with pytest.raises(UnknownObject):
        dev_a.get("legacy")
    with as_user(fleet, ADMIN) as admin:
        assert {o["id"] for o in admin.objects()} >= {legacy._id}
        assert "host" in admin.nodes()[0]
        with pytest.raises(Forbidden):
            dev_a.set_owner(legacy, "dev-a")
        admin.set_owner(legacy, "dev-a")
    assert dev_a.get("legacy").add(1) == 1
    assert "host" not in dev_b.nodes()[0]


def test_request_ids_are_per_caller(
    fleet: Cluster, dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    """dev-b reusing dev-a's request id gets its own call run, not dev-a's
    stored result; dev-a's resend still gets its first outcome."""
    counter = dev_a.stub(COUNTER).create()
    dev_a.grant(counter, "dev-b")
    raw = Raw(fleet)
    try:
        first = raw.call("dev-a", counter._id, "add", 10, rid="same")
        assert first == {"id": "same", "kind": "result", "value": 10}
        assert raw.call("dev-b", counter._id, "add", 1, rid="same")["value"] == 11
        assert raw.call("dev-a", counter._id, "add", 10, rid="same")["value"] == 10  # replayed
    finally:
        raw.close()
    assert counter.get() == 11


def test_another_callers_flood_does_not_evict_my_outcome(
    fleet: Cluster, dev_a: continuum_mqtt.Client, dev_b: continuum_mqtt.Client
) -> None:
    """The finding: after 1,030 calls by dev-b, dev-a's resend ran again."""
    counter = dev_a.stub(COUNTER).create()
    dev_a.grant(counter, "dev-b")
    raw = Raw(fleet)
    try:
        assert raw.call("dev-a", counter._id, "add", 10, rid="mine")["value"] == 10
        theirs = dev_b.get(counter._id)
        for f in [theirs.add.future(0) for _ in range(1100)]:
            f.result(60)
        assert raw.call("dev-a", counter._id, "add", 10, rid="mine")["value"] == 10  # not 20
    finally:
        raw.close()
    assert counter.get() == 10


def test_replies_go_only_to_the_callers_own_tree(
    fleet: Cluster, dev_a: continuum_mqtt.Client
) -> None:
    counter = dev_a.stub(COUNTER).create()
    dev_a.grant(counter, "dev-b")
    raw = Raw(fleet)
    try:
        # dev-b names dev-a's reply topic: the node runs nothing back there
        victim = f"{fleet.root}/reply/dev-a/{dev_a.client_id}"
        assert raw.call("dev-b", counter._id, "add", 1, reply=victim, wait=2.0) is None
        assert raw.seen_on(victim) == []
    finally:
        raw.close()


def test_anonymous_callers_refused_where_accounts_are_required(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway("--no-anonymous")
    c.start_node("n1", "--no-anonymous", wait=False)
    with as_user(c, "dev-a") as dev:
        c.wait_nodes(["n1"], client=dev)
        counter = dev.stub(COUNTER).create()
        assert counter.add(1) == 1
    with as_user(c, None) as anon:
        with pytest.raises(Forbidden):
            anon.stub(COUNTER).create()
        with pytest.raises(Forbidden):
            anon.nodes()
        with pytest.raises(Forbidden):  # the node refuses on its own
            direct(anon, counter._id).add(1)


class Raw:
    """Requests published by hand, as any user, with any reply topic."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        url = BrokerURL.parse(c.url)
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )  # fmt: skip
        self.got: list[tuple[str, Any]] = []
        self.client.on_message = lambda _c, _u, m: self.got.append(
            (m.topic, cbor2.loads(m.payload))
        )
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        self.client.subscribe(f"{c.root}/reply/#", 1)
        wait_for(lambda: self.client.is_connected(), 10)

    def call(
        self,
        user: str,
        oid: str,
        method: str,
        *args: Any,
        rid: str | None = None,
        reply: str | None = None,
        wait: float = 10.0,
    ) -> dict[str, Any] | None:
        rid = rid or uuid.uuid4().hex
        topic = reply or f"{self.c.root}/reply/{user}/raw-{uuid.uuid4().hex[:6]}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        body = {"method": method, "obj": oid, "args": list(args), "id": rid}
        n = len(self.got)
        self.client.publish(
            self.c.topics.node_call("n1", user), cbor2.dumps(body), 1, properties=props
        ).wait_for_publish(10)
        try:
            wait_for(lambda: any(t == topic for t, _ in self.got[n:]), wait)
        except TimeoutError:
            return None
        return next(b for t, b in self.got[n:] if t == topic)

    def seen_on(self, topic: str) -> list[Any]:
        return [b for t, b in self.got if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_long_calls_of_one_account_do_not_stall_anothers_creates(bare_cluster: Cluster) -> None:
    """dev-b's long calls hold every worker of the node; dev-a's create (a
    control request to that node) and lookups (the gateway's directory) are
    still answered at once, not after the long calls."""
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--workers", "2")
    with as_user(c, "dev-b") as dev_b, as_user(c, "dev-a", timeout=8.0) as dev_a:
        hogs = [dev_b.stub(COUNTER).create() for _ in range(3)]
        slow = [h.slow.future(30.0) for h in hogs]
        mine = dev_a.stub(COUNTER).create(alias="dev-a/c")  # would wait 30 s behind them
        assert dev_a.get("dev-a/c")._id == mine._id
        assert [o["id"] for o in dev_a.objects()] == [mine._id]
        for f in slow:
            f.cancel()


def test_a_device_caps_what_the_broker_may_push_onto_it(fleet: Cluster) -> None:
    """MQTT 5 Maximum Packet Size: a reply bigger than the client's cap is
    dropped by the broker (the call ends at its deadline), smaller ones arrive."""
    with as_user(fleet, "dev-a", max_reply=4096, timeout=3.0) as small:
        obj = small.stub(COUNTER).create()
        assert obj.echo(b"x" * 1000) == b"x" * 1000
        with pytest.raises(continuum_mqtt.DeadlineExpired):
            obj.echo(b"x" * 20_000)
        assert obj.add(1) == 1  # and the client goes on


def test_the_agent_refuses_a_forecaster_it_does_not_own(fleet: Cluster) -> None:
    """An admin (here: the development broker's anonymous account) took
    ``dev-x/forecaster`` first. The agent of dev-x (account dev-x) does not
    feed it: while it cannot see it, creating its own fails on the alias; once
    it may call it (granted), it sees another owner and still refuses."""
    with as_user(fleet, None) as admin:
        squat = admin.stub(COUNTER).create(alias="dev-x/forecaster")
        settings = {"forecaster": {"enabled": True, "class": COUNTER}}
        agent = fleet.start_agent("dev-x", settings=settings)
        wait_for(
            lambda: "another account" in str(agent.status().get("forecaster", {}).get("state")),
            30,
        )
        admin.grant(squat, "dev-x")
        wait_for(
            lambda: (
                "belongs to anonymous" in str(agent.status().get("forecaster", {}).get("state"))
            ),
            90,
        )
        assert agent.status()["forecaster"]["object"] is None
        assert squat.get() == 0  # nothing fed it
