"""The outbox's file (see :mod:`._outbox`): opening and checking it, and the
one transaction every write goes through.

One SQLite file (WAL, ``synchronous=NORMAL``: a power cut may lose the last
transactions, never corrupt the file). The next sequence number lives in the
same file, so a restarted agent never reuses one, and it advances only when a
sample is stored: a sample that could not be stored (disk full, I/O error)
takes no number and is counted as ``failed``. What the bounds drop is
counted, persistently.

A write that fails never ends the agent: the transaction is rolled back, the
WAL is checkpointed and the write tried once more; a deletion that fails is
kept in memory and done with the next write that succeeds. The WAL is kept
small (checkpointed every :data:`WAL_PAGES` pages and cut back to
:data:`WAL_LIMIT` bytes), so it cannot fill a small file system by itself;
and with less than :data:`LOW_SPACE` free the file stops growing
(:meth:`~._outbox.Outbox.can_grow`) and the WAL is checkpointed after every
write, so the agent never fills the last bytes itself and is left without the
room to delete what the broker acknowledged.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable

__all__ = [
    "ALL",
    "LOW_SPACE",
    "MAX_UNREMOVED",
    "WAL_LIMIT",
    "WAL_PAGES",
    "OutboxError",
    "OutboxFile",
]

WAL_PAGES = 32  # automatic checkpoint after this many WAL pages (128 KiB at 4 KiB a page)
WAL_LIMIT = 128 * 1024  # bytes the WAL file is cut back to after a checkpoint
# Free bytes on the file system below which the outbox file must not grow
# (can_grow): room for the WAL to reach its size and be checkpointed, so that
# acknowledged samples can always be deleted and their pages reused.
LOW_SPACE = 3 * WAL_LIMIT
MAX_UNREMOVED = 1000  # acknowledged samples whose deletion failed, kept in memory at most

# samples: not yet acknowledged. ts: the sampling time (wall clock); boot, up:
# the kernel's boot id and the seconds since boot at insertion, which age a
# sample even when the wall clock jumps (a board without a battery-backed clock
# syncs it only once online).
# acked: acknowledged, kept for the resend window; boot, up: at its PUBACK.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, payload BLOB NOT NULL, boot TEXT, up REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS acked (
    seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, boot TEXT, up REAL NOT NULL
);
"""
_COLUMNS = {
    "samples": ["seq", "ts", "payload", "boot", "up"],
    "meta": ["key", "value"],
    "acked": ["seq", "payload", "boot", "up"],
}
_COUNTERS = ("dropped_full", "dropped_age", "not_sampled", "failed", "resent")
ALL = -math.inf  # a resend cutoff: every kept sample
# SQLite primary result codes that mean "may work later" (space, I/O)
_TRANSIENT = {10, 13}  # SQLITE_IOERR, SQLITE_FULL


class OutboxError(Exception):
    """The outbox file cannot be opened as an outbox. ``transient``: the file
    system is full or failing (may work later); else the file is not usable
    (not a database, another program's, damaged) and must be moved aside."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


class OutboxFile:
    """The outbox's SQLite file and the state read from it; the operations on
    it are :class:`~._outbox.Outbox`'s. Raises :class:`OutboxError` when
    ``path`` is not a usable outbox."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.error: str | None = None  # the last write's error; None once one succeeds
        # acknowledged (seq -> uptime of its PUBACK) but not yet moved or
        # deleted (the write failed): retried
        self._unremoved: dict[int, float] = {}
        self._gone = 0  # samples rows that _unremoved's took out, in the current transaction
        self._kept_delta = 0  # change of acked rows in the current transaction
        self.tight = False  # low on space: checkpoint after every write, keep no acked
        # seconds an acknowledged sample is kept for resending; 0: deleted at once
        self.window = 0.0
        # resend cutoff not yet done (uptime; ALL: every kept sample), None: none
        self.pending: float | None = None
        self.shed = 0  # kept samples deleted early for lack of space (this process)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._open_error(exc) from None
        except OutboxError:
            self._db.close()
            raise

    def _open_error(self, exc: sqlite3.Error) -> OutboxError:
        if _code(exc) in _TRANSIENT:
            return OutboxError(
                f"{self.path}: cannot open the outbox: {exc} (the file system is full or "
                "failing: free some space; the agent can then start)",
                transient=True,
            )
        return OutboxError(
            f"{self.path}: not a usable outbox ({exc}); move it aside to start a new one "
            "(its samples are not sent, and seq starts again at 1)"
        )

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA cache_size=-256")  # KiB: the board has little memory
        # read-only checks first: a file that is not ours is left as it is
        self._check_schema()
        problems = [r[0] for r in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise OutboxError(
                f"{self.path}: the outbox is damaged ({'; '.join(problems)}); move it aside to "
                "start a new one (seq starts again at 1)"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        db.executescript(_SCHEMA)
        self._boot = _boot_id()
        row = db.execute(
            "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM samples "
            "UNION ALL SELECT MAX(seq) FROM acked)"
        ).fetchone()
        self._next = max(self._meta("next_seq", 1), (row[0] or 0) + 1)
        self._count = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        self._kept = db.execute("SELECT COUNT(*) FROM acked").fetchone()[0]
        # the last run ended with these: when its connection was lost is not
        # known, so the first connection sends them all again
        self.pending = ALL if self._kept else None
        self.dropped_full = self._meta("dropped_full", 0)
        self.dropped_age = self._meta("dropped_age", 0)
        self.not_sampled = self._meta("not_sampled", 0)
        self.failed = self._meta("failed", 0)
        self.resent = self._meta("resent", 0)
        self._saved = self._counters()

    def _check_schema(self) -> None:
        """An empty file becomes an outbox; a database of anything else is refused."""
        tables = [
            r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for name in tables:
            cols = [r[1] for r in self._db.execute(f"PRAGMA table_info({name!r})")]
            if _COLUMNS.get(name) != cols:
                raise OutboxError(
                    f"{self.path}: not an edgeagent outbox (table {name!r} with columns "
                    f"{', '.join(cols)}); move it aside, or point state_dir elsewhere"
                )

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _counters(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in _COUNTERS}

    def _set(self, values: dict[str, int]) -> None:
        if values:
            self._db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    # -- transactions -------------------------------------------------------------
    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled it back (SQLITE_FULL may do that)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database so that the WAL starts over (its file
        is reused: no new space). False when that failed too."""
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return False
        return not busy

    def _ack_rows(self, items: list[tuple[int, float]]) -> None:
        """Acknowledged samples (seq, uptime of the PUBACK) out of ``samples``:
        moved to ``acked`` (or, already there after a resend, their time
        renewed) while a window is set and space allows; deleted otherwise."""
        db = self._db
        if self.window > 0 and not self.tight:
            rows = [(self._boot, up, seq) for seq, up in items]
            cur = db.executemany(
                "INSERT INTO acked(seq, payload, boot, up) "
                "SELECT seq, payload, ?, ? FROM samples WHERE seq = ?",
                rows,
            )
            moved = max(cur.rowcount, 0)
            self._kept_delta += moved
            if moved < len(items):  # some were resent: already kept, their time renewed
                db.executemany("UPDATE acked SET boot = ?, up = ? WHERE seq = ?", rows)
        elif self._kept:
            cur = db.executemany("DELETE FROM acked WHERE seq = ?", [(s,) for s, _ in items])
            self._kept_delta -= max(cur.rowcount, 0)
        cur = db.executemany("DELETE FROM samples WHERE seq = ?", [(s,) for s, _ in items])
        self._gone = max(cur.rowcount, 0)

    def _commit(self, work: Callable[[], dict[str, int]]) -> bool:
        """One transaction: the failed deletions, ``work`` (which returns the
        meta values to save with it) and the counters that changed. On an
        error: roll back, checkpoint, try once more, deleting the kept
        acknowledged samples first (space is short); False (and :attr:`error`
        set) when it could not be stored."""
        for attempt in range(2):
            unremoved = sorted(self._unremoved.items())
            shed = 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._gone = self._kept_delta = 0
                if attempt and self._kept:
                    shed = max(self._db.execute("DELETE FROM acked").rowcount, 0)
                    self._kept_delta -= shed
                if unremoved:
                    self._ack_rows(unremoved)
                meta = work()
                values = {k: v for k, v in self._counters().items() if self._saved.get(k) != v}
                values.update(meta)
                self._set(values)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.error = f"{exc} ({self.path})"
                if attempt or not self._checkpoint():
                    return False
                continue
            except BaseException:
                self._rollback()
                raise
            self._count -= self._gone
            self._kept += self._kept_delta
            self.shed += shed
            for seq, _ in unremoved:
                self._unremoved.pop(seq, None)
            self._saved.update({k: v for k, v in values.items() if k in _COUNTERS})
            self.error = None
            if self.tight:
                self._checkpoint()  # the WAL then needs no new space to go on
            return True
        return False  # pragma: no cover - the loop returns

    def close(self) -> None:
        with self._lock:
            self._db.close()
