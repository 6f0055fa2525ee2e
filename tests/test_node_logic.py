"""The node's logic in-process: a Node over a FakeTransport, no broker, no
subprocess (each test runs in milliseconds). The broker tests
(test_calls, test_durability, test_failover, ...) cover the same node over a
real mosquitto."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import continuum_node._store as store_mod
import pytest
from continuum_node._store import dumps_state

from continuum_mqtt.service import FakeBus, decode

from ._nodekit import TALLY, NodeUnderTest, gate, wait_until

LOCKED = "tests._nodekit.Locked"


@pytest.fixture
def n1() -> Iterator[NodeUnderTest]:
    n = NodeUnderTest()
    yield n
    n.close()


@pytest.fixture
def threaded() -> Iterator[NodeUnderTest]:
    """Real worker pools: calls run concurrently with the network thread."""
    n = NodeUnderTest(inline=False, workers=4)
    yield n
    n.close()


def _no_space(fd: int, data: bytes) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# -- actors ------------------------------------------------------------------------


def test_calls_on_one_object_run_in_arrival_order(threaded: NodeUnderTest) -> None:
    n = threaded
    for oid in ("a", "b", "c"):
        n.create(oid)
    rids = [(oid, i, n.call(oid, "add", i)) for i in range(1, 41) for oid in ("a", "b", "c")]
    for _, i, rid in rids:
        assert n.result(rid) == i * (i + 1) // 2  # every earlier call on the object ran before
    for oid in ("a", "b", "c"):
        res = n.node.residents.get(oid)
        assert res is not None and res.instance.seen == list(range(1, 41))


def test_a_long_call_holds_its_object_not_the_node(threaded: NodeUnderTest) -> None:
    n = threaded
    n.create("slow")
    n.create("fast")
    entered, opened = gate("hold")
    blocked = n.call("slow", "wait", "hold")
    assert entered.wait(5)
    behind = n.call("slow", "add", 1)  # queued behind the running call
    assert n.result(n.call("fast", "add", 7)) == 7  # another object runs meanwhile
    assert n.replies(behind) == []
    opened.set()
    assert n.result(blocked) == 100
    assert n.result(behind) == 101


def test_busy_when_the_mailbox_is_full_and_the_refused_id_runs_later() -> None:
    n = NodeUnderTest(inline=False, workers=2, max_queue=1)
    try:
        n.create("o")
        entered, opened = gate("busy")
        first = n.call("o", "wait", "busy")
        assert entered.wait(5)
        queued = n.call("o", "add", 1)
        refused = n.call("o", "add", 2, rid="r-busy")
        err = n.error(refused)
        assert err["code"] == "busy" and err["node"] == "n1"
        opened.set()
        assert n.result(first) == 100 and n.result(queued) == 101
        again = n.call("o", "add", 2, rid="r-busy")  # not remembered: runs now
        wait_until(lambda: len(n.replies(again)) == 2)
        assert n.replies(again)[-1]["value"] == 103
    finally:
        n.close()


# -- exactly-once --------------------------------------------------------------------


def test_a_resent_request_gets_the_first_outcome(n1: NodeUnderTest) -> None:
    n1.create("o")
    assert n1.result(n1.call("o", "add", 5, rid="r1")) == 5
    n1.call("o", "add", 5, rid="r1")
    assert [r["value"] for r in n1.replies("r1")] == [5, 5]
    assert n1.result(n1.call("o", "get")) == 5  # ran once
    n1.call("o", "fail", rid="r2")
    n1.call("o", "fail", rid="r2")  # an error outcome is replayed too
    assert [r["error"]["code"] for r in n1.replies("r2")] == ["method_error"] * 2


def test_a_resend_while_running_gets_no_second_reply(threaded: NodeUnderTest) -> None:
    n = threaded
    n.create("o")
    entered, opened = gate("resend")
    n.call("o", "wait", "resend", rid="r-run")
    assert entered.wait(5)
    n.call("o", "wait", "resend", rid="r-run")  # redelivered while it runs
    opened.set()
    assert n.result("r-run") == 100
    # anything queued behind would have run before this readonly call
    assert n.result(n.call("o", "get")) == 100
    assert len(n.replies("r-run")) == 1


def test_readonly_calls_are_not_remembered(n1: NodeUnderTest) -> None:
    n1.create("o")
    n1.call("o", "get", rid="r-ro")
    n1.call("o", "add", 1)
    n1.call("o", "get", rid="r-ro")
    assert [r["value"] for r in n1.replies("r-ro")] == [0, 1]


def test_calls_refused_before_running(n1: NodeUnderTest) -> None:
    n1.create("o")
    assert n1.error(n1.call("nope", "add"))["code"] == "object_not_here"
    assert n1.error(n1.call("o", "missing"))["code"] == "unknown_method"
    assert n1.error(n1.call("o", "add", 1, 2, 3))["code"] == "bad_arguments"
    rid = n1._send(n1.topics.node_call("n1"), {"method": "add"})
    assert n1.error(rid)["code"] == "bad_request"  # no obj
    rid = n1._send(n1.topics.node_call("n1"), {"method": "add", "obj": "o", "timeout_ms": 0})
    assert n1.error(rid)["code"] == "deadline_expired"
    assert n1.result(n1.call("o", "get")) == 0  # neither ran


# -- durability ----------------------------------------------------------------------


def test_a_failed_write_is_rolled_back_and_the_id_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path))
    try:
        n.create("o")
        assert n.result(n.call("o", "add", 1)) == 1
        monkeypatch.setattr(store_mod, "_write_all", _no_space)
        err = n.error(n.call("o", "add", 5, rid="r-disk"))
        assert err["code"] == "storage"
        monkeypatch.undo()
        assert n.result(n.call("o", "get")) == 1  # the call was undone
        n.call("o", "add", 5, rid="r-disk")  # not remembered as done: runs now
        assert n.replies("r-disk")[-1]["value"] == 6
    finally:
        n.close()


def test_a_restarted_node_replays_its_journal_and_its_outcomes(tmp_path: Path) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path))
    n.create("o", kwargs={"start": 10})
    for i in range(3):
        n.call("o", "add", 1, rid=f"r{i}")
    n.close()
    again = NodeUnderTest(state_dir=str(tmp_path))
    try:
        assert again.result(again.call("o", "get")) == 13
        again.call("o", "add", 1, rid="r1")  # answered from the journal
        assert again.replies("r1")[0]["value"] == 12
        assert again.result(again.call("o", "get")) == 13
    finally:
        again.close()


def test_a_control_change_that_cannot_be_persisted_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path))
    try:
        n.create("o", aliases=["first"])
        monkeypatch.setattr(store_mod, "_write_all", _no_space)
        assert n.error(n.ctl("aliases", obj="o", aliases=["second"]))["code"] == "storage"
        topic = n.topics.metrics("d1")
        assert n.error(n.ctl("bind", obj="o", topic=topic, method="ingest"))["code"] == "storage"
        assert topic not in n.transport.subscriptions
        monkeypatch.undo()
        [entry] = n.result(n.ctl("list"))
        assert entry["aliases"] == ["first"] and entry["feeds"] == {}
    finally:
        n.close()


# -- control -------------------------------------------------------------------------


def test_control_argument_errors_are_bad_request(n1: NodeUnderTest) -> None:
    assert n1.error(n1.ctl("create", obj="o", cls=TALLY, colour="red"))["code"] == "bad_request"
    assert n1.error(n1.ctl("create", cls=TALLY))["code"] == "bad_request"  # no obj
    assert n1.error(n1.ctl("create", obj=5, cls=TALLY))["code"] == "bad_request"
    assert n1.error(n1.ctl("create", obj="o", cls=TALLY, args=7))["code"] == "bad_request"
    assert n1.error(n1.ctl("create", obj="o", cls=TALLY, replicas="n2"))["code"] == "bad_request"
    assert n1.error(n1.ctl("create", obj="o", cls=TALLY, aliases=[1]))["code"] == "bad_request"
    assert n1.error(n1.ctl("create", obj="o", cls="x.Nope"))["code"] == "unknown_class"
    err = n1.error(n1.ctl("create", obj="o", cls=TALLY, kwargs={"colour": 1}))
    assert err["code"] == "bad_arguments"  # the class's own signature
    assert n1.error(n1.ctl("explode"))["code"] == "unknown_method"
    n1.create("o")
    bad_topic = n1.ctl("bind", obj="o", topic="elsewhere", method="ingest")
    assert n1.error(bad_topic)["code"] == "bad_request"
    assert n1.result(n1.ctl("list")) == [
        {
            "id": "o",
            "class": TALLY,
            "feeds": {},
            "role": "primary",
            "replicas": [],
            "aliases": [],
            "quarantined": False,
            "reason": None,
            "owner": "anonymous",
            "grants": [],
        }
    ]


def test_a_server_side_failure_is_method_error_not_bad_request(tmp_path: Path) -> None:
    """cloudpickle raises TypeError for an unpicklable instance: the node's
    fault (or the class's), never the caller's."""
    n = NodeUnderTest(state_dir=str(tmp_path))
    try:
        err = n.error(n.ctl("create", obj="o", cls=LOCKED))
        assert err["code"] == "method_error" and err["type"] == "TypeError", err
        assert n.node.residents.get("o") is None
    finally:
        n.close()


def test_create_is_idempotent_and_delete_forgets(n1: NodeUnderTest) -> None:
    first = n1.create("o", kwargs={"start": 3})
    assert first == {"id": "o", "class": TALLY, "node": "n1", "replicas": []}
    assert n1.create("o") == {"id": "o", "class": TALLY, "node": "n1"}
    assert n1.result(n1.call("o", "get")) == 3
    assert n1.result(n1.ctl("delete", obj="o")) == {"id": "o", "deleted": True}
    assert n1.error(n1.ctl("delete", obj="o"))["code"] == "object_not_here"
    assert n1.error(n1.call("o", "get"))["code"] == "object_not_here"


# -- feeds ---------------------------------------------------------------------------


def test_feed_samples_are_reordered_and_acked_once_processed(n1: NodeUnderTest) -> None:
    n1.create("o")
    topic = n1.topics.metrics("d1")
    n1.result(n1.ctl("bind", obj="o", topic=topic, method="ingest"))
    assert n1.transport.subscriptions[topic] == 1
    res = n1.node.residents.get("o")
    assert res is not None
    m1 = n1.sample("d1", {"seq": 1})
    m3 = n1.sample("d1", {"seq": 3})  # 2 is missing: held
    assert res.instance.seen == [1] and n1.sample_acks() == [m1]
    m2 = n1.sample("d1", {"seq": 2})
    assert res.instance.seen == [1, 2, 3]
    assert n1.sample_acks() == [m1, m2, m3]
    bad = n1.sample("d1", b"\xff\xfe not cbor")  # acknowledged and dropped
    assert n1.sample_acks()[-1] is bad and res.instance.seen == [1, 2, 3]
    n1.result(n1.ctl("unbind", obj="o", topic=topic))
    assert topic not in n1.transport.subscriptions


def test_a_gap_that_does_not_fill_is_released_after_the_hold() -> None:
    n = NodeUnderTest(feed_hold=0.0)
    try:
        n.create("o")
        n.result(n.ctl("bind", obj="o", topic=n.topics.metrics("d"), method="ingest"))
        n.sample("d", {"seq": 1})
        n.sample("d", {"seq": 5})
        res = n.node.residents.get("o")
        assert res is not None and res.instance.seen == [1]
        n.node.tick()
        assert res.instance.seen == [1, 5]
        assert len(n.sample_acks()) == 2
    finally:
        n.close()


def test_a_sample_is_acked_only_after_it_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path), held_retry=0.0)
    try:
        n.create("o")
        n.result(n.ctl("bind", obj="o", topic=n.topics.metrics("d"), method="ingest"))
        real_write = store_mod._write_all
        acked_when_journaled: list[int] = []
        store = n.node.store
        assert store is not None
        append = store.append

        def journal(*args: Any) -> int:
            acked_when_journaled.append(len(n.sample_acks()))
            return append(*args)

        monkeypatch.setattr(store, "append", journal)
        m1 = n.sample("d", {"seq": 1})
        assert acked_when_journaled == [0] and n.sample_acks() == [m1]
        monkeypatch.setattr(store_mod, "_write_all", _no_space)
        n.sample("d", {"seq": 2})  # cannot be journaled: undone, held, not acked
        n.sample("d", {"seq": 3})  # held behind it, in order
        res = n.node.residents.get("o")
        assert res is not None and res.instance.seen == [1]
        assert n.sample_acks() == [m1]
        monkeypatch.setattr(store_mod, "_write_all", real_write)  # the disk has room again
        n.node.tick()  # held samples are retried, first in line
        assert res.instance.seen == [1, 2, 3]
        assert len(n.sample_acks()) == 3
    finally:
        n.close()


# -- replication and fencing ---------------------------------------------------------


def test_a_sync_is_refused_by_a_primary(n1: NodeUnderTest) -> None:
    n1.create("o")
    res = n1.node.residents.get("o")
    assert res is not None
    state = dumps_state(res.record())
    err = n1.error(n1.sync(obj="o", cls=TALLY, primary="n0", state=state))
    assert err["code"] == "object_not_here" and err["fenced"] is True
    entry = {"seq": 1, "method": "add", "args": [1], "kwargs": {}, "rid": "x", "ok": True}
    err = n1.error(n1.sync(obj="o", cls=TALLY, primary="n0", apply={**entry, "value": 1}))
    assert err["fenced"] is True
    assert n1.result(n1.call("o", "get")) == 0  # untouched
    assert n1.error(n1.sync(cls=TALLY))["code"] == "bad_request"  # no obj


@pytest.fixture
def pair() -> Iterator[tuple[NodeUnderTest, NodeUnderTest]]:
    """n1 and n2 over one FakeBus, n1 holding "o" with n2 as its replica."""
    bus = FakeBus()
    n1 = NodeUnderTest("n1", bus=bus, inline=False, workers=2)
    n2 = NodeUnderTest("n2", bus=bus, inline=False, workers=2)
    try:
        wait_until(lambda: n1.node.liveness.is_online("n2"))
        n1.create("o", replicas=["n2"])
        yield n1, n2
    finally:
        n1.close()
        n2.close()


def test_a_replica_applies_calls_and_is_promoted(
    pair: tuple[NodeUnderTest, NodeUnderTest],
) -> None:
    n1, n2 = pair
    for i in range(3):
        n1.result(n1.call("o", "add", 1, rid=f"r{i}"))
    copy = n2.node.residents.get("o")
    assert copy is not None and copy.role == "replica" and copy.seq == 3
    assert copy.instance.value == 3
    assert n2.error(n2.call("o", "get"))["code"] == "object_not_here"  # a replica
    promoted = n2.result(n2.ctl("promote", obj="o", replicas=[]))
    assert promoted == {"id": "o", "node": "n2", "replicas": []}
    n2.call("o", "add", 1, rid="r2")  # a client's resend to the new primary
    assert n2.replies("r2")[0]["value"] == 3  # the outcome came with the replica
    # the old primary (back from a partition) is fenced by its first sync
    err = n1.error(n1.call("o", "add", 1))
    assert err["code"] == "object_not_here" and err["node"] == "n1"
    assert n1.node.residents.get("o") is None  # its stale copy dropped
    assert n2.result(n2.call("o", "get")) == 3


def test_a_replica_behind_gets_the_whole_state(
    pair: tuple[NodeUnderTest, NodeUnderTest],
) -> None:
    n1, n2 = pair
    n1.result(n1.call("o", "add", 1))
    n2.result(n2.ctl("delete", obj="o"))  # the replica lost its copy
    assert n1.result(n1.call("o", "add", 1)) == 2
    copy = n2.node.residents.get("o")
    assert copy is not None and copy.seq == 2 and copy.instance.value == 2


# -- status and pools ----------------------------------------------------------------


def test_status_manifest_and_will(n1: NodeUnderTest) -> None:
    [first] = n1.statuses()
    assert first["state"] == "online" and first["objects"] == 0
    assert first["quarantined"] == [] and TALLY in first["classes"]
    topic, payload, retain = n1.transport.will or ("", b"", False)
    assert topic == n1.topics.node_status("n1") and retain
    assert decode(payload) == {"state": "offline", "node": "n1"}
    n1.create("o")
    n1.node.tick()
    assert n1.statuses()[-1]["objects"] == 1
    n1.node.tick()
    assert len(n1.statuses()) == 2  # unchanged: not published again


def test_pool_calls_run_on_the_shared_instance(n1: NodeUnderTest) -> None:
    topic = n1.topics.pool_call("tests._nodekit.Echo")
    assert n1.topics.pool_share("tests._nodekit.Echo") in n1.transport.subscriptions
    rid = n1._send(topic, {"method": "echo", "args": [[1, "x"]]})
    assert n1.result(rid) == [1, "x"]


def test_other_messages_are_acked_on_receipt(n1: NodeUnderTest) -> None:
    before = len(n1.transport.acks)
    n1.ctl("list")
    msg = n1.transport.inject(n1.topics.node_call("n1"), b"\x00junk", qos=1)
    assert len(n1.transport.acks) == before + 2 and n1.transport.acks[-1] is msg


# -- races between a call's commit and what runs beside it ---------------------------


def test_a_control_change_waits_for_the_call_that_is_changing_the_object(
    tmp_path: Path,
) -> None:
    """A control request (here the gateway pushing aliases) runs beside the
    object's mailbox; it must not checkpoint the object while a mutating call
    is half done (a checkpoint taken then and the journal it truncates lost
    acknowledged calls, or replayed one twice)."""
    n = NodeUnderTest(state_dir=str(tmp_path), inline=False)
    try:
        n.create("o")
        entered, release = gate("busy-commit")
        call = n.call("o", "wait", "busy-commit")
        assert entered.wait(5)
        push = n.ctl("aliases", obj="o", aliases=["renamed"])
        with pytest.raises(AssertionError):  # no reply while the call changes the object
            n.reply(push, timeout=0.3)
        release.set()
        assert n.result(call) == 100
        assert n.result(push) == {"id": "o", "aliases": ["renamed"]}
        for i in range(20):
            n.call("o", "add", 1, rid=f"after-{i}")
        wait_until(lambda: all(n.replies(f"after-{i}") for i in range(20)))
    finally:
        n.close()
    again = NodeUnderTest(state_dir=str(tmp_path))
    try:
        assert again.result(again.call("o", "get")) == 120  # every acknowledged call, once
    finally:
        again.close()


def test_a_resend_during_the_journal_write_gets_no_reply_and_never_a_false_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome is stored before the journal write (the checkpoint needs
    it) but the id stays in flight until the write (and the replicas) are
    done: a resend meanwhile gets no reply, and when the write fails it gets
    none that claims success."""
    n = NodeUnderTest(state_dir=str(tmp_path), inline=False)
    try:
        n.create("o")
        writing, fail_now = threading.Event(), threading.Event()
        real = store_mod._write_all

        def slow_then_full(fd: int, data: bytes) -> None:
            writing.set()
            fail_now.wait(5)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_mod, "_write_all", slow_then_full)
        n.call("o", "add", 5, rid="r-slow")
        assert writing.wait(5)
        n.call("o", "add", 5, rid="r-slow")  # the resend, while the write is under way
        fail_now.set()
        assert n.reply("r-slow")["error"]["code"] == "storage"
        monkeypatch.setattr(store_mod, "_write_all", real)
        assert [r["kind"] for r in n.replies("r-slow")] == ["error"]  # no false success
        n.call("o", "add", 5, rid="r-slow")  # later, the disk back: it runs, once
        wait_until(lambda: len(n.replies("r-slow")) == 2)
        assert n.replies("r-slow")[-1]["value"] == 5
    finally:
        n.close()
