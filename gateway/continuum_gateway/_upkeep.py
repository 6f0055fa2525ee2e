"""What the gateway does as nodes come and go (their statuses, through a
:class:`~continuum_mqtt.service.Liveness`), and in the background: record each
status, mark quarantined objects, promote replicas of a dead primary
(failover), reconcile a node that comes (back) online, settle creates
interrupted by a restart and prune old records."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from continuum_mqtt import ContinuumError, DeadlineExpired
from continuum_mqtt.service import ExactlyOnce, Liveness, StatusChange

from . import _records as rec
from ._api import NodeCall
from ._directory import Directory
from ._fleet import held_counts
from ._reconcile import Reconciler, parse_list

__all__ = ["HOUSEKEEPING_S", "Upkeep"]

log = logging.getLogger("continuum.gateway")

# How often interrupted creates are settled and old records pruned.
HOUSEKEEPING_S = 30.0

Discard = Callable[[str, list[str], str | None, BaseException | None], None]


class Upkeep:
    """Failover and reconciliation run on one thread of their own, never in
    the way of clients, and only once the directory is trusted (``ready``)."""

    def __init__(
        self,
        directory: Directory,
        liveness: Liveness,
        node_call: NodeCall,
        discard: Discard,
        once: ExactlyOnce,
        *,
        ready: threading.Event,
        stopping: threading.Event,
        token: str,
        node_timeout: float = 30.0,
        failover_delay: float = 2.0,
        tombstone_days: float = rec.TOMBSTONE_DAYS,
    ) -> None:
        self.directory = directory
        self.liveness = liveness
        self.node_call = node_call
        self.discard = discard
        self.once = once
        self.ready = ready
        self.stopping = stopping
        self.token = token
        self.node_timeout = node_timeout
        self.failover_delay = failover_delay
        self.tombstone_days = tombstone_days
        self.reconciler = Reconciler(directory, node_call, self.deadline)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-upkeep")
        self._reconciled: set[str] = set()
        self._queued: set[str] = set()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- statuses (the gateway's status thread, in arrival order) ----------------------
    def on_status(self, change: StatusChange) -> None:
        node, status = change.node, change.status
        if status is None:  # retained status cleared
            self.directory.forget_node(node)
            return
        before = self.directory.node_state(node)
        online = change.online
        self.directory.node_status(node, status)
        log.info("node %s is %s", node, "online" if online else "offline")
        if online:
            self.quarantine(node, status.get("quarantined"))
        if not online and before == "online":
            self.pool.submit(self.failover, node)
        elif online and self._should_reconcile(node, before, status):
            self._queued.add(node)
            self.pool.submit(self.reconcile, node)

    def _should_reconcile(self, node: str, before: str, status: dict[str, Any]) -> bool:
        """A node coming back, or seen for the first time by this gateway
        process while it holds objects (or the directory lists some on it)."""
        if node in self._queued:
            return False
        if before == "offline":
            return True
        if node in self._reconciled:
            return False
        return node in held_counts({node: status}) or bool(self.directory.objects_on(node))

    def quarantine(self, node: str, quarantined: Any) -> None:
        if quarantined is None:
            return
        entries: dict[str, str] = {}
        if isinstance(quarantined, list):
            for q in quarantined:
                if isinstance(q, dict) and isinstance(q.get("id"), str):
                    reason = q.get("reason")
                    entries[q["id"]] = reason if isinstance(reason, str) else "quarantined"
        for oid in self.directory.apply_quarantine(node, entries):
            if oid in entries:
                log.error(
                    "object %s is unavailable: quarantined on node %s: %s", oid, node, entries[oid]
                )
            else:
                log.warning("object %s is available again on node %s", oid, node)

    # -- failover and reconciliation (the upkeep thread) ---------------------------------
    def _wait_ready(self) -> bool:
        while not self.ready.wait(0.5):
            if self.stopping.is_set():
                return False
        return not self.stopping.is_set()

    def deadline(self) -> float:
        # Liveness upkeep talks to nodes that may be junk (anyone who can
        # publish a status): short deadlines, on its own thread, never in the
        # way of clients.
        return time.monotonic() + 3.0

    def list_deadline(self, node: str) -> float:
        """The upkeep deadline, plus a second per 2,000 objects the node
        reports holding (a long list), at most ``node_timeout``."""
        n = held_counts({node: self.liveness.status(node) or {}}).get(node, 0)
        return time.monotonic() + min(3.0 + n / 2000, max(3.0, self.node_timeout))

    def failover(self, dead: str) -> None:
        """The primary ``dead`` is gone: promote a live replica of each of its
        objects. It must stay gone for ``failover_delay`` first: a broker
        restart delivers every node's last will, and promoting a replica of a
        live primary would make two primaries (the old one is fenced at its
        next call in any case)."""
        if not self._wait_ready():
            return
        end = time.monotonic() + self.failover_delay
        while time.monotonic() < end:
            if self.directory.node_state(dead) == "online":
                log.info("node %s is back within %.1f s: no failover", dead, self.failover_delay)
                return
            time.sleep(0.05)
        for obj in self.directory.objects_on(dead):
            live = [
                r for r in obj["replicas"] if r != dead and self.directory.node_state(r) == "online"
            ]
            if not live:
                if obj["replicas"]:
                    log.error(
                        "object %s lost its primary %s and has no live replica", obj["id"], dead
                    )
                continue
            new, rest = live[0], [r for r in obj["replicas"] if r not in (dead, live[0])]
            t0 = time.monotonic()
            try:
                self.node_call(
                    new, "promote", {"obj": obj["id"], "replicas": rest}, self.deadline()
                )
            except ContinuumError as exc:
                log.error("cannot promote the replica of %s on %s: %s", obj["id"], new, exc)
                continue
            self.directory.move(obj["id"], new, rest, moved_from=dead)
            log.warning(
                "failover: %s %s moved from %s to its replica on %s in %.0f ms",
                obj["class"],
                obj["id"],
                dead,
                new,
                (time.monotonic() - t0) * 1000,
            )

    def reconcile(self, node: str) -> None:
        """A node came (back) online: account for every object it holds (see
        :mod:`._reconcile`: deleted only with a tombstone, else adopted or reported)."""
        self._queued.discard(node)
        if not self._wait_ready():
            return
        try:
            listed = self.node_call(node, "list", {}, self.list_deadline(node))
            held = parse_list(node, listed)
        except (ContinuumError, ValueError) as exc:
            log.warning("cannot list the objects of node %s: %s", node, exc)
            return
        try:
            self.reconciler.run(node, held)
        except sqlite3.Error as exc:
            log.error("cannot reconcile node %s: the directory failed: %s", node, exc)
            return
        self._reconciled.add(node)

    # -- housekeeping (its own thread) ------------------------------------------------
    def housekeep(self) -> None:
        """Every ``HOUSEKEEPING_S``: settle interrupted creates, prune outcomes
        beyond their bounds; hourly: prune old tombstones."""
        last_prune = 0.0
        while not self.stopping.is_set():
            try:
                self.settle_interrupted()
                hourly = time.monotonic() - last_prune > 3600
                stones, outcomes = self.directory.prune(self.tombstone_days if hourly else None)
                if hourly:
                    last_prune = time.monotonic()
                if stones or outcomes:
                    log.info("pruned %d tombstones and %d outcomes", stones, outcomes)
            except (sqlite3.Error, ContinuumError) as exc:
                log.error("housekeeping failed: %s", exc)
            self.stopping.wait(HOUSEKEEPING_S)

    def settle_interrupted(self) -> None:
        """Creates interrupted by a restart of the gateway and not resent
        before their deadline: the caller was told nothing succeeded (a
        deadline error), so the object is taken back, as a create that
        times out is."""
        with self.directory.transaction() as c:
            interrupted = rec.running_creates(c)
        now = time.time()
        for rid, work in interrupted:
            if work.get("owner") == self.token or float(work.get("deadline", 0)) > now:
                continue
            if not self.once.begin(rid).new:  # resent meanwhile: that run finishes it
                continue
            try:
                err = DeadlineExpired(
                    "the gateway restarted while this create ran and it was not resent in time"
                )
                self.discard(str(work["oid"]), [str(h) for h in work["holders"]], rid, err)
            finally:
                self.once.abandon(rid)  # discard stored the outcome with the tombstone
