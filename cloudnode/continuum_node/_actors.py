"""Actors: every object has a mailbox; a worker pool drains them, fairly
between callers.

Jobs of one actor never overlap and run in arrival order; jobs of different
actors run in parallel, up to ``workers`` at once. Each job belongs to a
*caller* (``caller(job)``: the account that sent the call, the device of a
feed sample). An actor with jobs and no worker waits in line for the caller
of its first job; a free worker serves the callers in turn (round robin), each
caller's actors first come first served, and never runs more than
``caller_workers`` jobs of one caller at once. So one caller's long calls,
however many objects they hold, leave the other callers their workers.

A worker task runs up to ``batch`` jobs of the actor it took, and yields
earlier when the next job belongs to a caller at its share or when other
callers wait for a worker; then it takes the next turn in a new task.

Jobs may be *long* (``long(actor, job)``: a method marked
``@active(long=True)``): with a long-call budget (:meth:`Scheduler.limit_long`),
at most ``long_workers`` of them run at once, node-wide; a long job beyond
waits in line while the light jobs of its caller's other actors, and of the
other callers, take the free workers. So a training storm keeps at most that
many cores computing and the others for the network and light calls.

What may wait is bounded per actor (``max_queue``), in all
(``max_node_queue``), and, for each caller and in bytes, by the
:class:`~continuum_node._quotas.Ledger`: :meth:`Scheduler.offer` checks the
bounds and queues at once.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from ._quotas import Ledger, Quotas, Refusal

__all__ = ["BATCH", "Actor", "Scheduler"]

log = logging.getLogger("continuum.node")

BATCH = 32  # jobs an actor runs before yielding its worker to other actors


class Actor:
    """A mailbox; ``scheduled`` while it waits in line for a worker or runs.
    The scheduler's lock guards both; ``lock`` is the subclass's own."""

    __slots__ = ("lock", "mailbox", "ready_as", "scheduled")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mailbox: deque[Any] = deque()
        self.scheduled = False
        self.ready_as: str | None = None  # the caller whose line it waits in


A = TypeVar("A", bound=Actor)
J = TypeVar("J")


def _anyone(job: Any) -> str:
    return ""


def _weightless(job: Any) -> int:
    return 0


def _never(actor: Any, job: Any) -> bool:
    return False


class Scheduler(Generic[A, J]):
    """Runs ``run(actor, job)`` for every queued job, per actor in order.

    ``submit`` is an executor's submit, with ``workers`` threads (None: as many
    as there are actors); ``crashed(actor, job)`` is called (inside the
    ``except`` block) when ``run`` raises; the actor goes on with its next
    job. ``caller(job)`` and ``size(job)`` say whose a job is and its request
    bytes; ``caller_workers`` is the share of one caller (None: all)."""

    def __init__(
        self,
        submit: Callable[..., Any],
        run: Callable[[A, J], None],
        *,
        max_queue: int,
        max_node_queue: int,
        crashed: Callable[[A, J], None] | None = None,
        batch: int = BATCH,
        workers: int | None = None,
        caller_workers: int | None = None,
        quotas: Quotas | None = None,
        caller: Callable[[J], str] = _anyone,
        size: Callable[[J], int] = _weightless,
    ) -> None:
        self._submit = submit
        self._run = run
        self._crashed = crashed
        self.max_queue = max_queue
        self.max_node_queue = max_node_queue
        self.batch = batch
        self.workers = workers or sys.maxsize
        self.caller_workers = caller_workers or self.workers
        self.caller, self.size = caller, size
        self.ledger = Ledger(quotas or Quotas(max_queue=max_queue, max_node_queue=max_node_queue))
        self._lock = threading.Lock()
        self._queued = 0  # jobs waiting in all mailboxes
        self._lines: dict[str, deque[A]] = {}  # caller -> its actors waiting for a worker
        self._turns: deque[str] = deque()  # callers with actors in line, in turn
        self._running: dict[str, int] = {}  # caller -> its jobs running
        self._active = 0  # worker tasks submitted and not finished
        self._closed = False
        self.long: Callable[[A, J], bool] = _never
        self.long_workers = sys.maxsize  # long jobs that may run at once
        self._long = 0  # long jobs running

    @property
    def queued(self) -> int:
        return self._queued

    def running(self, caller: str) -> int:
        """Jobs of ``caller`` running now."""
        return self._running.get(caller, 0)

    @property
    def busy(self) -> int:
        """Jobs running now, every caller's."""
        with self._lock:
            return sum(self._running.values())

    @property
    def long_running(self) -> int:
        """Long jobs running now."""
        return self._long

    def limit_long(self, long: Callable[[A, J], bool], workers: int) -> None:
        """Run at most ``workers`` jobs for which ``long(actor, job)`` holds at
        once (set before the first job is queued)."""
        if workers < 1:
            raise ValueError("the long-call budget must be at least 1")
        self.long, self.long_workers = long, workers

    def _blocked(self, actor: A) -> bool:
        """Whether ``actor``'s first job is long and the budget is spent."""
        return self._long >= self.long_workers and self.long(actor, actor.mailbox[0])

    def full(self, actor: A) -> bool:
        """Whether ``actor``'s mailbox or the node's count is at its bound."""
        return len(actor.mailbox) >= self.max_queue or self._queued >= self.max_node_queue

    def offer(self, actor: A, job: J, *, quota: bool = True) -> Refusal | None:
        """Queue ``job`` unless a bound refuses it (the caller's first, unless
        not ``quota``; then the actor's, the node's): returns which, taking
        nothing, or None once queued."""
        who, size = self.caller(job), self.size(job)
        with self._lock:
            why = self.ledger.over(who, size, quota)
            if why is None:
                if len(actor.mailbox) >= self.max_queue:
                    why = "object"
                elif self._queued >= self.max_node_queue:
                    why = "node"
                elif self.ledger.node_full(size):
                    why = "node_bytes"
            if why is not None:
                return why
            start = self._put(actor, job, who, size)
        if start:
            self._start()
        return None

    def enqueue(self, actor: A, job: J) -> None:
        """Queue ``job`` whatever the bounds say."""
        who, size = self.caller(job), self.size(job)
        with self._lock:
            start = self._put(actor, job, who, size)
        if start:
            self._start()

    def requeue_first(self, actor: A, take: Callable[[], Iterable[J]]) -> bool:
        """Put the jobs ``take()`` returns in front of ``actor``'s mailbox, in
        their order, whatever the bounds say; only while no worker runs it
        nor waits for it (so that the order holds). Returns False, taking
        nothing, when one does."""
        with self._lock:
            if actor.scheduled:
                return False
            jobs = list(take())
            actor.mailbox.extendleft(reversed(jobs))
            for job in jobs:
                self.ledger.add(self.caller(job), self.size(job))
            self._queued += len(jobs)
            start = bool(jobs) and self._ready_up(actor)
        if start:
            self._start()
        return True

    def close(self) -> None:
        """No job starts any more (the node stops); those running finish."""
        with self._lock:
            self._closed = True

    # -- under the lock ------------------------------------------------------------
    def _put(self, actor: A, job: J, who: str, size: int) -> bool:
        self.ledger.add(who, size)
        self._queued += 1
        actor.mailbox.append(job)
        return not actor.scheduled and self._ready_up(actor)

    def _ready_up(self, actor: A) -> bool:
        """An actor with jobs and no worker gets in line; whether to start a
        worker task for it."""
        actor.scheduled = True
        who = self.caller(actor.mailbox[0])
        self._line_up(actor, who)
        if (
            self._closed
            or self._active >= self.workers
            or self.running(who) >= self.caller_workers
            or self._blocked(actor)
        ):
            return False  # a worker that finishes takes it
        self._active += 1
        return True

    def _line_up(self, actor: A, who: str) -> None:
        if actor.ready_as is not None:
            return  # in line already
        line = self._lines.get(who)
        if line is None:
            line = self._lines[who] = deque()
            self._turns.append(who)
        line.append(actor)
        actor.ready_as = who

    def _take(self, actor: A) -> tuple[J, str, bool]:
        long = self.long(actor, actor.mailbox[0])
        job = actor.mailbox.popleft()
        self._queued -= 1
        who = self.caller(job)
        self._running[who] = self._running.get(who, 0) + 1
        self._long += long
        return job, who, long

    def _unblocked(self, line: deque[A]) -> A | None:
        """The first actor of ``line`` whose first job may start (all but the
        long ones while the budget is spent), taken out of the line."""
        if self._long < self.long_workers:
            return line.popleft()
        for i, actor in enumerate(line):
            if not actor.mailbox or not self.long(actor, actor.mailbox[0]):
                del line[i]
                return actor
        return None

    def _pick(self) -> tuple[A, J, str, bool] | None:
        """The first job of the first actor in line of the next caller in turn
        that is below its share; that caller goes to the back of the turns."""
        turns = self._turns
        for _ in range(len(turns)):
            if self._closed:
                return None
            who = turns[0]
            if self.running(who) >= self.caller_workers:
                turns.rotate(-1)
                continue
            line = self._lines[who]
            found = self._unblocked(line)
            if found is None:  # only long jobs, and the budget is spent
                turns.rotate(-1)
                continue
            actor = found
            actor.ready_as = None
            if line:
                turns.rotate(-1)
            else:
                turns.popleft()
                del self._lines[who]
            if not actor.mailbox:  # (cannot happen while the bookkeeping holds)
                actor.scheduled = False
                continue
            return (actor, *self._take(actor))
        return None

    def _waiting(self, but: str | None = None) -> bool:
        """Whether a caller (other than ``but``) below its share has an actor in line."""
        return any(c != but and self.running(c) < self.caller_workers for c in self._turns)

    def _others_wait(self, who: str) -> bool:
        """Whether every worker is taken and another caller waits for one."""
        return self._active >= self.workers and self._waiting(who)

    def _after(self, actor: A, more: bool) -> tuple[J, str, bool] | None:
        """After a job of ``actor``: its next job for this worker, if ``more``
        may run and its caller may have one more worker while nobody else
        waits; else the actor gets in line (or rests, with an empty mailbox)."""
        if not actor.mailbox:
            actor.scheduled = False
            return None
        who = self.caller(actor.mailbox[0])
        if (
            more
            and not self._closed
            and self.running(who) < self.caller_workers
            and not self._others_wait(who)
            and not self._blocked(actor)
        ):
            return self._take(actor)
        self._line_up(actor, who)
        return None

    # -- worker tasks --------------------------------------------------------------
    def _start(self) -> None:
        try:
            self._submit(self._work)
        except RuntimeError:  # the pool is shut down: the node is stopping
            with self._lock:
                self._active -= 1

    def _work(self) -> None:
        """One worker task: the next turn's actor, up to ``batch`` of its jobs;
        then, while actors wait in line, the next turn in a new task."""
        with self._lock:
            picked = self._pick()
            if picked is None:
                self._active -= 1
                return
        actor, job, who, long = picked
        for n in range(1, self.batch + 1):
            self._run_one(actor, job)
            wake = False
            with self._lock:
                self.ledger.release(who, self.size(job))
                left = self._running[who] - 1
                if left:
                    self._running[who] = left
                else:
                    del self._running[who]
                if long:
                    self._long -= 1
                following = self._after(actor, n < self.batch)
                if following is None:
                    if self._closed or not self._waiting():
                        self._active -= 1
                        return
                    break
                if long and self._active < self.workers and self._waiting():
                    # a long job waiting for the budget may start beside this actor's next
                    self._active += 1
                    wake = True
            if wake:
                self._start()
            job, who, long = following
        self._start()  # the next turn, in a new task (other work of the pool gets in)

    def _run_one(self, actor: A, job: J) -> None:
        try:
            self._run(actor, job)
        except Exception:  # never leave the actor wedged (scheduled, never drained)
            if self._crashed is None:
                log.exception("a job on %r failed in the node", actor)
            else:
                self._crashed(actor, job)  # in the except block: it may log.exception
