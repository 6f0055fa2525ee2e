"""What every continuum connection needs besides paho-mqtt: a broker URL,
MQTT 5 publish properties packed cheaply and received properties decoded
cheaply (``_Received``, installed into paho's decoder on import), TCP_NODELAY
on the socket (see
docs/architecture.md: without it a round trip costs 40-90 ms instead of
0.5 ms) and client ids. The connection itself is
:class:`continuum_mqtt.service.MqttTransport`.
"""

from __future__ import annotations

import hashlib
import importlib
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

_TEMPLATE = Properties(PacketTypes.PUBLISH)  # paho's tables, built once


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


class _Received(Properties):
    """The properties of a packet received, decoded cheaply: paho builds its
    name tables for every Properties object and finds each property by a
    linear search of names (about 70 us per reply and 35 us per PUBACK,
    measured, the largest cost of a pipelined call). The tables here are
    shared, and :meth:`unpack` reads the plain properties directly; anything
    unusual (a user property, a duplicate, a malformed length) goes to paho's
    own decoder, so errors stay paho's. Installed into paho's packet decoder
    by :func:`_install_received`."""

    types = _TEMPLATE.types
    names = _TEMPLATE.names
    properties = _TEMPLATE.properties
    _by_ident = {ident: name.replace(" ", "") for name, ident in _TEMPLATE.names.items()}

    def __init__(self, packetType: int) -> None:  # no super(): the tables are shared
        self.__dict__["packetType"] = packetType

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        d = self.__dict__
        if len(d) > 1:  # decoded before: start afresh, as paho does
            for name in self._by_ident.values():
                d.pop(name, None)
        try:
            return self._fast(buffer, d)
        except (IndexError, ValueError, KeyError):
            pass
        for name in self._by_ident.values():
            d.pop(name, None)
        return Properties.unpack(self, buffer)

    def _fast(self, buf: bytes | bytearray, d: dict[str, Any]) -> tuple[Properties, int]:
        length, pos = _read_varint(buf, 0)
        end = pos + length
        if end > len(buf):
            raise ValueError("truncated")
        while pos < end:
            ident = buf[pos]
            pos += 1
            kind, packets = self.properties[ident]
            name = self._by_ident[ident]
            if ident in (11, 38) or name in d or self.packetType not in packets:
                raise ValueError("for paho")  # repeatable, duplicate or out of place
            value: Any
            if kind == 0:
                value = buf[pos]
                pos += 1
            elif kind == 1:
                value = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            elif kind == 2:
                value = int.from_bytes(buf[pos : pos + 4], "big")
                pos += 4
            elif kind in (4, 5):
                n = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
                if pos + n > end:
                    raise ValueError("too long")
                raw = bytes(buf[pos : pos + n])
                pos += n
                value = raw if kind == 4 else raw.decode("utf-8")  # strict: no surrogates
                if kind == 5 and "\x00" in value:
                    raise ValueError("null character")
            else:
                raise ValueError("for paho")
            if pos > end:
                raise ValueError("overrun")
            d[name] = value
        return self, end


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("malformed variable byte integer")


def _install_received() -> None:
    """Make paho's packet decoder build :class:`_Received` properties (when it
    is the paho this was written for: ``paho.mqtt._packet`` of paho-mqtt 2.x)."""
    try:
        packet = importlib.import_module("paho.mqtt._packet")
    except ImportError:  # pragma: no cover - another paho layout: its own decoder
        return
    if getattr(packet, "Properties", None) is Properties:
        packet.Properties = _Received  # type: ignore[attr-defined]


_install_received()


_SMALL = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """MQTT variable byte integer (MQTT 5, 1.5.5)."""
    if n < 128:
        return _SMALL[n]
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
    not properties: ignored), cheap to build and to send: all but the
    Correlation Data are packed once per distinct set (a client sends every
    request with the same Response Topic and, mostly, the same expiry)."""
    expiry, content_type = options.get("expiry"), options.get("content_type")
    response_topic, correlation = options.get("response_topic"), options.get("correlation")
    seconds = None if expiry is None else max(1, int(expiry + 0.999))
    key = (seconds, content_type, response_topic)
    head = _HEADS.get(key)
    if head is None:
        head = _pack_head(seconds, content_type, response_topic)
        if len(_HEADS) >= 1024:
            _HEADS.clear()
        _HEADS[key] = head
    packed, fields = head
    if correlation is not None:
        packed += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
        fields = {**fields, "CorrelationData": correlation}
    elif not fields:
        return None
    return _Prepacked(varint(len(packed)) + packed, fields)


_HEADS: dict[tuple[int | None, str | None, str | None], tuple[bytes, dict[str, Any]]] = {}


def _pack_head(
    seconds: int | None, content_type: str | None, response_topic: str | None
) -> tuple[bytes, dict[str, Any]]:
    """The properties before Correlation Data, packed, and their fields."""
    buf = bytearray()
    fields: dict[str, Any] = {}
    if seconds is not None:
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
    return bytes(buf), fields


def set_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open``: TCP_NODELAY on the socket (docs/architecture.md:
    without it a QoS 1 round trip waits out delayed ACKs, 40-90 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # pragma: no cover - non-TCP transports
        pass
