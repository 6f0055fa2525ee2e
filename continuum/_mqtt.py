"""A thin layer over paho-mqtt shared by clients and services.

It does the things every continuum connection must do and paho does not do by
itself: MQTT 5 with TCP_NODELAY on the socket (see docs/architecture.md, without
it a round trip costs 40-90 ms instead of 0.5 ms), a named network thread,
subscriptions restored after a reconnect, a last will, and a broker URL.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ._errors import NotConnected

__all__ = ["BrokerURL", "Connection", "Message", "new_client_id", "publish_properties"]

log = logging.getLogger("continuum.mqtt")

Message = paho.MQTTMessage


def new_client_id(prefix: str) -> str:
    """A client id safe for topic levels and broker ACL ``%c`` patterns."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` for TLS.

    The password may also come from the environment variable ``CONTINUUM_PASSWORD``
    so that it never appears on a command line.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        if "://" not in url:
            url = "mqtt://" + url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported broker URL scheme {parts.scheme!r} in {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        password = (
            unquote(parts.password) if parts.password else os.environ.get("CONTINUUM_PASSWORD")
        )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username)
            if parts.username
            else os.environ.get("CONTINUUM_USERNAME"),
            password=password,
        )

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


class _Prepacked(Properties):
    """PUBLISH properties packed once, in our code.

    paho packs a Properties object by probing every known property name on
    every publish (about 25 us each, measured); calls publish twice per round
    trip, so we pack the few properties we use directly (MQTT 5, section 3.3.2.3).
    """

    def __init__(self, packed: bytes, fields: dict[str, Any]) -> None:  # no super(): see pack()
        d = self.__dict__  # Properties.__setattr__ only admits property names
        d["packetType"] = PacketTypes.PUBLISH
        d["_packed"] = packed
        d["_fields"] = fields

    def pack(self) -> bytes:
        return self._packed

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self) -> str:
        return f"[{', '.join(f'{k} : {v!r}' for k, v in self._fields.items())}]"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_properties(
    *,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    content_type: str | None = None,
    expiry: float | None = None,
) -> Properties | None:
    """MQTT 5 PUBLISH properties, cheap to build and to send."""
    buf = bytearray()
    fields: dict[str, Any] = {}
    if expiry is not None:
        seconds = max(1, int(expiry + 0.999))
        buf += b"\x02" + seconds.to_bytes(4, "big")
        fields["MessageExpiryInterval"] = seconds
    if content_type is not None:
        raw = content_type.encode()
        buf += b"\x03" + len(raw).to_bytes(2, "big") + raw
        fields["ContentType"] = content_type
    if response_topic is not None:
        raw = response_topic.encode()
        buf += b"\x08" + len(raw).to_bytes(2, "big") + raw
        fields["ResponseTopic"] = response_topic
    if correlation is not None:
        buf += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
        fields["CorrelationData"] = correlation
    if not fields:
        return None
    return _Prepacked(_varint(len(buf)) + bytes(buf), fields)


def set_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open``: TCP_NODELAY on the socket (docs/architecture.md:
    without it a QoS 1 round trip waits out delayed ACKs, 40-90 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # pragma: no cover - non-TCP transports
        pass


class Connection:
    """One MQTT 5 connection with a background network thread.

    ``subscriptions`` maps topic filters to QoS; they are (re)subscribed on
    every connect. ``on_message`` runs in the network thread and must not block.

    ``retain_as_published`` (MQTT 5 Retain As Published, on every subscription):
    a message published with retain keeps its retain flag when delivered live,
    not only when it comes from the broker's store at subscribe time. Services
    need it to drop retained requests however they arrive (docs/protocol.md §5);
    the client turns it off, since it reads the flag as "stored, not new".
    """

    def __init__(
        self,
        broker: BrokerURL,
        client_id: str,
        *,
        on_message: Callable[[Message], None],
        subscriptions: dict[str, int] | None = None,
        will: tuple[str, bytes, bool] | None = None,
        on_connected: Callable[[], None] | None = None,
        keepalive: int = 10,
        ca_file: str | None = None,
        max_inflight: int = 1000,
        session_expiry: int | None = None,
        manual_ack: bool = False,
        retain_as_published: bool = True,
    ) -> None:
        self.broker = broker
        self._retain_as_published = retain_as_published
        self.client_id = client_id
        self.subscriptions = dict(subscriptions or {})
        self._on_message = on_message
        self._on_connected = on_connected
        self._keepalive = keepalive
        self._session_expiry = session_expiry
        self._connected = threading.Event()
        self._connect_error: str | None = None
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
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if broker.tls:
            ctx = ssl.create_default_context(cafile=ca_file or os.environ.get("CONTINUUM_CA_FILE"))
            c.tls_set_context(ctx)
        if will is not None:
            topic, payload, retain = will
            c.will_set(topic, payload, qos=1, retain=retain)
        c.on_socket_open = set_nodelay
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        self.client = c

    # -- paho callbacks (network thread) -----------------------------------
    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
            log.error(
                "%s: broker %s refused the connection: %s", self.client_id, self.broker, reason
            )
            self._connected.set()
            return
        self._connect_error = None
        if self.subscriptions:
            client.subscribe([(t, self._options(q)) for t, q in self.subscriptions.items()])
        log.debug("%s connected to %s", self.client_id, self.broker)
        if self._on_connected is not None:
            self._on_connected()
        self._connected.set()

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connected.clear()
        if reason.value != 0:
            log.warning("%s lost the broker connection (%s); reconnecting", self.client_id, reason)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: Message) -> None:
        try:
            self._on_message(msg)
        except Exception:  # a message must never kill the network thread
            log.exception(
                "%s: unhandled error in message handler for %s", self.client_id, msg.topic
            )

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        try:
            if self._session_expiry:
                # A persistent session: the broker keeps our subscriptions and
                # queues QoS 1 messages while we are away (a restart).
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._session_expiry
                self.client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self._keepalive,
                    clean_start=False,
                    properties=props,
                )
            else:
                self.client.connect(self.broker.host, self.broker.port, keepalive=self._keepalive)
        except OSError as exc:
            raise NotConnected(f"cannot reach broker {self.broker}: {exc}") from exc
        self.client.loop_start()
        thread = getattr(self.client, "_thread", None)
        if thread is not None:
            thread.name = f"continuum-net-{self.client_id}"
        if not self._connected.wait(timeout):
            self.stop()
            raise NotConnected(f"no CONNACK from {self.broker} within {timeout} s")
        if self._connect_error is not None:
            err = self._connect_error
            self.stop()
            raise NotConnected(f"broker {self.broker} refused the connection: {err}")

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

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if self.connected:
            # raises on a filter paho refuses
            self.client.subscribe(topic, options=self._options(qos))
        self.subscriptions[topic] = qos

    def _options(self, qos: int) -> SubscribeOptions:
        return SubscribeOptions(qos=qos, retainAsPublished=self._retain_as_published)

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.pop(topic, None)
        if self.connected:
            self.client.unsubscribe(topic)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
