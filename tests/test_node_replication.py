"""continuum_node._replication: what a primary ships, how a replica takes it, and
fencing; with the node-to-node requests replaced by a function."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from continuum_node._durability import Durability
from continuum_node._feeds import Bindings
from continuum_node._replication import Replication
from continuum_node._resident import Resident, Residents
from continuum_node._store import dumps_state

from continuum_mqtt import BadRequest, ObjectNotHere, StorageError, UnknownClass
from continuum_mqtt.service import Request, Topics

from ._nodekit import TALLY, Tally

TOPICS = Topics("continuum/v1")


class Peer:
    """Stands in for the replicas: records syncs, answers from ``answers``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[BaseException | dict[str, Any]] = []

    def send(self, topic: str, req: Request, timeout: float) -> Future[Any]:
        self.sent.append((topic.split("/")[-2], req.kwargs))
        fut: Future[Any] = Future()
        answer = self.answers.pop(0) if self.answers else {"ok": True}
        if isinstance(answer, BaseException):
            fut.set_exception(answer)
        else:
            fut.set_result(answer)
        return fut


def _replication(
    online: set[str], store: Any = None, node: str = "n1"
) -> tuple[Replication, Peer, Residents]:
    residents = Residents(node)
    bindings = Bindings(lambda t: None, lambda t: None)
    durability = Durability(store, residents, bindings)
    peer = Peer()
    rep = Replication(
        node,
        TOPICS,
        peer.send,
        residents,
        durability,
        bindings,
        {TALLY: Tally},
        online.__contains__,
    )
    return rep, peer, residents


def _entry(seq: int, n: int = 1) -> dict[str, Any]:
    return {
        "seq": seq,
        "method": "add",
        "args": [n],
        "kwargs": {},
        "rid": f"r{seq}",
        "ok": True,
        "value": n,
    }


def test_a_call_is_shipped_to_the_live_replicas_only() -> None:
    rep, peer, _ = _replication({"n2"})
    res = Resident("o", TALLY, Tally(), replicas=["n2", "n3"])
    rep.replicate(res, _entry(1))
    assert [(n, sorted(kw)) for n, kw in peer.sent] == [("n2", ["apply", "cls", "obj", "primary"])]
    assert peer.sent[0][1]["primary"] == "n1"


def test_a_replica_behind_gets_the_whole_state_and_a_silent_one_is_skipped() -> None:
    rep, peer, _ = _replication({"n2", "n3"})
    res = Resident("o", TALLY, Tally(), replicas=["n2", "n3"])
    peer.answers = [
        ObjectNotHere("behind", resync=True),
        StorageError("full"),
        {"ok": True},
        StorageError("still full"),
    ]
    rep.replicate(res, _entry(1))  # n3's failure is logged, the call stands
    assert [(n, "state" in kw) for n, kw in peer.sent] == [
        ("n2", False),
        ("n3", False),
        ("n2", True),
        ("n3", True),
    ]


def test_a_primary_told_it_is_fenced_drops_its_copy() -> None:
    rep, peer, residents = _replication({"n2"})
    res = Resident("o", TALLY, Tally(), replicas=["n2"])
    residents.put(res)
    peer.answers = [ObjectNotHere("primary here", fenced=True)]
    with pytest.raises(ObjectNotHere) as caught:
        rep.replicate(res, _entry(1))
    assert caught.value.data["node"] == "n1" and residents.get("o") is None


def test_a_replica_takes_state_and_applies_calls_in_sequence() -> None:
    rep, _, residents = _replication(set(), node="n2")
    primary = Resident("o", TALLY, Tally(), replicas=["n2"])
    kw = {"obj": "o", "cls": TALLY, "primary": "n1"}
    assert rep.receive({**kw, "state": dumps_state(primary.record())}) == {"id": "o", "node": "n2"}
    copy = residents.get("o")
    assert copy is not None and copy.role == "replica" and copy.replicas == []
    assert rep.receive({**kw, "apply": _entry(1, 5)})["seq"] == 1
    assert copy.instance.value == 5 and copy.once.get("r1") == (True, 5)
    with pytest.raises(ObjectNotHere) as behind:
        rep.receive({**kw, "apply": _entry(3)})  # 2 is missing
    assert behind.value.data["resync"] is True
    with pytest.raises(UnknownClass):
        rep.receive({**kw, "cls": "x.Other", "apply": _entry(2)})
    with pytest.raises(BadRequest):
        rep.receive({**kw, "state": "not bytes"})
    with pytest.raises(KeyError):
        rep.receive({"cls": TALLY})


def test_a_promoted_replica_refuses_syncs() -> None:
    rep, _, _ = _replication(set(), node="n2")
    kw = {"obj": "o", "cls": TALLY, "primary": "n1"}
    state = dumps_state(Resident("o", TALLY, Tally()).record())
    rep.receive({**kw, "state": state})
    assert rep.promote("o", ["n2"]) == {"id": "o", "node": "n2", "replicas": []}
    for sync in ({"apply": _entry(1)}, {"state": state}):
        with pytest.raises(ObjectNotHere) as fenced:
            rep.receive({**kw, **sync})
        assert fenced.value.data["fenced"] is True


def test_a_state_that_cannot_be_persisted_leaves_the_old_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continuum_node import _store
    from continuum_node._store import Store

    store = Store(tmp_path)
    rep, _, residents = _replication(set(), store=store, node="n2")
    kw = {"obj": "o", "cls": TALLY, "primary": "n1"}
    rep.receive({**kw, "state": dumps_state(Resident("o", TALLY, Tally(3)).record())})
    before = residents.get("o")

    def full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_store, "_write_all", full)
    with pytest.raises(StorageError):
        rep.receive({**kw, "state": dumps_state(Resident("o", TALLY, Tally(9)).record())})
    assert residents.get("o") is before
    store.close()
