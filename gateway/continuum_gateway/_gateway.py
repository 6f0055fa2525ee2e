"""The gateway: the object directory service, and node liveness from retained
status messages and last wills. It is on the path of directory operations
(create, resolve, alias, delete, listings) only, never of calls.

This module wires the parts over a :class:`~continuum_mqtt.service.Transport`:
the methods (:mod:`._api`) on a :class:`~continuum_mqtt.service.Dispatcher`,
exactly-once by request id with the outcomes in the directory
(:mod:`._outcomes`), node statuses through a
:class:`~continuum_mqtt.service.Liveness` into :mod:`._upkeep` (failover,
reconciliation, housekeeping)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from continuum_mqtt import ContinuumError, StorageError
from continuum_mqtt.service import (
    DEFAULT_ROOT,
    PROTOCOL_VERSION,
    BrokerURL,
    Dispatcher,
    ExactlyOnce,
    Liveness,
    Message,
    MqttTransport,
    ReplyChannel,
    Request,
    Requester,
    Rights,
    Topics,
    Transport,
    accept,
    call_subscriptions,
    encode,
    split_call,
)

from . import _records as rec
from ._api import DirectoryApi
from ._directory import Directory
from ._drain import DrainApi
from ._fleet import MARKER_PREFIX, empty_directory_refusal, held_counts
from ._integrity import DirectoryRefused, check_directory
from ._outcomes import DirectoryOutcomes
from ._rights import AccessApi
from ._upkeep import Upkeep

__all__ = ["Gateway"]

log = logging.getLogger("continuum.gateway")


# gateway methods that wait for a node's answer (the others: the directory alone)
REACHES_NODES = frozenset(
    {"create", "delete", "bind", "unbind", "grant", "revoke", "set_owner", "drain"}
)


class Gateway:
    """The directory service on ``transport`` (a
    :class:`~continuum_mqtt.service.Transport`, or a :class:`BrokerURL` to connect
    to with client id ``gw-<gateway_id>``), its directory in ``db_path``.
    Raises :class:`DirectoryRefused` for a damaged directory file."""

    def __init__(
        self,
        transport: Transport | BrokerURL,
        db_path: str,
        *,
        gateway_id: str = "gateway",
        root: str = DEFAULT_ROOT,
        workers: int = 4,
        max_payload: int = 1024 * 1024,
        node_timeout: float = 30.0,
        failover_delay: float = 2.0,
        tombstone_days: float = rec.TOMBSTONE_DAYS,
        status_wait: float = 10.0,
        rights: Rights | None = None,
        max_objects: int = 0,
    ) -> None:
        for warning in check_directory(db_path):  # raises DirectoryRefused
            log.warning("%s", warning)
        if isinstance(transport, BrokerURL):
            transport = MqttTransport.for_service(transport, f"gw-{gateway_id}")
        self.transport: Transport = transport
        self.topics = Topics(root)
        self.gateway_id = gateway_id
        self.directory = Directory(db_path)
        self._was_empty = self.directory.is_empty()
        self.max_payload = max_payload
        self.node_timeout = node_timeout
        self.status_wait = status_wait
        token = uuid.uuid4().hex  # marks the creates this process started
        self._ready = threading.Event()  # the directory is trusted: serve, reconcile
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._marker = MARKER_PREFIX + uuid.uuid4().hex.encode()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="continuum-gateway")
        self._quick_pool = ThreadPoolExecutor(2, thread_name_prefix="continuum-gateway-directory")
        # Status updates are applied in arrival order, one at a time.
        self._status_pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-status")
        # alias lists pushed to nodes in order, so that the last one sent wins
        self._alias_pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-aliases")
        self._housekeeper: threading.Thread | None = None
        self.requester = Requester.over(transport, self.topics)
        self.once = ExactlyOnce(DirectoryOutcomes(self.directory))
        self.api = DirectoryApi(
            self.directory,
            self.topics,
            self._call_node,
            pool=self._pool,
            alias_pool=self._alias_pool,
            node_timeout=node_timeout,
            token=token,
            rights=rights,
            max_objects=max_objects,
        )
        self.liveness = Liveness(self.topics)
        self.upkeep = Upkeep(
            self.directory,
            self.liveness,
            self._call_node,
            self.api.discard,
            self.once,
            ready=self._ready,
            stopping=self._stopping,
            token=token,
            node_timeout=node_timeout,
            failover_delay=failover_delay,
            tombstone_days=tombstone_days,
        )
        self.liveness.on_change = self.upkeep.on_status
        self.dispatcher = (
            Dispatcher("gateway", translate=self._storage_error)
            .register(self.api)
            .register(AccessApi(self.api.access, self._call_node))
            .register(DrainApi(self.directory, self.api.rights, self._call_node, node_timeout))
        )
        self.metrics: Any = None  # _metrics.GatewayMetrics, with --metrics-port
        self.fleet: Any = None  # _fleetmetrics.FleetMetrics, with --fleet-metrics
        transport.bind(self._on_message, self._on_connected)
        transport.set_will(self.topics.gateway_status, encode({"state": "offline"}), True)
        # gateway/call is subscribed once the directory is trusted (start)
        for topic in (*self.liveness.subscriptions, self.requester.reply_topic):
            transport.subscribe(topic, 1)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Connect, learn what the nodes hold, and serve, or raise
        :class:`DirectoryRefused` (an empty directory while nodes hold objects)."""
        self.requester.start(self.transport)
        self.transport.start()
        self._await_statuses()
        if self._was_empty:
            counts = held_counts(self.liveness.statuses())
            if counts:
                raise DirectoryRefused(
                    empty_directory_refusal(
                        self.directory.path, counts, self.transport.broker, self.topics.root
                    )
                )
        self._ready.set()
        for topic in call_subscriptions(self.topics.gateway_call):
            self.transport.subscribe(topic, 1)
        self._announce()
        self._housekeeper = threading.Thread(
            target=self.upkeep.housekeep, name="continuum-gateway-housekeeping", daemon=True
        )
        self._housekeeper.start()
        log.info(
            "gateway %s on %s, directory %s",
            self.gateway_id,
            self.transport.broker,
            self.directory.path,
        )

    def _await_statuses(self) -> None:
        """Wait until the retained node statuses have all been applied."""
        self.transport.publish(self.requester.reply_topic, self._marker, qos=1)
        if not self._synced.wait(self.status_wait):
            log.warning(
                "the node statuses did not all arrive within %.0f s; going on without them",
                self.status_wait,
            )

    def stop(self) -> None:
        self._stopping.set()
        self.transport.publish(
            self.topics.gateway_status, encode({"state": "offline"}), retain=True
        ).wait(2)
        self.requester.stop()
        self.transport.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._quick_pool.shutdown(wait=True, cancel_futures=True)
        self._status_pool.shutdown(wait=True)
        self.upkeep.close()
        self._alias_pool.shutdown(wait=False, cancel_futures=True)
        if self._housekeeper is not None:
            self._housekeeper.join(5)
        self.directory.close()  # after a writer still at work (it takes the lock)

    def _on_connected(self) -> None:
        """On every (re)connect: resend node requests in flight, announce ourselves."""
        self.requester.resend_all()
        if self._ready.is_set():
            self._announce()

    def _announce(self) -> None:
        self.transport.publish(
            self.topics.gateway_status,
            encode({"state": "online", "protocol": PROTOCOL_VERSION, "started": time.time()}),
            retain=True,
        )

    # -- network thread ----------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        topic = msg.topic
        if topic == self.requester.reply_topic:
            if msg.payload == self._marker:
                self._status_pool.submit(self._synced.set)  # after the statuses before it
                return
            self.requester.on_reply(msg)
            return
        node = self.liveness.node_of(topic)
        if node is not None:
            self._status_pool.submit(self.liveness.update, node, msg.payload, retained=msg.retain)
            return
        if self.fleet is not None and self.fleet.on_message(msg):
            return  # an edge agent's status or forecast (docs/metrics.md)
        caller = split_call(topic, self.topics.gateway_call)
        if caller is not None:
            req, chan = accept(
                msg, self.transport, self.topics, self.max_payload, self.max_payload, caller
            )
            if req is not None:
                if self.metrics is not None:
                    self.metrics.request(req, chan)
                # requests that wait for a node run apart from those the
                # directory answers alone: a stuck node never delays a resolve
                pool = self._pool if req.method in REACHES_NODES else self._quick_pool
                pool.submit(self._serve, req, chan)

    # -- requests ----------------------------------------------------------------------
    def _serve(self, req: Request, chan: ReplyChannel) -> None:
        """Run one gateway request. Requests that change the directory are
        exactly-once by request id, like calls on nodes, also across a restart
        of the gateway (the outcomes are in the directory, written with the
        change): a resent request gets the first outcome (or, while the first
        still runs, no second reply)."""
        self.dispatcher.serve(req, chan, once=self.once)

    @staticmethod
    def _storage_error(exc: Exception) -> ContinuumError | None:
        if isinstance(exc, sqlite3.Error):
            log.error("gateway: the directory failed: %s", exc)
            return StorageError(f"the directory could not record it: {exc}")
        return None

    def _node_call(
        self, node: str, method: str, kwargs: dict[str, Any], deadline: float | None
    ) -> Any:
        """A control request to ``node`` (§17), within ``deadline`` and ``--node-timeout``."""
        timeout = self.node_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        req = Request(method, [], kwargs)
        return self.requester.send(self.topics.node_ctl(node), req, timeout).result()

    def _call_node(
        self, node: str, method: str, kwargs: dict[str, Any], deadline: float | None
    ) -> Any:
        # looked up at each call: a test replaces _node_call by fake nodes
        return self._node_call(node, method, kwargs, deadline)

    # -- the methods, as the gateway's own (tools and tests call them) -------------------
    def create(self, cls: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.api.create(cls, *args, **kwargs)

    def _settle_interrupted(self) -> None:
        self.upkeep.settle_interrupted()
