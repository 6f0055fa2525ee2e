"""Feed samples waiting for the disk.

A sample whose call could not be made durable (disk full) is undone and not
acknowledged to the broker. The broker would redeliver it only after a
reconnect, behind the samples that came after it, which consumers then take
for a redelivery and drop. So the node holds it, and every later sample of the
same object behind it, in order, and retries them first in line every
``every`` seconds until the disk takes them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

__all__ = ["HeldFeeds"]

K = TypeVar("K")  # an object (resident)
J = TypeVar("J")  # a job


class HeldFeeds(Generic[K, J]):
    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._held: dict[K, deque[J]] = {}
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def behind(self, obj: K, job: J) -> bool:
        """Hold ``job`` if earlier samples of ``obj`` are held (keeps the order)."""
        with self._lock:
            jobs = self._held.get(obj)
            if jobs is None:
                return False
            jobs.append(job)
            return True

    def hold(self, obj: K, job: J) -> None:
        with self._lock:
            self._held.setdefault(obj, deque()).append(job)
            self._retry_at = time.monotonic() + self.every

    def due(self) -> list[K]:
        """The objects whose samples are due for a retry now."""
        now = time.monotonic()
        if not self._held or now < self._retry_at:
            return []
        self._retry_at = now + self.every
        with self._lock:
            return list(self._held)

    def take(self, obj: K) -> deque[J]:
        """The held samples of ``obj``, in order (the caller requeues them first)."""
        with self._lock:
            return self._held.pop(obj, deque())
