"""Resident objects: one hosted object with its mailbox and its record, and
the node's table of them.

An object's *record* (:meth:`Resident.record`) is everything that makes it up:
what checkpoints hold and what a primary ships to its replicas.

A durable node may *evict* an idle object (:mod:`continuum_node._eviction`):
its instance and outcomes are dropped (they are in its files) and the
resident stays as a stub (id, class, owner and grants, feeds, aliases,
replicas, mailbox) until a job reloads it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from continuum_mqtt import ContinuumError, ObjectNotHere
from continuum_mqtt.service import ANONYMOUS, Access, ExactlyOnce, MemoryOutcomes, Outcome

from ._actors import Actor
from ._quarantine import Quarantine, list_entry

__all__ = ["EVICTED", "Resident", "Residents"]


class _Evicted(MemoryOutcomes):
    """The outcomes of an evicted object: in its files, none in memory (a
    call reloads them before it runs); nothing may be stored here."""

    def put(self, rid: str, method: str, outcome: Outcome) -> None:
        raise AssertionError("an evicted object's outcomes are in its files")


EVICTED = _Evicted(max_entries=0)


class Resident(Actor):
    """One object and its mailbox (an :class:`~continuum_node._actors.Actor`)."""

    __slots__ = (
        "access",
        "aliases",
        "cls_path",
        "feeds",
        "id",
        "instance",
        "journaled",
        "klass",
        "once",
        "outcomes",
        "pins",
        "probation",
        "replicas",
        "role",
        "seq",
        "state",
        "used",
    )

    def __init__(
        self,
        oid: str,
        cls_path: str,
        instance: Any,
        feeds: dict[str, str] | None = None,
        results: dict[str, Outcome] | None = None,
        role: str = "primary",
        replicas: list[str] | None = None,
        aliases: list[str] | None = None,
        access: Access | None = None,
    ) -> None:
        super().__init__()
        self.id = oid
        # its owner and grants (protocol.md section 21): the node checks every
        # call against them itself
        self.access = access or Access()
        self.aliases: list[str] = list(aliases or [])  # the directory's names for it
        # A primary serves calls and ships its state to its replicas after each
        # mutating call; a replica only holds the latest state until promoted.
        self.role = role
        self.replicas: list[str] = list(replicas or [])
        self.seq = 0  # mutating calls applied, ever (journal entries carry it)
        self.journaled = 0  # calls in the journal since the last checkpoint
        self.cls_path = cls_path
        self.instance = instance
        self.klass: type = type(instance)  # kept while evicted (instance None)
        self.used = time.monotonic()  # its last job (least recently used goes first)
        self.pins = 0  # jobs running on it (under ``lock``): never evicted meanwhile
        self.probation = False  # reloaded, and no job since: evicted before the others
        self.feeds: dict[str, str] = dict(feeds or {})  # topic -> active method
        # exactly-once: the outcomes of recent mutating calls by request id (in
        # the record), and the ids queued or running
        self.outcomes = MemoryOutcomes(results)
        self.once = ExactlyOnce(self.outcomes)
        # Held while the object's state changes and is made durable: a mutating
        # call (run + commit), a control change (bind, unbind, aliases,
        # promote) and a replica's apply. The mailbox runs one call at a time;
        # this keeps control requests, which run beside it, from checkpointing
        # a half-applied call or truncating a journal entry just acknowledged.
        self.state = threading.RLock()

    def __repr__(self) -> str:
        return f"<{self.cls_path} {self.id} ({self.role})>"

    @property
    def resident(self) -> bool:
        """Whether its instance is in memory (False: evicted to its files)."""
        return self.instance is not None

    def drop(self) -> None:
        """Evict: forget the instance and outcomes (its files hold them)."""
        self.instance = None
        self.outcomes = self.once.store = EVICTED

    @property
    def fed_topics(self) -> set[str]:
        """The topics that feed it now: a replica is fed only once promoted."""
        return set(self.feeds) if self.role == "primary" else set()

    def record(self) -> dict[str, Any]:
        assert self.instance is not None, f"{self.id} is evicted: its record is in its files"
        return {
            "id": self.id,
            "class": self.cls_path,
            "feeds": self.feeds,
            "results": self.outcomes.snapshot(),
            "role": self.role,
            "replicas": self.replicas,
            "aliases": self.aliases,
            **self.access.wire(),
            "seq": self.seq,
            "instance": self.instance,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Resident:
        res = cls(
            rec["id"],
            rec["class"],
            rec["instance"],
            rec.get("feeds"),
            rec.get("results"),
            rec.get("role", "primary"),
            rec.get("replicas"),
            rec.get("aliases"),
            Access.of(rec.get("owner", ANONYMOUS), rec.get("grants", [])),
        )
        res.seq = rec.get("seq", 0)
        return res

    def take_state_of(self, other: Resident) -> None:
        """Become ``other`` (a fresh load of this object), keeping the mailbox
        and the calls in flight (a resend of a queued call must not queue it
        again)."""
        with self.lock:
            self.instance, self.seq, self.journaled = other.instance, other.seq, other.journaled
            self.klass = other.klass
            self.outcomes = self.once.store = other.outcomes
            self.feeds, self.aliases, self.access = other.feeds, other.aliases, other.access
            self.role, self.replicas = other.role, other.replicas

    def take_instance_of(self, other: Resident) -> None:
        """Reloaded after an eviction (``other``: a fresh load): take its
        instance and outcomes; the feeds, aliases, access and role kept in
        the stub stand (a control change may have set them just now)."""
        with self.lock:
            self.instance, self.klass = other.instance, other.klass
            self.seq, self.journaled = other.seq, other.journaled
            self.outcomes = self.once.store = other.outcomes

    def listing(self) -> dict[str, Any]:
        """Its node control ``list`` entry (protocol §17): ``resident`` false
        while it is evicted (absent while loaded, as from nodes that never evict)."""
        entry = {
            **list_entry(
                self.id, self.cls_path, self.feeds, self.role, self.replicas, self.aliases
            ),
            **self.access.wire(),
        }
        if self.instance is None:
            entry["resident"] = False
        return entry


class Residents:
    """The objects a node holds (any role), and its quarantined ones.

    Reads take no lock (a dict read is atomic); ``lock`` serialises changes
    that must check and change the table at once (create, sync)."""

    def __init__(self, node_id: str, quarantine: Quarantine | None = None) -> None:
        self.node_id = node_id
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        self.lock = threading.Lock()
        self._objects: dict[str, Resident] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, oid: str) -> Resident | None:
        return self._objects.get(oid)

    def all(self) -> list[Resident]:
        return list(self._objects.values())

    def holds(self, res: Resident) -> bool:
        """Whether ``res`` is still served here (not deleted, fenced or
        quarantined since a job for it was queued)."""
        return self._objects.get(res.id) is res

    def put(self, res: Resident) -> None:
        self._objects[res.id] = res

    def pop(self, oid: str) -> Resident | None:
        return self._objects.pop(oid, None)

    def primary(self, oid: str) -> Resident:
        """The object, held here as primary, or the error a call on it gets."""
        res = self._objects.get(oid)
        if res is None or res.role != "primary":
            raise self.not_here(oid)
        return res

    def held(self, oid: str, any_role: bool = False) -> Resident:
        """The object for a control request: a primary (any role with
        ``any_role``), else ``unavailable`` (quarantined) or ``object_not_here``."""
        res = self._objects.get(oid)
        if res is not None and (any_role or res.role == "primary"):
            return res
        if res is None and (q := self.quarantine.get(oid)) is not None:
            raise q.error(self.node_id)
        raise ObjectNotHere(f"object {oid} is not on node {self.node_id}", node=self.node_id)

    def not_here(self, oid: str) -> ContinuumError:
        """Why a call on ``oid`` is refused: quarantined, or not held as primary."""
        q = self.quarantine.get(oid)
        if q is not None:
            return q.error(self.node_id)
        return ObjectNotHere(f"object {oid} is not on node {self.node_id}", node=self.node_id)

    def listing(self) -> list[dict[str, Any]]:
        """The node control ``list`` answer: held objects, then quarantined ones."""
        return [r.listing() for r in self.all()] + [q.listing() for q in self.quarantine.all()]

    def resident(self) -> int:
        """Objects whose instance is in memory (status ``resident``)."""
        return sum(1 for r in self.all() if r.instance is not None)

    def count(self) -> int:
        """Objects held, any role, quarantined included (status ``objects``)."""
        return len(self._objects) + len(self.quarantine)
