"""The gateway: the object directory service, and node liveness from retained
status messages and last wills. It is on the path of directory operations
(create, resolve, alias, delete, listings) only, never of calls."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from continuum._client import Requester
from continuum._codec import decode, encode
from continuum._errors import (
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    NoNodeAvailable,
    NotConnected,
    ObjectNotHere,
    UnknownClass,
    UnknownMethod,
    UnknownObject,
    error_from_envelope,
)
from continuum._invoke import bind_arguments, remote_error
from continuum._mqtt import BrokerURL, Connection, Message
from continuum._protocol import DEFAULT_ROOT, PROTOCOL_VERSION, Request, Topics
from continuum._server import ReplyChannel, accept

from ._directory import Directory

__all__ = ["Gateway"]

log = logging.getLogger("continuum.gateway")

# The largest node status kept (a node hosting a few hundred classes sends a few KB).
MAX_STATUS = 256 * 1024


class Gateway:
    def __init__(
        self,
        broker: BrokerURL,
        db_path: str,
        *,
        gateway_id: str = "gateway",
        root: str = DEFAULT_ROOT,
        workers: int = 4,
        max_payload: int = 1024 * 1024,
        node_timeout: float = 30.0,
        failover_delay: float = 2.0,
    ) -> None:
        self.topics = Topics(root)
        self.directory = Directory(db_path)
        self.max_payload = max_payload
        self.node_timeout = node_timeout
        self.failover_delay = failover_delay
        self._recent: OrderedDict[str, tuple[bool, Any]] = OrderedDict()
        self._running: set[str] = set()
        self._recent_lock = threading.Lock()
        self.gateway_id = gateway_id
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="continuum-gateway")
        # Status updates are applied in arrival order, one at a time.
        self._status_pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-status")
        self._upkeep = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-upkeep")
        self.requester = Requester(self.topics, f"gw-{gateway_id}", owner=broker.username)
        self.conn = Connection(
            broker,
            client_id=f"gw-{gateway_id}",
            on_message=self._on_message,
            subscriptions={
                self.topics.gateway_call: 1,
                self.topics.node_status_all: 1,
                self.requester.reply_topic: 1,
            },
            will=(self.topics.gateway_status, encode({"state": "offline"}), True),
            on_connected=self._publish_status,
        )
        self._methods: dict[str, Callable[..., Any]] = {
            "create": self.create,
            "resolve": self.resolve,
            "alias": self.alias,
            "unalias": self.unalias,
            "delete": self.delete,
            "bind": self.bind,
            "unbind": self.unbind,
            "nodes": self.nodes,
            "classes": self.classes,
            "objects": self.objects,
        }

    def start(self) -> None:
        self.requester.start(self.conn)
        self.conn.start()
        log.info(
            "gateway %s on %s, directory %s", self.gateway_id, self.conn.broker, self.directory.path
        )

    def stop(self) -> None:
        try:
            self.conn.publish(
                self.topics.gateway_status, encode({"state": "offline"}), retain=True
            ).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.requester.stop()
        self.conn.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._status_pool.shutdown(wait=True)
        self._upkeep.shutdown(wait=False, cancel_futures=True)
        self.directory.close()

    def _publish_status(self) -> None:
        """On every (re)connect: announce ourselves, resend node requests in flight."""
        self.requester.resend_all()
        self.conn.publish(
            self.topics.gateway_status,
            encode({"state": "online", "protocol": PROTOCOL_VERSION, "started": time.time()}),
            retain=True,
        )

    # -- network thread ----------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        topic = msg.topic
        if topic == self.requester.reply_topic:
            self.requester.on_reply(msg)
            return
        node = self.topics.node_of_status(topic)
        if node is not None:
            self._status_pool.submit(self._node_status, node, bytes(msg.payload))
            return
        if topic == self.topics.gateway_call:
            req, chan = accept(msg, self.conn, self.topics, self.max_payload, self.max_payload)
            if req is not None:
                self._pool.submit(self._serve, req, chan)

    def _node_status(self, node: str, payload: bytes) -> None:
        if not payload:  # retained status cleared
            self.directory.forget_node(node)
            return
        try:
            if len(payload) > MAX_STATUS:
                # kept whole in the directory and echoed by nodes()/classes():
                # one oversized status would break those replies for everyone
                raise BadRequest(f"status of {len(payload)} bytes (limit {MAX_STATUS})")
            status = decode(payload)
            if not isinstance(status, dict):
                raise BadRequest("status must be a map")
            host = status.get("host")
            if host is not None and not (isinstance(host, str) and len(host) <= 255):
                raise BadRequest("status 'host' must be a host name")
            classes = status.get("classes", {})
            if not isinstance(classes, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in classes.items()
            ):
                raise BadRequest("status 'classes' must map class paths to maps")
        except ContinuumError as exc:
            log.warning("ignoring malformed status of node %s: %s", node, exc)
            return
        before = self.directory.node_state(node)
        online = status.get("state") == "online"
        self.directory.node_status(node, status)
        log.info("node %s is %s", node, "online" if online else "offline")
        if not online and before == "online":
            self._upkeep.submit(self._failover, node)
        elif online and before == "offline":
            self._upkeep.submit(self._reconcile, node)

    _CHANGES = frozenset({"create", "alias", "unalias", "delete", "bind", "unbind"})
    _RECENT = 4096  # outcomes of recent changing requests kept, by request id

    def _serve(self, req: Request, chan: ReplyChannel) -> None:
        """Run one gateway request. Requests that change the directory are
        exactly-once by request id, like calls on nodes: a resent request gets
        the first outcome (or, while the first still runs, no second reply)."""
        if chan.expired():
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        rid = req.id if req.method in self._CHANGES else None
        if rid is not None:
            with self._recent_lock:
                done = self._recent.get(rid)
                if done is None and rid in self._running:
                    return
                if done is None:
                    self._running.add(rid)
            if done is not None:
                self._answer(chan, done)
                return
        outcome: tuple[bool, Any]
        try:
            outcome = (True, self._dispatch(req, chan))
        except ContinuumError as exc:
            outcome = (False, exc.to_envelope())
        except Exception as exc:
            log.exception("gateway %s failed", req.method)
            outcome = (False, remote_error(exc).to_envelope())
        if rid is not None:
            with self._recent_lock:
                self._running.discard(rid)
                self._recent[rid] = outcome
                while len(self._recent) > self._RECENT:
                    self._recent.popitem(last=False)
        self._answer(chan, outcome)

    @staticmethod
    def _answer(chan: ReplyChannel, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            chan.result(value)
        else:
            chan.error(error_from_envelope(value))

    def _dispatch(self, req: Request, chan: ReplyChannel) -> Any:
        fn = self._methods.get(req.method)
        if fn is None:
            raise UnknownMethod(f"the gateway has no method {req.method!r}", method=req.method)
        if any(k.startswith("_") for k in req.kwargs):
            raise BadRequest("argument names starting with '_' are reserved")
        bind_arguments(fn, req.args, req.kwargs, f"gateway {req.method}")
        if req.method in ("create", "delete", "bind", "unbind"):
            req.kwargs["_deadline"] = chan.deadline
        return fn(*req.args, **req.kwargs)

    # -- directory methods ---------------------------------------------------------
    def _node_call(
        self, node: str, method: str, kwargs: dict[str, Any], deadline: float | None
    ) -> Any:
        timeout = self.node_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        req = Request(method, [], kwargs)
        return self.requester.send(self.topics.node_ctl(node), req, timeout).result()

    def create(
        self,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        node: str | None = None,
        alias: str | None = None,
        replicas: int = 0,
        _deadline: float | None = None,
    ) -> dict[str, Any]:
        if not isinstance(cls, str) or not cls:
            raise BadRequest("create: 'cls' must be a class path")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise BadRequest("create: 'replicas' must be a non-negative integer")
        placed = self.directory.place(cls, node, 1 + replicas)
        if not placed:
            if node is not None:
                state = self.directory.node_state(node)
                if state != "online":
                    raise NoNodeAvailable(f"node {node!r} is {state}", node=node)
                raise UnknownClass(f"node {node!r} does not host class {cls!r}", cls=cls)
            raise NoNodeAvailable(f"no live node hosts class {cls!r}", cls=cls)
        if len(placed) < 1 + replicas:
            raise NoNodeAvailable(
                f"{replicas} replica(s) need {1 + replicas} live nodes hosting {cls!r};"
                f" there are {len(placed)}",
                cls=cls,
            )
        if alias is not None:
            self.directory._check_alias_free(alias, "")
        target, backups = placed[0], placed[1:]
        oid = uuid.uuid4().hex
        create = {
            "obj": oid,
            "cls": cls,
            "args": args or [],
            "kwargs": kwargs or {},
            "replicas": backups,
        }
        try:
            self._node_call(target, "create", create, _deadline)
        except (DeadlineExpired, NotConnected):
            # the node may have created it after all: no directory entry will
            # ever name it, so take it back
            self._discard(oid, [target, *backups])
            raise
        try:
            info = self.directory.add_object(oid, cls, target, alias, backups)
        except BaseException:  # e.g. the alias was taken meanwhile
            self._discard(oid, [target, *backups])
            raise
        log.info(
            "created %s %s on %s%s%s",
            cls,
            oid,
            target,
            f" as {alias!r}" if alias else "",
            f", replicas on {', '.join(backups)}" if backups else "",
        )
        return info

    def _discard(self, oid: str, holders: list[str]) -> None:
        """Best effort, in the background: delete an object that the directory
        does not record from the nodes that may hold it."""

        def run() -> None:
            for holder in holders:
                try:
                    self._node_call(holder, "delete", {"obj": oid}, time.monotonic() + 5.0)
                except ContinuumError as exc:
                    if not isinstance(exc, ObjectNotHere):
                        log.warning("could not discard %s on %s: %s", oid, holder, exc)

        log.warning("discarding object %s on %s: its create did not complete", oid, holders)
        self._pool.submit(run)  # not the upkeep thread: failover must not wait behind it

    # -- liveness --------------------------------------------------------------------
    def _failover(self, dead: str) -> None:
        """The primary ``dead`` is gone: promote a live replica of each of its
        objects. It must stay gone for ``failover_delay`` first: a broker
        restart delivers every node's last will, and promoting a replica of a
        live primary would make two primaries (the old one is fenced at its
        next call in any case)."""
        end = time.monotonic() + self.failover_delay
        while time.monotonic() < end:
            if self.directory.node_state(dead) == "online":
                log.info("node %s is back within %.1f s: no failover", dead, self.failover_delay)
                return
            time.sleep(0.05)
        for obj in self.directory.objects_on(dead):
            live = [
                r for r in obj["replicas"] if r != dead and self.directory.node_state(r) == "online"
            ]
            if not live:
                if obj["replicas"]:
                    log.error(
                        "object %s lost its primary %s and has no live replica", obj["id"], dead
                    )
                continue
            new, rest = live[0], [r for r in obj["replicas"] if r not in (dead, live[0])]
            t0 = time.monotonic()
            try:
                self._node_call(
                    new, "promote", {"obj": obj["id"], "replicas": rest}, self._upkeep_deadline()
                )
            except ContinuumError as exc:
                log.error("cannot promote the replica of %s on %s: %s", obj["id"], new, exc)
                continue
            self.directory.move(obj["id"], new, rest)
            log.warning(
                "failover: %s %s moved from %s to its replica on %s in %.0f ms",
                obj["class"],
                obj["id"],
                dead,
                new,
                (time.monotonic() - t0) * 1000,
            )

    def _upkeep_deadline(self) -> float:
        # Liveness upkeep talks to nodes that may be junk (anyone who can
        # publish a status): short deadlines, on its own thread, never in the
        # way of clients.
        return time.monotonic() + 3.0

    def _reconcile(self, node: str) -> None:
        """A node came back: drop the copies it holds of objects that failed over
        while it was away (another node is their primary now)."""
        try:
            held = self._node_call(node, "list", {}, self._upkeep_deadline())
        except ContinuumError as exc:
            log.warning("cannot list the objects of returning node %s: %s", node, exc)
            return
        for obj in held:
            try:
                info = self.directory.resolve(obj["id"])
            except UnknownObject:
                info = None
            stale = info is None or (info["node"] != node and node not in info["replicas"])
            if stale:
                with contextlib.suppress(ContinuumError):
                    self._node_call(node, "delete", {"obj": obj["id"]}, None)
                log.info("dropped stale copy of %s on returning node %s", obj["id"], node)

    def resolve(self, ref: str) -> dict[str, Any]:
        return self.directory.resolve(ref)

    def alias(self, ref: str, name: str) -> dict[str, Any]:
        return self.directory.set_alias(ref, name)

    def unalias(self, name: str) -> None:
        self.directory.remove_alias(name)

    def delete(self, ref: str, _deadline: float | None = None) -> dict[str, Any]:
        info = self.directory.resolve(ref)
        for holder in [info["node"], *info["replicas"]]:
            if self.directory.node_state(holder) == "online":
                with contextlib.suppress(ObjectNotHere):
                    self._node_call(holder, "delete", {"obj": info["id"]}, _deadline)
        self.directory.delete_object(info["id"])
        log.info("deleted %s %s", info["class"], info["id"])
        return {"id": info["id"], "deleted": True}

    def bind(
        self, ref: str, device: str, method: str, _deadline: float | None = None
    ) -> dict[str, Any]:
        """Feed device ``device``'s metrics to ``method`` of the object, on its node."""
        info = self.directory.resolve(ref)
        try:
            topic = self.topics.metrics(device)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._node_call(
            info["node"], "bind", {"obj": info["id"], "topic": topic, "method": method}, _deadline
        )
        return {**info, "topic": topic}

    def unbind(self, ref: str, device: str, _deadline: float | None = None) -> dict[str, Any]:
        info = self.directory.resolve(ref)
        try:
            topic = self.topics.metrics(device)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._node_call(info["node"], "unbind", {"obj": info["id"], "topic": topic}, _deadline)
        return {**info, "topic": topic}

    def nodes(self) -> list[dict[str, Any]]:
        return self.directory.nodes()

    def classes(self) -> dict[str, Any]:
        return self.directory.classes()

    def objects(self, cls: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
        return self.directory.objects(cls, node)
