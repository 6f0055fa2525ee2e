"""The object directory: nodes, objects, aliases and placement, in SQLite (WAL),
with the records that make it safe to reconcile against (tombstones) and to
answer resent requests after a restart (outcomes); see :mod:`._records`."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from continuum_mqtt import AliasTaken, BadRequest, UnknownObject
from continuum_mqtt.service import ANONYMOUS

from . import _records as rec
from ._schema import create_schema

__all__ = ["NODE_FIGURES", "Directory"]

# what the gateway's ``nodes`` passes on from a node's last status (protocol §15)
NODE_FIGURES = ("resident", "evicted", "memory", "queued", "running", "long_running", "load")

# FULL: the WAL is synced at every commit, so an acknowledged change (and its
# exactly-once outcome) survives a power cut, not only a crash of the process.
# Measured cost: docs/recovery.md ("Durability settings").
SYNCHRONOUS = "FULL"


class Directory:
    """Thread-safe; every method is one short transaction. :meth:`transaction`
    lets a caller combine a change with its records (:mod:`._records`)."""

    def __init__(self, path: str, synchronous: str = SYNCHRONOUS) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.synchronous = synchronous
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self._lock = threading.RLock()
        with self.transaction():
            create_schema(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on
        error. ``durable=False``: not synced at its commit (node statuses,
        which the retained messages give back at every start); the next
        durable commit syncs it too."""
        with self._lock:
            if self.conn.in_transaction:  # nested: part of the caller's transaction
                yield self.conn
                return
            if not durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            finally:
                if not durable:
                    self.conn.execute(f"PRAGMA synchronous={self.synchronous}")

    def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def is_empty(self) -> bool:
        """No object, tombstone or outcome: a directory this gateway never used."""
        return not self._rows(
            "SELECT 1 FROM objects UNION ALL SELECT 1 FROM tombstones "
            "UNION ALL SELECT 1 FROM outcomes LIMIT 1"
        )

    def counts(self) -> dict[str, int]:
        tables = ("objects", "aliases", "tombstones", "outcomes", "strays", "nodes")
        return {t: self._rows(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}

    # -- nodes -------------------------------------------------------------------
    def node_status(self, node: str, status: dict[str, Any]) -> None:
        state = "online" if status.get("state") == "online" else "offline"
        with self.transaction(durable=False) as c:
            existing = c.execute("SELECT 1 FROM nodes WHERE id = ?", (node,)).fetchone()
            if state == "online" or not existing:
                c.execute(
                    "INSERT OR REPLACE INTO nodes (id, state, manifest, updated) VALUES (?,?,?,?)",
                    (node, state, json.dumps(status), time.time()),
                )
            else:
                c.execute(
                    "UPDATE nodes SET state = ?, updated = ? WHERE id = ?",
                    (state, time.time(), node),
                )

    def forget_node(self, node: str) -> None:
        with self.transaction(durable=False) as c:
            c.execute("DELETE FROM nodes WHERE id = ?", (node,))

    def _counts(self) -> dict[str, int]:
        return {
            r["node"]: r["n"]
            for r in self._rows("SELECT node, count(*) AS n FROM objects GROUP BY node")
        }

    def nodes(self) -> list[dict[str, Any]]:
        counts = self._counts()
        out = []
        for r in self._rows(
            "SELECT n.*, d.node IS NOT NULL AS draining FROM nodes n "
            "LEFT JOIN drains d ON d.node = n.id ORDER BY n.id"
        ):
            manifest = json.loads(r["manifest"] or "{}")
            out.append(
                {
                    "id": r["id"],
                    "state": r["state"],
                    "since": r["updated"],
                    "classes": sorted(manifest.get("classes", {})),
                    "objects": counts.get(r["id"], 0),
                    "host": manifest.get("host"),
                    "pid": manifest.get("pid"),
                    # its loaded and evicted objects (bounded residency) and its
                    # load, as its last status said; absent from a node that does
                    # not report them
                    **{k: manifest[k] for k in NODE_FIGURES if k in manifest},
                    "draining": bool(r["draining"]),
                }
            )
        return out

    def node_state(self, node: str) -> str:
        row = self._one("SELECT state FROM nodes WHERE id = ?", (node,))
        return row["state"] if row else "unknown"

    def node_manifest(self, node: str) -> dict[str, Any]:
        """The last online status of ``node`` ({} if never seen)."""
        row = self._one("SELECT manifest FROM nodes WHERE id = ?", (node,))
        manifest = json.loads(row["manifest"] or "{}") if row else {}
        return manifest if isinstance(manifest, dict) else {}

    def classes(self) -> dict[str, Any]:
        """Classes of live nodes, with their methods and the nodes hosting them."""
        out: dict[str, Any] = {}
        for r in self._rows("SELECT id, manifest FROM nodes WHERE state = 'online' ORDER BY id"):
            for path, desc in json.loads(r["manifest"] or "{}").get("classes", {}).items():
                entry = out.setdefault(path, {**desc, "nodes": []})
                entry["nodes"].append(r["id"])
        return out

    def place(self, cls: str, node: str | None, count: int = 1) -> list[str]:
        """``count`` distinct live nodes hosting ``cls`` and not draining, least
        loaded first (``node`` first if given and suitable). Fewer if there are
        not enough."""
        rows = self._rows(
            "SELECT id, manifest FROM nodes WHERE state = 'online' "
            "AND id NOT IN (SELECT node FROM drains)"
        )
        counts = self._counts()
        hosting = [
            r["id"] for r in rows if cls in json.loads(r["manifest"] or "{}").get("classes", {})
        ]
        ranked = sorted(hosting, key=lambda n: (counts.get(n, 0), n))
        if node is not None:
            if node not in hosting:
                return []
            ranked = [node] + [n for n in ranked if n != node]
        return ranked[:count]

    # -- objects -------------------------------------------------------------------
    def add_object(
        self,
        oid: str,
        cls: str,
        node: str,
        alias: str | None,
        replicas: list[str] | None = None,
        *,
        rid: str | None = None,
        owner: str = ANONYMOUS,
    ) -> dict[str, Any]:
        """Record a created object (and, with ``rid``, the create's outcome, in
        the same transaction). An object already recorded under ``oid`` (a
        create finished by a resend, or adopted meanwhile) is kept as it is."""
        with self.transaction() as c:
            if alias is not None:
                self.check_alias_free(alias, oid)
            c.execute(
                "INSERT OR IGNORE INTO objects (id, class, node, replicas, created, owner) "
                "VALUES (?,?,?,?,?,?)",
                (oid, cls, node, json.dumps(replicas or []), time.time(), owner),
            )
            if alias is not None:
                c.execute(
                    "INSERT OR REPLACE INTO aliases (alias, object) VALUES (?,?)", (alias, oid)
                )
            info = self.resolve(oid)
            if rid is not None:
                rec.finish_outcome(c, rid, "create", (True, info))
        return info

    def check_alias_free(self, alias: str, oid: str) -> None:
        if not isinstance(alias, str) or not alias:
            raise BadRequest("an alias is a non-empty text string")
        row = self._one("SELECT object FROM aliases WHERE alias = ?", (alias,))
        if row is not None and row["object"] != oid:
            raise AliasTaken(f"alias {alias!r} already names object {row['object']}", alias=alias)

    def find(self, oid: str) -> dict[str, Any] | None:
        try:
            return self.resolve(oid)
        except UnknownObject:
            return None

    def resolve(self, ref: str) -> dict[str, Any]:
        if not isinstance(ref, str):
            raise BadRequest("ref must be a text string")
        with self._lock:
            row = self._one("SELECT * FROM objects WHERE id = ?", (ref,))
            if row is None:
                row = self._one(
                    "SELECT o.* FROM aliases a JOIN objects o ON o.id = a.object WHERE a.alias = ?",
                    (ref,),
                )
            if row is None:
                raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
            aliases = self.aliases_of(row["id"])
            node = self._one("SELECT state FROM nodes WHERE id = ?", (row["node"],))
        return {
            "id": row["id"],
            "class": row["class"],
            "node": row["node"],
            "node_state": node["state"] if node else "unknown",
            "replicas": json.loads(row["replicas"] or "[]"),
            "aliases": aliases,
            "state": row["state"] or "ok",
            "reason": row["reason"],
            "owner": row["owner"],
            "grants": json.loads(row["grants"] or "[]"),
        }

    def aliases_of(self, oid: str) -> list[str]:
        return [
            r["alias"]
            for r in self._rows("SELECT alias FROM aliases WHERE object = ? ORDER BY alias", (oid,))
        ]

    def objects_on(self, node: str) -> list[dict[str, Any]]:
        """Objects whose primary is ``node``, with their replicas."""
        return [
            {"id": r["id"], "class": r["class"], "replicas": json.loads(r["replicas"] or "[]")}
            for r in self._rows("SELECT id, class, replicas FROM objects WHERE node = ?", (node,))
        ]

    def move(self, oid: str, node: str, replicas: list[str], moved_from: str | None = None) -> None:
        """Record a new primary (a promoted replica) and the remaining replicas,
        and a tombstone for the copy on ``moved_from``, which must go."""
        with self.transaction() as c:
            c.execute(
                "UPDATE objects SET node = ?, replicas = ? WHERE id = ?",
                (node, json.dumps(replicas), oid),
            )
            c.execute("DELETE FROM tombstones WHERE object = ? AND node = ?", (oid, node))
            if moved_from is not None:
                rec.add_tombstone(c, oid, moved_from, "moved", None)

    def set_alias(self, ref: str, name: str, *, rid: str | None = None) -> dict[str, Any]:
        with self.transaction() as c:
            oid = self.resolve(ref)["id"]
            self.check_alias_free(name, oid)
            c.execute("INSERT OR REPLACE INTO aliases (alias, object) VALUES (?,?)", (name, oid))
            info = self.resolve(oid)
            if rid is not None:
                rec.finish_outcome(c, rid, "alias", (True, info))
        return info

    def owned(self, owner: str) -> int:
        return int(
            self._rows("SELECT count(*) AS n FROM objects WHERE owner = ?", (owner,))[0]["n"]
        )

    def set_access(
        self, oid: str, owner: str, grants: list[str], *, rid: str | None = None, method: str = ""
    ) -> dict[str, Any]:
        with self.transaction() as c:
            c.execute(
                "UPDATE objects SET owner = ?, grants = ? WHERE id = ?",
                (owner, json.dumps(grants), oid),
            )
            info = self.resolve(oid)
            if rid is not None:
                rec.finish_outcome(c, rid, method, (True, info))
        return info

    def remove_alias(self, name: str, *, rid: str | None = None) -> str | None:
        """Remove alias ``name``; the object it named, if any."""
        with self.transaction() as c:
            row = c.execute("SELECT object FROM aliases WHERE alias = ?", (name,)).fetchone()
            c.execute("DELETE FROM aliases WHERE alias = ?", (name,))
            if rid is not None:
                rec.finish_outcome(c, rid, "unalias", (True, None))
        return row[0] if row else None

    def delete_object(self, oid: str, *, rid: str | None = None, result: Any = None) -> None:
        """Remove the object and its aliases, leaving a tombstone: a copy on a
        node that was offline is deleted when the node returns."""
        with self.transaction() as c:
            c.execute("DELETE FROM aliases WHERE object = ?", (oid,))
            c.execute("DELETE FROM objects WHERE id = ?", (oid,))
            rec.add_tombstone(c, oid, rec.ALL_NODES, "deleted", rid)
            if rid is not None:
                rec.finish_outcome(c, rid, "delete", (True, result))

    def objects(self, cls: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        if cls is not None:
            where.append("o.class = ?")
            params.append(cls)
        if node is not None:
            where.append("o.node = ?")
            params.append(node)
        sql = (
            "SELECT o.id, o.class, o.node, o.replicas, o.created, o.state, o.reason, o.owner, "
            "o.grants, "
            "group_concat(a.alias, char(0)) AS aliases "
            "FROM objects o LEFT JOIN aliases a ON a.object = o.id "
            + ("WHERE " + " AND ".join(where) + " " if where else "")
            + "GROUP BY o.id ORDER BY o.created"
        )
        return [
            {
                "id": r["id"],
                "class": r["class"],
                "node": r["node"],
                "replicas": json.loads(r["replicas"] or "[]"),
                "created": r["created"],
                "aliases": sorted(r["aliases"].split("\x00")) if r["aliases"] else [],
                "state": r["state"] or "ok",
                "reason": r["reason"],
                "owner": r["owner"],
                "grants": json.loads(r["grants"] or "[]"),
            }
            for r in self._rows(sql, params)
        ]

    # -- object state (quarantine on a node) -------------------------------------------
    def apply_quarantine(self, node: str, quarantined: dict[str, str]) -> list[str]:
        """A node's status lists ``quarantined`` (object id -> reason): mark the
        objects it is primary of unavailable, and back to ok those it no longer
        lists. The ids whose state changed."""
        changed: list[str] = []
        with self.transaction() as c:
            rows = c.execute(
                "SELECT id, state, reason, state_source FROM objects WHERE node = ?", (node,)
            ).fetchall()
            for oid, state, reason, source in rows:
                if oid in quarantined:
                    why = f"quarantined on node {node}: {quarantined[oid]}"
                    if state != "unavailable" or reason != why:
                        c.execute(
                            "UPDATE objects SET state = 'unavailable', reason = ?, "
                            "state_source = 'quarantine' WHERE id = ?",
                            (why, oid),
                        )
                        changed.append(oid)
                elif state == "unavailable" and source == "quarantine":
                    c.execute(
                        "UPDATE objects SET state = 'ok', reason = NULL, state_source = NULL "
                        "WHERE id = ?",
                        (oid,),
                    )
                    changed.append(oid)
        return changed

    # -- records -------------------------------------------------------------------------
    def outcome(self, rid: str) -> rec.Outcome | None:
        with self._lock:
            return rec.get_outcome(self.conn, rid)

    def store_outcome(self, rid: str, method: str, outcome: rec.Outcome) -> None:
        with self.transaction() as c:
            rec.finish_outcome(c, rid, method, outcome)

    def running(self, rid: str) -> dict[str, Any] | None:
        with self._lock:
            return rec.get_running(self.conn, rid)

    def start_running(self, rid: str, method: str, work: dict[str, Any]) -> None:
        with self.transaction() as c:
            rec.put_running(c, rid, method, work)

    def discard(self, oid: str, rid: str | None, outcome: rec.Outcome | None = None) -> None:
        """Tombstone an object whose create did not complete (every holder's
        copy goes), with the create's outcome when it has a request id."""
        with self.transaction() as c:
            rec.add_tombstone(c, oid, rec.ALL_NODES, "discarded", rid)
            if rid is not None and outcome is not None:
                rec.finish_outcome(c, rid, "create", outcome)

    def prune(self, tombstone_days: float | None) -> tuple[int, int]:
        """Drop outcomes beyond their bounds and (unless ``tombstone_days`` is
        None) tombstones older than that: (tombstones, outcomes) dropped."""
        with self.transaction() as c:
            stones = 0
            if tombstone_days is not None:
                stones = rec.prune_tombstones(c, tombstone_days * 86400.0)
            return stones, rec.prune_outcomes(c)
