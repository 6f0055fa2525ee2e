"""Durability: an object's life on the node's disk, over :class:`Store`.

A mutating call is *committed* before its caller hears of it: its outcome is
kept for exactly-once and, on a durable node (``--state-dir``), journaled
(or the whole object checkpointed). A call whose journal entry would carry
more than ``MAX_JOURNALED`` request bytes, or that failed, is checkpointed
instead: its arguments are never written, so failing or big calls cost the
object's size once rather than growing the journal by their arguments each
time, and a replay never runs a failed call again (one that failed for a
passing reason could succeed then, and the object would differ). A change that cannot be made durable is
*rolled back*: the object is reloaded from its files, which undoes the change
and its stored outcome (or quarantines the object when they cannot be read);
reloading costs nothing until a write fails, where copying the object before
every call would cost on every call. At start the node *restores* its objects
from their checkpoints and journals. Without a store, only the in-memory
bookkeeping is done.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from continuum_mqtt import ContinuumError, ObjectNotHere, StorageError, UnencodableResult
from continuum_mqtt.service import Outcome, Request, canonical_class_path, invoke

from ._feeds import Bindings
from ._quarantine import Quarantined
from ._resident import Resident, Residents
from ._store import Store, Unloadable

__all__ = ["LOADED", "MAX_JOURNALED", "Durability", "Woken"]

log = logging.getLogger("continuum.node")

MAX_JOURNALED = 64 * 1024  # request bytes above which a call is checkpointed, not journaled


Woken = Literal["reloaded", "resident", "gone", "quarantined"]
LOADED = ("reloaded", "resident")  # what Durability.wake says when the instance is there


@dataclass(eq=False, repr=False)
class Durability:
    """Over ``store`` (None: a node without ``--state-dir``); a full checkpoint
    after ``checkpoint_every`` journaled calls."""

    store: Store | None
    residents: Residents
    bindings: Bindings
    checkpoint_every: int = 1000

    def persist(self, res: Resident) -> None:
        """Checkpoint the whole object (durable node only; an evicted one is
        reloaded first: a control change to it keeps its stub's fields)."""
        if self.store is not None:
            if res.instance is None and self.wake(res) not in LOADED:
                raise self.residents.not_here(res.id)
            self.store.checkpoint(res.id, res.record())
            res.journaled = 0

    def persist_or_rollback(self, res: Resident) -> None:
        """Checkpoint a changed object; on StorageError it is rolled back first."""
        try:
            self.persist(res)
        except StorageError:
            self.rollback(res)
            raise

    def commit(
        self, res: Resident, req: Request, outcome: Outcome, snapshot: bool, size: int = 0
    ) -> dict[str, Any]:
        """Make a mutating call durable (journal entry, or a checkpoint for a
        ``snapshot`` method, a failed call, a request of more than
        MAX_JOURNALED bytes (``size``), or every ``checkpoint_every`` calls);
        returns its journal entry (what replicas apply). On any failure the
        call is undone (rolled back, its outcome not kept) and the error raised."""
        res.seq += 1
        # stored (the checkpoint must hold it) but still in flight: a resend
        # gets no reply until the call is durable and replicated (Calls.commit)
        res.once.record(req.id, outcome, method=req.method)
        entry = {
            "seq": res.seq,
            "method": req.method,
            "args": req.args,
            "kwargs": req.kwargs,
            "rid": req.id,
            "ok": outcome[0],
            "value": outcome[1],
        }
        if self.store is not None:
            try:
                if (
                    snapshot
                    or not outcome[0]
                    or size > MAX_JOURNALED
                    or res.journaled >= self.checkpoint_every
                ):
                    self.persist(res)
                else:
                    try:
                        self.store.append(res.id, entry)
                        res.journaled += 1
                    except UnencodableResult:  # the outcome cannot be journaled: checkpoint
                        self.persist(res)
            except Exception:  # not durable: not acknowledged, not remembered, undone
                self.rollback(res)
                raise
        return entry

    def rollback(self, res: Resident) -> None:
        """Put ``res`` back as its files hold it, or quarantine it when they
        cannot be read."""
        assert self.store is not None
        fed = res.fed_topics
        try:
            fresh = self.revive(*self.store.reload(res.id))
        except Unloadable as exc:
            self._quarantine(res, fed, exc)
            return
        res.take_state_of(fresh)
        self.bindings.refeed(res, fed, res.fed_topics)
        log.warning("%s rolled back to its last durable state (seq %d)", res.id, res.seq)

    def _quarantine(self, res: Resident, fed: set[str], exc: Unloadable) -> None:
        with self.residents.lock:
            self.residents.pop(res.id)
        self.bindings.refeed(res, fed, set())
        self.residents.quarantine.add(exc.quarantined)

    def wake(self, res: Resident) -> Woken:
        """Reload an evicted object's instance and outcomes from its files
        (the stub's feeds, aliases, access and role stand): ``"reloaded"``
        now, ``"resident"`` (another thread reloaded it first), ``"gone"``
        (it left the node) or ``"quarantined"`` (its files cannot be loaded)."""
        with res.state:
            if res.instance is not None:
                return "resident"
            assert self.store is not None, "only a durable node evicts"
            if not self.residents.holds(res):
                return "gone"
            try:
                fresh = self.revive(*self.store.reload(res.id))
            except Unloadable as exc:
                if not self.residents.holds(res):  # deleted meanwhile: its files went
                    return "gone"
                log.error("%s cannot be reloaded: %s", res.id, exc)
                self._quarantine(res, res.fed_topics, exc)
                return "quarantined"
            res.take_instance_of(fresh)
        log.debug("%s reloaded (seq %d)", res.id, res.seq)
        return "reloaded"

    @staticmethod
    def revive(rec: dict[str, Any], journal: list[dict[str, Any]]) -> Resident:
        """An object from its checkpoint record and the journal entries after it."""
        res = Resident.from_record(rec)
        for entry in journal:  # the calls made after the checkpoint, in order
            with contextlib.suppress(ContinuumError):
                invoke(res.instance, entry["method"], entry["args"], entry["kwargs"])
            res.seq = entry["seq"]
            if entry.get("rid") is not None:
                res.once.finish(entry["rid"], (entry["ok"], entry["value"]), method=entry["method"])
        res.journaled = len(journal)
        return res

    def restore(self, classes: dict[str, type], resident: int | None = None) -> None:
        """At start: every object in the store, loaded (primaries fed again) or
        quarantined; beyond ``resident`` loaded objects, primaries are left
        evicted (a stub: :mod:`continuum_node._eviction`), one read at a time."""
        store = self.store
        if store is None:
            return
        quarantine = self.residents.quarantine
        loaded = [0]

        def restore_one(found: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
            rec, journal = found
            rec["class"] = canonical_class_path(rec.get("class", ""))
            if rec["class"] not in classes:
                why = f"class {rec.get('class')} is not hosted by this node (see --module)"
                quarantine.add(Quarantined.from_record(rec, why, "class"))
                return
            res = self.revive(rec, journal)
            if resident is not None and res.role == "primary" and loaded[0] >= resident:
                res.drop()  # its files hold it: reloaded on its next job
                store.release(res.id)
            else:
                loaded[0] += 1
            self.residents.put(res)
            self.bindings.refeed(res, set(), res.fed_topics)

        for q in store.inventory(restore_one).quarantined:
            quarantine.add(q)
        if len(self.residents) or len(quarantine):
            log.info(
                "restored %d object(s) from %s, %d quarantined",
                len(self.residents),
                store.dir,
                len(quarantine),
            )

    def delete(self, obj: str) -> dict[str, Any]:
        """The object leaves the node: table, feeds and files (a quarantined
        one's moved-aside files are archived, never erased)."""
        with self.residents.lock:
            res = self.residents.pop(obj)
        if res is None and (q := self.residents.quarantine.pop(obj)) is not None:
            if self.store is not None:
                self.store.discard_quarantined(q)
            log.warning("deleted quarantined object %s (%s)", obj, q.reason)
            return {"id": obj, "deleted": True}
        if res is None:
            node = self.residents.node_id
            raise ObjectNotHere(f"object {obj} is not on node {node}", node=node)
        self.bindings.remove_all(res)
        if self.store is not None:
            self.store.delete(obj)
        log.info("deleted %s %s", res.cls_path, obj)
        return {"id": obj, "deleted": True}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
