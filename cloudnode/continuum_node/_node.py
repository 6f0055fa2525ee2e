"""The cloud node: hosts resident objects and runs their active methods.

This module only wires the parts and routes messages; each part is one
concept with its own tests:

========================  ===================================================
:mod:`._resident`          an object, its record, the node's table of them
:mod:`._actors`            mailboxes drained by the worker pool (order, bounds)
:mod:`._calls`             a call from the network thread to a worker and back
                           (exactly-once, busy, deadline, commit, reply)
:mod:`._durability`        commit, checkpoint, rollback, restore over the store
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
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from continuum_mqtt.service import (
    DEFAULT_ROOT,
    Liveness,
    Message,
    ReplyChannel,
    Request,
    Requester,
    Topics,
    Transport,
    accept,
)

from ._calls import Calls, run_pooled
from ._classes import load_classes
from ._control import Control
from ._durability import Durability
from ._feeds import FEED_HOLD, Bindings, FeedRouter
from ._replication import Replication
from ._resident import Residents
from ._status import Status, offline
from ._store import Store

__all__ = ["Node", "load_classes"]

log = logging.getLogger("continuum.node")


class Node:
    """A node ``node_id`` hosting ``classes`` over ``transport`` (not started:
    :meth:`start` connects it). ``pool`` and ``sync_pool`` replace the worker
    pools (tests); ``tick`` is how often held samples and the status are
    looked at (0: never by itself, a test calls :meth:`tick`); ``feed_hold``
    how long a sample waits for a gap to fill; ``held_retry`` how often a
    sample that could not be made durable is retried."""

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
    ) -> None:
        self.node_id = node_id
        self.transport = transport
        self.topics = topics = Topics(root)
        self.classes = classes
        self.max_payload = max_payload
        self.max_reply = max_reply or max_payload
        self._tick = tick
        self._stopping = threading.Event()
        self._pool = pool or ThreadPoolExecutor(
            workers, thread_name_prefix=f"continuum-node-{node_id}"
        )
        # Syncs from primaries never wait behind calls (two nodes replicating to
        # each other with busy pools would otherwise deadlock until timeouts).
        self._sync_pool = sync_pool or ThreadPoolExecutor(
            1, thread_name_prefix=f"continuum-sync-{node_id}"
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
            max_queue=max_queue,
            max_node_queue=max_node_queue,
            held_retry=held_retry,
        )
        self.feeds = FeedRouter(
            self.bindings, self.calls.enqueue_sample, transport.ack, max_payload, feed_hold
        )
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
        )
        # One instance per stateless class serves its pool (shared subscription).
        self._pools: dict[str, Any] = {
            topics.pool_call(path): None
            for path, cls in classes.items()
            if getattr(cls, "__continuum_stateless__", False)
        }
        self._routes = {
            topics.node_call(node_id): self._call,
            topics.node_ctl(node_id): self._ctl,
            topics.node_sync(node_id): self._sync,
        }
        transport.bind(self._on_message, self._on_connected)
        transport.set_will(self._status_topic, offline(node_id), True)
        for topic in [*self._routes, self.requester.reply_topic, *self.liveness.subscriptions]:
            transport.subscribe(topic, 1)
        for path in sorted(classes):
            if topics.pool_call(path) in self._pools:
                transport.subscribe(topics.pool_share(path), 1)

    @property
    def store(self) -> Store | None:
        return self.durability.store

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for path, cls in self.classes.items():
            warm_up = getattr(cls, "__continuum_warm_up__", None)
            if warm_up is not None:
                t0 = time.perf_counter()
                warm_up()
                log.debug("warmed up %s in %.2f s", path, time.perf_counter() - t0)
            if self.topics.pool_call(path) in self._pools:
                self._pools[self.topics.pool_call(path)] = cls()
        self.durability.restore(self.classes)
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
        log.info("node %s stopping", self.node_id)
        self._stopping.set()
        with contextlib.suppress(RuntimeError, ValueError):
            self.transport.publish(self._status_topic, offline(self.node_id), retain=True).wait(2)
        self.requester.stop()
        self.transport.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sync_pool.shutdown(wait=True, cancel_futures=True)
        self.durability.close()

    def _on_connected(self) -> None:
        """On every (re)connect: announce ourselves, resend syncs in flight."""
        self.status.announce()
        self.requester.resend_all()

    def _ticker(self) -> None:
        while not self._stopping.wait(self._tick):
            self.tick()

    def tick(self) -> None:
        """Republish a changed status, retry samples held for the disk, release
        samples held for a gap that did not fill in time."""
        if self.transport.connected:
            self.status.refresh()
        self.calls.release_held()
        self.feeds.flush()

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
        req, chan = accept(msg, self.transport, self.topics, self.max_payload, self.max_reply)
        if req is None:
            return
        route = self._routes.get(topic)
        if route is not None:
            route(req, chan)
        elif topic in self._pools:
            self._pool.submit(run_pooled, self._pools[topic], req, chan)

    def _call(self, req: Request, chan: ReplyChannel) -> None:
        self.calls.route(req, chan)

    def _ctl(self, req: Request, chan: ReplyChannel) -> None:
        self._pool.submit(self.control.handle, req, chan)

    def _sync(self, req: Request, chan: ReplyChannel) -> None:
        self._sync_pool.submit(self.replication.handle, req, chan)
