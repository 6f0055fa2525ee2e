"""Calls on resident objects (protocol §13), and feed samples, from the
network thread to a worker and back.

:meth:`Calls.route` runs on the network thread and never runs application
code: it checks the object, the method and the caller's right, answers a
request id already seen from the object's outcomes (exactly-once; nothing
for one in flight), refuses with ``quota_exceeded`` a caller past its own
bounds and with ``busy`` when the mailbox or the node is full
(:mod:`continuum_node._quotas`), and queues the call in the object's
mailbox. Workers serve the callers in turn, none beyond its share
(:mod:`continuum_node._actors`). :meth:`Calls.run` runs one job on a
worker: the method, then for a mutating one the commit (durability, then
replicas) before the reply; an object evicted to the state dir is
reloaded first, on that worker (:attr:`Calls.pinned`,
:mod:`continuum_node._eviction`). Pool calls go through the same mailboxes (one
per call) and bounds. A feed sample is acknowledged once committed; one
that finds no room waits for it (:mod:`continuum_node._backlog`); one that
cannot be made durable is held for the disk (:mod:`continuum_node._held`).

A call runs with its caller (:func:`continuum_mqtt.current_call`) and in a
:class:`~continuum_mqtt.CancelScope` of its deadline and the node's shutdown
event: a method calling :func:`continuum_mqtt.check_cancelled` stops there
with ``cancelled``. A mutating call stopped so is committed as a checkpoint,
never journaled (a replay would not stop where it did: :func:`stopped`). A
feed sample runs in neither: at a shutdown it is not acknowledged, and comes again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from continuum_mqtt import (
    ActiveSpec,
    BadRequest,
    CallContext,
    Cancelled,
    CancelScope,
    ContinuumError,
    DeadlineExpired,
    ObjectNotHere,
    StorageError,
)
from continuum_mqtt.service import (
    Outcome,
    ReplyChannel,
    Request,
    Rights,
    answer,
    invoke,
    lookup_method,
    remote_error,
)

from ._actors import Actor, Scheduler
from ._backlog import BACKLOG, Backlog
from ._durability import Durability
from ._feeds import FeedJob
from ._held import HeldFeeds
from ._quotas import Quotas, refusal
from ._replication import Replication
from ._resident import Resident, Residents

if TYPE_CHECKING:
    from ._longproc import LongCalls

__all__ = ["CallJob", "Calls", "Job", "PoolJob", "not_started", "run_pooled", "stopped"]

log = logging.getLogger("continuum.node")


class CallJob:
    """A call for an object's mailbox, with where its reply goes and its
    request's bytes."""

    __slots__ = ("chan", "req", "size")

    def __init__(self, req: Request, chan: ReplyChannel, size: int = 0) -> None:
        self.req = req
        self.chan = chan
        self.size = size

    @property
    def caller(self) -> str:
        return self.req.caller


class PoolJob(CallJob):
    """A call for a stateless class's pool: no object, a mailbox of its own."""

    __slots__ = ("instance",)

    def __init__(self, instance: Any, req: Request, chan: ReplyChannel, size: int = 0) -> None:
        super().__init__(req, chan, size)
        self.instance = instance


Job = CallJob | FeedJob


def _caller(job: Job) -> str:
    return job.caller


def _size(job: Job) -> int:
    return job.size


def not_started(req: Request) -> DeadlineExpired:
    return DeadlineExpired(f"deadline passed before {req.method} started; not run")


def stopped(outcome: Outcome) -> bool:
    """Whether the method stopped at a cancellation point (``cancelled``):
    such a mutating call is checkpointed as it left the object, never
    journaled, since replaying it would not stop at the same point."""
    ok, value = outcome
    return not ok and isinstance(value, dict) and value.get("code") == Cancelled.code


class Calls:
    def __init__(
        self,
        node_id: str,
        residents: Residents,
        durability: Durability,
        replication: Replication,
        submit: Callable[..., Any],
        *,
        max_queue: int = 10_000,
        max_node_queue: int = 100_000,
        held_retry: float = 1.0,
        rights: Rights | None = None,
        shutdown: threading.Event | None = None,
        workers: int | None = None,
        caller_workers: int | None = None,
        quotas: Quotas | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        self.node_id = node_id
        self.shutdown = shutdown  # set when the node stops: running calls are cancelled
        self.rights = rights or Rights()
        self.residents = residents
        self.durability = durability
        self.replication = replication
        # samples waiting for the disk, retried every held_retry seconds
        self.held: HeldFeeds[Resident, FeedJob] = HeldFeeds(held_retry)
        self.quotas = quotas or Quotas(max_queue=max_queue, max_node_queue=max_node_queue)
        self.scheduler: Scheduler[Actor, Job] = Scheduler(
            submit,
            self.run,
            max_queue=self.quotas.max_queue,
            max_node_queue=self.quotas.max_node_queue,
            crashed=self._crashed,
            workers=workers,
            caller_workers=caller_workers,
            quotas=self.quotas,
            caller=_caller,
            size=_size,
        )
        # samples waiting for room in their object's mailbox; ``room()`` is
        # called when an object that was full has room again (the node
        # resumes the topics parked for it)
        self.backlog: Backlog[Resident, FeedJob] = Backlog(self._offer_sample, backlog)
        self.room: Callable[[], None] | None = None
        # around each job of an object: reloads it if evicted (the node sets
        # Eviction.pinned; continuum_node._eviction)
        self.pinned: Callable[[Resident], AbstractContextManager[bool]] = _loaded
        # long calls in worker processes (--long-calls process; continuum_node._longproc)
        self.long_calls: LongCalls | None = None
        self.metrics: Any = None  # continuum_node._metrics.NodeMetrics (--metrics-port)

    # -- network thread ------------------------------------------------------------
    def route(self, req: Request, chan: ReplyChannel, size: int = 0) -> None:
        """A request on the node's call topic (``size``: its payload's bytes)."""
        if self.metrics is not None:
            self.metrics.call(req, chan)
        if req.obj is None:
            chan.error(BadRequest("a call needs the field 'obj'"))
            return
        try:
            res = self.residents.primary(req.obj)
            spec = lookup_method(res.klass, req.method)  # (the object may be evicted)
            self.rights.check_call(res.access, req.caller, req.method, res.id, spec.open)
        except ContinuumError as exc:
            chan.error(exc)
            return
        rid = req.id
        if rid is not None:
            claim = res.once.begin(rid)
            if claim.running:
                return  # a redelivery of a call not finished yet: its reply will come
            if claim.done and claim.outcome is not None:
                answer(chan, claim.outcome)  # the first outcome, again
                return
        if not self._queue(res, CallJob(req, chan, size)):
            res.once.abandon(rid)

    def route_pooled(self, instance: Any, req: Request, chan: ReplyChannel, size: int = 0) -> None:
        """A request on a pool's call topic: a mailbox of its own, so that pool
        calls run in parallel, in their caller's share and bounds."""
        if self.metrics is not None:
            self.metrics.call(req, chan, instance)
        try:
            self.rights.check_caller(req.caller)  # --no-anonymous holds for pools too
        except ContinuumError as exc:
            chan.error(exc)
            return
        self._queue(Actor(), PoolJob(instance, req, chan, size))

    def _queue(self, actor: Actor, job: CallJob) -> bool:
        caller = job.req.caller
        why = self.scheduler.offer(actor, job, quota=not self.rights.is_admin(caller))
        if why is None:
            return True
        job.chan.error(refusal(why, self.quotas, self.node_id, caller, self.scheduler.queued))
        return False

    def enqueue_sample(self, res: Resident, job: FeedJob) -> bool:
        """Queue a sample, or keep it waiting for room; False once ``res``
        keeps as many waiting as it may (the router parks the topic)."""
        return self.backlog.add(res, job)

    def _offer_sample(self, res: Resident, job: FeedJob) -> bool:
        return self.scheduler.offer(res, job) is None

    # -- workers -------------------------------------------------------------------
    def run(self, actor: Actor, job: Job) -> None:
        if isinstance(job, PoolJob):
            with CallContext(job.caller, self.rights.is_admin(job.caller)).scope():
                run_pooled(job.instance, job.req, job.chan, self.shutdown)
            return
        assert isinstance(actor, Resident)
        res = actor
        if not self.residents.holds(res):  # deleted, fenced or quarantined since
            self._gone(res, job)
        else:
            with self.pinned(res) as loaded:  # an evicted object is reloaded first
                if not loaded:  # quarantined (or gone) instead
                    self._gone(res, job)
                elif isinstance(job, FeedJob):
                    self._run_sample(res, job)
                elif not self._answered(res, job):
                    self._run_call(res, job)
        if self.backlog.drain(res) and self.room is not None:  # room for samples that wait
            self.room()

    def _answered(self, res: Resident, job: CallJob) -> bool:
        """A call routed while its object was evicted (its outcomes in its
        files) that was answered before: answer it again."""
        rid = job.req.id
        done = None if rid is None else res.outcomes.get(rid)
        if done is None:
            return False
        self._forget(res, rid)
        answer(job.chan, done)
        return True

    def _run_call(self, res: Resident, job: CallJob) -> None:
        req, chan = job.req, job.chan
        if chan.expired():
            self._forget(res, req.id)
            chan.error(not_started(req))
            return
        spec = lookup_method(type(res.instance), req.method)
        if spec.readonly:
            outcome = self._invoke(res, req, chan, spec)
            self._forget(res, req.id)
            answer(chan, outcome)
            return
        try:
            with res.state:  # run and commit as one change (see Resident.state)
                outcome = self._invoke(res, req, chan, spec)
                self.commit(res, req, outcome, spec.snapshot or stopped(outcome), job.size)
        except (ObjectNotHere, StorageError) as exc:  # fenced, or not durable (undone)
            self._forget(res, req.id)
            chan.error(exc)
            return
        except Exception as exc:
            log.exception("cannot persist %s after %s", res.id, req.method)
            self._forget(res, req.id)
            chan.error(remote_error(exc))
            return
        answer(chan, outcome)

    def _invoke(
        self,
        res: Resident,
        req: Request,
        chan: ReplyChannel | None = None,
        spec: ActiveSpec | None = None,
    ) -> Outcome:
        """Run the method: a call (``chan``, its method's ``spec``) in the scope
        of its deadline, the node's shutdown and its caller, with its progress
        updates; a feed sample bare."""
        try:
            if chan is None:
                return (True, invoke(res.instance, req.method, req.args, req.kwargs))
            assert spec is not None, "a call runs with its method's spec"
            call = CallContext(req.caller, self.rights.is_admin(req.caller), res.id)
            if spec.long and self.long_calls is not None:  # in a worker process
                obj, outcome = self.long_calls.run(
                    res.instance, req, chan.deadline, chan.progress, call
                )
                if not spec.readonly:
                    res.instance = obj
                return outcome
            with CancelScope(chan.deadline, self.shutdown), call.scope():
                value = invoke(res.instance, req.method, req.args, req.kwargs, chan.progress)
            return (True, value)
        except ContinuumError as exc:
            return (False, exc.to_envelope())

    def _run_sample(self, res: Resident, job: FeedJob) -> None:
        """A device sample: run the bound method; acknowledge the message once
        it is committed (never, if it could not be persisted: held, see _held)."""
        req = job.req
        if self.held.behind(res, job):
            return
        spec = lookup_method(type(res.instance), req.method)
        if spec.readonly:
            self._sample_outcome(res, req)
            job.done()
            if self.metrics is not None:
                self.metrics.sample(req)
            return
        try:
            with res.state:  # run and commit as one change (see Resident.state)
                outcome = self._sample_outcome(res, req)
                self.commit(res, req, outcome, spec.snapshot, job.size)
        except StorageError as exc:  # undone, not acknowledged: held
            log.error("%s: a feed sample waits for the disk: %s", res.id, exc)
            self.held.hold(res, job)
            return
        except Exception:
            log.exception("cannot persist %s after a feed sample; not acknowledged", res.id)
            return
        job.done()
        if self.metrics is not None:
            self.metrics.sample(req)

    def _sample_outcome(self, res: Resident, req: Request) -> Outcome:
        outcome = self._invoke(res, req)
        if not outcome[0]:
            log.warning("feed %s.%s on %s failed: %s", res.cls_path, req.method, res.id, outcome[1])
        return outcome

    def commit(
        self, res: Resident, req: Request, outcome: Outcome, snapshot: bool, size: int = 0
    ) -> None:
        """Durable first (journal or checkpoint), then on the live replicas:
        all before the caller hears of the call."""
        entry = self.durability.commit(res, req, outcome, snapshot, size)
        if res.replicas:
            self.replication.replicate(res, None if snapshot else entry)
        res.once.abandon(req.id)  # durable and replicated: a resend may be answered now

    def _gone(self, res: Resident, job: Job) -> None:
        """A job for an object no longer served here: a call is refused like a
        new one would be; a sample is acknowledged and dropped, as samples for
        an object that is not here are."""
        if isinstance(job, FeedJob):
            if self.residents.quarantine.get(res.id) is None:
                job.done()
            # else: not acknowledged: a quarantined object comes back at a
            # restart, and the broker delivers the sample to it again then
            return
        self._forget(res, job.req.id)
        job.chan.error(self.residents.not_here(res.id))

    def _crashed(self, actor: Actor, job: Job) -> None:
        if not isinstance(actor, Resident):
            log.exception("pool call %s failed in the node", job.req.method)
            return
        log.exception("call %s on %s failed in the node", job.req.method, actor.id)
        self._forget(actor, job.req.id)

    @staticmethod
    def _forget(res: Resident, rid: str | None) -> None:
        res.once.abandon(rid)

    def release_held(self) -> None:
        """Requeue the samples held for the disk, first in line; only while no
        worker runs the object, so that their order holds. Then move samples
        waiting for room into the mailboxes that have some."""
        for res in self.held.due():
            self.scheduler.requeue_first(res, lambda r=res: self.held.take(r))  # type: ignore[misc]
        self.backlog.drain_all()

    def has_room(self, res: Resident) -> bool:
        """Whether ``res`` takes samples of a parked topic again."""
        return self.backlog.has_room(res)


@contextlib.contextmanager
def _loaded(res: Resident) -> Iterator[bool]:
    """A node that never evicts: every object is loaded."""
    yield True


def run_pooled(
    instance: Any, req: Request, chan: ReplyChannel, shutdown: threading.Event | None = None
) -> None:
    """A call for a stateless class's pool (§14): no mailbox, no persistence;
    cancelled like any call (its deadline, the node's ``shutdown``)."""
    if chan.expired():
        chan.error(not_started(req))
        return
    try:
        with CancelScope(chan.deadline, shutdown):
            value = invoke(instance, req.method, req.args, req.kwargs, chan.progress)
        chan.result(value)
    except ContinuumError as exc:
        chan.error(exc)
