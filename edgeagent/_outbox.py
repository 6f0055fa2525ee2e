"""The store-and-forward outbox: every sample is written here first and
leaves it only once the broker acknowledged it (QoS 1 PUBACK).

An acknowledged sample is kept :attr:`Outbox.window` seconds more (table
``acked``, with the time of its PUBACK): mosquitto saves its state only every
1-2 s, so a broker crash can lose what it acknowledged just before. After a
reconnect the agent sends those again first (:meth:`Outbox.begin_resend`,
:meth:`Outbox.resend_after`); consumers drop a ``seq`` they have seen. Kept
samples never count against the bounds (``max_samples``, ``max_age``, the
policies: they apply to unacknowledged samples only) and are the first to go
when the file system is short of space.

One SQLite file (WAL, ``synchronous=NORMAL``: a power cut may lose the last
transactions, never corrupt the file). The next sequence number lives in the
same file, so a restarted agent never reuses one, and it advances only when a
sample is stored: a sample that could not be stored (disk full, I/O error)
takes no number and is counted as ``failed``. Bounded by count and age; what
the bounds drop is counted, persistently.

A write that fails never ends the agent: the transaction is rolled back, the
WAL is checkpointed and the write tried once more; a deletion that fails is
kept in memory and done with the next write that succeeds. The WAL is kept
small (checkpointed every :data:`WAL_PAGES` pages and cut back to
:data:`WAL_LIMIT` bytes), so it cannot fill a small file system by itself;
and with less than :data:`LOW_SPACE` free the file stops growing
(:meth:`Outbox.can_grow`) and the WAL is checkpointed after every write, so
the agent never fills the last bytes itself and is left without the room to
delete what the broker acknowledged.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["LOW_SPACE", "MAX_UNREMOVED", "WAL_LIMIT", "WAL_PAGES", "Outbox", "OutboxError"]

WAL_PAGES = 32  # automatic checkpoint after this many WAL pages (128 KiB at 4 KiB a page)
WAL_LIMIT = 128 * 1024  # bytes the WAL file is cut back to after a checkpoint
# Free bytes on the file system below which the outbox file must not grow
# (can_grow): room for the WAL to reach its size and be checkpointed, so that
# acknowledged samples can always be deleted and their pages reused.
LOW_SPACE = 3 * WAL_LIMIT
MAX_UNREMOVED = 1000  # acknowledged samples whose deletion failed, kept in memory at most
RETRY_REMOVE = 1.0  # seconds between retries of failed deletions

PRUNE_EVERY = 1.0  # seconds between deletions of kept samples past the window

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


def _uptime() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)  # counts suspend too (Linux)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


class Outbox:
    """Samples waiting for the broker, oldest first. Thread-safe.

    Raises :class:`OutboxError` when ``path`` is not a usable outbox."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.error: str | None = None  # the last write's error; None once one succeeds
        # acknowledged (seq -> uptime of its PUBACK) but not yet moved or
        # deleted (the write failed): retried
        self._unremoved: dict[int, float] = {}
        self._retry_at = 0.0
        self._gone = 0  # samples rows that _unremoved's took out, in the current transaction
        self._kept_delta = 0  # change of acked rows in the current transaction
        self.tight = False  # low on space: checkpoint after every write, keep no acked
        # seconds an acknowledged sample is kept for resending; 0: deleted at once
        self.window = 0.0
        self.last_ack: float | None = None  # uptime of the latest PUBACK taken
        # resend cutoff not yet done (uptime; ALL: every kept sample), None: none
        self.pending: float | None = None
        self.shed = 0  # kept samples deleted early for lack of space (this process)
        self._prune_at = 0.0
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
            db.executemany("UPDATE acked SET boot = ?, up = ? WHERE seq = ?", rows)
            cur = db.executemany(
                "INSERT INTO acked(seq, payload, boot, up) "
                "SELECT seq, payload, ?, ? FROM samples WHERE seq = ?",
                rows,
            )
            self._kept_delta += max(cur.rowcount, 0)
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

    # -- writing ------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next

    def add(self, seq: int, ts: float, payload: bytes) -> bool:
        """Store the sample ``seq`` (which must be :attr:`next_seq`). False
        when it could not be stored: counted in :attr:`failed`, and ``seq``
        stays the next one."""
        with self._lock:
            if seq != self._next:
                raise ValueError(f"sample {seq} out of order (next is {self._next})")

            def insert() -> dict[str, int]:
                self._db.execute(
                    "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                    (seq, ts, payload, self._boot, _uptime()),
                )
                return {"next_seq": seq + 1}

            if not self._commit(insert):
                self.failed += 1
                return False
            self._next = seq + 1
            self._count += 1
            return True

    def skip(self) -> None:
        """Count a sample not taken because the outbox is full (stop_sampling)."""
        with self._lock:
            self.not_sampled += 1
            self._commit(dict)  # if that fails, saved with the next write that succeeds

    def remove(self, seqs: Iterable[int]) -> None:
        """Take the broker's acknowledgement of ``seqs`` (first sends and
        resends alike): kept :attr:`window` seconds from now, or deleted when
        there is no window. A write that fails is kept in memory and tried
        again (with the next write, or a call with no ``seqs`` a second
        later); those samples are not handed out by :meth:`after` meanwhile."""
        new = list(seqs)
        with self._lock:
            if new:
                self.last_ack = now = _uptime()
                self._unremoved.update(dict.fromkeys(new, now))
            elif not self._unremoved or time.monotonic() < self._retry_at:
                return
            if not self._commit(dict):
                self._retry_at = time.monotonic() + RETRY_REMOVE

    @property
    def unremoved(self) -> int:
        """Acknowledged samples whose deletion failed (still in the file)."""
        return len(self._unremoved)

    def count_resent(self, n: int) -> None:
        """``n`` acknowledged samples sent again (saved with the next write)."""
        self.resent += n

    # -- the resend window -------------------------------------------------------
    def begin_resend(self) -> bool:
        """A new connection: from now on :meth:`resend_after` hands out the kept
        samples acknowledged within :attr:`window` seconds before the last
        PUBACK taken (the broker was alive then; its crash came after), plus
        those of a resend that a lost connection left unfinished (all of them
        after the agent started). Whether there is any to send."""
        with self._lock:
            if self.window <= 0:
                self.pending = None
                return False
            cutoff = self.pending
            if self.last_ack is not None and self.window > 0:
                since = self.last_ack - self.window
                cutoff = since if cutoff is None else min(cutoff, since)
            self.pending = cutoff if self._kept else None
            return self.pending is not None

    def resend_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` kept samples of the resend begun, with a sequence
        number above ``seq``, in order."""
        with self._lock:
            since = self.pending
            if since is None:
                return []
            if since == ALL:
                return self._db.execute(
                    "SELECT seq, payload FROM acked WHERE seq > ? ORDER BY seq LIMIT ?",
                    (seq, limit),
                ).fetchall()
            # a sample kept from an earlier boot is as recent as any (no common clock)
            return self._db.execute(
                "SELECT seq, payload FROM acked WHERE seq > ? AND (boot IS NOT ? OR up >= ?) "
                "ORDER BY seq LIMIT ?",
                (seq, self._boot, since, limit),
            ).fetchall()

    def resend_done(self) -> None:
        """Every sample of the resend was sent and acknowledged again."""
        with self._lock:
            self.pending = None

    def prune(self, force: bool = False) -> int:
        """Delete the kept samples no resend can need any more: acknowledged
        more than :attr:`window` seconds before the last PUBACK taken, and not
        part of a resend still to do (at most every :data:`PRUNE_EVERY` s
        unless ``force``). Every one when there is no window. How many went."""
        with self._lock:
            if not self._kept or (not force and time.monotonic() < self._prune_at):
                return 0
            self._prune_at = time.monotonic() + PRUNE_EVERY
            if self.window <= 0 or self.tight:
                floor: float | None = None  # all of them
            elif self.last_ack is None and self.pending is None:
                return 0
            else:
                floor = self.last_ack - self.window if self.last_ack is not None else math.inf
                if self.pending is not None:
                    floor = min(floor, self.pending)
                if floor == ALL:
                    return 0
            done = [0]

            def drop() -> dict[str, int]:
                if floor is None:
                    cur = self._db.execute("DELETE FROM acked")
                else:
                    # an earlier boot's, once no resend still to do needs them
                    cur = self._db.execute(
                        "DELETE FROM acked WHERE (boot IS ? AND up < ?) OR (? AND boot IS NOT ?)",
                        (self._boot, floor, self.pending is None, self._boot),
                    )
                done[0] = max(cur.rowcount, 0)
                self._kept_delta -= done[0]
                return {}

            if not self._commit(drop):
                return 0
            return done[0]

    @property
    def kept(self) -> int:
        """Acknowledged samples kept for the resend window."""
        return self._kept

    def enforce(self, max_samples: int, max_age: float | None, drop_oldest: bool) -> int:
        """Apply the bounds: samples older than ``max_age`` seconds go (None:
        no age sweep); with ``drop_oldest``, so do the oldest beyond
        ``max_samples``. Returns how many were dropped (0 when it could not
        write)."""
        with self._lock:
            if self._count == 0:
                return 0
            done = {"aged": 0, "full": 0}

            def drop() -> dict[str, int]:
                db = self._db
                done["aged"] = done["full"] = 0
                if max_age is not None:
                    # this boot's samples by time since boot; older boots' by the
                    # wall clock (the best there is for them)
                    cur = db.execute(
                        "DELETE FROM samples WHERE (boot IS ? AND boot IS NOT NULL AND up < ?)"
                        " OR ((boot IS NOT ? OR boot IS NULL) AND ts < ?)",
                        (self._boot, _uptime() - max_age, self._boot, time.time() - max_age),
                    )
                    done["aged"] = max(cur.rowcount, 0)
                over = self._count - self._gone - done["aged"] - max_samples
                if drop_oldest and over > 0:
                    cur = db.execute(
                        "DELETE FROM samples WHERE seq IN "
                        "(SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                        (over,),
                    )
                    done["full"] = max(cur.rowcount, 0)
                return {
                    "dropped_age": self.dropped_age + done["aged"],
                    "dropped_full": self.dropped_full + done["full"],
                }

            if not self._commit(drop):
                return 0
            aged, full = done["aged"], done["full"]
            self.dropped_age += aged
            self.dropped_full += full
            self._count -= aged + full
            return aged + full

    # -- reading ------------------------------------------------------------------
    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` unacknowledged samples with a sequence number above
        ``seq``, in order."""
        with self._lock:
            skip = self._unremoved
            rows = self._db.execute(
                "SELECT seq, payload FROM samples WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit + len(skip)),
            ).fetchall()
        return [r for r in rows if r[0] not in skip][:limit] if skip else rows

    def __len__(self) -> int:
        """Unacknowledged samples (kept acknowledged ones do not count)."""
        return self._count - len(self._unremoved)

    def oldest_ts(self) -> float | None:
        with self._lock:
            # the lowest seq's (the primary key: no scan of a long outbox)
            row = self._db.execute("SELECT ts FROM samples ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def can_grow(self) -> bool:
        """Whether another sample may make the file bigger: False when the
        file system has less than :data:`LOW_SPACE` bytes free and the file no
        free page (the caller then applies the outbox's policy, as at
        ``max_samples``). Checked before every sample. Low on space, no
        acknowledged sample is kept: those kept go first, and their pages are
        reused."""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            self.tight = st.f_bavail * st.f_frsize < LOW_SPACE
        except OSError:
            self.tight = False
        if not self.tight:
            return True
        if self._kept:
            self.shed += self.prune(force=True)
        with self._lock:
            try:
                return bool(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            except sqlite3.Error:
                return False

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_age + self.not_sampled

    def close(self) -> None:
        with self._lock:
            self._db.close()
