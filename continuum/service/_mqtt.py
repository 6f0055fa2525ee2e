"""The real :class:`~continuum.service.Transport`: one MQTT 5 connection
(:class:`continuum._mqtt.Connection`: TCP_NODELAY, subscriptions restored after
a reconnect, a broker URL, optional persistent session)."""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho

from .._mqtt import BrokerURL, Connection, publish_properties
from ._transport import Message, MessageHandler

__all__ = ["MqttTransport", "from_paho"]


def from_paho(msg: paho.MQTTMessage) -> Message:
    """A paho message as a :class:`Message` (its properties read once)."""
    payload = msg.payload
    if not isinstance(payload, bytes):  # paho gives bytes; never copied then
        payload = bytes(payload)
    props = getattr(msg, "properties", None)
    if props is None:
        return Message(msg.topic, payload, msg.qos, msg.retain, mid=msg.mid)
    return Message(
        msg.topic,
        payload,
        msg.qos,
        msg.retain,
        getattr(props, "ResponseTopic", None),
        getattr(props, "CorrelationData", None),
        getattr(props, "ContentType", None),
        msg.mid,
    )


class _Sent:
    __slots__ = ("_info",)

    def __init__(self, info: paho.MQTTMessageInfo) -> None:
        self._info = info

    def wait(self, timeout: float) -> bool:
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # not connected, or not queued
            return False
        return self._info.is_published()


class MqttTransport:
    """A :class:`~continuum.service.Transport` over a real broker.

    ``broker`` is a :class:`BrokerURL` or its text (``mqtt://user@host:1883``,
    ``mqtts://`` for TLS; the password may come from ``CONTINUUM_PASSWORD``).
    ``manual_ack``: QoS 1 messages are acknowledged only by :meth:`ack` (a
    node acknowledges a device sample once it is persisted). ``session_expiry``
    (seconds): a persistent session, so that the broker keeps the
    subscriptions and queues QoS 1 messages while the service restarts.
    ``retain_as_published`` (MQTT 5, on every subscription): a message
    published with retain keeps the flag when delivered live, so that a
    service can drop retained requests however they arrive; a client turns
    it off to read the flag as "from the broker's store".
    """

    def __init__(
        self,
        broker: BrokerURL | str,
        client_id: str,
        *,
        keepalive: int = 10,
        ca_file: str | None = None,
        max_inflight: int = 1000,
        session_expiry: int | None = None,
        manual_ack: bool = False,
        retain_as_published: bool = True,
    ) -> None:
        url = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        self._on_message: MessageHandler | None = None
        self._on_connected: Callable[[], None] | None = None
        self.connection = Connection(
            url,
            client_id,
            on_message=self._deliver,
            on_connected=self._connected_cb,
            keepalive=keepalive,
            ca_file=ca_file,
            max_inflight=max_inflight,
            session_expiry=session_expiry,
            manual_ack=manual_ack,
            retain_as_published=retain_as_published,
        )

    # -- Transport -------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self.connection.client_id

    @property
    def username(self) -> str | None:
        return self.connection.broker.username

    @property
    def broker(self) -> str:
        return str(self.connection.broker)

    @property
    def connected(self) -> bool:
        return self.connection.connected

    def bind(
        self, on_message: MessageHandler, on_connected: Callable[[], None] | None = None
    ) -> None:
        self._on_message = on_message
        self._on_connected = on_connected

    def set_will(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.connection.client.will_set(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.connection.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        self.connection.unsubscribe(topic)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        content_type: str | None = None,
        expiry: float | None = None,
    ) -> _Sent:
        props = publish_properties(
            response_topic=response_topic,
            correlation=correlation,
            content_type=content_type,
            expiry=expiry,
        )
        return _Sent(self.connection.publish(topic, payload, qos, retain, props))

    def ack(self, msg: Message) -> None:
        if msg.qos:
            self.connection.client.ack(msg.mid, msg.qos)

    def start(self, timeout: float = 10.0) -> None:
        self.connection.start(timeout)

    def stop(self, *, with_will: bool = False) -> None:
        self.connection.stop(with_will=with_will)

    # -- network thread ---------------------------------------------------------------
    def _deliver(self, msg: paho.MQTTMessage) -> None:
        handler = self._on_message
        if handler is not None:
            handler(from_paho(msg))

    def _connected_cb(self) -> None:
        if self._on_connected is not None:
            self._on_connected()

    def __repr__(self) -> str:
        return f"<MqttTransport {self.client_id} on {self.broker}>"
