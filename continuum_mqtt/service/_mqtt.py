"""The real :class:`~continuum_mqtt.service.Transport`: one MQTT 5 connection over
paho-mqtt with a named background network thread, TCP_NODELAY, subscriptions
restored after every reconnect, a broker URL and an optional persistent
session."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any, Unpack

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .._errors import NotConnected
from .._mqtt import BrokerURL, PublishOptions, private_client_id, publish_properties, set_nodelay
from ._transport import Handlers, Message

__all__ = ["MqttTransport", "from_paho"]

log = logging.getLogger("continuum.mqtt")


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

    @property
    def mid(self) -> int:
        """The packet id (what :meth:`MqttTransport.on_puback` reports)."""
        return int(self._info.mid)

    def wait(self, timeout: float) -> bool:
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # not connected, or not queued
            return False
        return self._info.is_published()


class MqttTransport(Handlers):
    """A :class:`~continuum_mqtt.service.Transport` over a real broker.

    ``broker`` is a :class:`BrokerURL` or its text (``mqtt://user@host:1883``,
    ``mqtts://`` for TLS; the password may come from ``CONTINUUM_PASSWORD``).
    ``manual_ack``: QoS 1 messages are acknowledged only by :meth:`ack` (a
    node acknowledges a device sample once it is persisted). ``session_expiry``
    (seconds): a persistent session, so that the broker keeps the
    subscriptions and queues QoS 1 messages while the service restarts.
    ``retain_as_published`` (MQTT 5, on every subscription): a message
    published with retain keeps the flag when delivered live, so that a
    service can drop retained requests however they arrive (docs/protocol.md
    §5); a client turns it off to read the flag as "from the broker's store".

    ``max_packet_size``: the largest packet the broker may send us (MQTT 5
    Maximum Packet Size); larger messages are dropped by the broker, never
    delivered (a device's cap on what others can push onto it).

    ``subscriptions`` maps topic filters to QoS; they are (re)subscribed on
    every connect. ``client`` is the paho client.
    """

    @classmethod
    def for_service(cls, broker: BrokerURL | str, name: str, **options: Any) -> MqttTransport:
        """The transport of a service named ``name`` (``node-n1``, ``gw-gateway``):
        its client id is :func:`~continuum_mqtt.service.private_client_id`, one no
        other broker account can compute (protocol.md section 21)."""
        url = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        return cls(url, private_client_id(name, url), **options)

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
        max_packet_size: int | None = None,
    ) -> None:
        self.url = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        self._client_id = client_id
        self.subscriptions: dict[str, int] = {}
        self._keepalive = keepalive
        self._session_expiry = session_expiry
        self._max_packet = max_packet_size
        self._retain_as_published = retain_as_published
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self.connects = 0  # successful connections (metrics: reconnects)
        self._on_puback: Callable[[int, bool], None] | None = None
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        # paho doubles the delay from min to max; it takes float seconds.
        c.reconnect_delay_set(min_delay=0.25, max_delay=15)  # type: ignore[arg-type]
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            ctx = ssl.create_default_context(cafile=ca_file or os.environ.get("CONTINUUM_CA_FILE"))
            c.tls_set_context(ctx)
        c.on_socket_open = set_nodelay
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_publish = self._handle_publish
        self.client = c

    def on_puback(self, handler: Callable[[int, bool], None]) -> None:
        """An optional capability (the Requester uses it when a transport has
        it): ``handler(mid, no_subscribers)`` runs in the network thread for
        every PUBACK; ``no_subscribers`` is MQTT 5 reason 0x10 (the broker
        took the message but no subscription matched it: it is gone)."""
        self._on_puback = handler

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        handler = self._on_puback
        if handler is not None:
            try:
                handler(mid, getattr(reason, "value", 0) == 0x10)
            except Exception:  # never kill the network thread
                log.exception("%s: PUBACK handler failed", self._client_id)

    # -- Transport -------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def username(self) -> str | None:
        return self.url.username

    @property
    def broker(self) -> str:
        return str(self.url)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def set_will(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.will_set(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if self.connected:
            # raises on a filter paho refuses
            self.client.subscribe(topic, options=self._options(qos))
        self.subscriptions[topic] = qos

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.pop(topic, None)
        if self.connected:
            self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, **options: Unpack[PublishOptions]) -> _Sent:
        qos, retain = options.get("qos", 1), options.get("retain", False)
        props = publish_properties(**options)
        return _Sent(self.client.publish(topic, payload, qos=qos, retain=retain, properties=props))

    def ack(self, msg: Message) -> None:
        if msg.qos:
            self.client.ack(msg.mid, msg.qos)

    def start(self, timeout: float = 10.0) -> None:
        try:
            props = Properties(PacketTypes.CONNECT)
            if self._session_expiry:
                # A persistent session: the broker keeps our subscriptions and
                # queues QoS 1 messages while we are away (a restart).
                props.SessionExpiryInterval = self._session_expiry
            if self._max_packet:
                # MQTT 5 Maximum Packet Size: the broker never sends us more
                props.MaximumPacketSize = self._max_packet
            self.client.connect(
                self.url.host,
                self.url.port,
                keepalive=self._keepalive,
                # paho's default: clean on the first connection only
                clean_start=False if self._session_expiry else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props if (self._session_expiry or self._max_packet) else None,
            )
        except OSError as exc:
            raise NotConnected(f"cannot reach broker {self.url}: {exc}") from exc
        self.client.loop_start()
        thread = getattr(self.client, "_thread", None)
        if thread is not None:
            thread.name = f"continuum-net-{self.client_id}"
        if not self._connected.wait(timeout):
            self.stop()
            raise NotConnected(f"no CONNACK from {self.url} within {timeout} s")
        if self._connect_error is not None:
            err = self._connect_error
            self.stop()
            raise NotConnected(f"broker {self.url} refused the connection: {err}")

    def stop(self, *, with_will: bool = False) -> None:
        """Disconnect. ``with_will`` asks the broker to publish the last will
        (MQTT 5 reason code 0x04), which a client does when it exits on an error."""
        try:
            if with_will:
                self.client.disconnect(
                    reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
                )
            else:
                self.client.disconnect()
        finally:
            self.client.loop_stop()

    # -- paho callbacks (network thread) -----------------------------------------------
    def _options(self, qos: int) -> SubscribeOptions:
        return SubscribeOptions(qos=qos, retainAsPublished=self._retain_as_published)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
            log.error("%s: broker %s refused the connection: %s", self.client_id, self.url, reason)
            self._connected.set()
            return
        self._connect_error = None
        self.connects += 1
        if self.subscriptions:
            client.subscribe([(t, self._options(q)) for t, q in self.subscriptions.items()])
        log.debug("%s connected to %s", self.client_id, self.url)
        if self._on_connected is not None:
            self._on_connected()
        self._connected.set()

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connected.clear()
        if reason.value != 0:
            log.warning("%s lost the broker connection (%s); reconnecting", self.client_id, reason)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        handler = self._on_message
        if handler is None:
            return
        try:
            handler(from_paho(msg))
        except Exception:  # a message must never kill the network thread
            log.exception(
                "%s: unhandled error in message handler for %s", self.client_id, msg.topic
            )

    def __repr__(self) -> str:
        return f"<MqttTransport {self.client_id} on {self.broker}>"
