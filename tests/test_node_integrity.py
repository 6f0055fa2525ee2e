"""A durable node's files, damaged or out of space: nothing acknowledged is lost,
nothing unacknowledged is claimed, damage is repaired or quarantined loudly.

Integration tests run real nodes on a real broker and damage real files; the
node is addressed directly (control and call topics): these are about the
node's own files, not the directory."""

from __future__ import annotations

import contextlib
import errno
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_node import _checkpoint, _journal
from continuum_node._repair import RepairError, drop, release
from continuum_node._store import StateDirInUse, Store

import continuum_mqtt
from continuum_mqtt._errors import StorageError, Unavailable
from continuum_mqtt._protocol import Request

from ._cluster import REPO, Cluster, start_durable, wait_for, wait_status
from ._tmpfs import fill, tmpfs

COUNTER = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"


# -- fast unit tests: formats and the store ---------------------------------------
def _entry(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "method": "add",
        "args": [1],
        "kwargs": {},
        "rid": f"r{seq}",
        "ok": True,
        "value": seq,
    }


def _journal_bytes(*seqs: int) -> bytes:
    return b"".join(_journal.frame(cbor2.dumps(_entry(s))) for s in seqs)


def _frames(data: bytes) -> list[tuple[int, int]]:
    """(start of the body, its length) of each frame."""
    out, pos = [], 0
    while pos < len(data):
        length, _ = struct.unpack_from(">II", data, pos)
        out.append((pos + 8, length))
        pos += 8 + length
    return out


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def test_checkpoint_header_refuses_damage_before_unpickling() -> None:
    body = b"\x80\x05 some pickle"
    data = _checkpoint.pack(body)
    assert _checkpoint.unpack(data) == (body, False)
    assert _checkpoint.unpack(body) == (body, True)  # a legacy, unframed checkpoint
    for bad, why in [
        (b"", "empty"),
        (data[:10], "truncated"),
        (data[:-3], "truncated"),
        (data + b"x", "longer"),
        (_flip(data, len(data) - 2), "checksum"),
        (b"garbage", "magic"),
    ]:
        with pytest.raises(_checkpoint.CheckpointDamaged, match=why):
            _checkpoint.unpack(bad)


def test_journal_scan_tells_a_torn_tail_from_a_corrupt_middle() -> None:
    good = _journal_bytes(1, 2, 3, 4, 5)
    assert _journal.scan(good).problem is None
    assert [e["seq"] for e in _journal.scan(good).entries] == [1, 2, 3, 4, 5]
    frames = _frames(good)
    torn = [
        (good + b"\x00\x00\x00", 5),  # an incomplete header
        (good + _journal_bytes(6)[:-4], 5),  # an incomplete body
        (_flip(good, frames[-1][0] + 2), 4),  # the last entry fails its checksum
        (good + b"\x00" * 64, 5),  # a zero-filled tail
    ]
    for data, kept in torn:
        found = _journal.scan(data)
        assert found.problem == "torn", found
        assert [e["seq"] for e in found.entries] == list(range(1, kept + 1))
        assert found.good_end == (len(good) if kept == 5 else frames[-1][0] - 8)
    not_an_entry = _journal.frame(b"\xa1\x61x\x01")  # a valid frame of a foreign map
    corrupt = [
        _flip(good, frames[2][0] + 3),  # a byte of entry 3's body
        _flip(good, frames[2][0] - 8),  # entry 3's length field
        good[: frames[1][0] - 8] + not_an_entry + good[frames[2][0] - 8 :],
        good + not_an_entry,  # intact bytes that are not an entry: never "torn"
    ]
    for data in corrupt:
        found = _journal.scan(data)
        assert found.problem == "corrupt", (found, data)
    assert [e["seq"] for e in _journal.scan(corrupt[0]).entries] == [1, 2]
    assert _journal.scan(corrupt[0]).index == 3


def test_journal_since_checks_the_sequence() -> None:
    entries = [_entry(s) for s in (1, 2, 3, 4, 6)]
    later, gap = _journal.since(entries, 2)
    assert [e["seq"] for e in later] == [3, 4, 6] and gap is not None and "4 to 6" in gap
    assert _journal.since(entries[:4], 2) == (entries[2:4], None)
    found = _journal.scan(_journal_bytes(1, 2, 3, 4, 6, 7))
    end, calls = _journal.replayable(found, 2)
    assert calls == 2 and end == found.ends[3]


def _store_with(tmp: Path, seqs: tuple[int, ...] = (1, 2, 3)) -> Store:
    store = Store(tmp)
    store.checkpoint("o1", {"id": "o1", "seq": 0, "instance": {"v": 0}})
    for seq in seqs:
        store.append("o1", _entry(seq))
    return store


def test_store_cuts_a_torn_tail_once_and_keeps_the_bytes(tmp_path: Path) -> None:
    _store_with(tmp_path).close()
    journal = tmp_path / "objects" / "o1.journal"
    good = journal.read_bytes()
    journal.write_bytes(good + b"\x00\x00\x00\x40\x12")
    store = Store(tmp_path)
    [(_, entries)] = store.load_all()
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert journal.read_bytes() == good  # cut before anything new is appended
    [kept] = (tmp_path / "objects" / "damaged").glob("o1.journal.*.tail")
    assert kept.read_bytes() == b"\x00\x00\x00\x40\x12"
    store.append("o1", _entry(4))
    store.close()
    store = Store(tmp_path)
    [(_, entries)] = store.load_all()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    store.close()


def test_store_quarantines_damaged_files_and_never_drops_them(tmp_path: Path) -> None:
    store = _store_with(tmp_path, (1, 2, 3, 4))
    store.checkpoint("o2", {"id": "o2", "seq": 0, "instance": {}})
    store.checkpoint("o3", {"id": "o3", "seq": 0, "instance": {}})
    store.close()
    objects = tmp_path / "objects"
    journal = (objects / "o1.journal").read_bytes()
    (objects / "o1.journal").write_bytes(_flip(journal, _frames(journal)[1][0] + 2))
    (objects / "o2.snapshot").write_bytes(b"")
    snap3 = (objects / "o3.snapshot").read_bytes()
    (objects / "o3.snapshot").write_bytes(_flip(snap3, len(snap3) - 5))
    for _ in range(2):  # found again at the next start
        store = Store(tmp_path)
        found = store.inventory()
        store.close()
        assert found.objects == []
        why = {q.id: q for q in found.quarantined}
        assert set(why) == {"o1", "o2", "o3"}
        assert why["o1"].kind == "journal" and "middle" in why["o1"].reason
        assert why["o1"].seq == 0
        assert "empty" in why["o2"].reason and "checksum" in why["o3"].reason
        assert not list(objects.glob("*.snapshot")) and not list(objects.glob("*.journal"))
    assert (objects / "quarantine" / "o1" / "journal").read_bytes() != journal
    # the way out: checkpoint + valid prefix; a damaged checkpoint needs a replacement
    with pytest.raises(RepairError, match="replacement"):
        release(tmp_path, "o2")
    assert "1 call" in release(tmp_path, "o1")
    assert "dropped" in drop(tmp_path, "o3")
    store = Store(tmp_path)
    found = store.inventory()
    assert [q.id for q in found.quarantined] == ["o2"]
    [(record, entries)] = found.objects
    assert record["id"] == "o1" and [e["seq"] for e in entries] == [1]
    store.close()
    assert len(list((objects / "damaged").iterdir())) == 2  # released and dropped: kept


def test_store_failed_append_leaves_the_journal_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import continuum_node._store as store_mod

    store = _store_with(tmp_path, (1, 2))
    journal = tmp_path / "objects" / "o1.journal"
    before = journal.read_bytes()
    real = store_mod._write_all

    def half_then_full(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_all", half_then_full)
    with pytest.raises(StorageError, match="No space"):
        store.append("o1", _entry(3))
    assert journal.read_bytes() == before
    snap = (tmp_path / "objects" / "o1.snapshot").read_bytes()
    with pytest.raises(StorageError):  # a checkpoint leaves the old one and the journal
        store.checkpoint("o1", {"id": "o1", "seq": 2, "instance": {"v": 2}})
    assert (tmp_path / "objects" / "o1.snapshot").read_bytes() == snap
    assert journal.read_bytes() == before
    assert not list((tmp_path / "objects").glob("*.tmp"))
    monkeypatch.setattr(store_mod, "_write_all", real)
    store.append("o1", _entry(3))
    store.close()
    store = Store(tmp_path)
    [(_, entries)] = store.load_all()
    assert [e["seq"] for e in entries] == [1, 2, 3]
    with pytest.raises(StateDirInUse):  # one node per state dir
        Store(tmp_path)
    store.close()


# -- integration: real node processes, real files -----------------------------------
class NodeAPI:
    """Control and calls straight to one node."""

    def __init__(self, cluster: Cluster, client: continuum_mqtt.Client, node: str = "n1") -> None:
        self.c, self.client, self.node = cluster, client, node

    def ctl(self, method: str, /, **kw: Any) -> Any:
        topic = self.c.topics.node_ctl(self.node)
        return self.client._requester.send(topic, Request(method, [], kw), 10.0).result()

    def call(self, obj: str, method: str, *args: Any, rid: str | None = None) -> Any:
        req = Request(method, list(args), {}, id=rid, obj=obj)
        topic = self.c.topics.node_call(self.node)
        return self.client._requester.send(topic, req, 10.0).result()


@contextlib.contextmanager
def node_api(c: Cluster, node: str = "n1") -> Iterator[NodeAPI]:
    with c.client() as client:
        yield NodeAPI(c, client, node)


def node_status(c: Cluster, node: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The node's retained/live status once it satisfies ``pred``."""
    return wait_status(c.url, c.topics.node_status(node), "online", pred=pred)


def restart(c: Cluster, state: str, *extra: str, sig: int = signal.SIGKILL, **kw: Any) -> None:
    c.stop("n1", sig)
    c.start_node("n1", "--state-dir", state, *extra, **kw)


def repair_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum_node", "quarantine", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _killed_after_adds(c: Cluster, oid: str, adds: int, **create: Any) -> tuple[str, Path]:
    """A durable n1 creates a Counter ``oid``, runs ``adds`` calls of ``add(1)``
    on it and is SIGKILLed: its state dir and the object's journal."""
    state = start_durable(c)
    with node_api(c) as n:
        n.ctl("create", obj=oid, cls=COUNTER, **create)
        assert [n.call(oid, "add", 1) for _ in range(adds)] == list(range(1, adds + 1))
    c.stop("n1", signal.SIGKILL)
    return state, Path(state) / "objects" / f"{oid}.journal"


def test_torn_tail_is_cut_and_later_calls_survive_two_restarts(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state, journal = _killed_after_adds(c, "t1", 5)
    objects = journal.parent
    good = journal.read_bytes()
    journal.write_bytes(good + b"\x00\x00\x00\x40\x12")  # a crash 5 bytes into an append
    c.start_node("n1", "--state-dir", state)
    with node_api(c) as n:
        assert n.call("t1", "get") == 5
        assert [n.call("t1", "add", 1) for _ in range(10)] == list(range(6, 16))
    for _ in range(2):
        restart(c, state)
        with node_api(c) as n:
            assert n.call("t1", "get") == 15
    assert journal.read_bytes().startswith(good)
    assert "torn journal tail cut off" in c.log("n1")
    [kept] = (objects / "damaged").glob("t1.journal.*.tail")
    assert kept.read_bytes() == b"\x00\x00\x00\x40\x12"


def test_corrupt_middle_entry_quarantines_until_released(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state, journal = _killed_after_adds(c, "m1", 10, aliases=["middle"])
    objects = journal.parent
    data = journal.read_bytes()
    journal.write_bytes(_flip(data, _frames(data)[4][0] + 3))  # one byte of entry 5
    c.start_node("n1", "--state-dir", state)
    status = node_status(c, "n1", lambda s: bool(s.get("quarantined")))
    assert status["objects"] == 1
    [q] = status["quarantined"]
    assert q["id"] == "m1" and "middle" in q["reason"]
    with node_api(c) as n:
        with pytest.raises(Unavailable) as err:
            n.call("m1", "get")
        assert err.value.data["node"] == "n1" and "middle" in err.value.data["reason"]
        with pytest.raises(Unavailable):
            n.call("m1", "add", 1)
        [listed] = n.ctl("list")
        assert listed["quarantined"] is True and listed["class"] == COUNTER
        assert listed["aliases"] == ["middle"] and listed["role"] == "primary"
    log = c.log("n1")
    assert "ERROR" in log and "journal damaged in the middle" in log
    assert "torn" not in log  # a distinct error, not a torn write
    refused = repair_cli("release", "--state-dir", state, "m1")
    assert refused.returncode == 2 and "in use" in refused.stderr  # the node holds it
    c.stop("n1")
    assert "m1\tjournal" in repair_cli("list", "--state-dir", state).stdout
    done = repair_cli("release", "--state-dir", state, "m1")
    assert done.returncode == 0, done.stderr
    assert "4 call(s)" in done.stdout
    c.start_node("n1", "--state-dir", state)
    node_status(c, "n1", lambda s: s.get("quarantined") == [])
    with node_api(c) as n:
        assert n.call("m1", "get") == 4  # the checkpoint and the calls before the damage
        assert [n.call("m1", "add", 1) for _ in range(10)] == list(range(5, 15))
    for _ in range(2):
        restart(c, state)
        with node_api(c) as n:
            assert n.call("m1", "get") == 14
            assert n.ctl("list")[0]["aliases"] == ["middle"]
    [kept] = (objects / "damaged").glob("m1.*.released")
    assert (kept / "journal").read_bytes() != data  # the damaged journal, for inspection


def test_bad_checkpoints_quarantine_their_objects(bare_cluster: Cluster) -> None:
    c = bare_cluster
    state = str(c.tmp / "n1-state")
    objects = Path(state) / "objects"
    c.start_node("n1", "--state-dir", state, modules=("examples.counter", "examples.sink"))
    with node_api(c) as n:
        for oid in ("zero", "flipped", "fine"):
            n.ctl("create", obj=oid, cls=COUNTER)
            n.call(oid, "add", 2)
        n.ctl("create", obj="sink", cls=SINK)
    c.stop("n1", signal.SIGKILL)
    (objects / "zero.snapshot").write_bytes(b"")
    snap = (objects / "flipped.snapshot").read_bytes()
    (objects / "flipped.snapshot").write_bytes(_flip(snap, len(snap) // 2))
    c.start_node("n1", "--state-dir", state)  # examples.sink not loaded this time
    status = node_status(c, "n1", lambda s: len(s.get("quarantined", [])) == 3)
    assert status["objects"] == 4
    reasons = {q["id"]: q["reason"] for q in status["quarantined"]}
    assert "empty" in reasons["zero"] and "checksum" in reasons["flipped"]
    assert "not hosted" in reasons["sink"]
    with node_api(c) as n:
        assert n.call("fine", "get") == 2
        for oid in ("zero", "flipped", "sink"):
            with pytest.raises(Unavailable) as err:
                n.call(oid, "get")
            assert err.value.data == {"node": "n1", "reason": reasons[oid]}
        listed = {o["id"]: o for o in n.ctl("list")}
        assert listed["zero"]["quarantined"] and listed["zero"]["class"] is None
        assert listed["sink"]["class"] == SINK and listed["fine"]["quarantined"] is False
    assert c.log("n1").count("QUARANTINED") == 3
    assert (objects / "quarantine" / "zero" / "snapshot").read_bytes() == b""
    assert (objects / "sink.snapshot").exists()  # intact: left in place
    # a node started with the class again serves it; damaged ones stay quarantined
    restart(c, state, sig=signal.SIGTERM, modules=("examples.counter", "examples.sink"))
    status = node_status(c, "n1", lambda s: "quarantined" in s)
    assert sorted(q["id"] for q in status["quarantined"]) == ["flipped", "zero"]
    with node_api(c) as n:
        assert n.call("sink", "received") == {"seqs": [], "duplicates": 0}
        # a caller's delete removes it from the node, files kept aside
        assert n.ctl("delete", obj="zero") == {"id": "zero", "deleted": True}
        node_status(c, "n1", lambda s: [q["id"] for q in s["quarantined"]] == ["flipped"])
    assert list((objects / "damaged").glob("zero.*.deleted"))


def test_aliases_are_kept_with_the_object(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_node("n1", "--state-dir", str(c.tmp / "n1"))
    c.start_node("n2", "--state-dir", str(c.tmp / "n2"))
    with node_api(c) as n1:
        n2 = NodeAPI(c, n1.client, "n2")
        n1.ctl("create", obj="a1", cls=COUNTER, replicas=["n2"], aliases=["first"])
        assert n1.ctl("list")[0]["aliases"] == ["first"]
        assert n1.ctl("aliases", obj="a1", aliases=["x", "y"]) == {
            "id": "a1",
            "aliases": ["x", "y"],
        }
        with pytest.raises(continuum_mqtt.BadRequest):
            n1.ctl("aliases", obj="a1", aliases="x")
        with pytest.raises(continuum_mqtt.BadRequest):
            n1.ctl("create", obj="a2", cls=COUNTER, aliases=[1])
        [on_replica] = n2.ctl("list")
        assert on_replica["role"] == "replica" and on_replica["aliases"] == ["x", "y"]
        node_status(c, "n1", lambda s: s.get("objects") == 1 and s.get("quarantined") == [])
    c.stop("n1", signal.SIGKILL)
    c.start_node("n1", "--state-dir", str(c.tmp / "n1"))
    with node_api(c) as n1:
        [listed] = n1.ctl("list")
        assert listed["aliases"] == ["x", "y"] and listed["reason"] is None


# -- a full filesystem --------------------------------------------------------------
def test_full_disk_fails_mutations_cleanly_and_loses_nothing(bare_cluster: Cluster) -> None:
    c = bare_cluster
    with tmpfs(c.tmp / "n1-state") as fs:
        state = str(fs)
        try:
            c.start_node("n1", "--state-dir", state)
            with node_api(c) as n:
                n.ctl("create", obj="d1", cls=COUNTER)
                acked = 0
                for _ in range(3):
                    acked += 1
                    assert n.call("d1", "add", 1) == acked
                filler = fill(fs)
                failed = None
                for i in range(500):  # until the journal's last page is full too
                    try:
                        assert n.call("d1", "add", 1, rid=f"full-{i}") == acked + 1
                        acked += 1
                    except StorageError:
                        failed = f"full-{i}"
                        break
                assert failed is not None
                journal = (fs / "objects" / "d1.journal").read_bytes()
                assert _journal.scan(journal).problem is None  # the partial entry was cut
                assert len(_journal.scan(journal).entries) == acked
                with pytest.raises(StorageError):  # a resend does not fake success
                    n.call("d1", "add", 1, rid=failed)
                for i in range(5):
                    with pytest.raises(StorageError):
                        n.call("d1", "add", 1, rid=f"more-{i}")
                assert n.call("d1", "get") == acked  # undone, not just unreported
                with pytest.raises(StorageError):  # checkpoints fail cleanly too
                    n.ctl("create", obj="d2", cls=COUNTER)
                with pytest.raises(StorageError):
                    n.ctl("aliases", obj="d1", aliases=["x"])
                assert [(o["id"], o["aliases"]) for o in n.ctl("list")] == [("d1", [])]
                assert not list((fs / "objects").glob("*.tmp"))
                filler.unlink()  # space returns: the same request now runs, once
                assert n.call("d1", "add", 1, rid=failed) == acked + 1
                assert n.call("d1", "add", 1, rid=failed) == acked + 1
                acked += 1
                for _ in range(3):
                    acked += 1
                    assert n.call("d1", "add", 1) == acked
            restart(c, state)
            with node_api(c) as n:
                assert n.call("d1", "get") == acked
            assert "Traceback" not in c.log("n1")
        finally:
            c.close()


def test_full_disk_holds_feed_samples_in_order(bare_cluster: Cluster) -> None:
    c = bare_cluster
    mods = ("examples.sink",)
    with tmpfs(c.tmp / "n1-state") as fs:
        state = str(fs)
        host, port = c.url.removeprefix("mqtt://").split(":")
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev-f", protocol=paho.MQTTv5)
        try:
            c.start_node("n1", "--state-dir", state, modules=mods)
            topic = c.topics.metrics("dev-f")
            with node_api(c) as n:
                n.ctl("create", obj="s1", cls=SINK)
                n.ctl("bind", obj="s1", topic=topic, method="ingest")
                pub.connect(host, int(port))
                pub.loop_start()

                def send(seqs: range) -> None:
                    for seq in seqs:
                        sample = {"dev": "dev-f", "seq": seq, "cpu": 1.0}
                        pub.publish(topic, cbor2.dumps(sample), qos=1).wait_for_publish(5)

                send(range(1, 6))
                wait_for(lambda: n.call("s1", "received")["seqs"] == [1, 2, 3, 4, 5])
                filler = fill(fs)
                send(range(6, 200))
                wait_for(lambda: "No space left" in c.log("n1"))  # a sample failed
                assert len(n.call("s1", "received")["seqs"]) < 199
                filler.unlink()
                wait_for(lambda: len(n.call("s1", "received")["seqs"]) == 199, timeout=30)
                got = n.call("s1", "received")
                assert got == {"seqs": list(range(1, 200)), "duplicates": 0}
            restart(c, state, modules=mods)
            with node_api(c) as n:
                assert n.call("s1", "received")["seqs"] == list(range(1, 200))
        finally:
            pub.disconnect()
            pub.loop_stop()
            c.close()
