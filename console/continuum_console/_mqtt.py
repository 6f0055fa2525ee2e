"""The console's broker side: one subscriber connection feeding
:class:`~continuum_console._state.FleetState`, and a continuum client (its
own connection) for the gateway's listings and the admin actions.

Subscriptions (protocol.md sections 4, 15, 19): ``<root>/dev/+/metrics``,
``dev/+/status``, ``dev/+/forecast``, ``dev/+/alert``, ``node/+/status`` and
``gateway/status``. The console's broker account therefore needs read access
to ``<root>/dev/+/#`` (the deploy's ACL grants it); its client id is one no
other account can compute (``private_client_id``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import (
    BrokerURL,
    Message,
    MqttTransport,
    decode,
    is_json,
    private_client_id,
)

from ._state import FleetState

__all__ = ["Feed", "GatewayPoller"]

log = logging.getLogger("continuum.console")

_MAX_PAYLOAD = 256 * 1024


class Feed:
    """Subscribes to the fleet's topics under ``root`` and updates ``state``."""

    def __init__(
        self,
        state: FleetState,
        broker: BrokerURL,
        root: str,
        *,
        name: str = "console",
        ca_file: str | None = None,
        metrics_qos: int = 0,
    ) -> None:
        self.state = state
        self.root = root.rstrip("/")
        self.transport = MqttTransport(
            broker,
            private_client_id(name, broker),
            ca_file=ca_file,
            keepalive=30,
            retain_as_published=False,
        )
        r = self.root
        self.transport.subscribe(f"{r}/dev/+/metrics", metrics_qos)
        for t in (f"{r}/dev/+/status", f"{r}/dev/+/forecast", f"{r}/dev/+/alert"):
            self.transport.subscribe(t, 1)
        self.transport.subscribe(f"{r}/node/+/status", 1)
        self.transport.subscribe(f"{r}/gateway/status", 1)
        self.transport.bind(self.on_message)
        self._prefix = r + "/"

    def start(self, timeout: float = 10.0) -> None:
        self.transport.start(timeout)

    def stop(self) -> None:
        self.transport.stop()

    def on_message(self, msg: Message) -> None:
        """One message (the network thread): anything malformed is counted and dropped."""
        topic = msg.topic
        if not topic.startswith(self._prefix) or len(msg.payload) > _MAX_PAYLOAD:
            self.state.ignored += 1
            return
        parts = topic[len(self._prefix) :].split("/")
        body: Any = None
        if msg.payload:
            try:
                body = decode(msg.payload, is_json(msg.payload, msg.content_type))
            except Exception:  # any undecodable payload is dropped
                self.state.ignored += 1
                return
            if not isinstance(body, dict):
                self.state.ignored += 1
                return
        if len(parts) == 3 and parts[0] == "dev":
            dev, kind = parts[1], parts[2]
            if kind == "metrics":
                if body is not None and "cpu" in body and "mem" in body:
                    self.state.sample(dev, body)
                else:
                    self.state.ignored += 1
            elif kind == "status":
                self.state.device_status(dev, body)
            elif kind == "forecast":
                self.state.forecast(dev, body)
            elif kind == "alert" and body is not None:
                self.state.alert(dev, body)
        elif len(parts) == 3 and parts[0] == "node" and parts[2] == "status":
            self.state.node_status(parts[1], body)
        elif parts == ["gateway", "status"]:
            self.state.gateway_status(body)


class GatewayPoller:
    """Asks the gateway for its ``objects`` listing (with each object's
    residency) and its ``nodes`` (which drain) every ``interval`` s
    (protocol.md section 16) through a continuum client, into ``state``."""

    def __init__(self, state: FleetState, client: Any, interval: float = 5.0) -> None:
        self.state, self.client, self.interval = state, client, interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-gateway", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def refresh(self) -> None:
        """Poll now (after an action changed the directory)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _listing(self, nodes: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """Every object, with its residency and last use (the gateway asks
        the nodes; the client fetches the listing a page at a time)."""
        return list(self.client.objects(residency=True))

    def _nodes(self) -> list[dict[str, Any]] | None:
        """The gateway's ``nodes`` (which of them drain), None when it fails."""
        try:
            nodes = list(self.client.nodes())
        except Exception as exc:  # the objects listing says what is wrong
            log.debug("gateway nodes listing failed: %s", exc)
            return None
        self.state.set_draining({str(n.get("id")) for n in nodes if n.get("draining")})
        return nodes

    def poll_once(self) -> None:
        nodes = self._nodes()
        try:
            objs = self._listing(nodes)
        except ContinuumError as exc:
            self.state.set_objects(None, f"{exc.code}: {exc}")
        except Exception as exc:  # keep polling whatever happens
            log.warning("gateway objects listing failed: %s", exc)
            self.state.set_objects(None, str(exc))
        else:
            self.state.set_objects(list(objs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._wake.wait(self.interval)
            self._wake.clear()
