"""The client API: connect, get a stub by class path, create/find objects, call
their active methods (sync, futures, asyncio), stream progress.

Edge-safe: imports paho-mqtt and cbor2 only.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ._codec import encode
from ._errors import ContinuumError, ObjectNotHere, Unavailable
from ._mqtt import BrokerURL, new_client_id
from ._protocol import DEFAULT_ROOT, Request, Topics
from .service._liveness import GATEWAY, Liveness
from .service._mqtt import MqttTransport
from .service._requester import Pending, ProgressFn, Requester
from .service._transport import Message

__all__ = ["ClassStub", "Client", "ObjectProxy", "RemoteMethod", "Requester"]

log = logging.getLogger("continuum.client")


class RemoteMethod:
    """An active method of a remote object: call it, or use :meth:`future`, :meth:`aio`
    or :meth:`options` (per-call deadline and progress callback)."""

    __slots__ = ("_name", "_on_progress", "_proxy", "_timeout")

    def __init__(
        self,
        proxy: ObjectProxy,
        name: str,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self._proxy = proxy
        self._name = name
        self._timeout = timeout
        self._on_progress = on_progress

    def options(
        self, *, timeout: float | None = None, on_progress: ProgressFn | None = None
    ) -> RemoteMethod:
        """The same method with a deadline (seconds) and/or a progress callback."""
        return RemoteMethod(
            self._proxy,
            self._name,
            timeout if timeout is not None else self._timeout,
            on_progress if on_progress is not None else self._on_progress,
        )

    def future(self, *args: Any, **kwargs: Any) -> Future[Any]:
        p = self._proxy
        return p._backend._call(p, self._name, list(args), kwargs, self._timeout, self._on_progress)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.future(*args, **kwargs).result()

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        import asyncio  # already loaded by the running loop; not at import (38 ms)

        on_progress = self._on_progress
        if on_progress is not None:
            loop = asyncio.get_running_loop()
            cb = on_progress

            def on_progress(update: Any) -> None:
                loop.call_soon_threadsafe(cb, update)

        p = self._proxy
        fut = p._backend._call(p, self._name, list(args), kwargs, self._timeout, on_progress)
        return await asyncio.wrap_future(fut)

    def __repr__(self) -> str:
        return f"<RemoteMethod {self._proxy._class_path}.{self._name} of {self._proxy._id}>"


class ObjectProxy:
    """A remote object. Attribute access gives :class:`RemoteMethod`; the object's
    id, class and aliases are ``_id``, ``_class_path`` and ``_aliases``."""

    def __init__(
        self, backend: Any, oid: str | None, class_path: str, aliases: list[str] | None = None
    ) -> None:
        self._backend = backend
        self._id = oid
        self._class_path = class_path
        self._aliases = list(aliases or [])

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        method = RemoteMethod(self, name)
        self.__dict__[name] = method
        return method

    def __repr__(self) -> str:
        alias = f" alias={self._aliases[0]!r}" if self._aliases else ""
        return f"<{self._class_path} {self._id}{alias}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectProxy) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)


class ClassStub:
    """An application class known only by its path: create instances, find them."""

    def __init__(self, backend: Any, class_path: str) -> None:
        self._backend = backend
        self.class_path = class_path

    def create(
        self,
        *args: Any,
        alias: str | None = None,
        node: str | None = None,
        replicas: int = 0,
        **kwargs: Any,
    ) -> ObjectProxy:
        """Create an instance on ``node`` (or one the gateway picks), optionally
        under ``alias``, with ``replicas`` copies on other nodes kept in sync
        after every mutating call (one is promoted if the primary dies). The
        other arguments go to the class's ``__init__``; ``alias``, ``node`` and
        ``replicas`` are reserved keyword names."""
        info = self._backend._gateway(
            "create",
            cls=self.class_path,
            args=list(args),
            kwargs=kwargs,
            node=node,
            alias=alias,
            replicas=replicas or None,
        )
        return self._backend._proxy(info)

    def get(self, ref: str) -> ObjectProxy:
        """Find an instance by alias or id (it must be of this class)."""
        proxy: ObjectProxy = self._backend.get(ref)
        if proxy._class_path != self.class_path:
            raise TypeError(f"{ref!r} is a {proxy._class_path}, not a {self.class_path}")
        return proxy

    def objects(self) -> list[dict[str, Any]]:
        return self._backend.objects(cls=self.class_path)

    def __repr__(self) -> str:
        return f"<ClassStub {self.class_path}>"


class _Directory:
    """The directory operations both clients share, over ``_gateway``."""

    def _gateway(self, op: str, /, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _proxy(self, info: dict[str, Any]) -> ObjectProxy:  # pragma: no cover - abstract
        raise NotImplementedError

    def stub(self, class_path: str) -> ClassStub:
        """A stub for the class at ``class_path`` (never imported here)."""
        return ClassStub(self, class_path)

    def pool(self, class_path: str) -> ObjectProxy:
        """The pool of a stateless class (``ActiveObject, stateless=True``):
        each call is served by one of the live nodes hosting the class."""
        return ObjectProxy(self, None, class_path)

    def get(self, ref: str) -> ObjectProxy:
        """The object with this alias or id."""
        return self._proxy(self._gateway("resolve", ref=ref))

    def alias(self, obj: ObjectProxy | str, name: str) -> ObjectProxy:
        """Give an object an (additional) alias."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        return self._proxy(self._gateway("alias", ref=ref, name=name))

    def unalias(self, name: str) -> None:
        """Remove the alias ``name`` (the object stays; a missing alias is no error)."""
        self._gateway("unalias", name=name)

    def delete(self, obj: ObjectProxy | str) -> None:
        """Delete the object from its node and the directory."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("delete", ref=ref)

    def bind_metrics(self, obj: ObjectProxy | str, device: str, method: str) -> None:
        """Feed every metrics sample that ``device`` publishes to ``obj.method(sample)``,
        on the object's node, without a round trip through the gateway or this client."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("bind", ref=ref, device=device, method=method)

    def unbind_metrics(self, obj: ObjectProxy | str, device: str) -> None:
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("unbind", ref=ref, device=device)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the directory knows, with its state and classes."""
        return self._gateway("nodes")

    def classes(self) -> dict[str, Any]:
        """Classes hosted by live nodes, with their active methods."""
        return self._gateway("classes")

    def objects(self, cls: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
        """Objects in the directory, optionally of one class or on one node."""
        return self._gateway("objects", cls=cls, node=node)


class Client(_Directory):
    """A connection to a continuum deployment through an MQTT broker.

    Use it as a context manager, sync (``with``) or async (``async with``); it
    can be entered again after it exits. On an exit by exception the broker is
    asked to publish the client's last will.

    ``timeout`` is the default deadline of a call in seconds (per call:
    ``obj.method.options(timeout=...)``); ``qos`` the MQTT QoS of requests;
    ``max_payload`` the largest request it will publish; ``offline_grace`` how
    long a call in flight waits for its node to come back when the node goes
    offline and the object has no replica, before failing with
    :class:`Unavailable` (a new call to an offline node fails at once).
    """

    def __init__(
        self,
        broker: str | BrokerURL = "mqtt://127.0.0.1:1883",
        *,
        client_id: str | None = None,
        root: str = DEFAULT_ROOT,
        timeout: float = 30.0,
        qos: int = 1,
        max_payload: int = 8 << 20,
        ca_file: str | None = None,
        connect_timeout: float = 10.0,
        offline_grace: float = 3.0,
    ) -> None:
        self.broker = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        self.client_id = client_id or new_client_id("client")
        self.topics = Topics(root)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.offline_grace = offline_grace
        self._ca_file = ca_file
        self._requester = Requester(
            self.topics,
            self.client_id,
            qos=qos,
            max_payload=max_payload,
            owner=self.broker.username,
        )
        self._locations: dict[str, str] = {}
        # the nodes' (and, as GATEWAY, the gateway's) retained statuses and wills
        self._liveness = Liveness(self.topics, gateway=True)
        self._conn: MqttTransport | None = None

    @property
    def _node_state(self) -> dict[str, str]:
        """The state of each node seen (and of the gateway, as ""): online or
        offline; live (tests poll it)."""
        return self._liveness._states

    # -- lifecycle -------------------------------------------------------------
    def connect(self) -> Client:
        if self._conn is not None:
            return self
        conn = MqttTransport(
            self.broker,
            self.client_id,
            ca_file=self._ca_file,
            # the retain flag then means "from the broker's store" (_on_message)
            retain_as_published=False,
        )
        conn.bind(self._on_message, self._on_connected)
        for topic in (self._requester.reply_topic, *self._liveness.subscriptions):
            conn.subscribe(topic, 1)
        conn.set_will(
            f"{self.topics.root}/client/{self.client_id}/status",
            encode({"state": "offline", "client": self.client_id}),
        )
        self._requester.start(conn)
        try:
            conn.start(self.connect_timeout)
        except BaseException:
            self._requester.stop()
            raise
        self._conn = conn
        return self

    def close(self, *, with_will: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._requester.stop()
        conn.stop(with_will=with_will)

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(with_will=et is not None)

    async def __aenter__(self) -> Client:
        import asyncio

        await asyncio.to_thread(self.connect)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.close, with_will=et is not None)

    # -- network thread ------------------------------------------------------------
    def _on_connected(self) -> None:
        # What we knew of node liveness may be stale after a reconnect: the
        # retained statuses arrive again with our subscription.
        self._liveness.reset()
        self._requester.resend_all()

    def _on_message(self, msg: Message) -> None:
        if msg.topic == self._requester.reply_topic:
            self._requester.on_reply(msg)
            return
        change = self._liveness.on_message(msg)  # None: not a status, or malformed
        if change is None:
            return
        node, online, was = change.node, change.online, change.was
        # A retained "online" that our subscription brought is not a comeback:
        # it was online when we (re)subscribed, and a reconnect resends anyway.
        came_back = was == "offline" or (was == "unknown" and not change.retained)
        if online and came_back:
            # The node (or GATEWAY, "") (re)connected: what we sent it
            # while it was away may be lost; send again (same request ids, so
            # nothing runs twice).
            for p in self._requester.pending_on(node):
                self._requester.publish(p, p.topic)
        if node == GATEWAY:
            return
        if not online:
            # Calls in flight to a dead node: re-route each (a replica may be
            # promoted), or fail it with a clear error; never leave it hanging.
            for p in self._requester.pending_on(node):
                if not self._reroute(p, Unavailable(f"node {node} went offline", node=node)):
                    self._requester.fail(p.rid, Unavailable(f"node {node} went offline", node=node))

    # -- directory -------------------------------------------------------------
    def _gateway(self, op: str, /, **kwargs: Any) -> Any:
        return self._gateway_future(op, self.timeout, **kwargs).result()

    def _gateway_future(self, op: str, timeout: float, /, **kwargs: Any) -> Future[Any]:
        req = Request(op, [], {k: v for k, v in kwargs.items() if v is not None})
        # node "" stands for the gateway: requests to it are resent when it returns
        return self._requester.send(self.topics.gateway_call, req, timeout, node="")

    def _proxy(self, info: dict[str, Any]) -> ObjectProxy:
        if info.get("node_state") == "offline":
            # Still usable once the node returns; calls fail fast meanwhile.
            log.debug("object %s is on offline node %s", info["id"], info.get("node"))
        self._locations[info["id"]] = info["node"]
        return ObjectProxy(self, info["id"], info["class"], info.get("aliases"))

    # -- calls -----------------------------------------------------------------
    def _call(
        self,
        proxy: ObjectProxy,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressFn | None,
    ) -> Future[Any]:
        oid = proxy._id
        if oid is None:  # a stateless class's pool: any node hosting it answers
            return self._requester.send(
                self.topics.pool_call(proxy._class_path),
                Request(method, args, kwargs),
                timeout or self.timeout,
                on_progress,
            )
        node = self._locations.get(oid)
        req = Request(method, args, kwargs, obj=oid)
        if node is None:
            # Not resolved in this client yet (proxy from another client): resolve first.
            try:
                node = self._resolve(oid)
            except ContinuumError as exc:
                fut: Future[Any] = Future()
                fut.set_exception(exc)
                return fut
        offline = self._liveness.state(node) == "offline"
        fut = self._requester.send(
            self.topics.node_call(node),
            req,
            timeout or self.timeout,
            on_progress,
            self._on_call_error,
            node=node,
            publish=not offline,
        )
        if offline:  # known dead: find where the object is now, or say it is unavailable
            p = self._requester.pending(req.id or "")
            if p is not None:
                err = Unavailable(f"object {oid} is on node {node}, which is offline", node=node)
                if not self._reroute(p, err, wait_for_node=False):
                    self._requester.fail(p.rid, err)
        return fut

    def _resolve(self, oid: str) -> str:
        info = self._gateway("resolve", ref=oid)
        self._locations[oid] = info["node"]
        return info["node"]

    def _on_call_error(self, p: Pending, exc: ContinuumError) -> bool:
        """``object_not_here``: the object moved; find it again and resend."""
        return isinstance(exc, ObjectNotHere) and self._reroute(p, exc)

    _MAX_REROUTES = 100  # at 0.1 s a try: 10 s for a replica to be promoted

    def _reroute(self, p: Pending, exc: ContinuumError, wait_for_node: bool = True) -> bool:
        """Resend call ``p`` (same request id, so it never runs twice) to the
        object's current node, asking the gateway where that is; while the
        gateway has not yet promoted a replica of a dead primary, ask again
        every 0.1 s until the call's deadline. False when not re-routable."""
        oid, stale = p.obj, p.node
        if oid is None or p.future.done() or p.reroutes >= self._MAX_REROUTES:
            return False
        remaining = p.deadline - time.monotonic()
        if remaining <= 0.01:
            return False
        p.reroutes += 1
        p.node = None  # not on the dead node any more: no second re-route from its will
        if self._locations.get(oid) == stale:
            self._locations.pop(oid, None)
        lookup = self._gateway_future("resolve", min(remaining, self.timeout), ref=oid)

        def route(f: Future[Any]) -> None:
            if p.future.done():
                return
            err = f.exception()
            if err is not None:
                self._requester.fail(p.rid, err)
                return
            info = f.result()
            node = info["node"]
            live = info.get("node_state") == "online" and self._liveness.state(node) != "offline"
            if node != stale and live:
                self._locations[oid] = node
                p.node = node
                self._requester.publish(p, self.topics.node_call(node))
                return
            if any(self._liveness.is_online(r) for r in info.get("replicas", [])):
                p.node = stale  # a replica will be promoted: ask again shortly
                timer = threading.Timer(0.1, self._retry_reroute, (p, exc, wait_for_node))
                timer.daemon = True
                timer.start()
                return
            if not live and not wait_for_node:
                self._give_up(p, node)
            elif not live:
                # No replica: wait a little for the node itself (a broker restart
                # makes every node look dead for a moment); its return resends
                # the call, else it fails with a clear error.
                p.node = node
                timer = threading.Timer(self.offline_grace, self._give_up, (p, node))
                timer.daemon = True
                timer.start()
            else:
                self._requester.fail(p.rid, exc)

        lookup.add_done_callback(route)
        return True

    def _give_up(self, p: Pending, node: str) -> None:
        if not p.future.done() and not self._liveness.is_online(node):
            self._requester.fail(
                p.rid, Unavailable(f"object {p.obj} is on node {node}, which is offline", node=node)
            )

    def _retry_reroute(self, p: Pending, exc: ContinuumError, wait_for_node: bool = True) -> None:
        if not p.future.done() and not self._reroute(p, exc, wait_for_node):
            self._requester.fail(p.rid, exc)
