"""MQTT 5 packets for the simulator's own client (:mod:`._wire`): the few
encoders it needs (CONNECT, variable byte integers, strings, topic prefixes),
a :class:`PacketReader` that splits a byte stream into packets, and the
CONNECT/CONNACK :func:`handshake`.

Every socket gets TCP_NODELAY (docs/architecture.md).
"""

from __future__ import annotations

import socket
import time
from typing import Protocol

from continuum_mqtt.service import varint

__all__ = [
    "DISCONNECT",
    "PID",
    "PINGREQ",
    "PUBACK_SUCCESS_MAX",
    "RL",
    "Endpoint",
    "MQTTError",
    "PacketReader",
    "connect_packet",
    "handshake",
    "mqtt_string",
    "open_session",
    "open_socket",
    "publish_prefix",
    "read_varint",
    "u16",
    "varint",
]


PUBACK_SUCCESS_MAX = 0x7F  # reason codes >= 0x80 are failures (MQTT 5, 3.4.2.1)
DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"


class MQTTError(ConnectionError):
    """The broker refused us, or the connection broke."""


def read_varint(buf: bytes | memoryview, i: int) -> tuple[int, int]:
    """The MQTT variable byte integer at ``buf[i]``: ``(value, index after it)``."""
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def mqtt_string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string over 65535 bytes")
    return u16(len(raw)) + raw


def connect_packet(
    client_id: str,
    keepalive: int = 60,
    *,
    username: str | None = None,
    password: str | None = None,
    receive_maximum: int | None = None,
) -> bytes:
    """CONNECT, MQTT 5, clean start."""
    flags = 0x02
    payload = mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += mqtt_string(password)
    props = b""
    if receive_maximum:
        props += b"\x21" + u16(receive_maximum)
    body = b"\x00\x04MQTT\x05" + bytes([flags]) + u16(keepalive) + varint(len(props)) + props
    body += payload
    return b"\x10" + varint(len(body)) + body


def publish_prefix(topic: str) -> bytes:
    """The encoded topic name of a PUBLISH (length + UTF-8), built once per device."""
    return mqtt_string(topic)


# Remaining-length prefixes, by value: a dict lookup instead of a varint per message.
RL = [varint(n) for n in range(1 << 14)]
# Packet identifiers, by value.
PID = [i.to_bytes(2, "big") for i in range(65536)]


def open_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class PacketReader:
    """Splits a byte stream into MQTT packets: ``feed(data)`` yields
    ``(first_byte, body)`` for every complete packet."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        buf = self.buf + data if self.buf else data
        view = memoryview(buf)
        out: list[tuple[int, memoryview]] = []
        i, n = 0, len(buf)
        while i + 2 <= n:
            first = buf[i]
            j = i + 1
            rl = 0
            mult = 1
            while True:
                if j >= n:
                    self.buf = buf[i:]
                    return out
                b = buf[j]
                rl += (b & 0x7F) * mult
                j += 1
                if b < 0x80:
                    break
                mult *= 128
                if mult > 128**3:
                    raise MQTTError("malformed remaining length")
            end = j + rl
            if end > n:
                break
            out.append((first, view[j:end]))
            i = end
        self.buf = buf[i:] if i < n else b""
        return out


def handshake(
    sock: socket.socket, packet: bytes, timeout: float
) -> tuple[dict[int, int], PacketReader]:
    """Send CONNECT, wait for CONNACK; returns a few of its properties."""
    sock.settimeout(timeout)
    sock.sendall(packet)
    reader = PacketReader()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            raise MQTTError("broker closed the connection during CONNECT")
        for first, body in reader.feed(data):
            if first >> 4 != 2:
                continue
            reason = body[1]
            if reason >= 0x80:
                raise MQTTError(f"broker refused the connection (reason code 0x{reason:02x})")
            props: dict[int, int] = {}
            # properties: varint length then (id, value) pairs; keep the integer ones we use
            rl, i = read_varint(body, 2)
            end = i + rl
            while i < end:
                pid = body[i]
                i += 1
                if pid in (0x21, 0x22, 0x13):  # receive max, topic alias max, server keepalive
                    props[pid] = (body[i] << 8) | body[i + 1]
                    i += 2
                elif pid in (0x24, 0x25, 0x28, 0x29, 0x2A, 0x01, 0x17, 0x19):
                    props[pid] = body[i]
                    i += 1
                elif pid in (0x11, 0x27, 0x02):
                    props[pid] = int.from_bytes(body[i : i + 4], "big")
                    i += 4
                else:  # a string/binary/pair property we do not need: stop parsing
                    break
            return props, reader
    raise MQTTError(f"no CONNACK within {timeout} s")


class Endpoint(Protocol):
    """Where and as whom a connection connects (a publisher or a subscriber)."""

    host: str
    port: int
    client_id: str
    keepalive: int
    username: str | None
    password: str | None


def open_session(
    endpoint: Endpoint, timeout: float
) -> tuple[socket.socket, dict[int, int], PacketReader]:
    """Open a socket to the broker and connect on it: the socket, a few CONNACK
    properties (:func:`handshake`) and the reader holding what came after."""
    e = endpoint
    try:
        sock = open_socket(e.host, e.port, timeout)
    except OSError as exc:
        raise MQTTError(f"cannot reach the broker at {e.host}:{e.port}: {exc}") from exc
    packet = connect_packet(e.client_id, e.keepalive, username=e.username, password=e.password)
    try:
        props, reader = handshake(sock, packet, timeout)
    except BaseException:
        sock.close()
        raise
    return sock, props, reader
