"""Node liveness from the retained statuses and last wills on
``<root>/node/<node>/status`` (and, optionally, the gateway's): :class:`Liveness`.

A status is checked before it counts (:func:`parse_status`): at most
``MAX_STATUS`` bytes, a CBOR map, ``host`` a host name, ``classes`` a
map of class paths to maps. Anyone allowed to publish a status could
otherwise stall or poison every service that reads them. A malformed status is
ignored (logged); an empty payload (a cleared retained status) makes the node
offline, with ``status`` None.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._codec import decode
from .._errors import BadRequest, ContinuumError
from .._protocol import Topics
from ._transport import Message

__all__ = ["GATEWAY", "MAX_STATUS", "Liveness", "StatusChange", "parse_status"]

log = logging.getLogger("continuum.liveness")

MAX_STATUS = 256 * 1024
"""The largest status accepted (a node hosting a few hundred classes sends a few KB)."""

GATEWAY = ""
"""The name :class:`Liveness` gives the gateway (``Liveness(..., gateway=True)``)."""


def parse_status(payload: bytes, *, limit: int = MAX_STATUS) -> dict[str, Any]:
    """A status payload, decoded and checked; :class:`~continuum_mqtt.BadRequest` if malformed."""
    if len(payload) > limit:
        raise BadRequest(f"status of {len(payload)} bytes (limit {limit})")
    status = decode(payload)
    if not isinstance(status, dict):
        raise BadRequest("status must be a map")
    host = status.get("host")
    if host is not None and not (isinstance(host, str) and len(host) <= 255):
        raise BadRequest("status 'host' must be a host name")
    classes = status.get("classes", {})
    if not isinstance(classes, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in classes.items()
    ):
        raise BadRequest("status 'classes' must map class paths to maps")
    return status


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status taken into account."""

    node: str
    """The node id (:data:`GATEWAY` for the gateway)."""
    status: dict[str, Any] | None
    """The status; None when the retained status was cleared."""
    was: str
    """The node's state before: ``online``, ``offline`` or ``unknown`` (not seen yet)."""
    retained: bool = False
    """It came from the broker's store (a subscription), not live."""

    @property
    def online(self) -> bool:
        return self.status is not None and self.status.get("state") == "online"

    @property
    def cleared(self) -> bool:
        return self.status is None

    @property
    def came_online(self) -> bool:
        """Online now, and not online before (first seen, or back)."""
        return self.online and self.was != "online"

    @property
    def went_offline(self) -> bool:
        """Offline now (a will, a clean stop, a cleared status), online before."""
        return not self.online and self.was == "online"


class Liveness:
    """The state of every node whose status arrived: ``online``, ``offline``
    or ``unknown``, and the latest status of each online node.

    Feed it messages (:meth:`on_message`, or :meth:`update` with a node id);
    ``on_change`` gets every status taken into account, ``on_online`` and
    ``on_offline`` the transitions; they run in the caller's thread, after the
    state is updated. Apply statuses in arrival order (one thread).
    """

    def __init__(
        self,
        topics: Topics,
        *,
        gateway: bool = False,
        limit: int = MAX_STATUS,
        on_change: Callable[[StatusChange], None] | None = None,
        on_online: Callable[[str], None] | None = None,
        on_offline: Callable[[str], None] | None = None,
    ) -> None:
        self.topics = topics
        self.gateway = gateway
        self.limit = limit
        self.on_change = on_change
        self.on_online = on_online
        self.on_offline = on_offline
        self._states: dict[str, str] = {}
        self._statuses: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe."""
        out = [self.topics.node_status_all]
        if self.gateway:
            out.append(self.topics.gateway_status)
        return out

    def node_of(self, topic: str) -> str | None:
        """The node whose status ``topic`` is (:data:`GATEWAY` for the gateway's
        when tracked); None for any other topic."""
        node = self.topics.node_of_status(topic)
        if node is None and self.gateway and topic == self.topics.gateway_status:
            return GATEWAY
        return node

    def on_message(self, msg: Message) -> StatusChange | None:
        """Take ``msg`` into account if it is a status; None otherwise (or if ignored)."""
        node = self.node_of(msg.topic)
        if node is None:
            return None
        return self.update(node, msg.payload, retained=msg.retain)

    def update(self, node: str, payload: bytes, *, retained: bool = False) -> StatusChange | None:
        """Take the status ``payload`` of ``node`` into account; None if malformed."""
        status: dict[str, Any] | None = None
        if payload:
            try:
                status = parse_status(payload, limit=self.limit)
            except ContinuumError as exc:
                log.warning("ignoring malformed status of node %s: %s", node, exc)
                return None
        online = status is not None and status.get("state") == "online"
        with self._lock:
            was = self._states.get(node, "unknown")
            self._states[node] = "online" if online else "offline"
            if online and status is not None:
                self._statuses[node] = status
            else:
                self._statuses.pop(node, None)
        change = StatusChange(node, status, was, retained)
        if self.on_change is not None:
            self.on_change(change)
        if change.came_online and self.on_online is not None:
            self.on_online(node)
        elif change.went_offline and self.on_offline is not None:
            self.on_offline(node)
        return change

    # -- queries ---------------------------------------------------------------------
    def state(self, node: str) -> str:
        """``online``, ``offline`` or ``unknown``."""
        return self._states.get(node, "unknown")

    def is_online(self, node: str) -> bool:
        return self._states.get(node) == "online"

    def status(self, node: str) -> dict[str, Any] | None:
        """The latest status of ``node`` while it is online."""
        return self._statuses.get(node)

    def online(self) -> list[str]:
        """The online nodes, sorted."""
        with self._lock:
            return sorted(n for n, s in self._states.items() if s == "online")

    def statuses(self) -> dict[str, dict[str, Any]]:
        """The latest status of every online node."""
        with self._lock:
            return dict(self._statuses)

    def states(self) -> dict[str, str]:
        """The state of every node seen."""
        with self._lock:
            return dict(self._states)

    def reset(self) -> None:
        """Forget everything (after a reconnect the retained statuses come again)."""
        with self._lock:
            self._states.clear()
            self._statuses.clear()
