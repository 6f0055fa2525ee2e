"""A stateless class: every node hosting it serves its pool, so adding nodes
adds throughput (MQTT 5 shared subscriptions)."""

from __future__ import annotations

import hashlib
import os

from continuum_mqtt import ActiveObject, active


class Hasher(ActiveObject, stateless=True):
    """CPU-bound work with no state: iterated SHA-256."""

    @active(readonly=True)
    def digest(self, data: bytes, rounds: int = 1000) -> str:
        """SHA-256 applied ``rounds`` times; the hex digest."""
        h = data
        for _ in range(rounds):
            h = hashlib.sha256(h).digest()
        return h.hex()

    @active(readonly=True)
    def whoami(self) -> int:
        """The serving node's process id (to see the pool spread calls)."""
        return os.getpid()
