"""Bounded residency (continuum_node._eviction): idle objects are evicted to
the state dir, those reloaded and unused since first, then the least recently
used, and reloaded on their next call or feed sample, losing nothing; a
SIGKILL while evicting loses nothing either."""

from __future__ import annotations

import errno
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import continuum_node._store as store_mod
import paho.mqtt.client as paho
import pytest
from continuum_node._resident import Resident

from continuum_mqtt.service import Request, decode, encode

from ._cluster import Cluster, start_durable, wait_for, wait_status
from ._nodekit import NodeUnderTest, gate

KEEPER = "tests._nodekit.Keeper"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeUnderTest]:
    n = NodeUnderTest(state_dir=str(tmp_path), max_resident=2)
    yield n
    if n.node.store is not None and not n.node._stopping.is_set():
        n.close()


def _res(n: NodeUnderTest, oid: str) -> Resident:
    res = n.node.residents.get(oid)
    assert res is not None
    return res


def _resident(n: NodeUnderTest) -> dict[str, bool]:
    return {e["id"]: e.get("resident", True) for e in n.result(n.ctl("list"))}


def _five(n: NodeUnderTest) -> None:
    for i in range(5):
        n.create(f"o{i}", kwargs={"start": i * 10})
        n.result(n.call(f"o{i}", "add", i))


# -- in process ----------------------------------------------------------------------
def test_the_least_recently_used_beyond_the_budget_are_evicted(node: NodeUnderTest) -> None:
    _five(node)
    node.result(node.call("o1", "add", 0))  # o1 used last but o4
    assert node.node.eviction.tick() == 3
    assert _resident(node) == {"o0": False, "o1": True, "o2": False, "o3": False, "o4": True}
    assert _res(node, "o0").instance is None
    rows = node.result(node.ctl("residency"))
    assert sorted(oid for oid, resident, _ in rows if not resident) == ["o0", "o2", "o3"]
    used = {oid: at for oid, _, at in rows}
    assert used["o1"] > used["o0"]  # o1 ran last but o4
    assert node.result(node.ctl("residency", objs=["o0", "nope"])) == [["o0", False, used["o0"]]]
    assert node.node.eviction.tick() == 0  # within the budget now


def test_a_reloaded_object_with_no_job_since_goes_before_the_least_recently_used(
    node: NodeUnderTest,
) -> None:
    _five(node)
    assert node.node.eviction.tick() == 3  # o3 and o4 were used last: they stay
    node.result(node.call("o0", "get"))  # reloaded: on probation
    assert _res(node, "o0").probation and not _res(node, "o4").probation
    assert node.node.eviction.tick() == 1
    # under LRU o3 would go (used before o4 and o0); on probation, o0 goes
    assert _resident(node) == {"o0": False, "o1": False, "o2": False, "o3": True, "o4": True}
    node.result(node.call("o1", "get"))  # reloaded, then used again while resident
    node.result(node.call("o1", "get"))
    assert not _res(node, "o1").probation
    assert node.node.eviction.tick() == 1
    assert _resident(node) == {"o0": False, "o1": True, "o2": False, "o3": False, "o4": True}


def test_evicted_objects_reload_on_their_next_call_with_their_state(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    _five(node)
    node.node.eviction.tick()
    for i in range(5):
        assert node.result(node.call(f"o{i}", "get")) == i * 11
        assert node.result(node.call(f"o{i}", "add", 1)) == i * 11 + 1
        node.node.eviction.tick()
    assert node.node.eviction.reloads >= 3
    node.close()
    again = NodeUnderTest(state_dir=str(tmp_path))  # what the files hold
    try:
        assert [again.result(again.call(f"o{i}", "get")) for i in range(5)] == [
            i * 11 + 1 for i in range(5)
        ]
    finally:
        again.close()


def test_a_resend_to_an_evicted_object_gets_its_first_outcome(node: NodeUnderTest) -> None:
    node.create("a")
    assert node.result(node.call("a", "add", 5, rid="x:1")) == 5
    assert node.node.eviction.evict(_res(node, "a"))
    node.call("a", "add", 5, rid="x:1")
    assert [r["value"] for r in node.replies("x:1")] == [5, 5]  # answered again, not run
    assert node.result(node.call("a", "get")) == 5


def test_a_feed_sample_to_an_evicted_object_is_acknowledged_once_durable(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    node.create("s")
    topic = node.topics.metrics("d1")
    node.result(node.ctl("bind", obj="s", topic=topic, method="ingest"))
    assert node.node.eviction.evict(_res(node, "s"))
    journal = tmp_path / "objects" / "s.journal"
    before = journal.stat().st_size if journal.exists() else 0
    node.sample("d1", {"seq": 1})
    assert [m.topic for m in node.sample_acks()] == [topic]
    assert journal.stat().st_size > before  # journaled before the ack
    assert _res(node, "s").instance.seen == [1]


def test_a_sample_to_an_evicted_object_that_cannot_be_made_durable_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path), held_retry=0)
    try:
        n.create("h")
        n.result(n.ctl("bind", obj="h", topic=n.topics.metrics("d3"), method="ingest"))
        assert n.node.eviction.evict(_res(n, "h"))

        def no_space(fd: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_mod, "_write_all", no_space)
        n.sample("d3", {"seq": 1})
        assert n.sample_acks() == []  # reloaded and run, but not durable: held
        monkeypatch.undo()
        n.node.tick()
        assert len(n.sample_acks()) == 1
        assert _res(n, "h").instance.seen == [1]
    finally:
        n.close()


def test_a_restart_loads_only_the_budget(tmp_path: Path) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path))
    _five(n)
    n.close()
    again = NodeUnderTest(state_dir=str(tmp_path), max_resident=2)
    try:
        assert sum(_resident(again).values()) == 2  # the others' stubs only
        assert [again.result(again.call(f"o{i}", "get")) for i in range(5)] == [
            i * 11 for i in range(5)
        ]
    finally:
        again.close()


def test_control_changes_to_an_evicted_object_keep_its_state(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    node.create("c", kwargs={"start": 7}, owner="alice")
    assert node.node.eviction.evict(_res(node, "c"))
    topic = node.topics.metrics("d2")
    node.result(node.ctl("bind", obj="c", topic=topic, method="ingest"))
    node.result(node.ctl("aliases", obj="c", aliases=["seven"]))
    assert node.node.eviction.evict(_res(node, "c"))
    node.close()
    again = NodeUnderTest(state_dir=str(tmp_path))
    try:
        [entry] = again.result(again.ctl("list"))
        assert entry["feeds"] == {topic: "ingest"}
        assert entry["aliases"] == ["seven"]
        assert entry["owner"] == "alice"
        assert again.reply_as("alice", again.call_as("alice", "c", "get"))["value"] == 7
    finally:
        again.close()


def test_a_busy_object_is_not_evicted(node: NodeUnderTest) -> None:
    node.create("b")
    res = _res(node, "b")
    with node.node.eviction.pinned(res):  # a job runs on it
        assert not node.node.eviction.evict(res)
    with res.state:  # a control change is being made (another thread would hold it)
        pass
    assert node.node.eviction.evict(res)


def test_a_running_call_keeps_its_object(tmp_path: Path) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path), max_resident=1, inline=False)
    try:
        n.create("r")
        entered, release = gate("evict-running")
        rid = n.call("r", "wait", "evict-running")
        assert entered.wait(10)
        n.create("other")
        n.node.eviction.tick()  # 2 loaded, 1 allowed: "r" is busy, "other" goes
        assert _resident(n) == {"r": True, "other": False}
        release.set()
        assert n.result(rid) == 100
    finally:
        n.close()


def test_a_long_journal_is_checkpointed_before_eviction(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    node.create("j")
    node.node.eviction.replay = 3
    for _ in range(5):
        node.result(node.call("j", "add", 1))
    journal = tmp_path / "objects" / "j.journal"
    assert journal.stat().st_size > 0
    assert node.node.eviction.evict(_res(node, "j"))
    assert journal.stat().st_size == 0  # all in the checkpoint: a reload replays nothing
    assert node.result(node.call("j", "get")) == 5


def test_an_object_whose_files_break_while_evicted_is_quarantined(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    node.create("q")
    assert node.node.eviction.evict(_res(node, "q"))
    snap = tmp_path / "objects" / "q.snapshot"
    snap.write_bytes(b"\0" * snap.stat().st_size)
    err = node.error(node.call("q", "get"))
    assert err["code"] == "unavailable"
    assert node.node.residents.get("q") is None
    assert node.node.residents.quarantine.get("q") is not None


def test_status_shows_resident_and_evicted_counts(node: NodeUnderTest) -> None:
    _five(node)
    node.node.eviction.tick()
    node.node.status.refresh()
    status = node.statuses()[-1]
    assert (status["objects"], status["resident"], status["evicted"]) == (5, 2, 3)


def test_a_memory_budget_evicts_a_tenth_a_tick(tmp_path: Path) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path), memory_budget=1 << 20)
    n.node.eviction.measure = lambda: 2 << 20  # over the budget whatever is evicted
    try:
        for i in range(20):
            n.create(f"m{i}")
        assert n.node.eviction.tick() == 2
        assert sum(_resident(n).values()) == 18
        # RSS stays where it was (the allocator kept the memory): no more evictions,
        assert n.node.eviction.tick() == 0
        n.node.eviction.measure = lambda: 8 << 20  # until it grows again (past the slack)
        assert n.node.eviction.tick() == 1
        n.node.eviction.measure = lambda: 1 << 19  # under the budget: nothing
        assert n.node.eviction.tick() == 0
        n.node.eviction.measure = lambda: 2 << 20  # over it again: a pass at once
        assert n.node.eviction.tick() == 1
    finally:
        n.close()


def test_under_the_memory_budget_the_most_recently_used_evicted_come_back(tmp_path: Path) -> None:
    n = NodeUnderTest(state_dir=str(tmp_path), memory_budget=10 << 20)
    ev = n.node.eviction
    try:
        for i in range(20):
            n.create(f"m{i}", kwargs={"start": i})
        for i in range(20):  # m19 used last
            n.result(n.call(f"m{i}", "add", 1))
        ev.measure = lambda: 11 << 20  # over the budget: a tenth goes, the least recently used
        assert ev.tick() == 2
        assert [k for k, v in _resident(n).items() if not v] == ["m0", "m1"]
        assert n.result(n.call("m5", "add", 0)) == 6  # a job since: m5 is used later than m0, m1
        ev.measure = lambda: 9 << 20  # under the budget but not by a tenth of it: no refill
        ev.refill_quiet = 0
        assert ev.tick() == 0 and ev.refills == 0
        ev.measure = lambda: 5 << 20  # well under it, but a pass evicted just now: not yet
        ev.refill_quiet = 60
        assert ev.tick() == 0 and ev.refills == 0
        assert n.node.eviction.evict(_res(n, "m5"))
        ev.refill_quiet = 0  # quiet long enough: the most recently used evicted first
        ev.refill_slice = 1e-9  # (a slice that fits one reload)
        ev.tick()
        assert ev.refills == 1 and [k for k, v in _resident(n).items() if not v] == ["m0", "m1"]
        assert _res(n, "m5").probation  # no job on it since: the first to go again
        ev.refill_slice = 10.0
        ev.tick()
        assert ev.refills == 3 and all(_resident(n).values())
        assert (ev.reloads, n.result(n.call("m0", "add", 0))) == (0, 1)  # nothing lost
        assert ev.reloads == 0  # it was loaded already
    finally:
        n.close()


def _all_evicted(tmp_path: Path, count: int, **options: Any) -> NodeUnderTest:
    """A node with a memory budget and ``count`` objects m0..., all evicted,
    m<count-1> used last; it refills at its next tick (no quiet, a long slice)."""
    n = NodeUnderTest(state_dir=str(tmp_path), **options)
    ev = n.node.eviction
    ev.refill_quiet, ev.refill_slice = 0, 10.0
    for i in range(count):
        n.create(f"m{i}")
    for i in range(count):
        assert ev.evict(_res(n, f"m{i}"))
    return n


def test_a_refill_stops_at_the_ceiling(tmp_path: Path) -> None:
    n = _all_evicted(tmp_path, 40, memory_budget=100 << 20)
    ev = n.node.eviction
    try:
        reads = iter(range(89, 200))  # RSS grows a MiB a reading; the ceiling is 90 MiB
        ev.measure = lambda: next(reads) << 20
        ev.tick()  # reads 89 at the tick, 90 after 16 reloads
        assert ev.refills == 16
        assert sum(not v for v in _resident(n).values()) == 40 - ev.refills
    finally:
        n.close()


def test_a_refill_keeps_within_max_resident_and_skips_a_busy_object(tmp_path: Path) -> None:
    n = _all_evicted(tmp_path, 6, memory_budget=100 << 20, max_resident=4)
    ev = n.node.eviction
    ev.measure = lambda: 10 << 20  # far under the budget
    try:
        busy, held, release = _res(n, "m5"), threading.Event(), threading.Event()

        def hold() -> None:  # a change in progress on m5 (another thread holds its state)
            with busy.state:
                held.set()
                release.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        held.wait(10)
        try:
            ev.tick()  # m5 used last but busy: skipped, not waited for
        finally:
            release.set()
            t.join()
        assert ev.refills == 4 and not _resident(n)["m5"]
        assert sum(_resident(n).values()) == 4  # no more than --max-resident
        ev.tick()
        assert ev.refills == 4
    finally:
        n.close()


def test_a_refill_that_cannot_load_an_object_quarantines_it_and_backs_off(tmp_path: Path) -> None:
    n = _all_evicted(tmp_path, 5, memory_budget=100 << 20)
    ev = n.node.eviction
    ev.measure = lambda: 10 << 20
    try:
        snap = tmp_path / "objects" / "m4.snapshot"  # m4, used last, is the first tried
        snap.write_bytes(b"\0" * snap.stat().st_size)
        ev.tick()
        assert ev.refills == 0  # the pass stopped at the failure
        assert n.node.residents.quarantine.get("m4") is not None
        ev.tick()  # backing off: nothing reloaded ahead of a job meanwhile
        assert ev.refills == 0 and _res(n, "m3").instance is None
        assert n.result(n.call("m0", "add", 1)) == 1  # a job still reloads its object
        ev._refill_failed = -float("inf")  # the backoff over
        ev.tick()
        assert ev.refills == 3
    finally:
        n.close()


def test_a_node_without_a_state_dir_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    n = NodeUnderTest(max_resident=1)
    try:
        n.create("x")
        n.create("y")
        with caplog.at_level(logging.WARNING, "continuum.node.eviction"):
            assert n.node.eviction.tick() == 0
        assert "cannot evict" in caplog.text
        assert _resident(n) == {"x": True, "y": True}
    finally:
        n.close()


# -- real processes ------------------------------------------------------------------
def _node_list(c: Cluster, client: object) -> list[dict[str, Any]]:
    fut = client._requester.send(c.topics.node_ctl("n1"), Request("list", [], {}), 10.0)  # type: ignore[attr-defined]
    return list(fut.result())


def test_five_objects_on_a_node_that_keeps_two(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    start_durable(c, "n1", "--max-resident", "2", modules=("tests._nodekit",))
    with c.client() as client:
        objs = [client.stub(KEEPER).create(name=f"k{i}", alias=f"k{i}") for i in range(5)]
        for rnd in range(3):
            for i, o in enumerate(objs):
                assert o.add(i + 1) == (rnd + 1) * (i + 1)
        status = wait_status(
            c.url, c.topics.node_status("n1"), "online", pred=lambda s: s.get("evicted") == 3
        )
        assert (status["objects"], status["resident"]) == (5, 2)
        wait_for(lambda: client.nodes()[0].get("evicted") == 3, timeout=30)  # the gateway's view
        # (a control change, such as the gateway's alias push when it first sees
        # the node, reloads an object for a tick: the budget is met again after)
        wait_for(
            lambda: (
                sorted(e.get("resident", True) for e in _node_list(c, client))
                == [False, False, False, True, True]
            ),
            timeout=30,
        )
        # client.objects(residency=True): the gateway asks the node
        wait_for(
            lambda: (
                sorted(o["resident"] for o in client.objects(residency=True))
                == [False, False, False, True, True]
            ),
            timeout=30,
        )
        assert all("resident" not in o for o in client.objects())
        assert all(o["used"] >= o["created"] - 1 for o in client.objects(residency=True))
        assert [o.get() for o in objs] == [3 * (i + 1) for i in range(5)]

        # a sample to an evicted object: processed, acknowledged once durable
        sink = objs[0]
        client.bind_metrics(sink, "dev-e", "ingest")
        wait_for(
            lambda: (
                not next(e for e in _node_list(c, client) if e["aliases"] == ["k0"]).get(
                    "resident", True
                )
            )
        )
        host, port = c.url.removeprefix("mqtt://").split(":")
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev-e", protocol=paho.MQTTv5)
        pub.connect(host, int(port))
        pub.loop_start()
        try:
            for seq in range(1, 21):
                pub.publish(
                    c.topics.metrics("dev-e"), encode({"dev": "dev-e", "seq": seq}), qos=1
                ).wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()
        wait_for(lambda: len(sink.samples()) >= 20, timeout=30)
        assert sink.samples() == list(range(1, 21))
    # the acknowledged samples are in its files: a SIGKILL loses none
    c.stop("n1", signal.SIGKILL)
    with c.client() as client:  # meanwhile its objects' residency is unknown
        wait_for(
            lambda: (
                {(o["resident"], o["used"]) for o in client.objects(residency=True)}
                == {(None, None)}
            ),
            timeout=30,
        )
    start_durable(c, "n1", modules=("tests._nodekit",))
    with c.client() as client:
        assert client.get("k0").samples() == list(range(1, 21))


def test_sigkill_while_evicting_loses_nothing(bare_cluster: Cluster, tmp_path: Path) -> None:
    c = bare_cluster
    slow = tmp_path / "slow"
    slow.mkdir()
    c.env["CONTINUUM_TEST_SLOW_PICKLE"] = str(slow)
    c.start_gateway()
    start_durable(c, "n1", "--max-resident", "1", modules=("tests._nodekit",))
    with c.client() as client:
        a = client.stub(KEEPER).create(name="a", alias="a")
        b = client.stub(KEEPER).create(name="b", alias="b")
        (slow / "a").touch()  # from now on a checkpoint of "a" hangs
        acked = [a.add(1) for _ in range(70)]  # journaled (no checkpoint)
        assert acked[-1] == 70
        assert b.add(5) == 5  # "b" loaded again: "a" (least recently used) goes, checkpointed
        wait_for(lambda: (slow / "a.in").exists(), timeout=30)
    c.stop("n1", signal.SIGKILL)  # in the middle of evicting "a"
    (slow / "a").unlink()
    start_durable(c, "n1", "--max-resident", "1", modules=("tests._nodekit",))
    with c.client() as client:
        assert client.get("a").get() == 70
        assert client.get("b").get() == 5
        assert client.get("a").add(1) == 71


def test_status_decodes(node: NodeUnderTest) -> None:
    """The manifest stays CBOR-encodable with the new counts."""
    node.create("z")
    node.node.status.announce()
    assert decode(encode(node.statuses()[-1]))["resident"] == 1
