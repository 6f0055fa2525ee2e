"""Call routing, the part of :class:`~continuum_mqtt.Client` that decides where a
call goes and what happens when it cannot get there: the location cache (the
node of each object, filled from directory replies), resolving an object not
yet seen, re-resolving and resending a call whose object moved
(``object_not_here``) or whose node went offline (a replica may be promoted),
resending what a node or the gateway may have lost when it comes back, and the
offline grace before such a call fails with :class:`~continuum_mqtt.Unavailable`.

A resend keeps the request id, so nothing runs twice. Edge-safe: imports the
standard library and the requester only.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._errors import ContinuumError, ObjectNotHere, Unavailable
from ._protocol import Request, Topics
from .service._liveness import GATEWAY, Liveness, StatusChange
from .service._requester import Pending, ProgressFn, Requester

if TYPE_CHECKING:
    from ._proxy import ObjectProxy

__all__: list[str] = []


class _Routing:
    """Mixed into :class:`~continuum_mqtt.Client`, which sets these attributes and
    sends requests to the gateway with ``_gateway``/``_gateway_future``."""

    topics: Topics
    timeout: float
    offline_grace: float
    _requester: Requester
    _liveness: Liveness
    _locations: dict[str, str]  # object id -> node, as the gateway last said
    _caller: str | None  # the broker username: requests go to <call topic>/<username>
    _node_topics: dict[str, str]  # node -> the topic of calls to it, built once

    def _gateway(self, op: str, /, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gateway_future(
        self, op: str, timeout: float, /, **kwargs: Any
    ) -> Future[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_liveness(self, change: StatusChange) -> None:
        """A node's (or, as GATEWAY, the gateway's) status changed."""
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
                err = Unavailable(f"node {node} went offline", node=node)
                if not self._reroute(p, err):
                    self._requester.fail(p.rid, err)

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
                self.topics.pool_call(proxy._class_path, self._caller),
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
        topic = self._node_topics.get(node)
        if topic is None:
            topic = self._node_topics[node] = self.topics.node_call(node, self._caller)
        fut = self._requester.send(
            topic,
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
                self._requester.publish(p, self.topics.node_call(node, self._caller))
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
