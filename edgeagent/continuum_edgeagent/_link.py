"""The agent's own MQTT connection: metrics out, with store-and-forward.

A network thread owns the connection and reconnects with exponential backoff
and full jitter (so a site's boards do not all come back in the same
instant after a broker restart). Every connection is a fresh paho client with
a clean session: what the broker did not acknowledge on the last one is sent
again from the outbox, in sequence order, so the outbox is the only place a
sample lives until its PUBACK; and, for ``[outbox] resend_window`` seconds
after it, the agent's copy is what a crashed broker's lost samples are sent
again from (the agent decides that when the generation changes).
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from continuum_mqtt.service import BrokerURL, set_nodelay

__all__ = ["Link", "backoff_delay"]

log = logging.getLogger("edgeagent")

STABLE_AFTER = 10.0  # seconds a connection must hold before the backoff starts over
# CONNACK reason codes of a refused login: bad user name or password, not
# authorized, bad authentication method
AUTH_REFUSED = (0x86, 0x87, 0x8C)


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [low, min(high, low * 2**attempt)]."""
    cap = min(high, low * (2 ** min(attempt, 32)))
    return (rng or random).uniform(low, cap)


def refusal_text(broker: BrokerURL, reason: ReasonCode) -> str:
    """Why the broker refused the connection, in the words an operator looks for."""
    code = f"CONNACK 0x{reason.value:02X} {reason}"
    if reason.value in AUTH_REFUSED:
        who = f"as {broker.username!r}" if broker.username else "without a username"
        return (
            f"not authorised: the broker refused the login {who} (bad username or password; {code})"
        )
    return f"broker refused the connection ({code})"


def _close(client: paho.Client) -> None:
    """Close the socket of a client whose connection is over (paho has no
    public call that closes without sending DISCONNECT)."""
    client._sock_close()


class Link:
    """One MQTT 5 connection, kept up by its own thread.

    ``on_connected(generation)`` runs in the network thread after each CONNACK;
    acknowledgements are queued as ``(generation, mid, ok)`` in :attr:`acks`
    and ``wake`` is called, for the agent's thread to take them.
    """

    def __init__(
        self,
        broker: BrokerURL,
        client_id: str,
        *,
        keepalive: int,
        backoff: tuple[float, float],
        will: Callable[[], tuple[str, bytes]],
        ca_file: str | None,
        password: Callable[[], str | None] | None = None,
        on_connected: Callable[[int], None],
        wake: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.keepalive = keepalive
        self.backoff = backoff
        self.will = will
        self.password = password
        self.ca_file = ca_file or None
        self.on_connected = on_connected
        self.wake = wake
        self.acks: deque[tuple[int, int, bool]] = deque()
        self.generation = 0
        self.connects = 0
        self.last_error: str | None = None
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"edgeagent-net-{self.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and end the thread."""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None and self._connected.is_set():
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish with QoS 1 on the current connection; the message id, or
        None when not connected (nothing was queued)."""
        with self._lock:
            client = self._client
            if client is None or not self._connected.is_set():
                return None
            info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    # -- the network thread --------------------------------------------------------
    def _new_client(self, generation: int) -> paho.Client:
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
        )
        c.max_inflight_messages_set(0)  # the agent bounds what is in flight
        c.max_queued_messages_set(0)
        if self.broker.username:
            # read for every connection: a password rotated in its file is
            # picked up at the next reconnect
            password = self.password() if self.password is not None else self.broker.password
            c.username_pw_set(self.broker.username, password)
        if self.broker.tls:
            c.tls_set_context(ssl.create_default_context(cafile=self.ca_file))
        will_topic, will_payload = self.will()
        c.will_set(will_topic, will_payload, qos=1, retain=True)
        refused = False

        def on_connect(
            client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
        ) -> None:
            nonlocal refused
            if reason.is_failure:
                refused = True  # paho then reports a disconnect: keep this reason
                self.last_error = refusal_text(self.broker, reason)
                log.error("%s: %s", self.broker, self.last_error)
                return
            self.last_error = None
            self.connects += 1
            self._connected.set()
            log.info("connected to %s", self.broker)
            self.on_connected(generation)
            self.wake()

        def on_publish(
            client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
        ) -> None:
            # No lock here: paho calls this holding its own message lock.
            self.acks.append((generation, mid, not reason.is_failure))
            self.wake()

        def on_disconnect(
            client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
        ) -> None:
            if refused:
                return
            if reason.value == 0x8E:  # session taken over
                self.last_error = (
                    f"another client connected as {self.client_id}: is a second agent "
                    "running with the same device id?"
                )
            elif reason.value != 0:
                self.last_error = f"broker closed the connection: {reason}"
            else:
                return
            log.warning("%s", self.last_error)

        c.on_socket_open = set_nodelay
        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_publish = on_publish
        return c

    def _run(self) -> None:
        attempt = 0
        host, port = self.broker.host, self.broker.port
        while not self._stop.is_set():
            self.generation += 1
            client = self._new_client(self.generation)
            try:
                client.connect(host, port, keepalive=self.keepalive, clean_start=True)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"cannot reach {self.broker}: {exc}"
            else:
                with self._lock:
                    self._client = client
                up_since: float | None = None
                while not self._stop.is_set():
                    rc = client.loop(timeout=0.5)
                    if rc != paho.MQTT_ERR_SUCCESS:
                        break
                    if self._connected.is_set():
                        # the backoff starts over only once a connection held a
                        # while: a broker that accepts and then drops us at once
                        # (a duplicate client id) must not get a reconnect storm
                        up_since = up_since or time.monotonic()
                        if time.monotonic() - up_since >= STABLE_AFTER:
                            attempt = 0
                was_connected = self._connected.is_set()
                with self._lock:
                    self._connected.clear()
                    self._client = None
                if self._stop.is_set():
                    # stop() sent DISCONNECT: let paho flush it, then close
                    for _ in range(10):
                        if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS:
                            break
                    _close(client)
                    return
                _close(client)
                if was_connected:
                    log.warning("lost the connection to %s; reconnecting", self.broker)
                    self.last_error = self.last_error or "connection lost"
                self.wake()
            delay = backoff_delay(attempt, *self.backoff)
            attempt += 1
            log.info("%s; next attempt in %.1f s", self.last_error, delay)
            if self._stop.wait(delay):
                return
