"""The cloud node: hosts resident objects and runs their active methods.

This module only wires the parts and routes messages; each part is one
concept with its own tests:

========================  ===================================================
:mod:`._resident`          an object, its record, the node's table of them
:mod:`._actors`            mailboxes drained by the worker pool (order, fair
                           shares of the callers)
:mod:`._quotas`            bounds per caller and node-wide (quota, busy)
:mod:`._calls`             a call from the network thread to a worker and back
                           (exactly-once, busy, deadline, commit, reply)
:mod:`._backlog`           feed samples waiting for room in a mailbox
:mod:`._durability`        commit, checkpoint, rollback, restore over the store
:mod:`._eviction`          bounded residency: evict idle objects, reload them
:mod:`._replication`       syncs to replicas, applying them, promotion, fencing
:mod:`._feeds`             bindings, the samples' reorder buffer and their acks
:mod:`._control`           the control methods, through a Dispatcher
:mod:`._status`            the status manifest
========================  ===================================================

Threading model: the transport's network thread only decodes and routes;
each resident object is an actor with its own mailbox, drained by a worker
pool, so calls on one object run one at a time, in arrival order, and calls
on different objects run in parallel. The node talks to the broker only
through the :class:`~continuum_mqtt.service.Transport` it is given.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import Any

from continuum_mqtt.service import (
    ANONYMOUS,
    DEFAULT_ROOT,
    Liveness,
    Message,
    ReplyChannel,
    Request,
    Requester,
    Rights,
    Topics,
    Transport,
    accept,
    call_subscriptions,
)

from ._calls import Calls
from ._classes import load_classes
from ._control import Control
from ._durability import Durability
from ._eviction import Eviction
from ._feeds import FEED_HOLD, Bindings, FeedRouter
from ._longproc import LongCalls
from ._quotas import Quotas
from ._replication import Replication
from ._resident import Residents
from ._status import LOAD_EVERY, Status, node_load, offline
from ._store import Store
from ._threads import is_long

__all__ = ["Node", "load_classes"]

log = logging.getLogger("continuum.node")

Route = Callable[[Request, ReplyChannel], None]
CallRoute = Callable[[Request, ReplyChannel, int], None]  # with the request's bytes


class Node:
    """A node ``node_id`` hosting ``classes`` over ``transport`` (not started:
    :meth:`start` connects it). ``pool`` and ``sync_pool`` replace the worker
    pools (tests); ``tick`` is how often held samples and the status are
    looked at (0: never by itself, a test calls :meth:`tick`); ``feed_hold``
    how long a sample waits for a gap to fill; ``held_retry`` how often a
    sample that could not be made durable is retried; ``rights`` who may call
    what (the admin accounts; whether anonymous callers are served);
    ``pool_group`` the shared-subscription group of the pools (a secret where
    the broker cannot refuse devices a SUBSCRIBE: protocol.md section 21);
    ``caller_workers`` the workers one caller's jobs may hold at once (None:
    half of ``workers``, at least 1); ``max_caller_calls``,
    ``max_caller_bytes``, ``max_node_bytes`` the bounds of
    :mod:`continuum_node._quotas`; ``long_workers`` how many calls of methods
    marked ``@active(long=True)`` may run at once (None: no such bound);
    ``max_resident`` and ``memory_budget`` (bytes of RSS) the residency budget
    of :mod:`continuum_node._eviction` (None: unbounded); ``long_calls``
    worker processes that run the long calls (None: they run on threads;
    :mod:`continuum_node._longproc`), closed by :meth:`stop`; ``status_every``
    how often the load fields of the status are measured (seconds; 0: only at
    a connect), the status republished when they changed."""

    def __init__(
        self,
        node_id: str,
        transport: Transport,
        classes: dict[str, type],
        *,
        root: str = DEFAULT_ROOT,
        workers: int = 16,
        max_payload: int = 8 * 1024 * 1024,
        max_reply: int | None = None,
        state_dir: str | None = None,
        max_queue: int = 10_000,
        max_node_queue: int = 100_000,
        sync_timeout: float = 5.0,
        checkpoint_every: int = 1000,
        feed_hold: float = FEED_HOLD,
        held_retry: float = 1.0,
        pool: Executor | None = None,
        sync_pool: Executor | None = None,
        tick: float = 0.25,
        stop_timeout: float | None = None,
        rights: Rights | None = None,
        pool_group: str = "continuum",
        caller_workers: int | None = None,
        max_caller_calls: int = Quotas.max_caller_calls,
        max_caller_bytes: int = Quotas.max_caller_bytes,
        max_node_bytes: int = Quotas.max_node_bytes,
        long_workers: int | None = None,
        max_resident: int | None = None,
        memory_budget: int | None = None,
        long_calls: LongCalls | None = None,
        status_every: float = LOAD_EVERY,
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.topics = topics = Topics(root)
        self.classes = classes
        self.max_payload = max_payload
        self.max_reply = max_reply or max_payload
        self._tick = tick
        # set by stop(): running calls see it at their next check_cancelled()
        self._stopping = threading.Event()
        self.stop_timeout = stop_timeout  # how long stop() waits for the workers (None: all)
        self.drained = True  # False once a stop() left methods running (see stop)
        self._pool = pool or ThreadPoolExecutor(
            workers, thread_name_prefix=f"continuum-node-{node_id}"
        )
        # Syncs from primaries never wait behind calls (two nodes replicating to
        # each other with busy pools would otherwise deadlock until timeouts).
        self._sync_pool = sync_pool or ThreadPoolExecutor(
            1, thread_name_prefix=f"continuum-sync-{node_id}"
        )
        # Control requests (the gateway's creates, deletes, binds) never wait
        # behind calls either: one caller's long calls holding every worker
        # must not stall everyone's creates.
        self._ctl_pool = pool or ThreadPoolExecutor(
            2, thread_name_prefix=f"continuum-ctl-{node_id}"
        )
        self.residents = Residents(node_id)
        self.bindings = Bindings(lambda t: transport.subscribe(t, 1), transport.unsubscribe)
        self.durability = Durability(
            Store(state_dir) if state_dir else None, self.residents, self.bindings, checkpoint_every
        )
        self.liveness = Liveness(topics)
        self.requester = Requester.over(transport, topics)
        self.replication = Replication(
            node_id,
            topics,
            self.requester.send,
            self.residents,
            self.durability,
            self.bindings,
            classes,
            self.liveness.is_online,
            sync_timeout,
        )
        self.calls = Calls(
            node_id,
            self.residents,
            self.durability,
            self.replication,
            self._pool.submit,
            held_retry=held_retry,
            shutdown=self._stopping,
            rights=rights,
            workers=workers,
            caller_workers=caller_workers or max(1, workers // 2),
            quotas=Quotas(
                max_queue=max_queue,
                max_node_queue=max_node_queue,
                max_node_bytes=max_node_bytes,
                max_caller_calls=max_caller_calls,
                max_caller_bytes=max_caller_bytes,
            ),
        )
        if long_workers is not None:
            self.calls.scheduler.limit_long(partial(is_long, classes=classes), long_workers)
        self.eviction = Eviction(
            self.residents,
            self.durability,
            max_resident=max_resident,
            memory_budget=memory_budget,
        )
        self.calls.pinned = self.eviction.pinned
        self.long_calls = self.calls.long_calls = long_calls
        self.feeds = FeedRouter(
            self.bindings, self.calls.enqueue_sample, transport.ack, max_payload, feed_hold
        )
        self.calls.room = partial(self.feeds.resume, self.calls.has_room)
        self.control = Control(
            node_id,
            topics,
            classes,
            self.residents,
            self.durability,
            self.replication,
            self.bindings,
        )
        self._status_topic = topics.node_status(node_id)
        self.status = Status(
            node_id,
            classes,
            self.residents,
            lambda payload: transport.publish(self._status_topic, payload, retain=True),
            max_payload,
            load=self._load,
            load_every=status_every,
        )
        # One instance per stateless class serves its pool (shared subscription).
        self._pools: dict[str, Any] = {
            topics.pool_call(path): None
            for path, cls in classes.items()
            if getattr(cls, "__continuum_stateless__", False)
        }
        # Call topics take a caller level (<call topic>/<username>); control and
        # sync topics are for services only.
        self._calls: dict[str, CallRoute] = {topics.node_call(node_id): self.calls.route}
        self._calls.update({t: partial(self._pooled, t) for t in self._pools})
        self._routes: dict[str, Route] = {
            topics.node_ctl(node_id): self._ctl,
            topics.node_sync(node_id): self._sync,
        }
        transport.bind(self._on_message, self._on_connected)
        transport.set_will(self._status_topic, offline(node_id), True)
        own = [*call_subscriptions(topics.node_call(node_id)), *self._routes]
        for topic in [*own, self.requester.reply_topic, *self.liveness.subscriptions]:
            transport.subscribe(topic, 1)
        for path in sorted(classes):
            if topics.pool_call(path) in self._pools:
                for share in call_subscriptions(topics.pool_share(path, pool_group)):
                    transport.subscribe(share, 1)

    @property
    def store(self) -> Store | None:
        return self.durability.store

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for path, cls in self.classes.items():
            warm_up = getattr(cls, "__continuum_warm_up__", None)
            if self.long_calls is not None and getattr(cls, "__continuum_warm_up_long__", False):
                warm_up = None  # it pays for long calls only: the worker processes warm up
            if warm_up is not None:
                t0 = time.perf_counter()
                warm_up()
                log.debug("warmed up %s in %.2f s", path, time.perf_counter() - t0)
            if self.topics.pool_call(path) in self._pools:
                self._pools[self.topics.pool_call(path)] = cls()
        self.durability.restore(self.classes, self.eviction.max_resident)
        if self._tick > 0:
            threading.Thread(
                target=self._ticker, name=f"continuum-feeds-{self.node_id}", daemon=True
            ).start()
        self.requester.start(self.transport)
        self.transport.start()
        log.info(
            "node %s serving %d class(es) on %s: %s",
            self.node_id,
            len(self.classes),
            self.transport.broker,
            ", ".join(sorted(self.classes)) or "(none)",
        )

    def stop(self) -> None:
        """Go offline and stop: running calls are cancelled at their next
        :func:`continuum_mqtt.check_cancelled`, queued ones dropped; the
        workers are waited for up to ``stop_timeout`` seconds. Methods still
        running then are left behind (``drained`` False, the store left open):
        the process should exit without them (``continuum-node`` does)."""
        log.info("node %s stopping", self.node_id)
        self._stopping.set()
        if self.long_calls is not None:
            self.long_calls.cancel_all()
        self.calls.scheduler.close()  # queued calls never start
        with contextlib.suppress(RuntimeError, ValueError):
            self.transport.publish(self._status_topic, offline(self.node_id), retain=True).wait(2)
        self.requester.stop()
        self.transport.stop()

        def drain() -> None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._sync_pool.shutdown(wait=True, cancel_futures=True)
            self._ctl_pool.shutdown(wait=True, cancel_futures=True)
            if self.long_calls is not None:
                self.long_calls.close()

        waiter = threading.Thread(target=drain, name=f"continuum-stop-{self.node_id}", daemon=True)
        waiter.start()
        waiter.join(self.stop_timeout)
        self.drained = not waiter.is_alive()
        if not self.drained:
            log.warning(
                "node %s: methods still running %.1f s after the stop; left behind",
                self.node_id,
                self.stop_timeout,
            )
            return
        self.durability.close()

    def _load(self) -> dict[str, Any]:
        """The load fields of the status (protocol §15)."""
        scheduler = self.calls.scheduler
        return node_load(
            queued=scheduler.queued + len(self.calls.backlog),
            running=scheduler.busy,
            long_running=scheduler.long_running,
        )

    def _on_connected(self) -> None:
        """On every (re)connect: announce ourselves, resend syncs in flight."""
        self.status.announce()
        self.requester.resend_all()

    def _ticker(self) -> None:
        while not self._stopping.wait(self._tick):
            self.tick()

    def tick(self) -> None:
        """Evict beyond the residency budget, stop long-call workers idle too
        long, republish a changed status,
        retry samples held for the disk, release samples held for a gap that
        did not fill in time."""
        self.eviction.tick()
        if self.long_calls is not None:
            self.long_calls.reap()
        if self.transport.connected:
            self.status.refresh()
        self.calls.release_held()
        self.feeds.flush()
        self.feeds.resume(self.calls.has_room)

    # -- network thread --------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        topic = msg.topic
        if self.bindings.fed(topic):
            self.feeds.route(msg)  # acknowledged once processed
            return
        self.transport.ack(msg)  # anything else is acknowledged on receipt
        if topic == self.requester.reply_topic:
            self.requester.on_reply(msg)
            return
        node = self.liveness.node_of(topic)
        if node is not None:
            self.liveness.update(node, msg.payload, retained=msg.retain)
            return
        route = self._routes.get(topic)
        if route is not None:
            req, chan = self._accept(msg, ANONYMOUS)
            if req is not None:
                route(req, chan)
            return
        call, caller = self._call_route(topic)
        if call is not None:
            req, chan = self._accept(msg, caller)
            if req is not None:
                call(req, chan, len(msg.payload))  # its bytes count against the caller

    def _accept(self, msg: Message, caller: str) -> tuple[Request | None, ReplyChannel]:
        return accept(msg, self.transport, self.topics, self.max_payload, self.max_reply, caller)

    def _call_route(self, topic: str) -> tuple[CallRoute | None, str]:
        route = self._calls.get(topic)
        if route is not None:
            return route, ANONYMOUS
        base, _, caller = topic.rpartition("/")
        route = self._calls.get(base)
        return (route, caller) if route is not None and caller else (None, ANONYMOUS)

    def _pooled(self, topic: str, req: Request, chan: ReplyChannel, size: int) -> None:
        self.calls.route_pooled(self._pools[topic], req, chan, size)

    def _ctl(self, req: Request, chan: ReplyChannel) -> None:
        self._ctl_pool.submit(self.control.handle, req, chan)

    def _sync(self, req: Request, chan: ReplyChannel) -> None:
        self._sync_pool.submit(self.replication.handle, req, chan)
