"""A minimal MQTT 5 client for bulk publishing (and counting subscribers).

Why not paho for the hot path: a paho ``publish`` costs about 13 us of Python
before the network thread touches it, and its network loop, PUBACK handling
and ``on_publish`` callback add as much again per message, all under the GIL
(measured; see docs/firmware-sim.md). The simulator sends pre-built packets
instead: the fixed header and topic of each device are encoded once, a
PUBLISH is ``header + topic + packet id + b"\\x00" + payload``, many packets go
out in one ``send`` and PUBACKs are parsed in bulk. Only what a publisher of
QoS 0/1 messages and a QoS 1 subscriber need is implemented: CONNECT/CONNACK,
PUBLISH/PUBACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, DISCONNECT.

This module is the publisher; the packets are in :mod:`._packets`, the
subscriber (re-exported here) in :mod:`._subscriber`. Every socket gets
TCP_NODELAY (docs/architecture.md).
"""

from __future__ import annotations

import errno
import socket
import time

from ._packets import (
    DISCONNECT,
    PID,
    PINGREQ,
    PUBACK_SUCCESS_MAX,
    RL,
    MQTTError,
    PacketReader,
    connect_packet,
    open_session,
    open_socket,
    publish_prefix,
    varint,
)
from ._subscriber import Subscriber

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
        sock, props, reader = open_session(self, timeout)
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
                self.sock.sendall(DISCONNECT)
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
                (b"\x32", RL[rl] if rl < 16384 else varint(rl), topic, PID[pid], b"\x00", payload)
            )
            unacked[pid] = pkt
            self.inflight += 1
            self.out += pkt
        else:
            rl = len(topic) + 1 + len(payload)
            self.out += b"".join(
                (b"\x30", RL[rl] if rl < 16384 else varint(rl), topic, b"\x00", payload)
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
            self.out += PINGREQ
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
