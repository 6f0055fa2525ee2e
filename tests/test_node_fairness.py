"""Issue 13, quotas and fairness on a node: one caller's calls never hold every
worker (the workers serve the callers in turn, each at most its share); per
caller bounds on calls in flight and request bytes (``quota_exceeded``) and a
node-wide byte bound (``busy``); feed samples count against their object's
bound and wait, unacknowledged, rather than being dropped; failing or big
mutating calls are checkpointed, never journaled with their arguments.

In-process nodes over a FakeTransport first (fast, gated: no timing), then one
real node with two accounts on the development broker."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from continuum_node._actors import Actor, Scheduler
from continuum_node._backlog import Backlog

import continuum_mqtt
from continuum_mqtt import ActiveObject, QuotaExceeded, active
from continuum_mqtt.service import Rights, class_path, encode

from . import _nodekit
from ._cluster import Cluster, wait_for
from ._nodekit import NodeUnderTest, Tally, wait_until

OPEN: dict[str, threading.Event] = {}  # gate -> opened by the test
INSIDE: dict[str, int] = {}  # gate -> calls inside it now
_count_lock = threading.Lock()


class Gated(Tally):
    """A counter whose ``hold`` blocks until the test opens its gate."""

    @active
    def hold(self, gate: str) -> int:
        with _count_lock:
            INSIDE[gate] = INSIDE.get(gate, 0) + 1
        try:
            OPEN.setdefault(gate, threading.Event()).wait(30)
        finally:
            with _count_lock:
                INSIDE[gate] -= 1
        self.value += 100
        return self.value

    @active
    def add(self, n: int = 1, pad: str = "") -> int:
        self.value += n
        return self.value

    @active
    def fail(self, pad: str = "") -> None:
        self.value += 1  # changed, then failed: a checkpoint keeps it as it is
        raise ValueError("boom")


class GatedPool(ActiveObject, stateless=True):
    @active
    def hold(self, gate: str) -> str:
        return str(Gated().hold(gate))


GATED, POOL = class_path(Gated), class_path(GatedPool)


@pytest.fixture(autouse=True)
def classes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(_nodekit.CLASSES, GATED, Gated)
    monkeypatch.setitem(_nodekit.CLASSES, POOL, GatedPool)
    OPEN.clear()
    INSIDE.clear()
    yield
    for gate in OPEN.values():
        gate.set()


def _gate(name: str) -> threading.Event:
    return OPEN.setdefault(name, threading.Event())


def _inside(gate: str) -> int:
    with _count_lock:
        return INSIDE.get(gate, 0)


def _node(**options: Any) -> NodeUnderTest:
    options.setdefault("workers", 4)
    return NodeUnderTest(inline=False, **options)


def _close(n: NodeUnderTest) -> None:
    for gate in OPEN.values():  # (a failed test must not wait for its gates)
        gate.set()
    n.close()


def _own(n: NodeUnderTest, oid: str, owner: str) -> None:
    n.create(oid, GATED, owner=owner)


# -- fair shares of the workers --------------------------------------------------------


def test_one_callers_long_calls_leave_the_others_their_workers() -> None:
    """The finding: 16 long calls of dev-b took every worker; dev-a timed out."""
    n = _node(workers=4)  # dev-b's share: 2
    try:
        for i in range(4):
            _own(n, f"b{i}", "dev-b")
        _own(n, "a", "dev-a")
        _gate("b")
        held = [n.call_as("dev-b", f"b{i}", "hold", "b") for i in range(4)]
        wait_until(lambda: _inside("b") == 2)
        assert n.node.calls.scheduler.running("dev-b") == 2  # the other 2 wait in line
        for i in range(5):  # dev-a's calls run meanwhile, one after the other
            assert n.reply_as("dev-a", n.call_as("dev-a", "a", "add", 1))["value"] == i + 1
        assert _inside("b") == 2 and all(not _replied(n, "dev-b", r) for r in held)
        OPEN["b"].set()
        assert [n.reply_as("dev-b", r)["value"] for r in held] == [100] * 4
    finally:
        _close(n)


def _replied(n: NodeUnderTest, user: str, rid: str) -> bool:
    try:
        n.reply_as(user, rid, timeout=0)
    except AssertionError:
        return False
    return True


def test_caller_workers_sets_the_share() -> None:
    n = _node(workers=4, caller_workers=3)
    try:
        for i in range(4):
            _own(n, f"b{i}", "dev-b")
        _gate("b")
        held = [n.call_as("dev-b", f"b{i}", "hold", "b") for i in range(4)]
        wait_until(lambda: _inside("b") == 3)
        OPEN["b"].set()
        for r in held:
            n.reply_as("dev-b", r)
    finally:
        _close(n)


class Manual:
    """An executor whose tasks wait until the test runs them (FIFO)."""

    def __init__(self) -> None:
        self.tasks: deque[Callable[[], Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.tasks.append(lambda: fn(*args))

    def run_all(self) -> None:
        while self.tasks:
            self.tasks.popleft()()


def test_free_workers_serve_the_callers_in_turn() -> None:
    """However many jobs one caller queued first, a worker that frees up
    takes the next caller's job: round robin, not first come first served."""
    pool, ran = Manual(), list[tuple[str, int]]()
    s: Scheduler[Actor, tuple[str, int]] = Scheduler(
        pool.submit,
        lambda a, j: ran.append(j),
        max_queue=100,
        max_node_queue=1000,
        workers=1,
        caller=lambda j: j[0],
    )
    hog = [Actor() for _ in range(6)]
    for i, actor in enumerate(hog):
        s.enqueue(actor, ("dev-b", i))
    for i in range(3):
        s.enqueue(Actor(), ("dev-a", i))
    s.enqueue(Actor(), ("dev-c", 0))
    pool.run_all()
    assert ran[:8] == [
        ("dev-b", 0), ("dev-a", 0), ("dev-c", 0), ("dev-b", 1),
        ("dev-a", 1), ("dev-b", 2), ("dev-a", 2), ("dev-b", 3),
    ]  # fmt: skip
    assert len(ran) == 10 and s.queued == 0 and s.ledger.calls("dev-b") == 0


def test_an_object_shared_by_callers_runs_in_order_each_job_in_its_callers_share() -> None:
    """One mailbox, jobs of two callers: arrival order holds; a job whose
    caller is at its share waits, and the object with it."""
    pool, ran = Manual(), list[tuple[str, int]]()
    s: Scheduler[Actor, tuple[str, int]] = Scheduler(
        pool.submit, lambda a, j: ran.append(j), max_queue=100, max_node_queue=1000,
        workers=2, caller_workers=1, caller=lambda j: j[0],
    )  # fmt: skip
    shared = Actor()
    for job in [("dev-a", 0), ("dev-b", 0), ("dev-a", 1), ("dev-b", 1)]:
        s.enqueue(shared, job)
    pool.run_all()
    assert ran == [("dev-a", 0), ("dev-b", 0), ("dev-a", 1), ("dev-b", 1)]
    assert not shared.scheduled and s.queued == 0


# -- per-caller and node-wide bounds ---------------------------------------------------


def _held(**kw: Any) -> tuple[Any, Any]:
    """A node with dev-a's object a and dev-b's object b, b busy with a call
    held until OPEN["b"] is set; that call's request id."""
    n = _node(workers=2, **kw)
    _own(n, "b", "dev-b")
    _own(n, "a", "dev-a")
    _gate("b")
    first = n.call_as("dev-b", "b", "hold", "b")
    wait_until(lambda: _inside("b") == 1)
    return n, first


def test_past_its_calls_quota_a_caller_is_refused_and_the_others_are_not() -> None:
    n, first = _held(max_caller_calls=3)
    try:
        queued = [n.call_as("dev-b", "b", "add", 1) for _ in range(2)]  # 3 in flight
        over = n.reply_as("dev-b", n.call_as("dev-b", "b", "add", 1, rid="over"))
        err = over["error"]
        assert (err["code"], err["what"], err["limit"]) == ("quota_exceeded", "calls", 3)
        assert n.reply_as("dev-a", n.call_as("dev-a", "a", "add", 5))["value"] == 5
        OPEN["b"].set()
        assert [n.reply_as("dev-b", r)["value"] for r in [first, *queued]] == [100, 101, 102]
        # refused, not remembered: the same id runs once there is room
        n.call_as("dev-b", "b", "add", 1, rid="over")
        wait_until(lambda: n.node.calls.scheduler.ledger.calls("dev-b") == 0)
        res = n.node.residents.get("b")
        assert res is not None and res.instance.value == 103
    finally:
        _close(n)


def test_past_its_bytes_quota_a_caller_is_refused() -> None:
    n, _ = _held(max_caller_bytes=20_000)
    try:
        n.call_as("dev-b", "b", "add", 1, pad="x" * 12_000)  # queued: ~12 KB
        err = n.reply_as("dev-b", n.call_as("dev-b", "b", "add", 1, pad="x" * 12_000))["error"]
        assert (err["code"], err["what"], err["limit"]) == ("quota_exceeded", "bytes", 20_000)
        big = n.call_as("dev-a", "a", "add", 1, pad="x" * 15_000)  # another account's budget
        assert n.reply_as("dev-a", big)["value"] == 1
    finally:
        _close(n)


def test_the_node_byte_bound_is_busy_and_admins_have_no_caller_quota() -> None:
    n = _node(workers=2, max_caller_calls=1, max_node_bytes=30_000, rights=Rights(["ops"]))
    try:
        _own(n, "b", "ops")
        _gate("b")
        n.call_as("ops", "b", "hold", "b")
        wait_until(lambda: _inside("b") == 1)
        ok = n.call_as("ops", "b", "add", 1, pad="x" * 20_000)  # past max_caller_calls: admin
        err = n.reply_as("ops", n.call_as("ops", "b", "add", 1, pad="x" * 20_000))["error"]
        assert (err["code"], err["node"]) == ("busy", "n1")
        OPEN["b"].set()
        assert n.reply_as("ops", ok)["value"] == 101
    finally:
        _close(n)


def _pool_call(n: NodeUnderTest, user: str, rid: str, gate: str) -> str:
    body = {"method": "hold", "args": [gate], "kwargs": {}, "id": rid}
    n.transport.inject(
        n.topics.pool_call(POOL, user),
        encode(body),
        qos=1,
        response_topic=f"{n.topics.root}/reply/{user}/tester",
    )
    return rid


def test_pool_calls_take_their_callers_share_and_quota() -> None:
    n = _node(workers=2, max_caller_calls=2)  # shares of 1
    try:
        _gate("p")
        _gate("a").set()
        first = _pool_call(n, "dev-b", "b1", "p")
        wait_until(lambda: _inside("p") == 1)
        second = _pool_call(n, "dev-b", "b2", "p")  # waits for dev-b's share
        err = n.reply_as("dev-b", _pool_call(n, "dev-b", "b3", "p"))["error"]
        assert (err["code"], err["what"]) == ("quota_exceeded", "calls")
        assert n.reply_as("dev-a", _pool_call(n, "dev-a", "a1", "a"))["kind"] == "result"
        assert _inside("p") == 1
        OPEN["p"].set()
        for rid in (first, second):
            assert n.reply_as("dev-b", rid)["kind"] == "result"
    finally:
        _close(n)


# -- feed samples ----------------------------------------------------------------------


def _bound(n: NodeUnderTest, device: str = "d1") -> Any:
    n.create("o", GATED, owner=device)
    n.result(n.ctl("bind", obj="o", topic=n.topics.metrics(device), method="ingest"))
    res = n.node.residents.get("o")
    assert res is not None
    return res


def test_samples_count_against_their_objects_bound_and_wait_unacknowledged() -> None:
    """The finding: samples skipped the per-object bound and filled the node's
    queue (everyone got busy). Now they take the mailbox's room, then wait."""
    n = _node(workers=2, max_queue=2, max_node_queue=3)
    try:
        res = _bound(n)
        _own(n, "a", "dev-a")
        _gate("o")
        n.call_as("d1", "o", "hold", "o")
        wait_until(lambda: _inside("o") == 1)
        msgs = [n.sample("d1", {"seq": s}) for s in range(1, 11)]
        assert len(res.mailbox) == 2 and n.node.calls.backlog.waiting(res) == 8
        assert n.node.calls.scheduler.ledger.calls("d1") == 3  # the device's account
        assert n.sample_acks() == []  # none dropped, none acknowledged
        for i in range(3):  # the node is not busy for others
            assert n.reply_as("dev-a", n.call_as("dev-a", "a", "add", 1))["value"] == i + 1
        OPEN["o"].set()
        wait_until(lambda: len(n.sample_acks()) == 10)
        assert res.instance.seen == list(range(1, 11)) and n.sample_acks() == msgs
    finally:
        _close(n)


def test_a_full_backlog_parks_the_topic_until_it_has_room() -> None:
    n = _node(workers=2, max_queue=1)
    try:
        res = _bound(n)
        n.node.calls.backlog.bound = 3
        _gate("o")
        n.call_as("d1", "o", "hold", "o")
        wait_until(lambda: _inside("o") == 1)
        msgs = [n.sample("d1", {"seq": s}) for s in range(1, 9)]
        # 1 in the mailbox, 2-4 in the backlog (full), 5-8 parked at the router
        assert len(res.mailbox) == 1 and n.node.calls.backlog.waiting(res) == 3
        assert n.node.feeds.parked == 4 and n.sample_acks() == []
        n.node.tick()  # no room yet: stays parked
        assert n.node.feeds.parked == 4
        OPEN["o"].set()  # the object works through them; with room again, the
        wait_until(lambda: len(n.sample_acks()) == 8)  # parked ones are routed
        assert res.instance.seen == list(range(1, 9)) and n.sample_acks() == msgs
        assert n.node.feeds.parked == 0
        m9 = n.sample("d1", {"seq": 9})  # routed as it comes again
        wait_until(lambda: n.sample_acks()[-1:] == [m9])
    finally:
        _close(n)


def test_a_sample_is_the_devices_job_not_the_owners() -> None:
    """The account that publishes the samples (and sets their rate) pays for
    them: its share, its quotas; not the owner of the object they feed."""
    n = _node(workers=2, caller_workers=1)
    try:
        _bound(n)  # o: owned by d1, fed by d1
        n.create("x", GATED, owner="d1")
        n.result(n.ctl("bind", obj="x", topic=n.topics.metrics("d2"), method="ingest"))
        _gate("o")
        _own(n, "d1-other", "d1")
        n.call_as("d1", "d1-other", "hold", "o")
        wait_until(lambda: _inside("o") == 1)  # d1's share (1) is taken
        n.sample("d1", {"seq": 1})  # d1's: waits for d1's share
        m2 = n.sample("d2", {"seq": 1})  # d2's, on d1's object: runs
        wait_until(lambda: n.sample_acks() == [m2])
        assert n.node.calls.scheduler.ledger.calls("d1") == 2  # its call and its sample
        OPEN["o"].set()
        wait_until(lambda: len(n.sample_acks()) == 2)
    finally:
        _close(n)


def test_backlog_keeps_the_order_and_drains_as_room_comes() -> None:
    room = [0]
    taken: list[int] = []

    def offer(obj: str, job: int) -> bool:
        if room[0] <= 0:
            return False
        room[0] -= 1
        taken.append(job)
        return True

    b: Backlog[str, int] = Backlog(offer, bound=4)
    room[0] = 1
    assert b.add("o", 1) and taken == [1]
    assert b.add("o", 2) and b.add("o", 3) and b.add("o", 4)
    assert not b.add("o", 5)  # full: the router parks the topic
    assert not b.has_room("o") and len(b) == 4
    room[0] = 1
    assert b.add("o", 6) is False and taken == [1]  # never passes those waiting
    room[0] = 1
    assert b.drain("o") is False and b.waiting("o") == 4  # still full
    room[0] = 3
    assert b.drain("o") is True  # room again: its parked topics may go on
    assert taken == [1, 2, 3, 4, 5] and b.waiting("o") == 1 and b.has_room("o")
    room[0] = 5
    assert b.drain_all() is False
    assert taken == [1, 2, 3, 4, 5, 6] and len(b) == 0 and b.waiting("o") == 0


# -- journal entries -------------------------------------------------------------------


def test_failed_and_big_calls_are_checkpointed_never_journaled(tmp_path: Path) -> None:
    """The finding: 25 failing calls with 4 MiB arguments added 100 MB of
    journal. Now the journal never holds their arguments; replay and
    exactly-once are unchanged."""
    n = NodeUnderTest(state_dir=str(tmp_path))
    n.create("g", GATED)
    res = n.node.residents.get("g")
    assert res is not None
    assert n.result(n.call("g", "add", 1, rid="small")) == 1
    assert res.journaled == 1
    for i in range(5):
        err = n.error(n.call("g", "fail", pad="x" * 200_000, rid=f"f{i}"))
        assert err["code"] == "method_error" and res.journaled == 0
    assert n.result(n.call("g", "add", 10, pad="y" * 100_000, rid="big")) == 16
    assert res.journaled == 0
    assert n.result(n.call("g", "add", 100, rid="after")) == 116  # journaled again
    assert res.journaled == 1
    journal = tmp_path / "objects" / "g.journal"
    assert journal.stat().st_size < 10_000
    assert (tmp_path / "objects" / "g.snapshot").stat().st_size < 100_000  # one copy of nothing big
    n.close()
    again = NodeUnderTest(state_dir=str(tmp_path))
    try:
        assert again.result(again.call("g", "get")) == 116  # no failed call ran again
        again.call("g", "fail", rid="f3")  # exactly-once: the first outcome
        again.call("g", "add", 10, rid="big")
        assert again.error("f3")["code"] == "method_error"
        assert again.result("big") == 16
        assert again.result(again.call("g", "get")) == 116
    finally:
        again.close()


# -- a real node, two accounts ----------------------------------------------------------

COUNTER = "examples.counter.Counter"


def _as(c: Cluster, user: str, **kw: Any) -> continuum_mqtt.Client:
    from continuum_mqtt.service import BrokerURL

    url = BrokerURL.parse(c.url)
    kw.setdefault("timeout", 10.0)
    return continuum_mqtt.Client(f"mqtt://{user}@{url.host}:{url.port}", root=c.root, **kw)


def test_a_real_node_keeps_a_victims_calls_going_while_another_account_floods(
    bare_cluster: Cluster,
) -> None:
    """dev-b's long calls fill its share of a 4-worker node and it floods up to
    its quota: dev-a's calls on its own object complete meanwhile, and only
    dev-b hears quota_exceeded."""
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--workers", "4", "--max-caller-calls", "12", "--stop-timeout", "1")
    with _as(c, "dev-b") as dev_b, _as(c, "dev-a", timeout=8.0) as dev_a:
        mine = dev_a.stub(COUNTER).create()
        hogs = [dev_b.stub(COUNTER).create() for _ in range(4)]
        slow = [h.slow.future(60.0) for h in hogs]  # 2 run (its share), 2 wait
        time.sleep(0.5)
        for i in range(5):
            assert mine.add(1) == i + 1  # would wait 60 s behind dev-b without shares
        flood = [hogs[0].add.future(1) for _ in range(20)]  # behind its slow call
        # 4 slow calls in flight: 8 more fit its quota of 12, the other 12 are refused
        wait_for(lambda: sum(f.done() for f in flood) >= 12, 10)
        refused = [f.exception() for f in flood if f.done()]
        assert len(refused) == 12
        assert all(isinstance(e, QuotaExceeded) for e in refused)
        assert all(e.data == {"what": "calls", "limit": 12} for e in refused)  # type: ignore[union-attr]
        assert mine.add(1) == 6 and mine.get() == 6  # dev-a is not affected
        assert not any(f.done() for f in slow)
        for f in [*slow, *flood]:
            f.cancel()
