"""The node's status manifest (protocol §15).

The manifest is published retained on ``<root>/node/<n>/status`` at every
(re)connect, and again whenever the number of objects held, of those
resident (the others are evicted: :mod:`continuum_node._eviction`) or the
quarantine changes; the last will (and a clean stop) replace it with ``offline``.

It also carries the node's load (``memory``, ``queued``, ``running``,
``long_running``, ``load``), measured at most every ``load_every`` seconds
(``--status-every``) and republished only when it changed noticeably: every
status costs the gateway a directory write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from continuum_mqtt.service import PROTOCOL_VERSION, describe_class, encode

from ._eviction import rss
from ._resident import Residents

__all__ = ["LOAD_EVERY", "Status", "node_load", "offline"]

log = logging.getLogger("continuum.node")

LOAD_EVERY = 10.0  # seconds between two measures of the node's load (--status-every)
_MIB4 = 1 << 22  # memory changes smaller than this do not republish the status


def offline(node_id: str) -> bytes:
    """The status a node leaves behind (its last will, or a clean stop)."""
    return encode({"state": "offline", "node": node_id})


def node_load(queued: int, running: int, long_running: int) -> dict[str, Any]:
    """The load fields of the manifest: the jobs given, the node's RSS
    (bytes, its child processes included; null without psutil) and the host's
    1-minute load average (null where the system has none)."""
    memory: int | None = None
    with contextlib.suppress(Exception):  # psutil missing or refusing: unknown
        memory = rss()
    load: float | None = None
    with contextlib.suppress(OSError, AttributeError):
        load = round(os.getloadavg()[0], 2)
    return {
        "memory": memory,
        "queued": queued,
        "running": running,
        "long_running": long_running,
        "load": load,
    }


def _coarse(load: dict[str, Any]) -> tuple[Any, ...]:
    """What of the load must change for the status to be republished."""
    memory = load.get("memory")
    avg = load.get("load")
    return (
        load.get("queued"),
        load.get("running"),
        load.get("long_running"),
        None if memory is None else memory // _MIB4,
        None if avg is None else round(avg, 1),
    )


class Status:
    """``publish(payload)`` publishes a retained status; ``load()`` measures
    the node's load fields (:func:`node_load`), every ``load_every`` seconds
    at most (0: only at a connect)."""

    def __init__(
        self,
        node_id: str,
        classes: dict[str, type],
        residents: Residents,
        publish: Callable[[bytes], Any],
        max_payload: int,
        load: Callable[[], dict[str, Any]] | None = None,
        load_every: float = LOAD_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.classes = classes
        self.residents = residents
        self._publish = publish
        self.max_payload = max_payload
        self.started = time.time()
        self._seen: tuple[int, int, int] | None = None  # (objects, resident, quarantine changes)
        self._measure_load = load
        self.load_every = load_every
        self._clock = clock
        self.load: dict[str, Any] = {}  # the last measure, in every manifest
        self._load_at = -math.inf
        self._load_seen: tuple[Any, ...] | None = None
        self.published = 0  # statuses published

    def _measure(self) -> None:
        self._load_at = self._clock()
        if self._measure_load is None:
            return
        try:
            self.load = self._measure_load()
        except Exception:  # never let a measure stop the status
            log.exception("could not measure the node's load")

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
            **self.load,
        }

    def _now(self) -> tuple[int, int, int]:
        residents = self.residents
        return (len(residents), residents.resident(), residents.quarantine.changed)

    def announce(self) -> None:
        """Publish the manifest (at every connect), its load measured now."""
        self._measure()
        self._send(self._now())

    def refresh(self) -> None:
        """Publish the manifest again if its object counts or quarantine
        changed, or (measured every ``load_every`` s) its load did."""
        now = self._now()
        changed = now != self._seen
        due = self._clock() - self._load_at >= self.load_every
        if self._measure_load is not None and self.load_every > 0 and due:
            self._measure()
            changed = changed or _coarse(self.load) != self._load_seen
        if changed:
            self._send(now)

    def _send(self, now: tuple[int, int, int]) -> None:
        self._seen, self._load_seen = now, _coarse(self.load)
        self._publish(encode(self.manifest()))
        self.published += 1
