"""Calls on resident objects (protocol §13), and feed samples, from the
network thread to a worker and back.

:meth:`Calls.route` runs on the network thread and never runs application
code: it checks the object and the method, answers a request id already
seen from the object's outcomes (exactly-once; nothing for one in flight),
refuses with ``busy`` when the mailbox or the node is full, and queues the
call in the object's mailbox. :meth:`Calls.run` runs one job on a worker:
the method, then for a mutating one the commit (durability, then replicas)
before the reply. A feed sample is acknowledged once committed; one that
cannot be made durable is held for the disk (:mod:`continuum_node._held`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from continuum_mqtt import (
    BadRequest,
    Busy,
    ContinuumError,
    DeadlineExpired,
    ObjectNotHere,
    StorageError,
)
from continuum_mqtt.service import (
    Outcome,
    ReplyChannel,
    Request,
    answer,
    invoke,
    lookup_method,
    remote_error,
)

from ._actors import Scheduler
from ._durability import Durability
from ._feeds import FeedJob
from ._held import HeldFeeds
from ._replication import Replication
from ._resident import Resident, Residents

__all__ = ["CallJob", "Calls", "Job", "not_started", "run_pooled"]

log = logging.getLogger("continuum.node")


class CallJob:
    """A call for an object's mailbox, with where its reply goes."""

    __slots__ = ("chan", "req")

    def __init__(self, req: Request, chan: ReplyChannel) -> None:
        self.req = req
        self.chan = chan


Job = CallJob | FeedJob


def not_started(req: Request) -> DeadlineExpired:
    return DeadlineExpired(f"deadline passed before {req.method} started; not run")


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
    ) -> None:
        self.node_id = node_id
        self.residents = residents
        self.durability = durability
        self.replication = replication
        # samples waiting for the disk, retried every held_retry seconds
        self.held: HeldFeeds[Resident, FeedJob] = HeldFeeds(held_retry)
        self.scheduler: Scheduler[Resident, Job] = Scheduler(
            submit,
            self.run,
            max_queue=max_queue,
            max_node_queue=max_node_queue,
            crashed=self._crashed,
        )

    # -- network thread ------------------------------------------------------------
    def route(self, req: Request, chan: ReplyChannel) -> None:
        """A request on the node's call topic."""
        if req.obj is None:
            chan.error(BadRequest("a call needs the field 'obj'"))
            return
        try:
            res = self.residents.primary(req.obj)
            lookup_method(type(res.instance), req.method)
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
        if self.scheduler.full(res):
            res.once.abandon(rid)
            chan.error(self._busy(res))
            return
        self.scheduler.enqueue(res, CallJob(req, chan))

    def _busy(self, res: Resident) -> Busy:
        return Busy(
            f"queue full on node {self.node_id} ({len(res.mailbox)} calls for"
            f" this object, {self.scheduler.queued} in all); retry later",
            node=self.node_id,
        )

    def enqueue_sample(self, res: Resident, job: FeedJob) -> None:
        self.scheduler.enqueue(res, job)

    # -- workers -------------------------------------------------------------------
    def run(self, res: Resident, job: Job) -> None:
        if not self.residents.holds(res):  # deleted, fenced or quarantined since
            self._gone(res, job)
        elif isinstance(job, FeedJob):
            self._run_sample(res, job)
        else:
            self._run_call(res, job)

    def _run_call(self, res: Resident, job: CallJob) -> None:
        req, chan = job.req, job.chan
        if chan.expired():
            self._forget(res, req.id)
            chan.error(not_started(req))
            return
        spec = lookup_method(type(res.instance), req.method)
        if spec.readonly:
            outcome = self._invoke(res, req, chan.progress)
            self._forget(res, req.id)
            answer(chan, outcome)
            return
        try:
            with res.state:  # run and commit as one change (see Resident.state)
                outcome = self._invoke(res, req, chan.progress)
                self.commit(res, req, outcome, spec.snapshot)
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

    @staticmethod
    def _invoke(res: Resident, req: Request, progress: Any = None) -> Outcome:
        try:
            return (True, invoke(res.instance, req.method, req.args, req.kwargs, progress))
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
            return
        try:
            with res.state:  # run and commit as one change (see Resident.state)
                self.commit(res, req, self._sample_outcome(res, req), spec.snapshot)
        except StorageError as exc:  # undone, not acknowledged: held
            log.error("%s: a feed sample waits for the disk: %s", res.id, exc)
            self.held.hold(res, job)
            return
        except Exception:
            log.exception("cannot persist %s after a feed sample; not acknowledged", res.id)
            return
        job.done()

    def _sample_outcome(self, res: Resident, req: Request) -> Outcome:
        outcome = self._invoke(res, req)
        if not outcome[0]:
            log.warning("feed %s.%s on %s failed: %s", res.cls_path, req.method, res.id, outcome[1])
        return outcome

    def commit(self, res: Resident, req: Request, outcome: Outcome, snapshot: bool) -> None:
        """Durable first (journal or checkpoint), then on the live replicas:
        all before the caller hears of the call."""
        entry = self.durability.commit(res, req, outcome, snapshot)
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

    def _crashed(self, res: Resident, job: Job) -> None:
        log.exception("call %s on %s failed in the node", job.req.method, res.id)
        self._forget(res, job.req.id)

    @staticmethod
    def _forget(res: Resident, rid: str | None) -> None:
        res.once.abandon(rid)

    def release_held(self) -> None:
        """Requeue the samples held for the disk, first in line; only while no
        worker runs the object, so that their order holds."""
        for res in self.held.due():
            self.scheduler.requeue_first(res, lambda r=res: self.held.take(r))  # type: ignore[misc]


def run_pooled(instance: Any, req: Request, chan: ReplyChannel) -> None:
    """A call for a stateless class's pool (§14): no mailbox, no persistence."""
    if chan.expired():
        chan.error(not_started(req))
        return
    try:
        chan.result(invoke(instance, req.method, req.args, req.kwargs, chan.progress))
    except ContinuumError as exc:
        chan.error(exc)
