"""Bounded residency: idle objects are evicted to the node's state dir and
reloaded on their next job (protocol §15, §17; docs/architecture.md
"Bounded residency").

A node's budget is a number of resident objects (``max_resident``) and/or a
memory budget (``memory_budget`` bytes of the process's RSS, read with
psutil). At every tick of the node, :meth:`Eviction.tick` evicts idle
primaries beyond it, those on *probation* first (reloaded, and no job on them
since: a scan over more objects than fit, such as a fleet-wide forecast round,
would otherwise evict under LRU exactly the objects it reaches next, and
reload every one; this is the idea of 2Q), then the least recently used:
beyond ``max_resident``, as many as are over; over the memory budget, a tenth
of the resident ones per tick (RSS is what the operator sizes a machine by,
but freed memory shows in it only after the allocator returns it, so the pass
goes in steps rather than computing a target from per-object estimates, which
cannot see what an instance holds outside Python objects: tensors, arrays),
and again only once RSS has grown past what it was after the last pass (what
the allocator kept is reused by the next objects loaded).

*Refilling* (with a memory budget): while RSS stays under the budget by more
than a tenth of it, and no pass evicted anything for ``refill_quiet`` seconds,
the ticker reloads the most recently used evicted primaries (within
``max_resident`` too), for about ``refill_slice`` seconds a tick, on probation
(first to go again). Memory freed under the budget is then used again before
the next job needs it: after a storm of trainings, once the long-call workers
exit (``--long-idle-exit``), the fleet's next forecast round finds its
objects loaded. The band between the budget and the refill's ceiling keeps
the two from chasing each other. An object whose state lock is held (a
change, a mutating job) is skipped, never waited for; a reload that fails
quarantines the object as a job's would, and stops refills for
``REFILL_BACKOFF`` seconds (a disk in trouble quarantines no more objects
ahead of their jobs).

*Evicting* needs a store (``--state-dir``): every committed change of an
object is durable already (journaled or checkpointed before its caller or
device heard of it), so the files are the truth before the instance goes.
An object whose journal has grown past ``replay`` entries is checkpointed
first, so that a reload does not replay them. Only an idle object is
evicted: under its state lock (no control change, no mutating call), with
no job queued nor running (its mailbox empty, no worker pinned to it).
Replicas are never evicted (a primary's syncs apply to them in memory).
A SIGKILL at any point loses nothing: the checkpoint is written atomically
and nothing else is written.

*Reloading* happens on a worker, never on the network thread: a call or
sample for an evicted object is routed (rights, exactly-once in flight)
from what the stub keeps and queued as for any object; the worker that takes
it pins the object (:meth:`Eviction.pinned`) and reloads it first
(:meth:`~continuum_node._durability.Durability.wake`). A call whose request
id turns out to be answered already (its outcome was in the files) gets that
outcome again. Objects that cannot be reloaded are quarantined, as at a
start.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import logging
import time
from collections.abc import Callable, Iterator

from continuum_mqtt import StorageError

from ._durability import LOADED, Durability
from ._resident import Resident, Residents

__all__ = ["REPLAY", "Eviction", "rss"]

log = logging.getLogger("continuum.node.eviction")

REPLAY = 64  # journal entries past which an object is checkpointed before it is evicted
MEMORY_STEP = 10  # over the memory budget: evict 1/MEMORY_STEP of the resident objects a tick
SLACK = 4 << 20  # RSS growth after a pass (or 1 % of the budget) that calls for another
REFILL_BAND = 10  # refill only while RSS is under the budget by 1/REFILL_BAND of it
REFILL_SLICE = 0.05  # seconds of reloads a tick, at most, when refilling
REFILL_QUIET = 5.0  # seconds since the last pass that evicted anything before refilling
REFILL_MEASURE = 16  # reloads between two reads of RSS while refilling
REFILL_BATCH = 1_000  # evicted objects a refill pass looks at, at most
REFILL_BACKOFF = 60.0  # seconds without refill after a reload that failed (beyond the quiet)


def rss() -> int:
    """The node's resident set size, in bytes: its process and its child
    processes (the long-call workers of ``--long-calls process``)."""
    import psutil  # the node extra installs it; only a node with a memory budget reads it

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return int(total)


def _trim() -> None:
    """Give freed memory back to the system (glibc keeps it otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Eviction:
    """The node's residency budget over ``residents`` and ``durability``
    (its store); ``measure()``: the process's memory, in bytes."""

    def __init__(
        self,
        residents: Residents,
        durability: Durability,
        *,
        max_resident: int | None = None,
        memory_budget: int | None = None,
        replay: int = REPLAY,
        measure: Callable[[], int] = rss,
        refill_slice: float = REFILL_SLICE,
        refill_quiet: float = REFILL_QUIET,
    ) -> None:
        self.residents = residents
        self.durability = durability
        self.max_resident = max_resident
        self.memory_budget = memory_budget
        self.replay = replay
        self.measure = measure
        self.refill_slice = refill_slice  # 0: never refill
        self.refill_quiet = refill_quiet
        self.evictions = 0  # since the start
        self.reloads = 0  # for a job
        self.refills = 0  # by the ticker, under the memory budget
        self._evicted_at = -float("inf")  # when a pass last evicted something
        self._refill_failed = -float("inf")  # (plus the backoff) when a refill's reload failed
        self._warned = False
        self._after: int | None = None  # RSS after the last pass over the memory budget

    @property
    def bounded(self) -> bool:
        return self.max_resident is not None or self.memory_budget is not None

    # -- workers: reload on demand -----------------------------------------------------
    @contextlib.contextmanager
    def pinned(self, res: Resident) -> Iterator[bool]:
        """Around a job of ``res``: it is not evicted meanwhile, and is
        reloaded first if it was; yields False when it cannot be (it was
        quarantined, or left the node)."""
        with res.lock:
            res.pins += 1
        try:
            res.used = time.monotonic()
            if res.instance is not None:
                res.probation = False  # used again while resident: it keeps its place
                yield True
                return
            woken = self.durability.wake(res)
            if woken == "reloaded":
                self.reloads += 1
                res.probation = True
            elif woken == "resident":  # reloaded by another thread (the refill) meanwhile
                res.probation = False
            yield woken in LOADED
        finally:
            with res.lock:
                res.pins -= 1

    # -- the ticker: evict beyond the budget -------------------------------------------
    def tick(self) -> int:
        """Evict the least recently used idle primaries beyond the budget
        (under it, refill); returns how many went."""
        if not self.bounded:
            return 0
        loaded = [r for r in self.residents.all() if r.instance is not None]
        over = 0 if self.max_resident is None else len(loaded) - self.max_resident
        now = None if self.memory_budget is None else self._read()
        memory = self.memory_budget is not None and bool(loaded) and self._over_memory(now)
        if memory:
            over = max(over, max(1, len(loaded) // MEMORY_STEP))
        if over <= 0:
            self._refill(loaded, now)
            return 0
        if self.durability.store is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "over the residency budget (%d objects loaded), but a node without"
                    " --state-dir cannot evict: nothing is evicted",
                    len(loaded),
                )
            return 0
        gone = 0
        for res in sorted((r for r in loaded if r.role == "primary"), key=_victim_order):
            if gone >= over:
                break
            try:
                if self.evict(res):
                    gone += 1
            except Exception:  # never stop the node's ticker: keep it loaded
                log.exception("cannot evict %s", res.id)
        if gone:
            self._evicted_at = time.monotonic()
        if gone and self.memory_budget is not None:
            _trim()
        if memory:
            self._after = self._read()
        return gone

    # -- the ticker: refill under the memory budget --------------------------------------
    def _refill(self, loaded: list[Resident], now: int | None) -> int:
        """Reload evicted primaries, the most recently used first, while RSS
        stays under the refill ceiling (a tenth under the budget) and within
        ``max_resident``, for about ``refill_slice`` seconds; how many."""
        t0 = time.monotonic()
        if (
            self.memory_budget is None
            or not self.refill_slice
            or self.durability.store is None
            or len(loaded) == len(self.residents)
            or t0 - max(self._evicted_at, self._refill_failed) < self.refill_quiet
        ):
            return 0
        ceiling = self.memory_budget - self.memory_budget // REFILL_BAND
        room = None if self.max_resident is None else self.max_resident - len(loaded)
        if _over(now, ceiling) or (room is not None and room <= 0):
            return 0
        end = t0 + self.refill_slice
        evicted = (r for r in self.residents.all() if r.instance is None and r.role == "primary")
        done = 0
        for i, res in enumerate(heapq.nlargest(REFILL_BATCH, evicted, key=_used)):
            if i and (time.monotonic() >= end or (i % REFILL_MEASURE == 0 and _over(self._read(), ceiling))):  # fmt: skip
                break  # (one attempt a tick at least)
            if room is not None and done >= room:
                break
            if not res.state.acquire(blocking=False):  # a change or a job on it: not now
                continue  # (waiting here would stall the ticker for a whole training)
            try:
                woken = self.durability.wake(res)  # (no eviction meanwhile: under its state)
                if woken == "reloaded":
                    res.probation = True  # no job on it yet: the first to go again
                    done += 1
            except Exception:  # never stop the node's ticker
                log.exception("cannot reload %s", res.id)
                woken = "quarantined"
            finally:
                res.state.release()
            if woken == "quarantined":  # a disk in trouble: no reload ahead of a job for a while
                self._refill_failed = time.monotonic() + REFILL_BACKOFF
                break
        self.refills += done
        if done:
            log.debug("refilled %d evicted objects under the memory budget", done)
        return done

    def _read(self) -> int | None:
        try:
            return self.measure()
        except Exception:  # (psutil missing or failing: the budget cannot be read)
            if not self._warned:
                self._warned = True
                log.exception("cannot read the node's memory: --memory-budget ignored")
            return None

    def _over_memory(self, now: int | None) -> bool:
        """Over the budget, and grown since the last pass over it: memory the
        pass freed but the allocator kept (RSS does not fall) is reused by
        the objects loaded next, so a flat RSS above the budget calls for no
        more evictions (evicting on would empty the node: each reload would
        then cost a read, the pathology of a fleet-wide round)."""
        assert self.memory_budget is not None
        if now is None or now <= self.memory_budget:
            self._after = None
            return False
        return self._after is None or now > self._after + max(SLACK, self.memory_budget // 100)

    def evict(self, res: Resident) -> bool:
        """Evict ``res`` if it is an idle primary held here and can be made
        durable; whether it was."""
        store = self.durability.store
        if store is None or res.role != "primary" or res.instance is None:
            return False
        if not res.state.acquire(blocking=False):  # a change is being made: not idle
            return False
        try:
            if _busy(res) or not self.residents.holds(res):
                return False
            if res.journaled > self.replay:
                try:
                    self.durability.persist(res)
                except StorageError as exc:  # the files stand as they were: keep it loaded
                    log.warning("%s: not evicted, cannot checkpoint it: %s", res.id, exc)
                    return False
            with res.lock:  # a worker pins under it: no job starts on it meanwhile
                if _busy(res):
                    return False
                res.drop()
            store.release(res.id)
        finally:
            res.state.release()
        self.evictions += 1
        log.debug("evicted %s", res.id)
        return True


def _used(res: Resident) -> float:
    return res.used


def _over(now: int | None, ceiling: int) -> bool:
    return now is None or now >= ceiling


def _busy(res: Resident) -> bool:
    return bool(res.pins or res.scheduled or res.mailbox)


def _victim_order(res: Resident) -> tuple[bool, float]:
    """Objects on probation first (reloaded, no job since), then the least
    recently used: a round over more objects than fit (a fleet-wide forecast)
    then evicts the objects it reloaded, not those it has yet to reach."""
    return (not res.probation, res.used)
