"""Feeds: device metrics samples that become calls of a bound method (§19).

* :class:`Bindings`: which objects each metrics topic feeds, and the
  subscriptions to match (subscribed while any object is fed by the topic).
* :class:`FeedOrder`: one topic's samples put back in ``seq`` order.
* :class:`Ack`: a QoS 1 sample acknowledged to the broker only once every
  object it feeds has processed (and committed) it.
* :class:`FeedRouter`: the network thread's side: decode, reorder, and queue
  one job per bound object; park a topic whose objects have no room left
  (see :mod:`continuum_node._backlog`) until they have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from continuum_mqtt import BadRequest, ContinuumError
from continuum_mqtt.service import Message, Request, decode, is_json

from ._resident import Resident

__all__ = ["FEED_HOLD", "Ack", "Bindings", "FeedJob", "FeedOrder", "FeedRouter", "device_of"]

log = logging.getLogger("continuum.node")

FEED_HOLD = 1.0  # seconds a sample that skips ahead waits for the gap to fill


class Ack:
    """Releases a QoS 1 message (``release``) once ``remaining`` objects are
    done with it."""

    __slots__ = ("lock", "release", "remaining")

    def __init__(self, release: Callable[[], None], remaining: int) -> None:
        self.release, self.remaining = release, remaining
        self.lock = threading.Lock()

    def done(self) -> None:
        with self.lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self.release()


class FeedOrder:
    """Puts one device's samples back in ``seq`` order. A bridge can forward a
    QoS 1 message out of order around a reconnect, and consumers drop a seq
    below the last one seen as a redelivery; so a sample that skips ahead is
    held until the missing ones arrive, or for FEED_HOLD seconds at most."""

    __slots__ = ("held", "next", "since")

    def __init__(self) -> None:
        self.next: int | None = None
        self.held: dict[int, Any] = {}
        self.since = 0.0

    def offer(self, seq: int, item: Any) -> list[Any]:
        if self.next is None or seq < self.next or seq in self.held:
            # first seen, or a late or duplicate one: on at once (consumers dedupe)
            if self.next is None:
                self.next = seq + 1
            return [item]
        if seq > self.next:
            self.held[seq] = item
            self.since = self.since or time.monotonic()
            return []
        out = [item]
        self.next = seq + 1
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        if not self.held:
            self.since = 0.0
        return out

    def expire(self, hold: float) -> list[Any]:
        if not self.held or time.monotonic() - self.since < hold:
            return []
        seqs = sorted(self.held)
        out = [self.held.pop(s) for s in seqs]
        self.next = seqs[-1] + 1
        self.since = 0.0
        return out


class Bindings:
    """Topic -> the objects it feeds. ``subscribe``/``unsubscribe`` keep the
    transport's subscriptions in step (an unsubscription drops what the
    broker queued, so only topics that change are touched)."""

    def __init__(
        self, subscribe: Callable[[str], None], unsubscribe: Callable[[str], None]
    ) -> None:
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._fed: dict[str, list[Resident]] = {}

    def fed(self, topic: str) -> list[Resident]:
        """The objects ``topic`` feeds (the network thread reads this)."""
        return self._fed.get(topic) or []

    def add(self, topic: str, res: Resident) -> None:
        fed = self._fed.setdefault(topic, [])
        if res not in fed:
            fed.append(res)
        self._subscribe(topic)

    def drop(self, topic: str, res: Resident) -> None:
        fed = self._fed.get(topic, [])
        if res in fed:
            fed.remove(res)
        if not fed:
            self._fed.pop(topic, None)
            self._unsubscribe(topic)

    def add_all(self, res: Resident) -> None:
        for topic in res.feeds:
            self.add(topic, res)

    def remove_all(self, res: Resident) -> None:
        for topic in list(res.feeds):
            self.drop(topic, res)

    def refeed(self, res: Resident, before: set[str], after: set[str]) -> None:
        """Move ``res`` from the topics ``before`` to ``after``."""
        for topic in before - after:
            self.drop(topic, res)
        for topic in after:
            self.add(topic, res)


class FeedJob:
    """A sample for one object's mailbox: a call without a reply. Its
    ``caller`` is the device of its topic (the account that publishes there
    and sets its rate), ``size`` its payload's bytes."""

    __slots__ = ("ack", "caller", "req", "size")

    def __init__(self, req: Request, ack: Ack | None, caller: str = "", size: int = 0) -> None:
        self.req = req
        self.ack = ack
        self.caller = caller
        self.size = size

    def done(self) -> None:
        if self.ack is not None:
            self.ack.done()


class FeedRouter:
    """Samples from the network thread to the mailboxes of the bound objects.

    ``enqueue(res, job)`` queues a :class:`FeedJob` (or keeps it waiting for
    room) and returns False when ``res`` can keep no more: the topic is then
    *parked*: its samples stay here, unacknowledged and in order, until
    :meth:`resume` finds room for them. ``ack(msg)`` acknowledges a message
    to the broker."""

    def __init__(
        self,
        bindings: Bindings,
        enqueue: Callable[[Resident, FeedJob], bool | None],
        ack: Callable[[Message], None],
        max_payload: int,
        hold: float = FEED_HOLD,
    ) -> None:
        self.bindings = bindings
        self._enqueue = enqueue
        self._ack = ack
        self.max_payload = max_payload
        self.hold = hold
        self._orders: dict[str, FeedOrder] = {}  # topic -> its samples' order
        self._parked: dict[str, deque[tuple[Message, Any]]] = {}  # topic -> samples kept
        self._lock = threading.Lock()

    @property
    def parked(self) -> int:
        """Samples parked, all topics."""
        with self._lock:
            return sum(len(q) for q in self._parked.values())

    def route(self, msg: Message) -> None:
        """A message on a feed topic: decoded (a malformed one is acknowledged
        and dropped), put back in ``seq`` order, then queued."""
        try:
            if len(msg.payload) > self.max_payload:
                raise BadRequest(f"feed message of {len(msg.payload)} bytes over the limit")
            sample = decode(msg.payload, is_json(msg.payload, None))
        except ContinuumError as exc:
            log.warning("dropped a malformed message on feed %s: %s", msg.topic, exc)
            if msg.qos:
                self._ack(msg)
            return
        if isinstance(sample, dict):
            # The device is the topic's (the broker pins <root>/dev/<username>/ to
            # the account), never what the payload says: a publisher cannot pass
            # its samples off as another device's, nor poison its seq tracking.
            sample["dev"] = device_of(msg.topic)
        seq = sample.get("seq") if isinstance(sample, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int):
            self.feed(msg, sample)
            return
        with self._lock:
            order = self._orders.get(msg.topic)
            if order is None:
                order = self._orders[msg.topic] = FeedOrder()
            ready = order.offer(seq, (msg, sample))
        for m, s in ready:
            self.feed(m, s)

    def flush(self) -> None:
        """Release the samples held for a gap that did not fill in time."""
        with self._lock:
            ready = [item for order in self._orders.values() for item in order.expire(self.hold)]
        for m, s in ready:
            try:
                self.feed(m, s)
            except Exception:  # the caller's thread must outlive any sample
                log.exception("cannot deliver a held sample of %s", m.topic)

    def feed(self, msg: Message, sample: Any) -> None:
        """One job per object bound to the topic now (bindings may have changed
        while the sample was held); none: acknowledged and dropped. A parked
        topic's sample is parked behind the others."""
        with self._lock:
            parked = self._parked.get(msg.topic)
            if parked is not None:
                parked.append((msg, sample))
                return
        if not self._deliver(msg, sample):
            with self._lock:
                self._parked.setdefault(msg.topic, deque())

    def _deliver(self, msg: Message, sample: Any) -> bool:
        """Queue the sample's jobs; False when an object wants no more."""
        targets = [
            (r, m) for r in list(self.bindings.fed(msg.topic)) if (m := r.feeds.get(msg.topic))
        ]
        if not targets:
            if msg.qos:
                self._ack(msg)
            return True
        ack = Ack(lambda: self._ack(msg), len(targets)) if msg.qos else None
        device, size, room = device_of(msg.topic), len(msg.payload), True
        for res, method in targets:
            job = FeedJob(Request(method, [sample], {}), ack, device, size)
            if self._enqueue(res, job) is False:
                room = False
        return room

    def resume(self, has_room: Callable[[Resident], bool]) -> None:
        """Route the parked samples of each topic whose objects all have room
        again, in order, until one of them is full again."""
        with self._lock:
            ready = [t for t in self._parked if all(has_room(r) for r in self.bindings.fed(t))]
        for topic in ready:
            while True:
                with self._lock:
                    parked = self._parked.get(topic)
                    if not parked:  # all routed: the topic is routed as it comes again
                        self._parked.pop(topic, None)
                        break
                    msg, sample = parked.popleft()
                # still parked meanwhile: the network thread parks what comes behind
                if not self._deliver(msg, sample):
                    break


def device_of(topic: str) -> str:
    """The device of a metrics topic ``<root>/dev/<device>/metrics``."""
    return topic.rsplit("/", 2)[-2]
