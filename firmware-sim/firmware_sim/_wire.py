"""A minimal MQTT 5 client for bulk publishing (and counting subscribers).

Why not paho for the hot path: a paho ``publish`` costs about 13 us of Python
before the network thread touches it, and its network loop, PUBACK handling
and ``on_publish`` callback add as much again per message, all under the GIL
(measured; see docs/firmware-sim.md). The simulator sends pre-built packets
instead: the fixed header and topic of each device are encoded once, a
PUBLISH is ``header + topic + packet id + b"\\x00" + payload``, many packets go
out in one ``send`` and PUBACKs are parsed in bulk. Only what a publisher of
QoS 0/1 messages and a QoS 1 subscriber need is here: CONNECT/CONNACK,
PUBLISH/PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, DISCONNECT.

Every socket gets TCP_NODELAY (docs/architecture.md).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

__all__ = [
    "MQTTError",
    "PacketReader",
    "Publisher",
    "Subscriber",
    "connect_packet",
    "open_socket",
    "publish_prefix",
    "varint",
]

PUBACK_SUCCESS_MAX = 0x7F  # reason codes >= 0x80 are failures (MQTT 5, 3.4.2.1)
_DISCONNECT = b"\xe0\x00"
_PINGREQ = b"\xc0\x00"


class MQTTError(ConnectionError):
    """The broker refused us, or the connection broke."""


def varint(n: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string over 65535 bytes")
    return _u16(len(raw)) + raw


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
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    props = b""
    if receive_maximum:
        props += b"\x21" + _u16(receive_maximum)
    body = b"\x00\x04MQTT\x05" + bytes([flags]) + _u16(keepalive) + varint(len(props)) + props
    body += payload
    return b"\x10" + varint(len(body)) + body


def publish_prefix(topic: str) -> bytes:
    """The encoded topic name of a PUBLISH (length + UTF-8), built once per device."""
    return _string(topic)


# Remaining-length prefixes, by value: a dict lookup instead of a varint per message.
_RL = [varint(n) for n in range(1 << 14)]


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


def _handshake(
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
            plen_end = 2
            # properties: varint length then (id, value) pairs; keep the integer ones we use
            rl, shift = 0, 0
            while True:
                b = body[plen_end]
                plen_end += 1
                rl |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            i, end = plen_end, plen_end + rl
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


class Publisher:
    """One non-blocking MQTT 5 connection that publishes pre-built packets.

    Driven by the caller's event loop: ``publish`` appends to the send buffer,
    ``flush`` writes what the socket takes, ``on_readable`` parses PUBACKs.
    With QoS 1 at most ``window`` messages are unacknowledged; unacknowledged
    packets are kept and sent again (DUP set) after a reconnect.
    """

    __slots__ = (
        "acked",
        "client_id",
        "connected_once",
        "failed",
        "failures",
        "host",
        "inflight",
        "keepalive",
        "last_send",
        "next_pid",
        "out",
        "password",
        "port",
        "qos",
        "reader",
        "receive_maximum",
        "reconnects",
        "resent",
        "sent",
        "sock",
        "unacked",
        "up",
        "username",
        "window",
    )

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        qos: int = 1,
        window: int = 1000,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.qos = qos
        self.window = max(1, min(window, 65535))
        self.keepalive = keepalive
        self.username, self.password = username, password
        self.sock: socket.socket | None = None
        self.reader = PacketReader()
        self.out = bytearray()
        self.unacked: dict[int, bytes] = {}
        self.next_pid = 1
        self.inflight = 0
        self.sent = 0  # PUBLISH packets queued for the socket
        self.acked = 0  # successful PUBACKs
        self.failed = 0  # PUBACKs with a failure reason code
        self.failures: dict[int, int] = {}  # reason code -> count
        self.resent = 0
        self.reconnects = 0
        self.receive_maximum = 65535
        self.up = False
        self.connected_once = False
        self.last_send = 0.0

    # -- connection --------------------------------------------------------------
    def connect(self, timeout: float = 5.0) -> None:
        try:
            sock = open_socket(self.host, self.port, timeout)
        except OSError as exc:
            raise MQTTError(f"cannot reach the broker at {self.host}:{self.port}: {exc}") from exc
        try:
            props, reader = _handshake(
                sock,
                connect_packet(
                    self.client_id,
                    self.keepalive,
                    username=self.username,
                    password=self.password,
                ),
                timeout,
            )
        except BaseException:
            sock.close()
            raise
        self.receive_maximum = props.get(0x21, 65535)
        sock.setblocking(False)
        self.sock = sock
        self.reader = reader
        self.up = True
        self.last_send = time.monotonic()
        if self.connected_once:
            self.reconnects += 1
        self.connected_once = True
        if self.unacked:  # after a reconnect: send again, DUP flag set (MQTT 5, 4.4)
            for pid in sorted(self.unacked):
                pkt = self.unacked[pid]
                self.out += bytes([pkt[0] | 0x08]) + pkt[1:]
                self.resent += 1

    @property
    def limit(self) -> int:
        """How many messages may be unacknowledged at once on this connection."""
        return min(self.window, self.receive_maximum)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def lost(self) -> None:
        """The socket broke: drop it (unacknowledged packets are kept)."""
        self.up = False
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.out.clear()
        self.reader = PacketReader()

    def close(self) -> None:
        if self.sock is not None and self.up:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                if self.out:
                    self.sock.sendall(self.out)
                self.sock.sendall(_DISCONNECT)
            except OSError:
                pass
        self.out.clear()
        self.lost()

    # -- sending -----------------------------------------------------------------
    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue one PUBLISH; ``topic`` from :func:`publish_prefix`. With QoS 1 the
        caller checks ``inflight < limit`` first."""
        if self.qos:
            pid = self.next_pid
            unacked = self.unacked
            while pid in unacked:
                pid = pid + 1 if pid < 65535 else 1
            self.next_pid = pid + 1 if pid < 65535 else 1
            rl = len(topic) + 3 + len(payload)
            pkt = b"".join(
                (b"\x32", _RL[rl] if rl < 16384 else varint(rl), topic, _PID[pid], b"\x00", payload)
            )
            unacked[pid] = pkt
            self.inflight += 1
            self.out += pkt
        else:
            rl = len(topic) + 1 + len(payload)
            self.out += b"".join(
                (b"\x30", _RL[rl] if rl < 16384 else varint(rl), topic, b"\x00", payload)
            )
        self.sent += 1

    def flush(self) -> None:
        """Write what the socket accepts now."""
        if not self.out or not self.up:
            return
        try:
            n = self.sock.send(self.out)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            self.lost()
            raise MQTTError(f"{self.client_id}: send failed: {exc}") from exc
        del self.out[:n]
        self.last_send = time.monotonic()

    def ping_if_idle(self, now: float) -> None:
        if self.up and not self.out and now - self.last_send > self.keepalive / 2:
            self.out += _PINGREQ
            self.flush()

    # -- receiving ---------------------------------------------------------------
    def on_readable(self) -> int:
        """Read and handle PUBACKs; returns how many messages were acknowledged."""
        try:
            data = self.sock.recv(262144)  # type: ignore[union-attr]
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.lost()
            raise MQTTError(f"{self.client_id}: receive failed: {exc}") from exc
        if not data:
            self.lost()
            raise MQTTError(f"{self.client_id}: broker closed the connection")
        done = 0
        unacked = self.unacked
        for first, body in self.reader.feed(data):
            kind = first >> 4
            if kind == 4:  # PUBACK
                pid = (body[0] << 8) | body[1]
                if unacked.pop(pid, None) is None:
                    continue  # an ack for a packet we already counted
                self.inflight -= 1
                done += 1
                reason = body[2] if len(body) > 2 else 0
                if reason > PUBACK_SUCCESS_MAX:
                    self.failed += 1
                    self.failures[reason] = self.failures.get(reason, 0) + 1
                else:
                    self.acked += 1
            elif kind == 14:  # DISCONNECT from the broker
                reason = body[0] if len(body) else 0
                self.lost()
                raise MQTTError(f"{self.client_id}: broker disconnected us (0x{reason:02x})")
        return done


_PID = [i.to_bytes(2, "big") for i in range(65536)]


class Subscriber:
    """A blocking QoS 1 subscriber that hands each message's (topic, payload)
    to ``on_message`` and acknowledges them in bulk, after the handler ran."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        on_message: Callable[[bytes, bytes], None],
        *,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.on_message = on_message
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.sock: socket.socket | None = None
        self.reader = PacketReader()
        self.received = 0
        self.last_send = 0.0

    def connect(self, topic_filter: str, qos: int = 1, timeout: float = 5.0) -> None:
        sock = open_socket(self.host, self.port, timeout)
        _, reader = _handshake(
            sock,
            connect_packet(
                self.client_id,
                self.keepalive,
                username=self.username,
                password=self.password,
            ),
            timeout,
        )
        body = _u16(1) + b"\x00" + _string(topic_filter) + bytes([qos])
        sock.sendall(b"\x82" + varint(len(body)) + body)
        deadline = time.monotonic() + timeout
        pending: list[tuple[int, memoryview]] = []
        while time.monotonic() < deadline:
            # the SUBACK may come in the same read as the first messages
            suback = next((pkt for first, pkt in pending if first >> 4 == 9), None)
            if suback is not None:
                plen, i, shift = 0, 2, 0
                while True:
                    b = suback[i]
                    i += 1
                    plen |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                reason = suback[i + plen]
                if reason >= 0x80:
                    raise MQTTError(f"subscription to {topic_filter!r} refused (0x{reason:02x})")
                break
            data = sock.recv(65536)
            if not data:
                raise MQTTError("broker closed the connection during SUBSCRIBE")
            pending.extend(reader.feed(data))
        else:
            raise MQTTError(f"no SUBACK within {timeout} s")
        self.sock = sock
        self.reader = reader
        self.last_send = time.monotonic()
        acks = self._handle([p for p in pending if p[0] >> 4 == 3])
        if acks:
            sock.sendall(acks)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def _handle(self, packets: list[tuple[int, memoryview]]) -> bytes:
        acks = bytearray()
        on_message = self.on_message
        for first, body in packets:
            if first >> 4 != 3:
                continue
            qos = (first >> 1) & 3
            tlen = (body[0] << 8) | body[1]
            topic = bytes(body[2 : 2 + tlen])
            i = 2 + tlen
            if qos:
                pid = body[i : i + 2]
                i += 2
            # properties
            plen, shift = 0, 0
            while True:
                b = body[i]
                i += 1
                plen |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            on_message(topic, bytes(body[i + plen :]))
            self.received += 1
            if qos == 1:
                acks += b"\x40\x02"
                acks += pid
        return bytes(acks)

    def read(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` for data, handle every complete message in it."""
        sock = self.sock
        if sock is None:
            raise MQTTError("not connected")
        sock.settimeout(timeout)
        try:
            data = sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            self._keepalive()
            return 0
        if not data:
            raise MQTTError("broker closed the connection")
        before = self.received
        acks = self._handle(self.reader.feed(data))
        if acks:
            sock.settimeout(None)
            sock.sendall(acks)
            self.last_send = time.monotonic()
        else:
            self._keepalive()
        return self.received - before

    def _keepalive(self) -> None:
        if self.sock is not None and time.monotonic() - self.last_send > self.keepalive / 2:
            self.sock.settimeout(None)
            self.sock.sendall(_PINGREQ)
            self.last_send = time.monotonic()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(_DISCONNECT)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
