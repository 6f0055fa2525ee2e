"""What every continuum connection needs besides paho-mqtt: a broker URL,
MQTT 5 publish properties packed cheaply, TCP_NODELAY on the socket (see
docs/architecture.md: without it a round trip costs 40-90 ms instead of
0.5 ms) and client ids. The connection itself is
:class:`continuum_mqtt.service.MqttTransport`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "BrokerURL",
    "PublishOptions",
    "new_client_id",
    "private_client_id",
    "publish_properties",
    "set_nodelay",
    "varint",
]


def new_client_id(prefix: str) -> str:
    """A client id safe for topic levels and broker ACL ``%c`` patterns."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def private_client_id(prefix: str, broker: BrokerURL) -> str:
    """The stable client id of a service or agent named ``prefix`` (``node-n1``)
    on ``broker``: with a password, ``prefix`` and 64 bits derived from the
    account's username and password, so that another account cannot compute it
    and take the session over (an MQTT CONNECT with a connected client's id
    disconnects that client; mosquitto's ACL file cannot tie ids to accounts:
    protocol.md section 21). Two processes with the same name and account still
    get the same id (the second takes the first one's session over, as before).
    Without a password: ``prefix`` (a development broker)."""
    if not broker.password:
        return prefix
    seed = "\0".join(("continuum-client-id", broker.username or "", broker.password, prefix))
    return f"{prefix}-{hashlib.sha256(seed.encode()).hexdigest()[:16]}"


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


def varint(n: int) -> bytes:
    """MQTT variable byte integer (MQTT 5, 1.5.5)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class PublishOptions(TypedDict, total=False):
    """The keyword arguments of a publish (``Transport.publish``): ``qos``
    (default 1) and ``retain`` (default false), and the MQTT 5 properties
    continuum uses: Response Topic, Correlation Data, Content Type and Message
    Expiry (``expiry``, in seconds)."""

    qos: int
    retain: bool
    response_topic: str | None
    correlation: bytes | None
    content_type: str | None
    expiry: float | None


def publish_properties(**options: Unpack[PublishOptions]) -> Properties | None:
    """The MQTT 5 PUBLISH properties of ``options`` (``qos`` and ``retain`` are
    not properties: ignored), cheap to build and to send."""
    expiry, content_type = options.get("expiry"), options.get("content_type")
    response_topic, correlation = options.get("response_topic"), options.get("correlation")
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
    return _Prepacked(varint(len(buf)) + bytes(buf), fields)


def set_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open``: TCP_NODELAY on the socket (docs/architecture.md:
    without it a QoS 1 round trip waits out delayed ACKs, 40-90 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # pragma: no cover - non-TCP transports
        pass
