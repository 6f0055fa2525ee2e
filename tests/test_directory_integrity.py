"""The gateway never deletes what it cannot prove it should (issue 11, finding
1), and its exactly-once outcomes survive its restart (finding 4, gateway side).

Fast in-process tests of the reconciliation decisions, the WAL verifier, the
start-up checks and the stored outcomes; then real processes (mosquitto,
gateway, durable nodes): refusals, rebuild, a restored backup, a damaged WAL
and page, creates resent across a gateway SIGKILL, deletion by tombstone."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_gateway import _records as rec
from continuum_gateway._directory import Directory
from continuum_gateway._integrity import DirectoryRefused, check_directory, verify_wal
from continuum_gateway._reconcile import Held, Reconciler, parse_list, plan

import continuum_mqtt
from continuum_mqtt._mqtt import BrokerURL
from continuum_mqtt._protocol import Request
from continuum_mqtt.service import Context

from ._cluster import Cluster, start_durable, wait_for
from ._tmpfs import fill, tmpfs

COUNTER = "examples.counter.Counter"


# -- reconciliation decisions (pure) ----------------------------------------------------
def _info(node: str, replicas: list[str] | None = None, aliases: list[str] | None = None) -> Any:
    return {"node": node, "replicas": replicas or [], "aliases": aliases or []}


def _stone(node: str, what: str) -> dict[str, Any]:
    return {"node": node, "what": what, "rid": "r-1", "time": time.time()}


def test_plan_adopts_what_the_directory_does_not_know_and_deletes_nothing() -> None:
    held = [Held(f"o{i}", COUNTER, "primary", aliases=[f"a{i}"]) for i in range(100)]
    known = {"o0": _info("n1", aliases=["a0"]), "o1": _info("n1", aliases=["a1"])}
    p = plan("n1", held, known, {}, set(), ["o0", "o1"])
    assert p.delete == []
    assert sorted(h.id for h in p.adopt) == sorted(f"o{i}" for i in range(2, 100))
    assert p.found == ["o0", "o1"] and p.missing == [] and p.push == []


def test_plan_deletes_only_on_a_tombstone_that_applies_to_this_node() -> None:
    held = [
        Held("deleted", COUNTER, "primary"),
        Held("discarded", COUNTER, "primary"),
        Held("moved-off-n1", COUNTER, "primary"),
        Held("moved-off-n3", COUNTER, "primary"),  # another node's move: not ours
        Held("elsewhere", COUNTER, "primary"),  # no record of a move at all
    ]
    known = {
        "moved-off-n1": _info("n2"),
        "moved-off-n3": _info("n2"),
        "elsewhere": _info("n2", ["n3"]),
    }
    stones = {
        "deleted": _stone(rec.ALL_NODES, "deleted"),
        "discarded": _stone(rec.ALL_NODES, "discarded"),
        "moved-off-n1": _stone("n1", "moved"),
        "moved-off-n3": _stone(rec.ALL_NODES, "deleted"),  # cannot apply: the object is known
    }
    p = plan("n1", held, known, stones, set(), [])
    deleted = dict(p.delete)
    assert sorted(deleted) == ["deleted", "discarded", "moved-off-n1"]
    assert deleted["deleted"].startswith("deleted (request r-1)")
    assert deleted["moved-off-n1"].startswith("moved to another node by a failover")
    assert {s["id"]: s["kind"] for s in p.strays} == {
        "moved-off-n3": "other-primary",
        "elsewhere": "other-primary",
    }
    assert p.adopt == []


def test_plan_reports_what_it_cannot_adopt() -> None:
    held = [
        Held("replica-only", COUNTER, "replica"),
        Held("no-class", None, None, quarantined=True, reason="checkpoint checksum"),
        Held("no-role", COUNTER, None, quarantined=True, reason="checkpoint checksum"),
        Held("creating", COUNTER, "primary"),
        Held("bad-but-known-class", COUNTER, "primary", quarantined=True, reason="journal"),
    ]
    p = plan("n1", held, {}, {}, {"creating"}, [])
    assert {s["id"]: s["kind"] for s in p.strays} == {
        "replica-only": "unknown-replica",
        "no-class": "unknown-class",
        "no-role": "unknown-role",
    }
    assert p.pending == ["creating"]
    assert [h.id for h in p.adopt] == ["bad-but-known-class"]
    assert p.delete == []


def test_plan_takes_over_a_promotion_it_missed_and_reports_missing_copies() -> None:
    held = [
        Held("promoted", COUNTER, "primary", replicas=[]),
        Held("replica", COUNTER, "replica", aliases=["old"]),
        Held("quarantined", COUNTER, "primary", aliases=[], quarantined=True),
    ]
    known = {
        "promoted": _info("n2", ["n1"]),  # an older directory: n1 was a replica
        "replica": _info("n2", ["n1"], aliases=["new"]),
        "quarantined": _info("n1", aliases=["q"]),
    }
    p = plan("n1", held, known, {}, set(), ["quarantined", "lost"])
    assert [h.id for h in p.take_over] == ["promoted"]
    assert p.push == [("replica", ["new"])]  # never to a quarantined copy (it refuses)
    assert p.missing == ["lost"]
    assert p.delete == [] and p.strays == []


def test_parse_list_skips_malformed_entries() -> None:
    held = parse_list(
        "n1",
        [
            {"id": "a", "class": COUNTER, "role": "primary", "replicas": ["n2"]},
            {"id": "b", "class": None, "role": None, "aliases": [], "quarantined": True},
            {"class": COUNTER},
            "junk",
        ],
    )
    assert [(h.id, h.role, h.aliases, h.quarantined) for h in held] == [
        ("a", "primary", None, False),
        ("b", None, [], True),
    ]
    with pytest.raises(ValueError):
        parse_list("n1", {"not": "a list"})


# -- reconciliation applied to a real directory file -------------------------------------
class FakeNodes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, node: str, method: str, kwargs: dict[str, Any], deadline: Any) -> Any:
        self.calls.append((node, method, kwargs))
        return {"id": kwargs.get("obj")}

    def of(self, method: str) -> list[tuple[str, dict[str, Any]]]:
        return [(n, k) for n, m, k in self.calls if m == method]


def _directory(tmp_path: Path) -> Directory:
    d = Directory(str(tmp_path / "d.db"))
    d.node_status("n1", {"state": "online", "objects": 0, "classes": {COUNTER: {}}})
    return d


def test_reconciler_adopts_with_free_aliases_and_reports_taken_ones(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    d.add_object("known", COUNTER, "n1", "taken")
    nodes = FakeNodes()
    r = Reconciler(d, nodes, lambda: time.monotonic() + 1)
    held = [
        Held("known", COUNTER, "primary", aliases=["taken"]),
        Held("new", COUNTER, "primary", replicas=["n2"], aliases=["free", "taken"]),
    ]
    r.run("n1", held)
    info = d.resolve("new")
    assert (info["node"], info["replicas"], info["aliases"]) == ("n1", ["n2"], ["free"])
    assert d.resolve("taken")["id"] == "known"
    assert nodes.of("delete") == []
    # the node's record is brought in line with the directory
    assert nodes.of("aliases") == [("n1", {"obj": "new", "aliases": ["free"]})]
    strays = d._rows("SELECT object, kind FROM strays")
    assert strays == [{"object": "new", "kind": "alias-conflict"}]
    d.close()


def test_reconciler_deletes_tombstoned_copies_only(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    for oid in ("keep", "gone"):
        d.add_object(oid, COUNTER, "n1", None)
    d.delete_object("gone", rid="rid-7")
    nodes = FakeNodes()
    r = Reconciler(d, nodes, lambda: time.monotonic() + 1)
    r.run("n1", [Held("keep", COUNTER, "primary"), Held("gone", COUNTER, "primary")])
    assert nodes.of("delete") == [("n1", {"obj": "gone"})]
    assert [o["id"] for o in d.objects()] == ["keep"]
    d.close()


def test_reconciler_marks_missing_objects_unavailable_until_found(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    d.add_object("o", COUNTER, "n1", None)
    r = Reconciler(d, FakeNodes(), lambda: time.monotonic() + 1)
    r.run("n1", [])
    info = d.resolve("o")
    assert info["state"] == "unavailable" and "did not hold it" in info["reason"]
    r.run("n1", [Held("o", COUNTER, "primary")])
    assert d.resolve("o")["state"] == "ok"
    d.close()


def test_quarantine_from_the_node_status(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    d.add_object("o", COUNTER, "n1", None)
    assert d.apply_quarantine("n1", {"o": "checkpoint checksum mismatch"}) == ["o"]
    info = d.resolve("o")
    assert info["state"] == "unavailable" and "checkpoint checksum mismatch" in info["reason"]
    assert d.objects()[0]["state"] == "unavailable"
    assert d.apply_quarantine("n1", {}) == ["o"]
    assert d.resolve("o")["state"] == "ok" and d.resolve("o")["reason"] is None
    d.close()


def test_tombstones_and_outcomes_are_bounded(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    with d.transaction() as c:
        for i in range(50):
            rec.add_tombstone(c, f"o{i}", rec.ALL_NODES, "deleted", None)
            rec.finish_outcome(c, f"r{i}", "alias", (True, {"pad": "x" * 100}))
        rec.put_running(c, "running", "create", {"oid": "x", "holders": ["n1"]})
        c.execute("UPDATE tombstones SET time = time - 40 * 86400 WHERE object < 'o2'")
    with d.transaction() as c:
        assert rec.prune_tombstones(c, 30 * 86400.0, max_rows=20) == 30
        rec.prune_outcomes(c, max_rows=10, max_bytes=10**9)
        assert c.execute("SELECT count(*) FROM outcomes WHERE state='done'").fetchone()[0] == 10
        rec.prune_outcomes(c, max_rows=10, max_bytes=600)
        sizes = c.execute("SELECT sum(size) FROM outcomes").fetchone()[0]
        assert sizes <= 600
        assert rec.get_running(c, "running") is not None  # never pruned while running
    d.close()


def test_one_callers_outcomes_never_push_out_anothers(tmp_path: Path) -> None:
    d = _directory(tmp_path)
    with d.transaction() as c:
        rec.finish_outcome(c, "dev-a/r1", "alias", (True, 1))
        for i in range(50):
            rec.finish_outcome(c, f"dev-b/r{i}", "alias", (True, i))
        rec.prune_outcomes(c, max_rows=10, max_bytes=10**9)
        assert rec.get_outcome(c, "dev-a/r1") == (True, 1)
        kept = [r for (r,) in c.execute("SELECT rid FROM outcomes ORDER BY seq")]
        assert kept == ["dev-a/r1", *(f"dev-b/r{i}" for i in range(40, 50))]
        rec.prune_outcomes(c, max_rows=10, max_bytes=10**9, max_total=5)
        assert c.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 5
    d.close()


# -- the WAL verifier and the start-up checks ----------------------------------------------
_KILLED_WRITER = r"""
import os, signal, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
for i in range(20):
    c.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", "x" * 300))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_wal(tmp_path: Path) -> tuple[Path, bytes]:
    db = tmp_path / "w.db"
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(db)], check=False)
    wal = Path(f"{db}-wal")
    return db, wal.read_bytes()


def _frame_offset(data: bytes, index: int) -> int:
    page_size = int.from_bytes(data[8:12], "big")
    return 32 + index * (24 + page_size)


def _fingerprint(*paths: Path) -> list[tuple[str, int, str]]:
    return [
        (p.name, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in paths
        if p.exists()
    ]


def test_wal_verifier_accepts_a_sound_wal(tmp_path: Path) -> None:
    db, _ = _killed_wal(tmp_path)
    r = verify_wal(f"{db}-wal")
    assert r.frames > 20 and r.valid == r.frames and r.commits >= 21 and not r.damaged
    assert check_directory(str(db)) == []


@pytest.mark.parametrize("where", ["page", "salt", "header"])
def test_a_damaged_wal_is_refused_and_nothing_is_modified(tmp_path: Path, where: str) -> None:
    db, data = _killed_wal(tmp_path)
    wal = Path(f"{db}-wal")
    broken = bytearray(data)
    middle = _frame_offset(data, (len(data) - 32) // (24 + 4096) // 2)
    offset = {"page": middle + 24 + 100, "salt": middle + 8, "header": 20}[where]
    broken[offset] ^= 0x01
    wal.write_bytes(bytes(broken))
    before = _fingerprint(db, wal, Path(f"{db}-shm"))
    assert verify_wal(str(wal)).damaged
    with pytest.raises(DirectoryRefused, match=r"write-ahead log .* is damaged.*docs/recovery\.md"):
        check_directory(str(db))
    assert _fingerprint(db, wal, Path(f"{db}-shm")) == before
    # what it protects from: SQLite itself reads less, without a word
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        seen = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    except sqlite3.OperationalError:  # the whole WAL ignored: not even the table
        seen = 0
    finally:
        conn.close()
    assert seen < 20


def test_a_torn_last_frame_is_not_damage(tmp_path: Path) -> None:
    db, data = _killed_wal(tmp_path)
    wal = Path(f"{db}-wal")
    broken = bytearray(data)
    last = (len(data) - 32) // (24 + 4096) - 1
    broken[_frame_offset(data, last) + 24 + 7] ^= 0xFF
    wal.write_bytes(bytes(broken))
    assert not verify_wal(str(wal)).damaged
    [warning] = check_directory(str(db))
    assert "torn" in warning
    wal.write_bytes(data[:-100])  # a partial frame at the end
    assert check_directory(str(db)) == []


def test_zero_byte_directory_and_orphan_wal_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    db.write_bytes(b"")
    with pytest.raises(DirectoryRefused, match="0-byte"):
        check_directory(str(db))
    assert db.stat().st_size == 0
    db.unlink()
    Path(f"{db}-wal").write_bytes(b"x" * 5000)
    with pytest.raises(DirectoryRefused, match="does not exist but its write-ahead log"):
        check_directory(str(db))
    Path(f"{db}-wal").unlink()
    db.write_bytes(b"not a database at all" * 10)
    with pytest.raises(DirectoryRefused, match="not a SQLite database"):
        check_directory(str(db))


def _btree_page_in_the_middle(db: Path) -> int:
    data = db.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    order = sorted(range(2, pages + 1), key=lambda p: abs(p - pages // 2))
    for page in order:
        if data[(page - 1) * page_size] in (0x02, 0x05, 0x0A, 0x0D):
            return (page - 1) * page_size
    raise AssertionError("no b-tree page")


def _corrupt_middle_page(db: Path) -> None:
    offset = _btree_page_in_the_middle(db)
    with open(db, "r+b") as fh:
        fh.seek(offset)
        fh.write(os.urandom(64))


def test_a_corrupt_middle_page_is_refused(tmp_path: Path) -> None:
    d = Directory(str(tmp_path / "d.db"))
    for i in range(300):
        d.add_object(f"{i:032x}", COUNTER, "n1", f"alias-{i}", rid=f"r{i}")
    d.close()
    db = tmp_path / "d.db"
    assert check_directory(str(db)) == []
    _corrupt_middle_page(db)
    before = _fingerprint(db)
    with pytest.raises(DirectoryRefused, match="integrity check"):
        check_directory(str(db))
    assert _fingerprint(db) == before


# -- exactly-once outcomes across a restart (in process, a fake for the nodes) -------------
class Chan:
    def __init__(self) -> None:
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.deadline = time.monotonic() + 30

    def expired(self) -> bool:
        return False

    def result(self, value: Any) -> None:
        self.results.append(value)

    def error(self, exc: BaseException) -> None:
        self.errors.append(exc)


def _gateway(db: Path, nodes: FakeNodes) -> Any:
    from continuum_gateway._gateway import Gateway

    gw = Gateway(BrokerURL.parse("mqtt://127.0.0.1:1"), str(db))
    gw.directory.node_status("n1", {"state": "online", "objects": 0, "classes": {COUNTER: {}}})
    gw._node_call = nodes
    return gw


def _create(gw: Any, rid: str, alias: str = "the-one") -> Chan:
    chan = Chan()
    gw._serve(Request("create", [], {"cls": COUNTER, "alias": alias}, rid), chan)
    return chan


def test_a_create_answered_before_a_restart_is_answered_again_after_it(tmp_path: Path) -> None:
    nodes = FakeNodes()
    gw = _gateway(tmp_path / "d.db", nodes)
    first = _create(gw, "rid-1").results[0]
    gw.directory.close()  # a crash: nothing in memory survives
    gw = _gateway(tmp_path / "d.db", nodes)
    again = _create(gw, "rid-1")
    assert again.results == [first] and again.errors == []
    assert len(nodes.of("create")) == 1
    assert [o["id"] for o in gw.directory.objects()] == [first["id"]]
    gw.directory.close()


def test_a_create_interrupted_by_a_crash_is_finished_by_its_resend(tmp_path: Path) -> None:
    class Crash(BaseException):
        pass

    nodes = FakeNodes()
    gw = _gateway(tmp_path / "d.db", nodes)

    def crash_after_the_node_created_it(*a: Any) -> None:
        nodes(*a)
        raise Crash

    gw._node_call = crash_after_the_node_created_it
    gw.directory.add_object = lambda *a, **k: (_ for _ in ()).throw(Crash())
    with pytest.raises(Crash):
        ctx = Context(deadline=time.monotonic() + 30, rid="rid-2")
        gw.create(COUNTER, alias="the-one", _ctx=ctx)
    gw.directory.close()
    [(_, created)] = nodes.of("create")
    assert created["aliases"] == ["the-one"]  # the node keeps the alias from the start
    gw = _gateway(tmp_path / "d.db", nodes)
    chan = _create(gw, "rid-2")
    [(_, again)] = nodes.of("create")[1:]
    assert again["obj"] == created["obj"]  # the same object, not a second one
    assert chan.results[0]["id"] == created["obj"]
    assert chan.results[0]["aliases"] == ["the-one"]
    assert len(gw.directory.objects()) == 1
    gw.directory.close()


def test_a_create_interrupted_and_not_resent_is_taken_back(tmp_path: Path) -> None:
    nodes = FakeNodes()
    gw = _gateway(tmp_path / "d.db", nodes)
    gw.directory.start_running(
        "rid-3", "create", {"oid": "o3", "holders": ["n1"], "deadline": 0, "owner": "gone"}
    )
    gw._settle_interrupted()
    gw._pool.shutdown(wait=True)
    assert nodes.of("delete") == [("n1", {"obj": "o3"})]
    ok, err = gw.directory.outcome("rid-3")
    assert not ok and err["code"] == "deadline_expired"
    with gw.directory.transaction() as c:
        assert rec.tombstones_for(c, ["o3"], "n1")["o3"]["what"] == "discarded"
    gw.directory.close()


# -- real processes ---------------------------------------------------------------------------
def _held(c: Cluster, client: continuum_mqtt.Client, node: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = client._requester.send(
        c.topics.node_ctl(node), Request("list", [], {}), 10.0
    ).result()
    return listed


def _start_refused_gateway(c: Cluster) -> tuple[int, str]:
    """Start a gateway that must refuse: its exit code and its log."""
    proc = c.python(
        "gateway", "-m", "continuum_gateway", "--broker", c.url, "--db", c.db, "--root", c.root
    )
    try:
        code = proc.wait(60)
    finally:
        c.procs.pop("gateway", None)
    return code, c.log("gateway")


def _gateway_cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum_gateway", *args],
        cwd=c.cwd,
        env=c.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _remove_directory(c: Cluster) -> None:
    for f in (c.db, f"{c.db}-wal", f"{c.db}-shm"):
        Path(f).unlink(missing_ok=True)


def _create_counters(c: Cluster, aliases: list[str]) -> None:
    with c.client() as client:
        for alias in aliases:
            client.stub(COUNTER).create(alias=alias)


def _restart(c: Cluster, node: str, sig: int = signal.SIGTERM) -> None:
    c.stop(node, sig)
    start_durable(c, node)


def test_an_empty_directory_is_refused_while_nodes_hold_objects(durable_cluster: Cluster) -> None:
    c = durable_cluster
    with c.client() as client:
        for i in range(5):
            client.stub(COUNTER).create(start=i, alias=f"obj-{i}")
    c.stop("gateway")
    _remove_directory(c)  # lost, or --db names a new file
    _restart(c, "n1")  # the returning node used to lose everything here
    code, log = _start_refused_gateway(c)
    assert code == 2
    assert "node n1 holds 5 object(s)" in log and "continuum-gateway rebuild --db" in log
    assert not Path(c.db).exists()  # the empty file it created is not left behind
    with c.client() as client:
        assert len(_held(c, client, "n1")) == 5  # nothing deleted


def test_a_zero_byte_directory_is_refused(bare_cluster: Cluster) -> None:
    c = bare_cluster
    Path(c.db).write_bytes(b"")
    code, log = _start_refused_gateway(c)
    assert code == 2 and "0-byte" in log and "docs/recovery.md" in log
    assert Path(c.db).stat().st_size == 0


def test_rebuild_from_the_nodes_recreates_objects_and_aliases(durable_cluster: Cluster) -> None:
    c = durable_cluster
    start_durable(c, "n2")
    with c.client() as client:
        plain = client.stub(COUNTER).create(start=1, alias="plain", node="n1")
        replicated = client.stub(COUNTER).create(start=2, alias="first", replicas=1)
        client.alias(replicated, "second")
        client.unalias("first")
        renamed = replicated._id
        before = {o["id"]: o for o in client.objects()}
        primary = before[renamed]["node"]
        wait_for(
            lambda: (
                [o["aliases"] for o in _held(c, client, primary) if o["id"] == renamed]
                == [["second"]]
            )
        )
        plain.add(10)
    c.stop("gateway")
    _remove_directory(c)
    done = _gateway_cli(c, "rebuild", "--db", c.db, "--broker", c.url, "--root", c.root)
    assert done.returncode == 0, done.stderr
    assert "2 objects" in done.stdout and "2 aliases" in done.stdout
    c.start_gateway()
    with c.client() as client:
        after = {o["id"]: o for o in client.objects()}
        for oid, o in before.items():
            for k in ("class", "node", "replicas", "aliases"):
                assert after[oid][k] == o[k], k
        assert client.get("plain").add(1) == 12
        assert client.get("second").add(1) == 3
        with pytest.raises(continuum_mqtt.UnknownObject):
            client.get("first")
    # rebuild never overwrites a directory that lists objects, nor runs beside a gateway
    again = _gateway_cli(c, "rebuild", "--db", c.db, "--broker", c.url, "--root", c.root)
    assert again.returncode == 2 and "lists 2 object(s)" in again.stderr
    other = str(c.tmp / "other.db")
    again = _gateway_cli(c, "rebuild", "--db", other, "--broker", c.url, "--root", c.root)
    assert again.returncode == 2 and "gateway is online" in again.stderr
    assert not Path(other).exists()


def test_an_older_backup_restored_adopts_newer_objects_and_deletes_none(
    durable_cluster: Cluster,
) -> None:
    c = durable_cluster
    backup = str(c.tmp / "backup.db")
    with c.client() as client:
        old = [client.stub(COUNTER).create(alias=f"old-{i}") for i in range(3)]
        done = _gateway_cli(c, "backup", "--db", c.db, backup)  # the gateway is running
        assert done.returncode == 0, done.stderr
        assert "3 objects" in done.stdout
        new = [client.stub(COUNTER).create(start=7, alias=f"new-{i}") for i in range(3)]
        client.delete(old[0])  # a deletion the backup does not know
        assert len(_held(c, client, "n1")) == 5
    c.stop("gateway")
    _remove_directory(c)
    shutil.copyfile(backup, c.db)
    c.start_gateway()
    _restart(c, "n1")
    with c.client() as client:
        wait_for(lambda: len(client.objects()) == 6)
        for i, o in enumerate(new):
            assert client.get(f"new-{i}")._id == o._id  # adopted, alias and all
            assert client.get(f"new-{i}").get() == 7
        assert len(_held(c, client, "n1")) == 5  # none deleted
        # the deletion made after the backup: listed again, honestly unavailable
        gone = client._gateway("resolve", ref="old-0")
        assert gone["state"] == "unavailable" and "did not hold it" in gone["reason"]
    assert "adopted examples.counter.Counter" in c.log("gateway")


def test_a_flipped_byte_in_the_wal_is_refused(durable_cluster: Cluster) -> None:
    c = durable_cluster
    _create_counters(c, [f"acked-{i}" for i in range(20)])
    c.stop("gateway", signal.SIGKILL)
    wal = Path(f"{c.db}-wal")
    data = bytearray(wal.read_bytes())
    frames = (len(data) - 32) // (24 + 4096)
    assert frames > 10
    data[_frame_offset(bytes(data), frames // 2) + 24 + 200] ^= 0x04
    wal.write_bytes(bytes(data))
    before = _fingerprint(Path(c.db), wal)
    code, log = _start_refused_gateway(c)
    assert code == 2 and "write-ahead log" in log and "damaged" in log
    assert _fingerprint(Path(c.db), wal) == before
    check = _gateway_cli(c, "check", "--db", c.db)
    assert check.returncode == 2 and "damaged" in check.stderr


def test_a_corrupt_page_in_the_directory_is_refused(durable_cluster: Cluster) -> None:
    c = durable_cluster
    _create_counters(c, [f"object-with-a-longer-alias-{i:04d}" for i in range(40)])
    c.stop("gateway")  # a clean stop: everything is in the main file
    assert not Path(f"{c.db}-wal").exists()
    _corrupt_middle_page(Path(c.db))
    code, log = _start_refused_gateway(c)
    assert code == 2 and "integrity check" in log


def _watch(c: Cluster, topic: str) -> tuple[paho.Client, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    host, port = c.url.removeprefix("mqtt://").split(":")
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    ready = threading.Event()
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    sub.on_message = lambda cl, u, msg: seen.append(cbor2.loads(msg.payload))
    sub.connect(host, int(port))
    sub.loop_start()
    assert ready.wait(10)
    return sub, seen


def test_a_create_resent_after_a_gateway_sigkill_runs_once(durable_cluster: Cluster) -> None:
    """Both ways a create meets a gateway SIGKILL: answered before it (the
    resend is answered from the stored outcome), and killed while the node
    created it (the resend finishes that same object, alias and all)."""
    c = durable_cluster
    with c.client(timeout=60.0) as client:
        req = Request("create", [], {"cls": COUNTER, "alias": "answered"}, "test:answered:1")
        first = client._requester.send(c.topics.gateway_call, req, 10.0).result()
        c.stop("gateway", signal.SIGKILL)
        c.start_gateway()
        req = Request("create", [], {"cls": COUNTER, "alias": "answered"}, "test:answered:1")
        again = client._requester.send(c.topics.gateway_call, req, 10.0).result()
        assert again == first

        sub, seen = _watch(c, c.topics.node_ctl("n1"))
        try:
            c.procs["n1"].send_signal(signal.SIGSTOP)  # the node will create it late
            fut = client._gateway_future("create", 60.0, cls=COUNTER, alias="interrupted")
            wait_for(lambda: any(m.get("method") == "create" for m in seen))
            c.stop("gateway", signal.SIGKILL)
            c.procs["n1"].send_signal(signal.SIGCONT)
        finally:
            sub.disconnect()
            sub.loop_stop()
        oid = next(m for m in seen if m.get("method") == "create")["kwargs"]["obj"]
        wait_for(lambda: oid in [o["id"] for o in _held(c, client, "n1")])
        c.start_gateway()  # the client resends its create when the gateway is back
        info = fut.result(60)
        assert info["id"] == oid and info["aliases"] == ["interrupted"]
        assert client.get("interrupted")._id == oid
        assert sorted(o["id"] for o in client.objects()) == sorted([first["id"], oid])
        assert len(_held(c, client, "n1")) == 2


def test_a_deleted_object_is_removed_from_its_returning_node_and_nothing_else(
    durable_cluster: Cluster,
) -> None:
    c = durable_cluster
    with c.client() as client:
        doomed = client.stub(COUNTER).create(alias="doomed")
        kept = client.stub(COUNTER).create(alias="kept")
        c.stop("n1", signal.SIGKILL)
        wait_for(lambda: [n["state"] for n in client.nodes()] == ["offline"])
        client.delete(doomed)  # its node is away: only the tombstone remembers
        start_durable(c, "n1")
        wait_for(lambda: [o["id"] for o in _held(c, client, "n1")] == [kept._id])
        assert client.get("kept").add(1) == 1
    log = c.log("gateway")
    assert f"deleting node n1's copy of {doomed._id}: deleted (request" in log


def test_a_quarantined_object_is_unavailable_in_the_directory(durable_cluster: Cluster) -> None:
    """Finding 4: a damaged checkpoint used to drop the object while the
    directory kept listing it (object_not_here forever, no alert)."""
    c = durable_cluster
    with c.client() as client:
        obj = client.stub(COUNTER).create(alias="fragile")
        obj.add(2)
        c.stop("n1", signal.SIGKILL)
        snap = c.tmp / "n1-state" / "objects" / f"{obj._id}.snapshot"
        data = bytearray(snap.read_bytes())
        data[len(data) // 2] ^= 0x10
        snap.write_bytes(bytes(data))
        start_durable(c, "n1")
        wait_for(lambda: client._gateway("resolve", ref="fragile")["state"] == "unavailable")
        info = client._gateway("resolve", ref="fragile")
        assert info["reason"].startswith("quarantined on node n1: ")
        assert [o["state"] for o in client.objects()] == ["unavailable"]
        assert [o["id"] for o in _held(c, client, "n1")] == [obj._id]  # kept, not deleted
        with pytest.raises(continuum_mqtt.Unavailable):
            client.get("fragile").get()
    assert f"object {obj._id} is unavailable: quarantined on node n1" in c.log("gateway")


def test_held_counts_reads_only_online_integer_counts() -> None:
    from continuum_gateway._fleet import held_counts

    statuses = {
        "n1": {"state": "online", "objects": 3},
        "n2": {"state": "online", "objects": 0},
        "n3": {"state": "offline", "objects": 9},
        "n4": {"state": "online", "objects": True},
        "n5": {"state": "online", "objects": "7"},
        "n6": {"state": "online"},  # an older node: no count
    }
    assert held_counts(statuses) == {"n1": 3}


def test_a_full_disk_fails_a_create_cleanly_and_its_retry_runs_once(tmp_path: Path) -> None:
    """The directory on a full filesystem: the create is answered `storage`,
    nothing is stored for its request id, and the same id succeeds later."""
    with tmpfs(tmp_path / "small") as mnt:
        nodes = FakeNodes()
        gw = _gateway(mnt / "d.db", nodes)
        assert _create(gw, "before", alias="before").results
        filler = fill(mnt)
        chan = _create(gw, "rid-full")
        [err] = chan.errors
        assert isinstance(err, continuum_mqtt.ContinuumError) and err.code == "storage"
        assert gw.directory.outcome("rid-full") is None  # not stored: a retry runs again
        filler.unlink()
        chan = _create(gw, "rid-full")
        assert chan.results and chan.results[0]["aliases"] == ["the-one"]
        assert sorted(o["aliases"][0] for o in gw.directory.objects()) == ["before", "the-one"]
        gw.directory.close()


def test_rebuild_refuses_a_stale_wal_beside_a_missing_or_empty_directory(tmp_path: Path) -> None:
    """SQLite would apply a WAL left there to the rebuilt file."""
    from continuum_gateway._recovery import RecoveryError, _check_target

    db = tmp_path / "directory.db"
    (tmp_path / "directory.db-wal").write_bytes(b"\0" * 64)
    with pytest.raises(RecoveryError, match="wal exists"):
        _check_target(str(db))
    db.write_bytes(b"")
    with pytest.raises(RecoveryError, match="wal exists"):
        _check_target(str(db))
    (tmp_path / "directory.db-wal").unlink()
    _check_target(str(db))  # an empty file alone is fine
