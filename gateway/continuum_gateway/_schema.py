"""The directory's SQLite schema, and the upgrade of older directory files."""

from __future__ import annotations

import sqlite3

from continuum_mqtt.service import LEGACY_MODULES

__all__ = ["SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 4  # 3: class paths renamed from 0.1.0 import names; 4: owners

_TABLES = """
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, state TEXT, manifest TEXT, updated FLOAT);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, class TEXT, node TEXT, replicas TEXT DEFAULT '[]', created FLOAT);
CREATE INDEX IF NOT EXISTS idx_objects_node ON objects (node);
CREATE INDEX IF NOT EXISTS idx_objects_class ON objects (class);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY, object TEXT REFERENCES objects (id));
CREATE INDEX IF NOT EXISTS idx_aliases_object ON aliases (object);
-- a positive record that a node's copy must go: node '*' means every holder
CREATE TABLE IF NOT EXISTS tombstones (
    object TEXT NOT NULL, node TEXT NOT NULL, what TEXT NOT NULL, rid TEXT,
    time FLOAT NOT NULL, PRIMARY KEY (object, node));
CREATE INDEX IF NOT EXISTS idx_tombstones_time ON tombstones (time);
-- exactly-once outcomes of changing gateway requests, by request id
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rid TEXT NOT NULL UNIQUE, method TEXT NOT NULL,
    state TEXT NOT NULL, ok INTEGER, value BLOB, size INTEGER NOT NULL DEFAULT 0,
    time FLOAT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_outcomes_state ON outcomes (state);
-- copies a node holds that reconciliation neither adopted nor deleted, and
-- directory entries whose node does not hold them: reported, never destroyed
CREATE TABLE IF NOT EXISTS strays (
    object TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT,
    seen FLOAT NOT NULL, PRIMARY KEY (object, node));
-- nodes an admin is draining: no object is placed on them (gateway method drain)
CREATE TABLE IF NOT EXISTS drains (node TEXT PRIMARY KEY, since FLOAT NOT NULL);
"""

# columns added after the first release: (table, column, declaration)
_ADDED = [
    ("objects", "replicas", "TEXT NOT NULL DEFAULT '[]'"),  # 0.1.0 directories
    ("objects", "state", "TEXT NOT NULL DEFAULT 'ok'"),
    ("objects", "reason", "TEXT"),
    ("objects", "state_source", "TEXT"),
    # protocol.md section 21; objects of older directories belong to the anonymous account
    ("objects", "owner", "TEXT NOT NULL DEFAULT 'anonymous'"),
    ("objects", "grants", "TEXT NOT NULL DEFAULT '[]'"),
]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create missing tables, indexes and columns (idempotent), inside the
    caller's transaction."""
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    for table, column, decl in _ADDED:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_objects_owner ON objects (owner)")
    for old, new in LEGACY_MODULES.items():  # cloudnode.forecast.X -> continuum_node.forecast.X
        conn.execute(
            "UPDATE objects SET class = ? || substr(class, ?) WHERE substr(class, 1, ?) = ?",
            (new, len(old) + 1, len(old) + 1, old + "."),
        )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
