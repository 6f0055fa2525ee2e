"""Actors: every object has a mailbox, drained by a shared worker pool.

The first job queued for an actor submits a drain task; the task runs up to
``batch`` jobs and resubmits itself while jobs remain, so a busy actor cannot
starve the others. Jobs of one actor therefore never overlap and run in
arrival order; jobs of different actors run in parallel, up to the pool size.
What may wait is bounded per actor (``max_queue``) and in all
(``max_node_queue``): the caller asks :meth:`Scheduler.full` before queueing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["BATCH", "Actor", "Scheduler"]

log = logging.getLogger("continuum.node")

BATCH = 32  # jobs an actor runs before yielding its worker to other actors


class Actor:
    """A mailbox and whether a drain task is scheduled for it. ``lock`` guards
    both (and whatever else the subclass keeps beside them)."""

    __slots__ = ("lock", "mailbox", "scheduled")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mailbox: deque[Any] = deque()
        self.scheduled = False


A = TypeVar("A", bound=Actor)
J = TypeVar("J")


class Scheduler(Generic[A, J]):
    """Runs ``run(actor, job)`` for every queued job, per actor in order.

    ``submit`` is an executor's submit; ``crashed(actor, job)`` is called
    (inside the ``except`` block) when ``run`` raises; the actor goes on with
    its next job."""

    def __init__(
        self,
        submit: Callable[..., Any],
        run: Callable[[A, J], None],
        *,
        max_queue: int,
        max_node_queue: int,
        crashed: Callable[[A, J], None] | None = None,
        batch: int = BATCH,
    ) -> None:
        self._submit = submit
        self._run = run
        self._crashed = crashed
        self.max_queue = max_queue
        self.max_node_queue = max_node_queue
        self.batch = batch
        self._queued = 0  # jobs waiting in all mailboxes
        self._queued_lock = threading.Lock()

    @property
    def queued(self) -> int:
        return self._queued

    def full(self, actor: A) -> bool:
        """Whether a new job for ``actor`` must be refused (the caller holds
        ``actor.lock`` when the answer must hold until it queues)."""
        return len(actor.mailbox) >= self.max_queue or self._queued >= self.max_node_queue

    def enqueue(self, actor: A, job: J) -> None:
        self._count(1)
        with actor.lock:
            actor.mailbox.append(job)
            if actor.scheduled:
                return
            actor.scheduled = True
        self._submit(self._drain, actor)

    def requeue_first(self, actor: A, take: Callable[[], Iterable[J]]) -> bool:
        """Put the jobs ``take()`` returns in front of ``actor``'s mailbox, in
        their order; only while no drain task runs it (so that the order
        holds). Returns False, taking nothing, when one does."""
        with actor.lock:
            if actor.scheduled:
                return False
            jobs = list(take())
            actor.mailbox.extendleft(reversed(jobs))
            actor.scheduled = bool(jobs)
        self._count(len(jobs))
        if jobs:
            self._submit(self._drain, actor)
        return True

    def _count(self, n: int) -> None:
        with self._queued_lock:
            self._queued += n

    def _drain(self, actor: A) -> None:
        for _ in range(self.batch):
            with actor.lock:
                if not actor.mailbox:
                    actor.scheduled = False
                    return
                job = actor.mailbox.popleft()
            self._count(-1)
            try:
                self._run(actor, job)
            except Exception:  # never leave the actor wedged (scheduled, never drained)
                if self._crashed is None:
                    log.exception("a job on %r failed in the node", actor)
                else:
                    self._crashed(actor, job)  # in the except block: it may log.exception
        self._submit(self._drain, actor)  # still scheduled: let other actors in
