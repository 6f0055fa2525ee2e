"""Feed samples waiting for room in their object's mailbox.

A sample counts against its object's mailbox bound, its device's quotas and
the node's bounds like a call (:mod:`continuum_node._quotas`); but where a
call is refused, a sample is never dropped nor acknowledged before it has
run. One that finds no room waits here, unacknowledged, in its object's
*backlog*, and every later sample of that object waits behind it (their
order holds). The backlog moves into the mailbox as room comes back: after
each job of the object and at every tick of the node. It does not count
against the node's call bounds, so a device that floods its own blocked
object does not make the node ``busy`` for anyone else.

A backlog is bounded (``bound`` samples per object): :meth:`Backlog.add`
says when it is full, and the feed router then stops routing that topic's
samples: it parks them, unacknowledged, until every object the topic feeds
has drained its backlog below half the bound (:meth:`Backlog.has_room`;
:meth:`Backlog.drain` says when that happens, and the node's tick looks
too).
Nothing is lost: what is parked or in a backlog is acknowledged only once
it has run and been committed, as every sample.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BACKLOG", "Backlog"]

BACKLOG = 1_000  # samples one object's backlog holds before its topic is parked

K = TypeVar("K")  # an object (resident)
J = TypeVar("J")  # a sample's job


class Backlog(Generic[K, J]):
    """``offer(obj, job)`` queues a job if the bounds let it (returns
    whether it did)."""

    def __init__(self, offer: Callable[[K, J], bool], bound: int = BACKLOG) -> None:
        self._offer = offer
        self.bound = bound
        self._waiting: dict[K, deque[J]] = {}
        self._draining: set[K] = set()
        self._full: set[K] = set()  # objects that refused a sample since their last room
        # held while queueing, so that a sample never passes those waiting; an
        # RLock: an inline executor runs the queued job (and its drain) inside
        self._lock = threading.RLock()

    def __len__(self) -> int:
        """Samples waiting, all objects."""
        with self._lock:
            return sum(len(q) for q in self._waiting.values())

    def waiting(self, obj: K) -> int:
        q = self._waiting.get(obj)
        return len(q) if q is not None else 0

    def add(self, obj: K, job: J) -> bool:
        """Queue ``job`` for ``obj``, or keep it behind the samples waiting
        already. False once ``obj``'s backlog is at its bound."""
        with self._lock:
            q = self._waiting.get(obj)
            if q is None:
                if self._offer(obj, job):
                    return True
                q = self._waiting[obj] = deque()
            q.append(job)
            if len(q) < self.bound:
                return True
            self._full.add(obj)
            return False

    def has_room(self, obj: K) -> bool:
        """Whether ``obj`` may take samples of a parked topic again."""
        left = self.waiting(obj)
        return left == 0 or 2 * left < self.bound

    def drain(self, obj: K) -> bool:
        """Move ``obj``'s waiting samples into its mailbox while there is room.
        True when ``obj`` was full and has room again (its parked topics may go on)."""
        if obj not in self._waiting:
            return False
        with self._lock:
            if obj in self._draining:  # nested (an inline executor): the outer one goes on
                return False
            self._draining.add(obj)
            try:
                q = self._waiting.get(obj)
                while q and self._offer(obj, q[0]):
                    q.popleft()
                if q is not None and not q:
                    self._waiting.pop(obj, None)
                if obj in self._full and self.has_room(obj):
                    self._full.discard(obj)
                    return True
                return False
            finally:
                self._draining.discard(obj)

    def drain_all(self) -> bool:
        """:meth:`drain` every object (room may have come from other callers)."""
        room = False
        for obj in list(self._waiting):
            room = self.drain(obj) or room
        return room
