"""The node's status manifest (protocol §15).

The manifest is published retained on ``<root>/node/<n>/status`` at every
(re)connect, and again whenever the number of objects held, of those
resident (the others are evicted: :mod:`continuum_node._eviction`) or the
quarantine changes; the last will (and a clean stop) replace it with ``offline``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from continuum_mqtt.service import PROTOCOL_VERSION, describe_class, encode

from ._resident import Residents

__all__ = ["Status", "offline"]


def offline(node_id: str) -> bytes:
    """The status a node leaves behind (its last will, or a clean stop)."""
    return encode({"state": "offline", "node": node_id})


class Status:
    """``publish(payload)`` publishes a retained status."""

    def __init__(
        self,
        node_id: str,
        classes: dict[str, type],
        residents: Residents,
        publish: Callable[[bytes], Any],
        max_payload: int,
    ) -> None:
        self.node_id = node_id
        self.classes = classes
        self.residents = residents
        self._publish = publish
        self.max_payload = max_payload
        self.started = time.time()
        self._seen: tuple[int, int, int] | None = None  # (objects, resident, quarantine changes)

    def manifest(self) -> dict[str, Any]:
        return {
            "state": "online",
            "node": self.node_id,
            "protocol": PROTOCOL_VERSION,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "max_payload": self.max_payload,
            "classes": {path: describe_class(cls) for path, cls in sorted(self.classes.items())},
            "objects": self.residents.count(),
            "resident": (resident := self.residents.resident()),
            "evicted": len(self.residents) - resident,
            "quarantined": self.residents.quarantine.status(),
        }

    def _now(self) -> tuple[int, int, int]:
        residents = self.residents
        return (len(residents), residents.resident(), residents.quarantine.changed)

    def announce(self) -> None:
        """Publish the manifest (at every connect)."""
        self._seen = self._now()
        self._publish(encode(self.manifest()))

    def refresh(self) -> None:
        """Publish the manifest again if its object counts or quarantine changed."""
        now = self._now()
        if now != self._seen:
            self._seen = now
            self._publish(encode(self.manifest()))
