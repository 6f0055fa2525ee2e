"""continuum_node._durability and continuum_node._resident: commit, rollback, restore
and delete over a Store in a temporary folder; the table of residents."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import continuum_node._store as store_mod
import pytest
from continuum_node._durability import Durability
from continuum_node._feeds import Bindings
from continuum_node._quarantine import Quarantined
from continuum_node._resident import Resident, Residents
from continuum_node._store import Store

from continuum_mqtt import ObjectNotHere, StorageError, Unavailable
from continuum_mqtt.service import Request

from ._nodekit import TALLY, Tally

TOPIC = "continuum/v1/dev/d/metrics"


class Parts:
    def __init__(self, state: Path | None, checkpoint_every: int = 1000) -> None:
        self.subscribed: set[str] = set()
        self.residents = Residents("n1")
        self.bindings = Bindings(self.subscribed.add, self.subscribed.discard)
        store = Store(state) if state is not None else None
        self.durability = Durability(store, self.residents, self.bindings, checkpoint_every)

    def create(self, oid: str = "o", **kw: object) -> Resident:
        res = Resident(oid, TALLY, Tally(), **kw)  # type: ignore[arg-type]
        self.durability.persist(res)
        self.residents.put(res)
        self.bindings.refeed(res, set(), res.fed_topics)
        return res

    def add(self, res: Resident, n: int, rid: str, snapshot: bool = False) -> None:
        outcome = (True, res.instance.add(n))
        self.durability.commit(res, Request("add", [n], {}, id=rid), outcome, snapshot)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    yield p
    p.durability.close()


def _no_space(fd: int, data: bytes) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_commit_keeps_the_outcome_and_journals_the_call(parts: Parts, tmp_path: Path) -> None:
    res = parts.create()
    parts.add(res, 2, "r1")
    parts.add(res, 3, "r2")
    assert res.seq == 2 and res.journaled == 2
    assert res.once.get("r1") == (True, 2)
    parts.durability.close()
    [(rec, journal)] = Store(tmp_path).load_all()
    revived = Durability.revive(rec, journal)
    assert revived.instance.value == 5 and revived.seq == 2
    assert revived.once.get("r2") == (True, 5)


def test_a_checkpoint_every_n_calls_empties_the_journal(tmp_path: Path) -> None:
    p = Parts(tmp_path, checkpoint_every=2)
    try:
        res = p.create()
        journaled = []
        for i in range(5):
            p.add(res, 1, f"r{i}")
            journaled.append(res.journaled)
        assert journaled == [1, 2, 0, 1, 2]  # the 3rd call is checkpointed
        p.add(res, 1, "snap", snapshot=True)
        assert res.journaled == 0
    finally:
        p.durability.close()


def test_a_failed_commit_is_rolled_back_with_its_outcome(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = parts.create(feeds={TOPIC: "ingest"})
    parts.add(res, 1, "r1")
    assert res.once.begin("r-inflight").new  # queued behind, in flight
    monkeypatch.setattr(store_mod, "_write_all", _no_space)
    with pytest.raises(StorageError):
        parts.add(res, 10, "r2")
    assert res.instance.value == 1 and res.seq == 1
    assert res.once.get("r2") is None and res.once.get("r1") == (True, 1)
    assert res.once.begin("r-inflight").running  # still in flight after the reload
    assert TOPIC in parts.subscribed and parts.residents.holds(res)


def test_an_object_whose_files_cannot_be_read_back_is_quarantined(
    parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = parts.create(feeds={TOPIC: "ingest"})
    (tmp_path / "objects" / "o.snapshot").write_bytes(b"garbage")
    monkeypatch.setattr(store_mod, "_write_all", _no_space)
    with pytest.raises(StorageError):
        parts.add(res, 1, "r1")
    assert parts.residents.get("o") is None and TOPIC not in parts.subscribed
    q = parts.residents.quarantine.get("o")
    assert q is not None and q.kind == "checkpoint"
    with pytest.raises(Unavailable):
        parts.residents.held("o")
    assert parts.residents.not_here("o").code == "unavailable"
    assert parts.residents.count() == 1


def test_restore_feeds_primaries_and_quarantines_unknown_classes(tmp_path: Path) -> None:
    p = Parts(tmp_path)
    p.create("prim", feeds={TOPIC: "ingest"})
    p.create("rep", feeds={"continuum/v1/dev/e/metrics": "ingest"}, role="replica")
    p.durability.close()
    again = Parts(tmp_path)
    try:
        again.durability.restore({TALLY: Tally})
        assert again.subscribed == {TOPIC}  # a replica is fed only once promoted
        assert {r.id for r in again.residents.all()} == {"prim", "rep"}
    finally:
        again.durability.close()
    other = Parts(tmp_path)
    try:
        other.durability.restore({})
        assert len(other.residents) == 0
        assert [q.kind for q in other.residents.quarantine.all()] == ["class", "class"]
    finally:
        other.durability.close()


def test_delete(parts: Parts) -> None:
    parts.create(feeds={TOPIC: "ingest"})
    assert parts.durability.delete("o") == {"id": "o", "deleted": True}
    assert parts.subscribed == set() and parts.residents.get("o") is None
    with pytest.raises(ObjectNotHere):
        parts.durability.delete("o")
    parts.residents.quarantine.add(Quarantined("q", "bad disk", "storage"))
    assert parts.durability.delete("q") == {"id": "q", "deleted": True}
    assert len(parts.residents.quarantine) == 0


def test_residents_refuse_what_is_not_served_as_asked() -> None:
    r = Residents("n1")
    rep = Resident("rep", TALLY, Tally(), role="replica")
    r.put(rep)
    with pytest.raises(ObjectNotHere):
        r.primary("rep")
    with pytest.raises(ObjectNotHere):
        r.held("rep")
    assert r.held("rep", any_role=True) is rep
    assert r.listing()[0]["role"] == "replica"
    assert Resident.from_record(rep.record()).role == "replica"


def test_without_a_store_only_bookkeeping_is_done() -> None:
    p = Parts(None)
    res = p.create()
    p.add(res, 4, "r1")
    assert res.seq == 1 and res.journaled == 0 and res.once.get("r1") == (True, 4)
