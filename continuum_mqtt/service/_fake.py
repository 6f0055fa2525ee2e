"""An in-process :class:`~continuum_mqtt.service.Transport` for tests.

:class:`FakeTransport` records what a service publishes, subscribes,
acknowledges and leaves as its will, and lets a test hand it messages
synchronously (:meth:`FakeTransport.inject`). Fakes linked to one
:class:`FakeBus` talk to each other as through a broker: subscriptions with
``+``/``#`` wildcards and ``$share`` groups, retained messages (an empty
payload clears one), last wills on :meth:`FakeTransport.drop`. Delivery is
synchronous, in the publishing thread, in publication order.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any, Unpack

from .._errors import NotConnected
from ._transport import Handlers, Message

if TYPE_CHECKING:
    from .._mqtt import PublishOptions

__all__ = ["FakeBus", "FakeTransport", "topic_matches"]

log = logging.getLogger("continuum.fake")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest; a filter
    starting with a wildcard does not match ``$`` topics)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def _share(pattern: str) -> tuple[str | None, str]:
    """(group, filter) of ``$share/<group>/<filter>``; (None, pattern) otherwise."""
    if pattern.startswith("$share/"):
        _, group, rest = pattern.split("/", 2)
        return group, rest
    return None, pattern


class _Done:
    __slots__ = ("ok",)

    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def wait(self, timeout: float) -> bool:
        return self.ok


class FakeBus:
    """An in-process broker for :class:`FakeTransport`\\ s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[FakeTransport] = []
        self.retained: dict[str, Message] = {}
        self._turn = itertools.count()

    def _join(self, t: FakeTransport) -> None:
        with self._lock:
            if t not in self._members:
                self._members.append(t)

    def _retained_for(self, pattern: str) -> list[Message]:
        _, filt = _share(pattern)
        with self._lock:
            return [m for topic, m in self.retained.items() if topic_matches(filt, topic)]

    def publish(self, msg: Message) -> None:
        """Route ``msg`` to every connected member subscribed to its topic (one
        member per ``$share`` group), keeping or clearing it when retained."""
        with self._lock:
            if msg.retain:
                if msg.payload:
                    self.retained[msg.topic] = msg
                else:
                    self.retained.pop(msg.topic, None)
            targets: list[tuple[FakeTransport, int]] = []
            groups: dict[tuple[str, str], list[tuple[FakeTransport, int]]] = {}
            for t in self._members:
                if not t.connected:
                    continue
                best: int | None = None
                for pattern, qos in list(t.subscriptions.items()):
                    group, filt = _share(pattern)
                    if not topic_matches(filt, msg.topic):
                        continue
                    if group is not None:
                        groups.setdefault((group, filt), []).append((t, qos))
                    else:
                        best = max(best or 0, qos)
                if best is not None:
                    targets.append((t, best))
            for members in groups.values():
                targets.append(members[next(self._turn) % len(members)])
        for t, qos in targets:
            t._receive(msg, min(qos, msg.qos), retain=msg.retain and t.retain_as_published)


class FakeTransport(Handlers):
    """A :class:`~continuum_mqtt.service.Transport` in this process.

    Without a bus it only records: ``published`` (every :class:`Message` it
    was asked to publish, properties included), ``subscriptions``, ``acks``,
    ``will``. With ``bus`` it also exchanges messages with the other members
    (``retain_as_published`` as for :class:`~continuum_mqtt.service.MqttTransport`).
    Use :meth:`inject` to hand it a message as if from the broker,
    :meth:`drop` and :meth:`reconnect` to simulate a lost connection. An
    exception from the message handler is logged and kept in ``errors`` (over
    a broker it would not reach the publisher either).
    """

    def __init__(
        self,
        client_id: str = "fake",
        *,
        bus: FakeBus | None = None,
        username: str | None = None,
        retain_as_published: bool = True,
    ) -> None:
        self._client_id = client_id
        self.retain_as_published = retain_as_published
        self._username = username
        self.bus = bus
        self.subscriptions: dict[str, int] = {}
        self.published: list[Message] = []
        self.acks: list[Message] = []
        self.will: tuple[str, bytes, bool] | None = None
        self.starts = 0  # connections made (start and reconnect)
        self.refuse = False  # True: start() raises NotConnected
        self.errors: list[Exception] = []  # raised by the message handler (and logged)
        self._connected = False
        self._queued: list[Message] = []  # QoS 1 publishes while disconnected
        self._mids = itertools.count(1)
        self._lock = threading.Lock()
        if bus is not None:
            bus._join(self)

    # -- Transport -------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def username(self) -> str | None:
        return self._username

    @property
    def broker(self) -> str:
        return "fake://bus" if self.bus is not None else "fake://"

    @property
    def connected(self) -> bool:
        return self._connected

    def set_will(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.will = (topic, payload, retain)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscriptions[topic] = qos
        if self._connected and self.bus is not None:
            for m in self.bus._retained_for(topic):
                self._receive(m, min(qos, m.qos), retain=True)

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.pop(topic, None)

    def publish(self, topic: str, payload: bytes, **options: Unpack[PublishOptions]) -> _Done:
        qos = options.get("qos", 1)
        msg = Message(
            topic,
            bytes(payload),
            qos,
            options.get("retain", False),
            options.get("response_topic"),
            options.get("correlation"),
            options.get("content_type"),
        )
        with self._lock:
            self.published.append(msg)
        if self.bus is None:
            return _Done(self._connected)
        if not self._connected:
            if qos:
                self._queued.append(msg)  # sent at the next connection, as paho does
            return _Done(False)
        self.bus.publish(msg)
        return _Done(True)

    def ack(self, msg: Message) -> None:
        if msg.qos:
            with self._lock:
                self.acks.append(msg)

    def start(self, timeout: float = 10.0) -> None:
        if self._connected:
            return
        self._connect()

    def stop(self, *, with_will: bool = False) -> None:
        self._disconnect(with_will)

    # -- simulation ------------------------------------------------------------------
    def inject(self, topic: str, payload: bytes, *, qos: int = 1, **props: Any) -> Message:
        """Hand the service a message as if the broker delivered it (whatever
        it subscribed to); returns it (for :attr:`acks`). ``props``: the other
        fields of :class:`Message` (``retain``, ``response_topic``,
        ``correlation``, ``content_type``)."""
        msg = Message(topic, bytes(payload), qos, mid=next(self._mids) if qos else 0, **props)
        self._dispatch(msg)
        return msg

    def drop(self, *, with_will: bool = True) -> None:
        """The connection is lost: the bus publishes the will (unless told not to)."""
        self._disconnect(with_will)

    def reconnect(self) -> None:
        """Connect again after :meth:`drop`: ``on_connected`` runs, retained
        messages of the subscriptions arrive again, queued publishes go out."""
        if not self._connected:
            self._connect()

    def published_on(self, topic: str) -> list[Message]:
        """What it published on topics matching the filter ``topic``."""
        with self._lock:
            return [m for m in self.published if topic_matches(topic, m.topic)]

    def clear(self) -> None:
        """Forget what was recorded (published, acks)."""
        with self._lock:
            self.published.clear()
            self.acks.clear()

    # -- internals -------------------------------------------------------------------
    def _connect(self) -> None:
        if self.refuse:
            raise NotConnected(f"{self._client_id}: the fake broker refused the connection")
        self._connected = True
        self.starts += 1
        if self._on_connected is not None:
            self._on_connected()
        queued, self._queued = self._queued, []
        for m in queued:
            if self.bus is not None:
                self.bus.publish(m)
        if self.bus is not None:
            for pattern, qos in list(self.subscriptions.items()):
                for m in self.bus._retained_for(pattern):
                    self._receive(m, min(qos, m.qos), retain=True)

    def _disconnect(self, with_will: bool) -> None:
        if not self._connected:
            return
        self._connected = False
        if with_will and self.will is not None and self.bus is not None:
            topic, payload, retain = self.will
            self.bus.publish(Message(topic, payload, 1, retain))

    def _receive(self, msg: Message, qos: int, *, retain: bool) -> None:
        self._dispatch(
            Message(
                msg.topic,
                msg.payload,
                qos,
                retain,
                msg.response_topic,
                msg.correlation,
                msg.content_type,
                next(self._mids) if qos else 0,
            )
        )

    def _dispatch(self, msg: Message) -> None:
        handler = self._on_message
        if handler is None:
            return
        try:
            handler(msg)
        except Exception as exc:  # as over a broker: never the publisher's problem
            log.exception("%s: unhandled error in message handler for %s", self, msg.topic)
            self.errors.append(exc)

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<FakeTransport {self._client_id} {state}>"
