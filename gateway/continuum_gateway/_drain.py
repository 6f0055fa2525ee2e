"""Draining a node (protocol.md §16 ``drain`` and ``undrain``, admins only).

A drained node is marked in the directory (table ``drains``, so it stays
drained across a restart of the gateway): placement skips it. Then every
object whose primary it is moves off it, one at a time, the way a failover
moves one (the node's ``promote``, §17, then the directory's record of the
move, with a tombstone for the old copy):

- an object with a live replica on another node that is not draining: that
  replica is promoted;
- an object without one, on a drained node that is online: a node that hosts
  its class and is not draining gets a copy first (the node's ``replicas``,
  §17: the primary sends it its whole state, then every later change, as to
  any replica), recorded in the directory as a replica, and is then promoted.

The old copy is then deleted from the drained node (a copy it still holds
is deleted at its next reconciliation: the tombstone), and a replicated
object that lost a replica in the move (the promoted one) gets a new one on
another node, as the copy above, where there is one (best effort: logged). An object that cannot
be moved (its node offline and no live replica, no other node hosting its
class, a node refusing) stays where it is, never lost, and is listed in the
answer with the reason. The drained node stays out of placement until
``undrain``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from continuum_mqtt import BadRequest, ContinuumError, Forbidden, ObjectNotHere
from continuum_mqtt.service import NO_CONTEXT, Context, Rights, check_level, method

from ._api import NodeCall
from ._directory import Directory

__all__ = ["DrainApi", "draining", "set_draining"]

log = logging.getLogger("continuum.gateway")

MAX_REASON = 200  # characters of one object's reason in the answer
MAX_REASONS = 1000  # objects whose reason the answer gives (the reply is at most 1 MiB)


def draining(directory: Directory) -> set[str]:
    """The nodes being drained: no object is placed on them."""
    return {r["node"] for r in directory._rows("SELECT node FROM drains")}


def set_draining(directory: Directory, node: str, on: bool) -> bool:
    """Mark ``node`` draining (or not), durably; whether that changed anything."""
    with directory.transaction() as c:
        if on:
            cur = c.execute(
                "INSERT OR IGNORE INTO drains (node, since) VALUES (?, ?)", (node, time.time())
            )
        else:
            cur = c.execute("DELETE FROM drains WHERE node = ?", (node,))
        return bool(cur.rowcount)


class _Left(Exception):
    """An object that stays on the drained node, and why."""


class DrainApi:
    """``drain`` and ``undrain`` over ``directory`` and the nodes
    (``node_call``); one drain at a time."""

    def __init__(
        self, directory: Directory, rights: Rights, node_call: NodeCall, node_timeout: float = 30.0
    ) -> None:
        self.directory = directory
        self.rights = rights
        self.node_call = node_call
        self.node_timeout = node_timeout
        self._lock = threading.Lock()

    def _check(self, node: Any, caller: str, what: str) -> str:
        self.rights.check_caller(caller)
        if not self.rights.is_admin(caller):
            raise Forbidden(f"only an admin may {what} a node", caller=caller)
        try:
            node = check_level("node id", node)
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        if self.directory.node_state(node) == "unknown":
            raise BadRequest(f"no node {node!r} is known to the directory", node=node)
        return str(node)

    @method(changes=True, context=("ctx",))
    def drain(self, node: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        """Place nothing more on ``node`` and move every object whose primary
        it is to another node: ``{"node", "draining": true, "moved": n,
        "left": [ids], "reason": text | null, "reasons": {id: text}}``."""
        node = self._check(node, _ctx.caller, "drain")
        if set_draining(self.directory, node, True):
            log.warning("node %s is draining (by %s)", node, _ctx.caller)
        moved, reasons = 0, {}
        with self._lock:
            for obj in self.directory.objects_on(node):
                try:
                    self._move(node, obj, _ctx.deadline)
                    moved += 1
                except _Left as why:
                    reasons[obj["id"]] = str(why)[:MAX_REASON]
                    log.warning("drain of %s: %s stays: %s", node, obj["id"], why)
        left = sorted(reasons)
        distinct = sorted(set(reasons.values()))
        return {
            "node": node,
            "draining": True,
            "moved": moved,
            "left": left,
            "reason": "; ".join(distinct[:5]) + ("; ..." if len(distinct) > 5 else "")
            if left
            else None,
            "reasons": {oid: reasons[oid] for oid in left[:MAX_REASONS]},
        }

    @method(changes=True, context=("ctx",))
    def undrain(self, node: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        """Let objects be placed on ``node`` again (nothing moves back)."""
        node = self._check(node, _ctx.caller, "undrain")
        if set_draining(self.directory, node, False):
            log.warning("node %s is no longer draining (by %s)", node, _ctx.caller)
        return {"node": node, "draining": False}

    # -- moving one object -------------------------------------------------------------
    def _deadline(self, deadline: float | None) -> float:
        own = time.monotonic() + self.node_timeout
        if deadline is None:
            return own
        if deadline - time.monotonic() < 0.5:
            raise _Left("the request's deadline passed before it was moved")
        return min(own, deadline)

    def _online(self, node: str, draining: set[str]) -> bool:
        return node not in draining and self.directory.node_state(node) == "online"

    def _move(self, node: str, obj: dict[str, Any], deadline: float | None) -> None:
        oid, replicas = obj["id"], [r for r in obj["replicas"] if r != node]
        drained = draining(self.directory)
        live = [r for r in replicas if self._online(r, drained)]
        if live:
            target = live[0]
        else:
            target = self._copy(node, obj, replicas, self._deadline(deadline))
            replicas = [*replicas, target]
        rest = [r for r in replicas if r != target]
        try:
            self.node_call(
                target, "promote", {"obj": oid, "replicas": rest}, self._deadline(deadline)
            )
        except ContinuumError as exc:
            raise _Left(f"node {target} could not take it over: {exc.code}: {exc}") from None
        self.directory.move(oid, target, rest, moved_from=node)
        log.warning("drain: %s %s moved from %s to %s", obj["class"], oid, node, target)
        try:
            self.node_call(node, "delete", {"obj": oid}, time.monotonic() + 5.0)
        except ObjectNotHere:
            pass
        except ContinuumError as exc:  # the tombstone deletes it at its next reconciliation
            log.warning("drain: the old copy of %s on %s stays for now: %s", oid, node, exc)
        if len(rest) < len(obj["replicas"]):
            self._restore(obj, target, rest, len(obj["replicas"]))

    def _restore(self, obj: dict[str, Any], primary: str, replicas: list[str], want: int) -> None:
        """Best effort: give the moved ``obj`` back the ``want`` replicas it
        had, on nodes that host its class and are not draining."""
        oid = obj["id"]
        placed = self.directory.place(obj["class"], None, want + 1 + len(replicas))
        extra = [n for n in placed if n != primary and n not in replicas][: want - len(replicas)]
        if not extra:
            log.warning(
                "drain: %s keeps %d replica(s) of %d: no other node", oid, len(replicas), want
            )
            return
        new = [*replicas, *extra]
        try:
            self.node_call(
                primary, "replicas", {"obj": oid, "replicas": new}, time.monotonic() + 5.0
            )
        except ContinuumError as exc:
            log.warning("drain: could not give %s a new replica on %s: %s", oid, extra, exc)
            return
        self.directory.move(oid, primary, new)

    def _copy(self, node: str, obj: dict[str, Any], replicas: list[str], deadline: float) -> str:
        """Give ``obj`` (on ``node``, which must be online) a replica on a
        node that hosts its class and is not draining, recorded in the
        directory; that node's id."""
        if self.directory.node_state(node) != "online":
            raise _Left(f"node {node} is offline and the object has no live replica elsewhere")
        placed = self.directory.place(obj["class"], None, 2 + len(replicas))
        targets = [n for n in placed if n != node and n not in replicas]
        if not targets:
            raise _Left(f"no other live node that is not draining hosts {obj['class']}")
        target = targets[0]
        try:
            self.node_call(
                node, "replicas", {"obj": obj["id"], "replicas": [*replicas, target]}, deadline
            )
        except ContinuumError as exc:
            raise _Left(f"node {node} could not copy it to {target}: {exc.code}: {exc}") from None
        self.directory.move(obj["id"], node, [*replicas, target])
        return target
