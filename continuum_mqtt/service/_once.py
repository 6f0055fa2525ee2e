"""Exactly-once by request id: :class:`ExactlyOnce`.

A request that changes something is run once per request id. A resend (the
client's after a reconnect, the broker's redelivery) gets the first run's
outcome; while the first run is still in flight a resend gets no reply at all
(the first run's reply answers it). Outcomes live in an :class:`OutcomeStore`:
:class:`MemoryOutcomes` (bounded by entries and bytes; a node keeps one per
object, in its checkpoints) or the service's own (the gateway's is its SQLite
directory, where an outcome is written in the same transaction as the change
it reports).

An outcome whose error code is ``storage`` is never stored: the change was not
made durable and was undone, so a retry with the same id must run again.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from .._codec import decode, encode
from .._errors import ContinuumError, StorageError
from ._reply import Outcome

__all__ = ["Claim", "ExactlyOnce", "MemoryOutcomes", "OutcomeStore"]


class OutcomeStore(Protocol):
    """Where :class:`ExactlyOnce` keeps outcomes. ``put`` keeps the first
    outcome of an id (a later one for the same id is ignored)."""

    def get(self, rid: str) -> Outcome | None: ...

    def put(self, rid: str, method: str, outcome: Outcome) -> None: ...


_Kept = tuple[bool, object, bool]  # (ok, value or its CBOR, whether encoded)


def _keep(outcome: Outcome) -> tuple[_Kept, int]:
    """An outcome as kept, and its size: CBOR (what a resend sends anyway,
    about a seventh of the Python objects' memory: a trained forecaster's
    result is 421 bytes against 3 KiB), else the value itself."""
    try:
        data = encode(outcome[1])
    except ContinuumError:  # not encodable (a node journals such outcomes by snapshot)
        return (outcome[0], outcome[1], False), sys.getsizeof(outcome[1]) + 16
    return (outcome[0], data, True), len(data) + 16


def _outcome(kept: _Kept) -> Outcome:
    ok, value, encoded = kept
    return (ok, decode(value) if encoded else value)  # type: ignore[arg-type]


class MemoryOutcomes:
    """Outcomes in memory, kept per caller: a request id scoped to its caller
    (``<caller>/<id>``, :func:`~continuum_mqtt.service.scoped_id`) counts against
    that caller's bounds only, so one caller's traffic never pushes another's
    outcomes out. Per caller, the oldest are dropped first beyond
    ``max_entries`` or ``max_bytes`` (their encoded size; the newest is always
    kept; kept as CBOR, decoded when asked for). ``initial``: outcomes to
    start with, oldest first (from a checkpoint)."""

    def __init__(
        self,
        initial: Mapping[str, Outcome] | None = None,
        *,
        max_entries: int = 1024,
        max_bytes: int = 16 << 20,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: dict[str, tuple[_Kept, int]] = {}
        self._callers: dict[str, OrderedDict[str, int]] = {}  # caller -> its ids, oldest first
        self._caller_bytes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        for rid, outcome in (initial or {}).items():
            self.put(rid, "", (bool(outcome[0]), outcome[1]))

    def get(self, rid: str) -> Outcome | None:
        found = self._items.get(rid)
        return _outcome(found[0]) if found is not None else None

    def put(self, rid: str, method: str, outcome: Outcome) -> None:
        caller = rid.partition("/")[0] if "/" in rid else ""
        if rid in self._items:
            return
        kept, size = _keep(outcome)
        with self._lock:
            if rid in self._items:
                return
            self._items[rid] = (kept, size)
            ids = self._callers.setdefault(caller, OrderedDict())
            ids[rid] = size
            self._bytes += size
            used = self._caller_bytes[caller] = self._caller_bytes.get(caller, 0) + size
            while len(ids) > 1 and (len(ids) > self.max_entries or used > self.max_bytes):
                old, dropped = ids.popitem(last=False)
                del self._items[old]
                used -= dropped
                self._bytes -= dropped
            self._caller_bytes[caller] = used

    def snapshot(self) -> dict[str, Outcome]:
        """Every outcome kept, each caller's oldest first (for a checkpoint)."""
        with self._lock:
            kept = [(rid, self._items[rid][0]) for ids in self._callers.values() for rid in ids]
        return {rid: _outcome(k) for rid, k in kept}

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __contains__(self, rid: object) -> bool:
        return rid in self._items


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`ExactlyOnce.begin` found for a request id."""

    state: Literal["new", "running", "done"]
    outcome: Outcome | None = None

    @property
    def new(self) -> bool:
        """First seen: it is now in flight; :meth:`ExactlyOnce.finish` or
        :meth:`ExactlyOnce.abandon` it."""
        return self.state == "new"

    @property
    def running(self) -> bool:
        """A resend while the first run is in flight: send no reply."""
        return self.state == "running"

    @property
    def done(self) -> bool:
        """Answered before: send :attr:`outcome` again (:func:`answer`)."""
        return self.state == "done"


_NEW = Claim("new")
_RUNNING = Claim("running")


class ExactlyOnce:
    """The exactly-once table: outcomes by request id (in ``store``) and the
    ids in flight. Thread-safe.

    ::

        claim = once.begin(req.id)
        if claim.running:
            return                          # the first run will answer
        if claim.done:
            answer(chan, claim.outcome)     # the first outcome, again
            return
        outcome = run(req)                  # (True, value) or (False, envelope)
        once.finish(req.id, outcome, method=req.method)
        answer(chan, outcome)
    """

    def __init__(self, store: OutcomeStore | None = None) -> None:
        self.store: OutcomeStore = store if store is not None else MemoryOutcomes()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()

    def begin(self, rid: str) -> Claim:
        """Look ``rid`` up; when it is new, mark it in flight."""
        with self._lock:
            if rid in self._inflight:
                return _RUNNING
            done = self.store.get(rid)
            if done is not None:
                return Claim("done", done)
            self._inflight.add(rid)
            return _NEW

    def finish(
        self, rid: str | None, outcome: Outcome, *, method: str = "", stored: bool = False
    ) -> None:
        """Record the outcome of ``rid`` (unless ``stored``: the service wrote it
        with its change already) and take it out of flight. An outcome with
        error code ``storage`` is not recorded. Also for outcomes never begun
        here (replaying a journal, applying a primary's call on a replica)."""
        if rid is None:
            return
        try:
            if not stored and not _undone(outcome):
                self.store.put(rid, method, outcome)
        finally:
            with self._lock:
                self._inflight.discard(rid)

    def record(self, rid: str | None, outcome: Outcome, *, method: str = "") -> None:
        r"""Store the outcome of ``rid`` but keep it in flight: a resend gets no
        reply until the caller :meth:`abandon`\ s it, once the outcome is
        durable (and replicated) and may be answered. An outcome with error
        code ``storage`` is not recorded."""
        if rid is not None and not _undone(outcome):
            self.store.put(rid, method, outcome)

    def abandon(self, rid: str | None) -> None:
        """Take ``rid`` out of flight without an outcome (it did not run, or it
        changes nothing: a resend runs it again)."""
        if rid is not None:
            with self._lock:
                self._inflight.discard(rid)

    def get(self, rid: str) -> Outcome | None:
        """The stored outcome of ``rid``, if any."""
        return self.store.get(rid)

    def running(self, rid: str) -> bool:
        return rid in self._inflight

    @property
    def inflight(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._inflight)


def _undone(outcome: Outcome) -> bool:
    ok, value = outcome
    return not ok and isinstance(value, dict) and value.get("code") == StorageError.code
