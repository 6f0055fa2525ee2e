"""The object directory: nodes, objects, aliases and placement, in SQLite (WAL)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import sqlite_utils

from continuum._errors import AliasTaken, BadRequest, UnknownObject

__all__ = ["Directory"]


class Directory:
    """Thread-safe; every method is one short transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        conn = sqlite3.connect(path, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._create_schema()

    def _create_schema(self) -> None:
        db = self.db
        if "nodes" not in db.table_names():
            db.table("nodes").create(
                {"id": str, "state": str, "manifest": str, "updated": float}, pk="id"
            )
        if "objects" not in db.table_names():
            db.table("objects").create(
                {"id": str, "class": str, "node": str, "replicas": str, "created": float},
                pk="id",
                defaults={"replicas": "[]"},
            )
            db.table("objects").create_index(["node"])
            db.table("objects").create_index(["class"])
        if "aliases" not in db.table_names():
            db.table("aliases").create(
                {"alias": str, "object": str},
                pk="alias",
                foreign_keys=[("object", "objects", "id")],
            )
            db.table("aliases").create_index(["object"])
        if "replicas" not in db.table("objects").columns_dict:  # directories from 0.1.0
            db.table("objects").add_column("replicas", str, not_null_default="[]")

    def close(self) -> None:
        self.db.close()

    # -- nodes -------------------------------------------------------------------
    def node_status(self, node: str, status: dict[str, Any]) -> None:
        state = "online" if status.get("state") == "online" else "offline"
        with self._lock:
            existing = self.db.table("nodes").count_where("id = ?", [node])
            record: dict[str, Any] = {"id": node, "state": state, "updated": time.time()}
            if state == "online" or not existing:
                record["manifest"] = json.dumps(status)
            self.db.table("nodes").upsert(record, pk="id")

    def forget_node(self, node: str) -> None:
        with self._lock:
            self.db.table("nodes").delete_where("id = ?", [node])

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            counts = {
                r["node"]: r["n"]
                for r in self.db.query("select node, count(*) as n from objects group by node")
            }
            rows = list(self.db.table("nodes").rows_where(order_by="id"))
        out = []
        for r in rows:
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
                }
            )
        return out

    def node_state(self, node: str) -> str:
        with self._lock:
            row = next(self.db.table("nodes").rows_where("id = ?", [node]), None)
        return row["state"] if row else "unknown"

    def classes(self) -> dict[str, Any]:
        """Classes of live nodes, with their methods and the nodes hosting them."""
        with self._lock:
            rows = list(self.db.table("nodes").rows_where("state = 'online'", order_by="id"))
        out: dict[str, Any] = {}
        for r in rows:
            for path, desc in json.loads(r["manifest"] or "{}").get("classes", {}).items():
                entry = out.setdefault(path, {**desc, "nodes": []})
                entry["nodes"].append(r["id"])
        return out

    def place(self, cls: str, node: str | None, count: int = 1) -> list[str]:
        """``count`` distinct live nodes hosting ``cls``, least loaded first
        (``node`` first if given and suitable). Fewer if there are not enough."""
        with self._lock:
            rows = list(self.db.table("nodes").rows_where("state = 'online'"))
            counts = {
                r["node"]: r["n"]
                for r in self.db.query("select node, count(*) as n from objects group by node")
            }
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
        self, oid: str, cls: str, node: str, alias: str | None, replicas: list[str] | None = None
    ) -> dict[str, Any]:
        with self._lock:
            if alias is not None:
                self._check_alias_free(alias, oid)
            self.db.table("objects").insert(
                {
                    "id": oid,
                    "class": cls,
                    "node": node,
                    "replicas": json.dumps(replicas or []),
                    "created": time.time(),
                },
                pk="id",
            )
            if alias is not None:
                self.db.table("aliases").insert({"alias": alias, "object": oid}, pk="alias")
        return self.resolve(oid)

    def _check_alias_free(self, alias: str, oid: str) -> None:
        if not isinstance(alias, str) or not alias:
            raise BadRequest("an alias is a non-empty text string")
        row = next(self.db.table("aliases").rows_where("alias = ?", [alias]), None)
        if row is not None and row["object"] != oid:
            raise AliasTaken(f"alias {alias!r} already names object {row['object']}", alias=alias)

    def resolve(self, ref: str) -> dict[str, Any]:
        if not isinstance(ref, str):
            raise BadRequest("ref must be a text string")
        with self._lock:
            row = next(self.db.table("objects").rows_where("id = ?", [ref]), None)
            if row is None:
                alias = next(self.db.table("aliases").rows_where("alias = ?", [ref]), None)
                if alias is not None:
                    row = next(
                        self.db.table("objects").rows_where("id = ?", [alias["object"]]), None
                    )
            if row is None:
                raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
            aliases = [
                a["alias"]
                for a in self.db.table("aliases").rows_where(
                    "object = ?", [row["id"]], order_by="alias"
                )
            ]
            node = next(self.db.table("nodes").rows_where("id = ?", [row["node"]]), None)
        return {
            "id": row["id"],
            "class": row["class"],
            "node": row["node"],
            "node_state": node["state"] if node else "unknown",
            "replicas": json.loads(row["replicas"] or "[]"),
            "aliases": aliases,
        }

    def objects_on(self, node: str) -> list[dict[str, Any]]:
        """Objects whose primary is ``node``, with their replicas."""
        with self._lock:
            rows = list(self.db.table("objects").rows_where("node = ?", [node]))
        return [
            {"id": r["id"], "class": r["class"], "replicas": json.loads(r["replicas"] or "[]")}
            for r in rows
        ]

    def move(self, oid: str, node: str, replicas: list[str]) -> None:
        """Record a new primary (a promoted replica) and the remaining replicas."""
        with self._lock:
            self.db.table("objects").update(oid, {"node": node, "replicas": json.dumps(replicas)})

    def set_alias(self, ref: str, name: str) -> dict[str, Any]:
        oid = self.resolve(ref)["id"]
        with self._lock:
            self._check_alias_free(name, oid)
            self.db.table("aliases").upsert({"alias": name, "object": oid}, pk="alias")
        return self.resolve(oid)

    def remove_alias(self, name: str) -> None:
        with self._lock:
            self.db.table("aliases").delete_where("alias = ?", [name])

    def delete_object(self, oid: str) -> None:
        with self._lock:
            self.db.table("aliases").delete_where("object = ?", [oid])
            self.db.table("objects").delete_where("id = ?", [oid])

    def objects(self, cls: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
        where, params = [], []
        if cls is not None:
            where.append("o.class = ?")
            params.append(cls)
        if node is not None:
            where.append("o.node = ?")
            params.append(node)
        sql = (
            "select o.id, o.class, o.node, o.replicas, o.created, group_concat(a.alias) as aliases "
            "from objects o left join aliases a on a.object = o.id "
            + ("where " + " and ".join(where) + " " if where else "")
            + "group by o.id order by o.created"
        )
        with self._lock:
            rows = list(self.db.query(sql, params))
        return [
            {
                "id": r["id"],
                "class": r["class"],
                "node": r["node"],
                "replicas": json.loads(r["replicas"] or "[]"),
                "created": r["created"],
                "aliases": sorted(r["aliases"].split(",")) if r["aliases"] else [],
            }
            for r in rows
        ]
