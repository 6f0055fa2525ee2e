"""Fuzzing every inbound handler of node and gateway (a CI-sized sample).

Each test starts a gateway and a node (``--max-payload 65536``, Counter and
SampleSink) on a broker that logs every packet, then feeds hypothesis-generated
messages (random bytes, random CBOR with semantic tags, request envelopes with
wrong-typed fields and private/dunder names, deep and huge payloads, JSON, bad
topic levels) to one handler, one at a time, derandomized (the same cases on
every run). After each case a probe request must be answered and neither
service may have reconnected; request handlers must answer every case with a
result or a structured error with a documented code. ``bench/fuzz.py`` runs
10,000+ cases per handler and measures memory.

``CONTINUUM_FUZZ_EXAMPLES`` sets the cases per handler (default 150).

Cases that trigger a bug already known are skipped by the fuzz tests (see
``known_bug`` in ``bench/_fuzz_strategies.py``) and reproduced by the strict-xfail tests
at the end of this file, one per bug: fixing a bug makes its test XPASS (a
failure), which is the cue to remove the marker and the filter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter as Histogram
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from continuum_dev.testing import LocalBroker, find_mosquitto
from hypothesis import HealthCheck, Phase, given, settings

import continuum_mqtt
from bench._fuzz_strategies import (
    COUNTER,
    KNOWN_BUGS_ON,
    SINK,
    Case,
    Ctx,
    Fuzzer,
    cases_for,
    known_bug,
    open_target,
    unacked_deliveries,
)

from ._cluster import REPO, Cluster

EXAMPLES = int(os.environ.get("CONTINUUM_FUZZ_EXAMPLES", "150"))


# -- the rig ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_broker() -> Iterator[LocalBroker]:
    """A mosquitto that logs every packet: the feed test counts the node's PUBACKs."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is required for the integration tests (scripts/setup installs it)")
    with LocalBroker(extra_config="log_type all\n") as b:
        yield b


@dataclass
class Rig:
    cluster: Cluster
    broker: LocalBroker
    ctx: Ctx
    fuzzer: Fuzzer
    sink_seq: int = 0
    skipped: Histogram[str] = field(default_factory=Histogram)

    # -- probes ---------------------------------------------------------------------------------
    def probe_node(self) -> None:
        body = {"method": "get", "obj": self.ctx.counter, "id": f"probe-{uuid.uuid4().hex}"}
        reply = self.fuzzer.request(self.ctx.topics.node_call("n1"), body, 10.0)
        assert reply is not None and reply.get("kind") == "result", f"node probe: {reply!r}"

    def probe_gateway(self) -> None:
        reply = self.fuzzer.request(self.ctx.topics.gateway_call, {"method": "nodes"}, 10.0)
        assert reply is not None and reply.get("kind") == "result", f"gateway probe: {reply!r}"

    def probe_sink(self, timeout: float = 10.0) -> None:
        """The fed sink still answers (its mailbox is not stuck behind a sample), and
        the feed still delivers: a fresh sink bound to the same device gets a valid
        sample (the fuzzed sink's own list of samples outgrows a 64 KiB reply)."""
        body = {"method": "received", "obj": self.ctx.sink, "id": f"probe-{uuid.uuid4().hex}"}
        reply = self.fuzzer.request(self.ctx.topics.node_call("n1"), body, timeout)
        answered = isinstance(reply, dict) and (
            reply.get("kind") == "result"
            or (reply.get("error") or {}).get("code") == "payload_too_large"
        )
        assert answered, f"the fed sink does not answer: {reply!r}"
        self.sink_seq += 1
        with self.cluster.client(timeout=timeout) as c:
            sentinel = c.stub(SINK).create()
            c.bind_metrics(sentinel, self.ctx.device, "ingest")
            self.fuzzer.client.publish(
                self.ctx.topics.metrics(self.ctx.device),
                cbor2.dumps({"dev": "sentinel", "seq": self.sink_seq}),
                qos=1,
            )
            end = time.monotonic() + timeout
            # (fuzzed samples the node held for reordering may reach it too)
            while self.sink_seq not in (got := sentinel.received())["seqs"]:
                if time.monotonic() >= end:  # what the node was doing, for the next look
                    node = next((n for n in c.nodes() if n["id"] == "n1"), {})
                    status = {k: node.get(k) for k in ("state", "queued", "running", "load")}
                    pytest.fail(
                        f"sentinel sample {self.sink_seq} never arrived in {timeout} s;"
                        f" the sentinel has {got}; node n1: {status}"
                    )
                time.sleep(0.02)
            c.delete(sentinel)

    def assert_steady(self, where: str) -> None:
        f = self.fuzzer
        assert not f.failures, f"{where}: {f.failures[0]}"
        assert not f.flaps("n1"), f"{where}: node n1 reconnected / went offline: {f.flaps('n1')}"
        assert not f.flaps("gateway"), f"{where}: gateway reconnected: {f.flaps('gateway')}"
        assert not f.disconnects, f"{where}: the broker dropped the fuzzer: {f.disconnects}"
        assert not f.unexpected, f"{where}: publications where none belong: {f.unexpected[:5]}"

    def still_serving(self) -> None:
        assert self.cluster.alive("n1") and self.cluster.alive("gateway")
        with self.cluster.client() as c:
            obj = c.stub(COUNTER).create(start=1)
            assert obj.add(1) == 2
            c.delete(obj)
            assert any(n["id"] == "n1" and n["state"] == "online" for n in c.nodes())

    # -- the fuzz loop --------------------------------------------------------------------------
    def fuzz(self, handler: str, probe: Callable[[], None], examples: int = EXAMPLES) -> None:
        fuzzer = self.fuzzer

        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the services keep state
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=cases_for(self.ctx, handler))
        def one(case: Case) -> None:
            bug = known_bug(self.ctx, handler, case)
            if bug is not None:
                self.skipped[bug] += 1
                return
            fuzzer.run_one(handler, case)
            probe()
            self.assert_steady(f"after {case!r}")

        one()
        fuzzer.flush()
        self.assert_steady(f"{handler}: at the end")
        self.still_serving()


@pytest.fixture
def rig(logged_broker: LocalBroker, tmp_path: Path) -> Iterator[Rig]:
    cluster = Cluster(logged_broker.url, tmp_path, cwd=REPO)
    fuzzer = None
    try:
        fuzzer = open_target(cluster, reply_timeout=10.0, optional_wait=2.0)
        with cluster.client() as c:
            victim = c.stub(COUNTER).create(alias=f"fz-victim-{uuid.uuid4().hex[:6]}")
        assert fuzzer.ctx is not None
        fuzzer.ctx = ctx = dataclasses.replace(
            fuzzer.ctx, victim=victim._id or "", alias=victim._aliases[0]
        )
        yield Rig(cluster, logged_broker, ctx, fuzzer)
    finally:
        if fuzzer is not None:
            fuzzer.close()
        cluster.close()


# -- one test per handler ------------------------------------------------------------------------
def test_fuzz_node_call(rig: Rig) -> None:
    rig.fuzz("node_call", rig.probe_node)


def test_fuzz_node_ctl(rig: Rig) -> None:
    rig.fuzz("node_ctl", rig.probe_node)


def test_fuzz_gateway_call(rig: Rig) -> None:
    rig.fuzz("gateway_call", rig.probe_gateway)


def test_fuzz_node_feed(rig: Rig) -> None:
    """Junk on a bound device's metrics topic: the node survives, keeps feeding
    the sink valid samples, and acknowledges every message the broker delivered."""
    n = 0

    def probe() -> None:
        nonlocal n
        n += 1
        rig.probe_node()
        if n % 10 == 0:
            rig.probe_sink()

    rig.fuzz("node_feed", probe)
    rig.probe_sink()
    time.sleep(0.3)
    assert unacked_deliveries(rig.broker.log_path, "node-n1") == set(), "unacknowledged messages"


def test_fuzz_node_status(rig: Rig) -> None:
    """Junk (retained or not) on <root>/node/<junk>/status: gateway, node and a
    client survive, and the gateway still answers nodes()."""
    with rig.cluster.client() as c:
        rig.fuzz("node_status", rig.probe_gateway)
        nodes = c.nodes()
        assert any(n["id"] == "n1" and n["state"] == "online" for n in nodes)
        assert c.stub(COUNTER).create().add(2) == 2  # the client's status handler survived too
    rig.fuzzer.clear_junk_statuses()


def test_fuzz_client_reply(rig: Rig) -> None:
    """Junk on a live client's reply topic while its calls are in flight: every
    call still completes with the right result."""
    stop = threading.Event()
    errors: list[BaseException] = []
    done = 0
    with rig.cluster.client(timeout=20.0) as c:
        obj = c.stub(COUNTER).create()

        def traffic() -> None:
            nonlocal done
            while not stop.is_set():
                futs: list[Future[Any]] = [obj.add.future(1) for _ in range(4)]
                futs.append(obj.slow.future(0.002))
                for f in futs:
                    try:
                        f.result(30)
                    except BaseException as exc:
                        errors.append(exc)
                done += 4

        rig.ctx = dataclasses.replace(rig.ctx, client_reply=c._requester.reply_topic)
        rig.fuzzer.ctx = rig.ctx
        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        try:
            rig.fuzz("client_reply", rig.probe_node)
        finally:
            stop.set()
            t.join(60)
        assert not errors, f"{len(errors)} calls failed, first: {errors[0]!r}"
        assert done > 0 and obj.get() == done


def test_fuzz_service_reply_topics(rig: Rig) -> None:
    """Junk on the node's and the gateway's own reply topics (where node
    controls and replica syncs are answered)."""
    rig.fuzz("node_reply", rig.probe_node, examples=max(20, EXAMPLES // 2))
    rig.fuzz("gateway_reply", rig.probe_gateway, examples=max(20, EXAMPLES // 2))


# -- known bugs: one strict-xfail reproducer each ------------------------------------------------------
def _known(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


def _no_flap(rig: Rig, name: str, seconds: float = 1.5) -> None:
    time.sleep(seconds)
    assert not rig.fuzzer.flaps(name), f"{name} reconnected: {rig.fuzzer.flaps(name)}"


def _request(rig: Rig, handler: str, body: bytes) -> str:
    """The outcome of one request (``no_reply`` after 1.5 s)."""
    rig.fuzzer.reply_timeout = 1.5
    return rig.fuzzer.run_one(handler, Case("repro", rig.ctx.handler_topic(handler), body))


@pytest.mark.parametrize("service", ["n1", "gateway"])
def test_bug1_reply_to_with_control_character(rig: Rig, service: str) -> None:
    """A request's body field ``reply_to`` with a control character (or a
    noncharacter, or a JSON lone surrogate) and no Response Topic: the service
    publishes its reply there, mosquitto drops the connection (malformed packet),
    and paho resends the same QoS 1 publish after every reconnect, so the service
    flaps offline every second for good; its last will fires each time (the
    gateway fails objects over, clients fail calls with Unavailable).
    continuum_mqtt/_server.py ``_reply_topic`` checks only the prefix and + #."""
    topic = rig.ctx.topics.node_call("n1") if service == "n1" else rig.ctx.topics.gateway_call
    body = cbor2.dumps({"method": "get", "obj": "x", "reply_to": f"{rig.ctx.reply_prefix}/x\x01"})
    rig.fuzzer.client.publish(topic, body, qos=1)  # no Response Topic: the body's reply_to counts
    _no_flap(rig, service)


def test_bug2_bind_device_with_control_character(rig: Rig) -> None:
    """``client.bind_metrics(obj, "dev\\x01", ...)``: the gateway accepts the device
    id (``Topics._check_level`` refuses only / + # NUL), the node subscribes to
    ``<root>/dev/dev\\x01/metrics``, mosquitto drops it, and the node re-subscribes
    on every reconnect: it flaps offline for good (the same through node control
    ``bind`` with such a topic: ``Topics.is_metrics`` accepts it)."""
    with rig.cluster.client(timeout=1.5) as c, pytest.raises(continuum_mqtt.BadRequest):
        c.bind_metrics(rig.ctx.victim, "dev\x01", "add")
    _no_flap(rig, "n1")


def test_bug3_bind_wildcard_topic(rig: Rig) -> None:
    """Node control ``bind`` to ``<root>/dev/#/metrics`` passes ``is_metrics``;
    ``MqttTransport.subscribe`` records the filter before paho refuses it, so the reply
    is a method_error (ValueError) and on the node's next reconnect
    ``_handle_connect`` raises inside paho's on_connect: the network thread dies and
    the process stays up, deaf, for good."""
    kwargs = {"obj": rig.ctx.victim, "topic": f"{rig.ctx.root}/dev/#/metrics", "method": "add"}
    body = cbor2.dumps({"method": "bind", "kwargs": kwargs})
    assert _request(rig, "node_ctl", body) == "error:bad_request"


@pytest.mark.parametrize("handler", ["node_call", "node_ctl", "gateway_call"])
def test_bug4_timeout_overflow(rig: Rig, handler: str) -> None:
    """``timeout_ms`` = 2**1100 passes ``Request.from_wire`` (an int), then
    ``req.timeout_ms / 1000.0`` in ``accept()`` raises OverflowError, which only
    the connection's catch-all logs: no reply."""
    body = cbor2.dumps({"method": "get", "obj": rig.ctx.counter, "timeout_ms": 2**1100})
    assert _request(rig, handler, body) == "error:bad_request"


@pytest.mark.parametrize("trigger", ["huge_int_message", "surrogate_reply_to"])
def test_bug5_object_wedged(rig: Rig, trigger: str) -> None:
    """A call whose answer raises in the worker: ``Counter.fail(2**20000)`` (the
    ValueError's str() exceeds the int-to-str limit inside ``remote_error``), or a
    JSON call whose ``reply_to`` holds a lone surrogate (``conn.publish`` raises
    UnicodeEncodeError; a reply_to over 65535 bytes raises ValueError). ``_run``
    raises out of ``_drain``, the future swallows it, and the object keeps
    ``scheduled = True``: every later call on it waits forever (``_queued`` leaks
    too)."""
    if trigger == "huge_int_message":
        body = cbor2.dumps({"method": "fail", "obj": rig.ctx.counter, "args": [2**20000]})
    else:
        reply_to = rig.ctx.reply_prefix + "/x\ud800"
        body = json.dumps({"method": "add", "obj": rig.ctx.counter, "reply_to": reply_to}).encode()
    rig.fuzzer.client.publish(rig.ctx.topics.node_call("n1"), body, qos=1)
    time.sleep(0.3)
    after = cbor2.dumps({"method": "get", "obj": rig.ctx.counter, "id": "after"})
    assert _request(rig, "node_call", after) == "result"


def test_bug6_directory_poisoned_by_a_status(rig: Rig) -> None:
    """A status map whose ``classes`` is not a map of maps, on
    ``<root>/node/<junk>/status`` (anyone may publish there): the directory stores
    it, and ``nodes()`` (sorted), ``classes()`` (.items, {**desc}) and
    ``place()`` (``in``) raise for every caller until the message is cleared."""
    topic = rig.ctx.topics.node_status("fz-poison")
    rig.fuzzer.client.publish(topic, cbor2.dumps({"state": "online", "classes": 5}), 1, True)
    time.sleep(0.3)
    try:
        with rig.cluster.client(timeout=1.5) as c:
            c.nodes()
            c.classes()
            c.stub(COUNTER).create()
    finally:
        rig.fuzzer.client.publish(topic, b"", 1, True)


def test_bug7_gateway_stalled_by_junk_statuses(rig: Rig) -> None:
    """A junk node id that goes offline and then online makes the gateway
    ``_reconcile`` with it: a ``list`` control call to a node that does not
    exist, with the 30 s node timeout, on the 4-thread pool that also serves
    clients. Eight small messages (four ids) stall every gateway call for 30 s,
    and can be repeated forever."""
    try:
        for i in range(4):
            topic = rig.ctx.topics.node_status(f"ghost{i}")
            rig.fuzzer.client.publish(topic, cbor2.dumps({"state": "offline"}), 1)
            rig.fuzzer.client.publish(topic, cbor2.dumps({"state": "online"}), 1)
        time.sleep(0.3)
        with rig.cluster.client(timeout=1.5) as c:
            c.nodes()
    finally:
        rig.cluster.stop("gateway", signal.SIGKILL)  # its stop() would wait for the 30 s calls


def test_bug8_decimal_exponent_bomb(rig: Rig) -> None:
    """The codec decodes tags 4/5 (decimal fraction, bigfloat) into Decimal with
    any exponent: 13 bytes make ``Decimal('1E+10000000')``. ``SampleSink.ingest``
    does ``int(sample['seq'])``, which takes hours (int() of 1E+1000000 already
    takes 26 s): the worker burns a core and the sink's mailbox stalls."""
    bomb = cbor2.dumps({"dev": "x", "seq": cbor2.CBORTag(4, [10_000_000, 1])})
    assert isinstance(cbor2.loads(bomb)["seq"], Decimal)
    try:
        rig.fuzzer.client.publish(rig.ctx.topics.metrics(rig.ctx.device), bomb, qos=1)
        rig.probe_sink(timeout=1.5)
    finally:
        rig.cluster.stop("n1", signal.SIGKILL)  # the worker is stuck in int()


@pytest.mark.parametrize(
    "env",
    [{"code": "weird", "message": "m", "remote_type": "x"}, {"code": "busy", 1: 2}],
    ids=["reserved_key", "non_text_key"],
)
def test_bug9_malformed_error_envelope(env: dict[Any, Any]) -> None:
    """``error_from_envelope`` passes the envelope's extra keys as keyword
    arguments: a non-text key, or ``remote_type``/``remote_code`` next to an
    unknown code, raises TypeError inside ``Requester.on_reply``, so the call is
    neither failed nor completed and waits for its deadline."""
    err = continuum_mqtt._errors.error_from_envelope(env)
    assert isinstance(err, continuum_mqtt.ContinuumError)


def test_bug10_unhashable_replica_poisons_object(rig: Rig) -> None:
    """Node control ``promote(obj, replicas=[[1]])`` answers bad_request but has
    already stored the list: every later mutating call on the object runs, then
    ``_replicate`` raises TypeError, and the caller gets method_error for a call
    that was applied (and not recorded for exactly-once: a retry applies it
    again). ``create`` with such replicas leaves the same poisoned object."""
    ctl = cbor2.dumps({"method": "promote", "kwargs": {"obj": rig.ctx.victim, "replicas": [[1]]}})
    assert _request(rig, "node_ctl", ctl) == "error:bad_request"
    add = cbor2.dumps({"method": "add", "obj": rig.ctx.victim, "id": "after"})
    assert _request(rig, "node_call", add) == "result"


@_known("BUG-11: a status from a node that never was takes the placements")
def test_bug11_spoofed_node_takes_placements(rig: Rig) -> None:
    """Anyone may publish ``{"state": "online", "classes": {<a hosted class>: {}}}``
    on ``<root>/node/<any id>/status``: the gateway lists that node and, as it
    holds no objects, places the next creates of the class there; the ``create``
    control call goes to a node that does not exist and the caller's create times
    out (30 s node timeout on the gateway). Nothing ever expires the entry."""
    topic = rig.ctx.topics.node_status("a-ghost")
    status = {"state": "online", "classes": {COUNTER: {"methods": {}}}}
    rig.fuzzer.client.publish(topic, cbor2.dumps(status), 1, False)
    time.sleep(0.3)
    try:
        with rig.cluster.client(timeout=1.5) as c:
            c.stub(COUNTER).create()
    finally:
        rig.cluster.stop("gateway", signal.SIGKILL)  # its stop() would wait for the 30 s call


@pytest.mark.skipif(KNOWN_BUGS_ON, reason="CONTINUUM_FUZZ_KNOWN_BUGS: no filter")
def test_known_bug_filters_match_their_reproducers() -> None:
    """The fuzz skips exactly the inputs the reproducers above use."""
    ctx = Ctx(root="r/continuum/v1", reply_prefix="r/continuum/v1/reply/fz", counter="c")
    call, _ctl, _gw = (
        "r/continuum/v1/node/n1/call",
        "r/continuum/v1/node/n1/ctl",
        "r/continuum/v1/gateway/call",
    )
    cases = [
        ("node_status", Case("x", "r/continuum/v1/node/j/status", cbor2.dumps({"state": "online", "classes": {COUNTER: {}}})), "BUG-11"),
    ]  # fmt: skip
    for handler, case, bug in cases:
        found = known_bug(ctx, handler, case)
        assert found is not None and found.startswith(bug), (handler, case, found)
    ok = Case("x", call, cbor2.dumps({"method": "get", "obj": "c", "timeout_ms": 10**6}))
    assert known_bug(ctx, "node_call", ok) is None
