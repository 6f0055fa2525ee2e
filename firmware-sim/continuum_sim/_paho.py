"""``--engine paho``: the publisher interface of :class:`._wire.Publisher`
over paho-mqtt, for comparison with the pre-built packets and for TLS
brokers. paho is imported only when a connection is made."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from continuum_mqtt.service import BrokerURL

from ._packets import MQTTError

__all__ = ["PahoPublisher"]


class PahoPublisher:
    """The same interface as :class:`Publisher` over paho-mqtt (for comparison,
    and for TLS brokers): paho's own network thread, ``on_publish`` counts acks."""

    def __init__(self, url: BrokerURL, client_id: str, qos: int, window: int, keepalive: int):
        import ssl

        import paho.mqtt.client as paho

        self.qos = qos
        self.window = window
        self.limit = window
        self.sent = self.acked = self.failed = 0
        self.failures: dict[int, int] = {}
        self.resent = self.reconnects = 0
        self.up = False
        self.out = b""  # paho buffers on its own
        self.client_id = client_id
        self._url = url
        self._keepalive = keepalive
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        c.max_inflight_messages_set(window)
        c.max_queued_messages_set(0)
        if url.username:
            c.username_pw_set(url.username, url.password)
        if url.tls:
            c.tls_set_context(
                ssl.create_default_context(cafile=os.environ.get("CONTINUUM_CA_FILE"))
            )

        def on_open(client: Any, userdata: Any, sock: Any) -> None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

        def on_connect(client: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
            if not reason.is_failure:
                if self.sent:
                    self.reconnects += 1
                self.up = True

        def on_disconnect(client: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
            self.up = False

        def on_publish(client: Any, u: Any, mid: int, reason: Any, p: Any) -> None:
            if reason.is_failure:
                self.failed += 1
                self.failures[reason.value] = self.failures.get(reason.value, 0) + 1
            else:
                self.acked += 1

        c.on_socket_open = on_open
        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_publish = on_publish
        self.client = c

    @property
    def inflight(self) -> int:
        return self.sent - self.acked - self.failed if self.qos else 0

    def connect(self, timeout: float = 5.0) -> None:
        self.client.connect(self._url.host, self._url.port, keepalive=self._keepalive)
        self.client.loop_start()
        end = time.monotonic() + timeout
        while not self.up:
            if time.monotonic() > end:
                raise MQTTError(f"{self.client_id}: no CONNACK within {timeout} s")
            time.sleep(0.005)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=self.qos)
        self.sent += 1
        if not self.qos:
            self.acked += 1

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
