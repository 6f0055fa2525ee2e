"""The store-and-forward outbox: every sample is written here first and
deleted only once the broker acknowledged it (QoS 1 PUBACK).

One SQLite file (WAL, ``synchronous=NORMAL``: a power cut may lose the last
transactions, never corrupt the file). The next sequence number lives in the
same file, so a restarted agent never reuses one. Bounded by count and age;
what the bounds drop is counted, persistently.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable

__all__ = ["Outbox"]

# ts: the sampling time (wall clock); boot, up: the kernel's boot id and the
# seconds since boot at insertion, which age a sample even when the wall clock
# jumps (a board without a battery-backed clock syncs it only once online).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, payload BLOB NOT NULL, boot TEXT, up REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _uptime() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)  # counts suspend too (Linux)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


class Outbox:
    """Samples waiting for the broker, oldest first. Thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-256")  # KiB: the board has little memory
            self._db.executescript(_SCHEMA)
            self._boot = _boot_id()
            row = self._db.execute("SELECT MAX(seq) FROM samples").fetchone()
            self._next = max(self._meta("next_seq", 1), (row[0] or 0) + 1)
            self._count = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            self.dropped_full = self._meta("dropped_full", 0)
            self.dropped_age = self._meta("dropped_age", 0)
            self.not_sampled = self._meta("not_sampled", 0)

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set(self, **values: int) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    # -- writing ------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next

    def add(self, seq: int, ts: float, payload: bytes) -> None:
        """Store the sample ``seq`` (which must be :attr:`next_seq`)."""
        with self._lock:
            if seq != self._next:
                raise ValueError(f"sample {seq} out of order (next is {self._next})")
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                (seq, ts, payload, self._boot, _uptime()),
            )
            self._next = seq + 1
            self._set(next_seq=self._next)
            self._db.execute("COMMIT")
            self._count += 1

    def skip(self) -> None:
        """Count a sample not taken because the outbox is full (stop_sampling)."""
        with self._lock:
            self.not_sampled += 1
            self._set(not_sampled=self.not_sampled)

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged samples."""
        batch = [(s,) for s in seqs]
        if not batch:
            return
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.executemany("DELETE FROM samples WHERE seq = ?", batch)
            self._db.execute("COMMIT")
            self._count -= max(cur.rowcount, 0)

    def enforce(self, max_samples: int, max_age: float | None, drop_oldest: bool) -> int:
        """Apply the bounds: samples older than ``max_age`` seconds go (None:
        no age sweep); with ``drop_oldest``, so do the oldest beyond
        ``max_samples``. Returns how many were dropped."""
        dropped = 0
        with self._lock:
            if self._count == 0:
                return 0
            self._db.execute("BEGIN")
            aged = 0
            if max_age is not None:
                # this boot's samples by time since boot; older boots' by the
                # wall clock (the best there is for them)
                cur = self._db.execute(
                    "DELETE FROM samples WHERE (boot IS ? AND boot IS NOT NULL AND up < ?)"
                    " OR ((boot IS NOT ? OR boot IS NULL) AND ts < ?)",
                    (self._boot, _uptime() - max_age, self._boot, time.time() - max_age),
                )
                aged = max(cur.rowcount, 0)
            over = self._count - aged - max_samples
            full = 0
            if drop_oldest and over > 0:
                cur = self._db.execute(
                    "DELETE FROM samples WHERE seq IN "
                    "(SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                    (over,),
                )
                full = max(cur.rowcount, 0)
            if aged or full:
                self.dropped_age += aged
                self.dropped_full += full
                self._set(dropped_age=self.dropped_age, dropped_full=self.dropped_full)
            self._db.execute("COMMIT")
            self._count -= aged + full
            dropped = aged + full
        return dropped

    # -- reading ------------------------------------------------------------------
    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` samples with a sequence number above ``seq``, in order."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, payload FROM samples WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()

    def __len__(self) -> int:
        return self._count

    def oldest_ts(self) -> float | None:
        with self._lock:
            # the lowest seq's (the primary key: no scan of a long outbox)
            row = self._db.execute("SELECT ts FROM samples ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_age + self.not_sampled

    def close(self) -> None:
        with self._lock:
            self._db.close()
