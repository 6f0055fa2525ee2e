"""What a node holds for each caller, and the bounds on it (protocol §13).

Every job in a mailbox (a call, a pool call, a feed sample) belongs to a
*caller*: the account of its call topic, or the device of a sample's metrics
topic. From the moment a job is queued until it has run, the node counts it
and its request bytes against that caller (:class:`Ledger`) and counts the
bytes node-wide. A new call beyond a bound is refused (:func:`refusal`):

=========================  =======================  ===========================
bound                      default                  refused with
=========================  =======================  ===========================
calls of one caller        ``--max-caller-calls``   ``quota_exceeded``
                           1,000                    (``what: "calls"``)
bytes of one caller        ``--max-caller-bytes``   ``quota_exceeded``
                           64 MiB                   (``what: "bytes"``)
calls waiting for one      ``--max-queue`` 10,000   ``busy``
object
calls waiting in all       ``--max-node-queue``     ``busy``
                           100,000
bytes of all jobs          ``--max-node-bytes``     ``busy``
                           512 MiB
=========================  =======================  ===========================

The caller's own bounds come first: a caller past its quota hears
``quota_exceeded`` even when the node is full as well. Admin accounts have no
caller quota (they still meet the node's bounds). A feed sample is never
refused: it waits (see :mod:`continuum_node._backlog`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from continuum_mqtt import Busy, ContinuumError, QuotaExceeded

__all__ = ["Ledger", "Quotas", "Refusal", "refusal"]

MIB = 1 << 20

Refusal = Literal["calls", "bytes", "object", "node", "node_bytes"]
"""Which bound a job met: the caller's ``calls`` or ``bytes``, the
``object``'s mailbox, the ``node``'s job count or its bytes (``node_bytes``)."""


@dataclass(frozen=True)
class Quotas:
    """The bounds of a node (defaults as ``continuum-node --help`` says them)."""

    max_queue: int = 10_000  # jobs waiting for one object
    max_node_queue: int = 100_000  # jobs waiting in all mailboxes
    max_node_bytes: int = 512 * MIB  # request bytes of all jobs queued or running
    max_caller_calls: int = 1_000  # jobs of one caller queued or running
    max_caller_bytes: int = 64 * MIB  # request bytes of one caller queued or running


class Ledger:
    """Jobs and bytes per caller, and bytes node-wide, of the jobs queued or
    running. Not thread-safe: its owner (the scheduler) holds its lock."""

    __slots__ = ("_bytes", "_jobs", "node_bytes", "quotas")

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self._jobs: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self.node_bytes = 0

    def calls(self, caller: str) -> int:
        return self._jobs.get(caller, 0)

    def bytes(self, caller: str) -> int:
        return self._bytes.get(caller, 0)

    def over(self, caller: str, size: int, quota: bool) -> Refusal | None:
        """The caller's own bound a new job of ``size`` bytes would pass
        (``quota`` False: none, an admin's). A job alone is never too big
        for a bound: the first one always fits (requests are far smaller,
        see ``--max-payload``)."""
        q = self.quotas
        if quota:
            if self._jobs.get(caller, 0) >= q.max_caller_calls:
                return "calls"
            used = self._bytes.get(caller, 0)
            if used and used + size > q.max_caller_bytes:
                return "bytes"
        return None

    def node_full(self, size: int) -> bool:
        return bool(self.node_bytes) and self.node_bytes + size > self.quotas.max_node_bytes

    def add(self, caller: str, size: int) -> None:
        self._jobs[caller] = self._jobs.get(caller, 0) + 1
        self._bytes[caller] = self._bytes.get(caller, 0) + size
        self.node_bytes += size

    def release(self, caller: str, size: int) -> None:
        left = self._jobs.get(caller, 0) - 1
        if left > 0:
            self._jobs[caller] = left
            self._bytes[caller] -= size
        else:  # forget idle callers: the tables stay as small as the active set
            self._jobs.pop(caller, None)
            self._bytes.pop(caller, None)
        self.node_bytes -= size


def refusal(why: Refusal, quotas: Quotas, node: str, caller: str, queued: int) -> ContinuumError:
    """The error a call refused by ``why`` is answered with."""
    if why in ("calls", "bytes"):
        limit = quotas.max_caller_calls if why == "calls" else quotas.max_caller_bytes
        what = "calls" if why == "calls" else "bytes of requests"
        return QuotaExceeded(
            f"{caller} has {limit} {what} queued or running on node {node}, its limit:"
            " wait for their replies",
            what=why,
            limit=limit,
        )
    where = {
        "object": f"{quotas.max_queue} calls wait for this object",
        "node": f"{queued} calls wait on the node",
        "node_bytes": f"the node holds {quotas.max_node_bytes} bytes of requests",
    }[why]
    return Busy(f"queue full on node {node} ({where}); retry later", node=node)
