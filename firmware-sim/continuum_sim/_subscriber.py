"""A blocking QoS 1 subscriber on the simulator's own MQTT client (see
:mod:`._wire`): counts what a fleet publishes (bench/fleet.py) without paho's
per-message cost; acknowledges in bulk.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ._packets import (
    DISCONNECT,
    PINGREQ,
    MQTTError,
    PacketReader,
    mqtt_string,
    open_session,
    read_varint,
    u16,
    varint,
)

__all__ = ["Subscriber"]


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
        sock, _, reader = open_session(self, timeout)
        body = u16(1) + b"\x00" + mqtt_string(topic_filter) + bytes([qos])
        sock.sendall(b"\x82" + varint(len(body)) + body)
        deadline = time.monotonic() + timeout
        pending: list[tuple[int, memoryview]] = []
        while time.monotonic() < deadline:
            # the SUBACK may come in the same read as the first messages
            suback = next((pkt for first, pkt in pending if first >> 4 == 9), None)
            if suback is not None:
                plen, i = read_varint(suback, 2)
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
            plen, i = read_varint(body, i)  # properties
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
            self.sock.sendall(PINGREQ)
            self.last_send = time.monotonic()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(DISCONNECT)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
