"""Operator commands on the directory file: ``check``, ``backup`` (SQLite's
online backup API, safe while the gateway runs) and ``rebuild`` (re-create
the directory, aliases included, from what the nodes hold). See docs/recovery.md."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import (
    GATEWAY,
    BrokerURL,
    Liveness,
    Message,
    MqttTransport,
    Request,
    Requester,
    Topics,
    Transport,
    fsync_path,
)

from ._directory import Directory
from ._fleet import MARKER_PREFIX
from ._integrity import (
    RECOVERY_DOC,
    DirectoryRefused,
    check_directory,
    integrity_errors,
    remove_empty_wal,
)
from ._reconcile import Held, Reconciler, parse_list

__all__ = ["RecoveryError", "backup", "check", "rebuild"]

log = logging.getLogger("continuum.gateway")


class RecoveryError(Exception):
    """The command did nothing (or nothing harmful); the message says why."""


def _remove_files(path: str) -> None:
    for f in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)


@contextlib.contextmanager
def _read_only(path: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection that leaves no new ``-wal``/``-shm`` behind."""
    created = [f for f in (f"{path}-wal", f"{path}-shm") if not os.path.exists(f)]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()
        remove_empty_wal(path, created)


def _summary(conn: sqlite3.Connection) -> dict[str, int]:
    out = {}
    for table in ("objects", "aliases", "tombstones", "outcomes", "strays"):
        try:
            out[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except sqlite3.Error:
            out[table] = 0
    return out


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())


# -- check ---------------------------------------------------------------------------
def check(db: str) -> list[str]:
    """What a gateway would find at start; raises :class:`DirectoryRefused`."""
    if not os.path.exists(db):
        raise DirectoryRefused(f"directory {db} does not exist")
    lines = [f"warning: {w}" for w in check_directory(db)]
    with _read_only(db) as conn:
        lines.append(f"directory {db} is sound: {_counts_text(_summary(conn))}")
        with contextlib.suppress(sqlite3.Error):
            rows = conn.execute(
                "SELECT node, kind, object, detail FROM strays ORDER BY node, kind LIMIT 50"
            ).fetchall()
            lines += [f"stray on {n}: {k} {o}: {d}" for n, k, o, d in rows]
            running = conn.execute(
                "SELECT count(*) FROM outcomes WHERE state = 'running'"
            ).fetchone()[0]
            if running:
                lines.append(f"{running} create(s) interrupted by a restart, not yet settled")
    return lines


# -- backup --------------------------------------------------------------------------
def backup(db: str, out: str) -> str:
    """Copy the directory ``db`` to ``out`` with SQLite's online backup API: a
    consistent snapshot, taken while the gateway runs. ``out`` is replaced
    atomically, and only by a copy that passes the integrity check."""
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        raise RecoveryError(f"directory {db} does not exist or is empty: nothing to back up")
    if os.path.abspath(db) == os.path.abspath(out):
        raise RecoveryError("the backup must be another file than the directory")
    tmp = f"{out}.tmp-{os.getpid()}"
    _remove_files(tmp)
    try:
        with _read_only(db) as src:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
                counts = _summary(dst)
            finally:
                dst.close()
        errors = integrity_errors(tmp)
        if errors:
            raise RecoveryError(f"the copy fails the integrity check: {'; '.join(errors[:5])}")
        fsync_path(tmp)
        os.replace(tmp, out)
    finally:
        _remove_files(tmp)
    return f"backed up {db} to {out}: {_counts_text(counts)}"


# -- rebuild -------------------------------------------------------------------------
class _Fleet:
    """A short-lived connection that reads the nodes' retained statuses (all
    of them: a marker published after subscribing comes back after them) and
    asks nodes for their ``list``."""

    def __init__(self, transport: Transport, topics: Topics) -> None:
        self.topics = topics
        self.transport = transport
        self.liveness = Liveness(topics, gateway=True)
        self._marker = MARKER_PREFIX + uuid.uuid4().hex.encode()
        self._synced = threading.Event()
        self.requester = Requester.over(transport, topics)
        transport.bind(self._on_message)
        for topic in (*self.liveness.subscriptions, self.requester.reply_topic):
            transport.subscribe(topic, 1)

    def _on_message(self, msg: Message) -> None:
        if msg.topic == self.requester.reply_topic:
            if msg.payload == self._marker:
                self._synced.set()
            else:
                self.requester.on_reply(msg)
            return
        self.liveness.on_message(msg)

    def start(self, wait: float) -> None:
        self.requester.start(self.transport)
        self.transport.start()
        self.transport.publish(self.requester.reply_topic, self._marker, qos=1)
        if not self._synced.wait(wait):
            raise RecoveryError(f"the retained statuses did not arrive within {wait} s")

    def gateway_online(self) -> bool:
        return self.liveness.is_online(GATEWAY)

    def online(self) -> list[str]:
        return [n for n in self.liveness.online() if n != GATEWAY]

    def offline(self) -> list[str]:
        return sorted(
            n for n, s in self.liveness.states().items() if n != GATEWAY and s != "online"
        )

    def list(self, node: str, timeout: float) -> Any:
        req = Request("list", [], {})
        return self.requester.send(self.topics.node_ctl(node), req, timeout).result()

    def stop(self) -> None:
        self.requester.stop()
        self.transport.stop()


def _check_target(db: str) -> None:
    """``db`` must not exist, be 0 bytes, or be a sound directory without objects."""
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        # a WAL left beside a missing or empty file would be applied to the
        # rebuilt one when SQLite next opens it
        if os.path.exists(f"{db}-wal"):
            raise RecoveryError(
                f"{db}-wal exists beside a missing or empty {db}: move it aside first"
                f" (see {RECOVERY_DOC})"
            )
        return
    try:
        check_directory(db)
    except DirectoryRefused as exc:
        raise RecoveryError(
            f"{exc}\nrebuild writes a new directory: move {db} (and {db}-wal, {db}-shm) "
            f"aside first, keeping them for inspection"
        ) from None
    with _read_only(db) as conn:
        n = _summary(conn)["objects"]
    if n:
        raise RecoveryError(
            f"directory {db} lists {n} object(s): rebuild only writes a new directory. "
            f"Move {db} (and {db}-wal, {db}-shm) aside first."
        )


def rebuild(
    broker: BrokerURL | str,
    root: str,
    db: str,
    *,
    gateway_id: str = "gateway",
    node_timeout: float = 30.0,
    wait: float = 10.0,
    transport: Transport | None = None,
) -> list[str]:
    """Re-create the directory ``db`` from the objects the online nodes hold
    (control ``list``): objects, primaries, replicas, aliases and quarantine
    state. Writes a temporary file, renamed over ``db`` once complete.
    ``transport``: the connection to use (default: one to ``broker``)."""
    _check_target(db)
    topics = Topics(root)
    if transport is None:
        transport = MqttTransport(broker, f"gw-{gateway_id}-rebuild-{uuid.uuid4().hex[:8]}")
    fleet = _Fleet(transport, topics)
    try:
        fleet.start(wait)
        if fleet.gateway_online():
            raise RecoveryError(
                f"a gateway is online on root {root}: stop it first (rebuild writes the "
                f"directory file it would use)"
            )
        nodes = fleet.online()
        if not nodes:
            raise RecoveryError(f"no node is online on root {root}: nothing to rebuild from")
        held: dict[str, list[Held]] = {}
        lines: list[str] = []
        for node in nodes:
            try:
                held[node] = parse_list(node, fleet.list(node, node_timeout))
            except (ContinuumError, ValueError) as exc:
                lines.append(
                    f"WARNING: node {node} did not list its objects ({exc}): they are "
                    f"adopted when the gateway reconciles the node"
                )
    finally:
        fleet.stop()
    return lines + _write(db, held, fleet.offline())


def _write(db: str, held: dict[str, list[Held]], offline: list[str]) -> list[str]:
    tmp = f"{db}.rebuild-{os.getpid()}"
    _remove_files(tmp)
    try:
        d = Directory(tmp)
        try:
            r = Reconciler(d, _no_node_call, lambda: 0.0, quiet=True)
            # primaries first, so that the replicas are known when their nodes' turn comes
            for node, objs in sorted(held.items()):
                r.run(node, [h for h in objs if h.role == "primary"], partial=True)
            for node, objs in sorted(held.items()):
                r.run(node, [h for h in objs if h.role != "primary"], partial=True)
            counts = d.counts()
            per_node = {n: len(d.objects_on(n)) for n in sorted(held)}
            strays = d._rows("SELECT node, kind, object, detail FROM strays ORDER BY node, kind")
        finally:
            d.close()
        fsync_path(tmp)
        os.replace(tmp, db)
    finally:
        _remove_files(tmp)
    lines = [
        f"rebuilt {db} from {len(held)} node(s): {counts['objects']} objects "
        f"({', '.join(f'{n}: {c}' for n, c in per_node.items())}), {counts['aliases']} aliases"
    ]
    lines += [f"stray on {s['node']}: {s['kind']} {s['object']}: {s['detail']}" for s in strays]
    if offline:
        lines.append(
            f"offline nodes (their objects are adopted when they come back): {', '.join(offline)}"
        )
    return lines


def _no_node_call(node: str, method: str, kwargs: dict[str, Any], deadline: float | None) -> None:
    """Rebuild changes nothing on the nodes: the gateway sends aliases at its
    reconciliation, and a fresh directory has no tombstone to delete by."""
