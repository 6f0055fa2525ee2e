"""Request/response over a :class:`~continuum_mqtt.service.Transport`: a
pending-call table keyed by request id, one reply topic, and a deadline
thread that fails calls on time. The client uses it, and so do services that
call other services (the gateway calls nodes, a node its replicas)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .._codec import decode, encode, is_json
from .._errors import (
    ContinuumError,
    DeadlineExpired,
    NotConnected,
    PayloadTooLarge,
    error_from_envelope,
)
from .._protocol import Request, Topics
from ._transport import Message, Transport

__all__ = ["Pending", "ProgressFn", "Requester"]

log = logging.getLogger("continuum.client")

ProgressFn = Callable[[Any], None]


class Pending:
    """A request waiting for its reply (see :meth:`Requester.send`)."""

    __slots__ = (
        "deadline",
        "future",
        "node",
        "obj",
        "on_progress",
        "payload",
        "req",
        "reroutes",
        "retry",
        "rid",
        "sent",
        "topic",
        "unrouted",
    )

    def __init__(
        self,
        rid: str,
        future: Future[Any],
        deadline: float,
        on_progress: ProgressFn | None,
        retry: Callable[[Pending, ContinuumError], bool] | None,
    ) -> None:
        self.rid = rid
        self.future = future
        self.deadline = deadline
        self.on_progress = on_progress
        self.retry = retry
        self.topic = ""
        self.payload = b""
        self.obj: str | None = None  # the object called, when this is a call
        self.node: str | None = None  # the node it was sent to
        self.reroutes = 0
        self.req: Request | None = None
        self.unrouted = 0  # publishes that reached no subscriber (PUBACK 0x10)
        self.sent = False  # published (or routed later): a publish then carries the time left


class Requester:
    """Requests and their replies over one transport.

    ``client_id`` and ``owner`` (the broker username) make the reply topic
    ``<root>/reply/[<owner>/]<client id>``: subscribe it on the transport and
    route its messages to :meth:`on_reply`. Request ids
    are ``<client id>:<random>:<n>``: unique per instance, so a process
    restarted with the same client id never reuses the ids of its last life
    (services remember ids for exactly-once).
    """

    def __init__(
        self,
        topics: Topics,
        client_id: str,
        qos: int = 1,
        max_payload: int = 8 << 20,
        owner: str | None = None,
    ) -> None:
        self.topics = topics
        self.client_id = client_id
        self.reply_topic = topics.reply(client_id, owner)
        self.qos = qos
        self.max_payload = max_payload
        self.transport: Transport | None = None
        self._pending: dict[str, Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{client_id}:{uuid.uuid4().hex[:8]}:"
        self._heap: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reaper: threading.Thread | None = None
        self._closing = False
        # PUBACKs (from transports that report them): packet id -> request id,
        # and the PUBACKs that arrived before publish() returned the packet id
        self._by_mid: dict[int, str] = {}
        self._early: dict[int, tuple[bool, float]] = {}
        self._timers = 0  # republish timers running
        self._mid_lock = threading.Lock()

    @classmethod
    def over(cls, transport: Transport, topics: Topics, **options: Any) -> Requester:
        """A requester using the transport's client id and username."""
        return cls(topics, transport.client_id, owner=transport.username, **options)

    # -- lifecycle -------------------------------------------------------------
    def start(self, transport: Transport) -> None:
        """Use ``transport`` and start the deadline thread."""
        self.transport = transport
        self._closing = False
        hook = getattr(transport, "on_puback", None)  # optional capability
        if hook is not None:
            hook(self._on_puback)
        self._reaper = threading.Thread(
            target=self._reap, name=f"continuum-deadlines-{self.client_id}", daemon=True
        )
        self._reaper.start()

    def stop(self) -> None:
        """Fail every call still waiting (:class:`NotConnected`) and stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._reaper is not None:
            self._reaper.join(2)
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(NotConnected("client closed before the reply arrived"))
        self._pending.clear()
        self.transport = None

    # -- sending ---------------------------------------------------------------
    def new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def send(
        self,
        topic: str,
        req: Request,
        timeout: float,
        on_progress: ProgressFn | None = None,
        retry: Callable[[Pending, ContinuumError], bool] | None = None,
        *,
        node: str | None = None,
        publish: bool = True,
    ) -> Future[Any]:
        """Send ``req`` to ``topic``; the future completes with the result or
        fails with the error (a :class:`~continuum_mqtt.ContinuumError`;
        :class:`~continuum_mqtt.DeadlineExpired` after ``timeout`` seconds).
        ``retry(pending, error)`` may take over an error reply (returning
        True: it resends). ``node``/``req.obj`` mark it as a call the client may
        re-route. With ``publish=False`` it is registered but left for the
        caller to route (see :meth:`pending`)."""
        fut: Future[Any] = Future()
        if self.transport is None:
            fut.set_exception(NotConnected("client is not connected; use it as a context manager"))
            return fut
        if req.id is None:
            req.id = self.new_id()
        req.timeout_ms = round(timeout * 1000)
        try:
            payload = encode(req.to_wire())
        except ContinuumError as exc:
            fut.set_exception(type(exc)(f"cannot encode the arguments: {exc.message}"))
            return fut
        if len(payload) > self.max_payload:
            fut.set_exception(
                PayloadTooLarge(
                    f"request of {len(payload)} bytes exceeds the client limit of {self.max_payload}",
                    limit=self.max_payload,
                )
            )
            return fut
        deadline = time.monotonic() + timeout
        p = Pending(req.id, fut, deadline, on_progress, retry)
        p.payload = payload
        p.req = req
        p.obj = req.obj
        p.node = node
        p.topic = topic
        self._pending[req.id] = p
        with self._cond:
            heapq.heappush(self._heap, (deadline, req.id))
            if self._heap[0][1] == req.id:
                self._cond.notify()
        if publish:
            self.publish(p, topic)
        else:
            # routed later (re-routed before its first send): that publish
            # must carry the time left then, like a resend (protocol.md §9)
            p.sent = True
        return fut

    def resend_all(self) -> None:
        """After a reconnect: publish every call still waiting again, with the
        same request id (a service answers a duplicate from its exactly-once
        table, so nothing runs twice), since the broker may have lost the
        request or its reply while we were away."""
        for p in list(self._pending.values()):
            if p.topic and not p.future.done():
                self.publish(p, p.topic)

    def pending(self, rid: str) -> Pending | None:
        return self._pending.get(rid)

    def pending_on(self, node: str) -> list[Pending]:
        return [p for p in list(self._pending.values()) if p.node == node]

    def publish(self, p: Pending, topic: str) -> None:
        """(Re)publish ``p`` to ``topic``; a resend carries the time left."""
        p.topic = topic
        left = p.deadline - time.monotonic()
        if p.sent and p.req is not None:
            # a resend carries the time left, not the original timeout: the
            # receiver must not run it after the caller has given up
            p.req.timeout_ms = max(1, round(left * 1000))
            p.payload = encode(p.req.to_wire())
        p.sent = True
        transport = self.transport
        if transport is None:
            self.fail(p.rid, NotConnected("client closed"))
            return
        sent = transport.publish(
            topic,
            p.payload,
            qos=self.qos,
            response_topic=self.reply_topic,
            correlation=p.rid.encode(),
            expiry=left,
        )
        mid = getattr(sent, "mid", 0)
        if self.qos and mid:
            with self._mid_lock:
                early = self._early.pop(mid, None)
                if early is None or time.monotonic() - early[1] > 1.0:
                    # not seen yet (or a stale report for another message that
                    # had the same packet id: the transport's replies have ids too)
                    if len(self._by_mid) > 65535:  # PUBACKs lost with a connection
                        self._by_mid.clear()
                    self._by_mid[mid] = p.rid
                    early = None
            if early is not None and early[0]:
                self._unrouted(p.rid)

    # -- requests that reached no subscriber ---------------------------------------
    _UNROUTED_FIRST = 0.1  # s before publishing again; doubles up to _UNROUTED_MAX
    _UNROUTED_MAX = 2.0
    _UNROUTED_TIMERS = 256  # republishes waiting at once, at most (the rest: deadline)
    _EARLY_KEPT = 1024

    def _on_puback(self, mid: int, no_subscribers: bool) -> None:
        """(Network thread.) A PUBACK: with reason 0x10 no service was
        subscribed (not started yet, or reconnecting after a broker restart):
        the broker dropped the request, so publish it again shortly, with the
        same id, until its deadline."""
        with self._mid_lock:
            rid = self._by_mid.pop(mid, None)
            if rid is None:  # not ours, or before publish() returned its packet id
                # (a service's transport reports the PUBACKs of its replies
                # too: this runs for each, so it must stay O(1))
                self._early.pop(mid, None)
                if len(self._early) >= self._EARLY_KEPT:  # oldest first: insertion order
                    del self._early[next(iter(self._early))]
                self._early[mid] = (no_subscribers, time.monotonic())
                return
        if no_subscribers:
            self._unrouted(rid)

    def _unrouted(self, rid: str) -> None:
        p = self._pending.get(rid)
        if p is None or p.future.done():
            return
        left = p.deadline - time.monotonic()
        if left < 0.05:
            return  # the deadline answers it
        with self._mid_lock:
            if self._timers >= self._UNROUTED_TIMERS:
                return  # a comeback resends it (liveness), or its deadline answers it
            self._timers += 1
        delay = min(self._UNROUTED_FIRST * 2**p.unrouted, self._UNROUTED_MAX, left / 2)
        p.unrouted += 1
        timer = threading.Timer(delay, self._publish_again, (rid,))
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # no thread to be had: the deadline answers it
            with self._mid_lock:
                self._timers -= 1

    def _publish_again(self, rid: str) -> None:
        with self._mid_lock:
            self._timers -= 1
        p = self._pending.get(rid)
        if p is not None and p.topic and not p.future.done():
            self.publish(p, p.topic)

    def fail(self, rid: str, exc: BaseException) -> None:
        """Fail the call ``rid`` with ``exc`` (if it still waits)."""
        p = self._pending.pop(rid, None)
        if p is not None and not p.future.done():
            p.future.set_exception(exc)

    # -- receiving (network thread) -----------------------------------------------
    def on_reply(self, msg: Message) -> None:
        """A message on :attr:`reply_topic`."""
        try:
            body = decode(msg.payload, is_json(msg.payload, msg.content_type))
            rid = body.get("id")
            kind = body["kind"]
        except (ContinuumError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed reply on %s: %s", msg.topic, exc)
            return
        if rid is None:  # a request the service could not decode: only the property names it
            corr = msg.correlation
            rid = corr.decode(errors="replace") if isinstance(corr, bytes) else None
        p = self._pending.get(rid) if isinstance(rid, str) else None
        if p is None:
            return  # a late reply for a call that already timed out
        if kind == "progress":
            if p.on_progress is not None:
                try:
                    p.on_progress(body.get("value"))
                except Exception:
                    log.exception("progress callback of %s failed", rid)
            return
        if kind == "result":
            self._pending.pop(rid, None)
            if not p.future.done():
                p.future.set_result(body.get("value"))
            return
        err = error_from_envelope(body.get("error"))
        if p.retry is not None and p.retry(p, err):
            return
        self.fail(rid, err)

    def _reap(self) -> None:
        heap = self._heap
        with self._cond:
            while not self._closing:
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    _, rid = heapq.heappop(heap)
                    if rid in self._pending:
                        self.fail(
                            rid, DeadlineExpired(f"no reply to call {rid} within its deadline")
                        )
                # drop entries of calls that completed long ago
                if len(heap) > 4 * len(self._pending) + 1024:
                    self._heap[:] = [e for e in heap if e[1] in self._pending]
                    heapq.heapify(heap)
                self._cond.wait(heap[0][0] - now if heap else None)
