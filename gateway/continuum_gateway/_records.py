"""Records the directory keeps beside its objects, each written inside the
caller's transaction (a :class:`sqlite3.Connection` in a BEGIN):

- **tombstones**: the only grounds on which the gateway deletes a node's copy
  of an object at reconciliation: the object was deleted by a request, moved
  off that node by a failover, or discarded after a create that did not
  complete. Kept ``TOMBSTONE_DAYS`` (bounded in number too).
- **outcomes**: the first answer to each changing gateway request, by request
  id, so that a request resent across a gateway restart is answered, not run
  again. A create writes a ``running`` row (with the object id it chose)
  before asking the node, so a resend after a crash finishes that same object.
- **strays**: what reconciliation neither adopted nor deleted, for the operator.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from continuum_mqtt.service import decode, encode

__all__ = [
    "ALL_NODES",
    "MAX_OUTCOMES",
    "MAX_OUTCOMES_TOTAL",
    "MAX_OUTCOME_BYTES",
    "MAX_TOMBSTONES",
    "TOMBSTONE_DAYS",
    "Outcome",
    "add_tombstone",
    "finish_outcome",
    "get_outcome",
    "get_running",
    "prune_outcomes",
    "prune_tombstones",
    "put_running",
    "replace_strays",
    "running_creates",
    "tombstones_for",
]

ALL_NODES = "*"
TOMBSTONE_DAYS = 30.0
MAX_TOMBSTONES = 1_000_000
MAX_OUTCOMES = 10_000  # per caller
MAX_OUTCOME_BYTES = 16 << 20  # per caller
MAX_OUTCOMES_TOTAL = 1_000_000

Outcome = tuple[bool, Any]


# -- tombstones ------------------------------------------------------------------
def add_tombstone(
    conn: sqlite3.Connection, oid: str, node: str, what: str, rid: str | None
) -> None:
    """``what``: ``deleted``, ``moved`` (off ``node``) or ``discarded``."""
    conn.execute(
        "INSERT OR REPLACE INTO tombstones (object, node, what, rid, time) VALUES (?,?,?,?,?)",
        (oid, node, what, rid, time.time()),
    )


def tombstones_for(
    conn: sqlite3.Connection, oids: Iterable[str], node: str
) -> dict[str, dict[str, Any]]:
    """The tombstone that applies to ``node``'s copy of each object (a
    node-specific one first), by object id."""
    out: dict[str, dict[str, Any]] = {}
    ids = list(oids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT object, node, what, rid, time FROM tombstones "
            f"WHERE object IN ({marks}) AND node IN (?, ?) ORDER BY node = ?",
            (*chunk, node, ALL_NODES, node),
        )
        for oid, n, what, rid, t in rows:  # the node's own row comes last and wins
            out[oid] = {"node": n, "what": what, "rid": rid, "time": t}
    return out


def prune_tombstones(
    conn: sqlite3.Connection, max_age_s: float, max_rows: int = MAX_TOMBSTONES
) -> int:
    cur = conn.execute("DELETE FROM tombstones WHERE time < ?", (time.time() - max_age_s,))
    n = cur.rowcount
    cur = conn.execute(
        "DELETE FROM tombstones WHERE rowid IN (SELECT rowid FROM tombstones "
        "ORDER BY time DESC LIMIT -1 OFFSET ?)",
        (max_rows,),
    )
    return n + cur.rowcount


# -- outcomes ------------------------------------------------------------------------
def get_outcome(conn: sqlite3.Connection, rid: str) -> Outcome | None:
    """The stored answer to request ``rid``; None if none (or still running)."""
    row = conn.execute(
        "SELECT ok, value FROM outcomes WHERE rid = ? AND state = 'done'", (rid,)
    ).fetchone()
    if row is None:
        return None
    return bool(row[0]), decode(row[1])


def finish_outcome(conn: sqlite3.Connection, rid: str, method: str, outcome: Outcome) -> None:
    """Store the answer to ``rid``, unless one is stored already (the first wins)."""
    blob = encode(outcome[1])
    conn.execute(
        "INSERT INTO outcomes (rid, method, state, ok, value, size, time) "
        "VALUES (?, ?, 'done', ?, ?, ?, ?) ON CONFLICT (rid) DO UPDATE SET "
        "state = 'done', ok = excluded.ok, value = excluded.value, size = excluded.size, "
        "time = excluded.time WHERE outcomes.state != 'done'",
        (rid, method, int(outcome[0]), blob, len(blob), time.time()),
    )


def put_running(conn: sqlite3.Connection, rid: str, method: str, work: dict[str, Any]) -> None:
    """Record a request in progress and what a resend needs to finish it."""
    blob = encode(work)
    conn.execute(
        "INSERT INTO outcomes (rid, method, state, value, size, time) "
        "VALUES (?, ?, 'running', ?, ?, ?) ON CONFLICT (rid) DO UPDATE SET "
        "value = excluded.value, size = excluded.size, time = excluded.time "
        "WHERE outcomes.state = 'running'",
        (rid, method, blob, len(blob), time.time()),
    )


def get_running(conn: sqlite3.Connection, rid: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT value FROM outcomes WHERE rid = ? AND state = 'running'", (rid,)
    ).fetchone()
    return decode(row[0]) if row is not None else None


def running_creates(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT rid, value FROM outcomes WHERE state = 'running' AND method = 'create'"
    )
    return [(rid, decode(v)) for rid, v in rows]


def prune_outcomes(
    conn: sqlite3.Connection,
    max_rows: int = MAX_OUTCOMES,
    max_bytes: int = MAX_OUTCOME_BYTES,
    max_total: int = MAX_OUTCOMES_TOTAL,
) -> int:
    """Drop the oldest finished outcomes of each caller beyond ``max_rows`` or
    ``max_bytes`` (a request id is scoped to its caller, ``<caller>/<id>``: one
    account's requests never push another's outcomes out), then the oldest of
    all beyond ``max_total``. Rows still running are kept: a resend must find
    them; each caller's newest is kept."""
    n = conn.execute(
        "DELETE FROM outcomes WHERE seq IN (SELECT seq FROM ("
        " SELECT seq, row_number() OVER w AS k, sum(size) OVER w AS b FROM ("
        "  SELECT seq, size, CASE WHEN instr(rid, '/') > 0"
        "   THEN substr(rid, 1, instr(rid, '/') - 1) ELSE '' END AS caller"
        "  FROM outcomes WHERE state = 'done')"
        " WINDOW w AS (PARTITION BY caller ORDER BY seq DESC))"
        " WHERE k > ? OR (b > ? AND k > 1))",
        (max_rows, max_bytes),
    ).rowcount
    n += conn.execute(
        "DELETE FROM outcomes WHERE state = 'done' AND seq IN (SELECT seq FROM outcomes "
        "WHERE state = 'done' ORDER BY seq DESC LIMIT -1 OFFSET ?)",
        (max_total,),
    ).rowcount
    return n


# -- strays ----------------------------------------------------------------------------
def replace_strays(
    conn: sqlite3.Connection, node: str, strays: list[dict[str, str]], *, keep: bool = False
) -> None:
    """What the last reconciliation of ``node`` reported, replacing the
    previous report (``keep``: adding to it)."""
    if not keep:
        conn.execute("DELETE FROM strays WHERE node = ?", (node,))
    now = time.time()
    conn.executemany(
        "INSERT OR REPLACE INTO strays (object, node, kind, detail, seen) VALUES (?,?,?,?,?)",
        [(s["id"], node, s["kind"], s["detail"], now) for s in strays],
    )
