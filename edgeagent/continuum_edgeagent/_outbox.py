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

The file itself (one SQLite file, the next sequence number in it, writes that
survive a full or failing disk) is :mod:`._outboxfile`.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable

from ._outboxfile import (
    ALL,
    LOW_SPACE,
    MAX_UNREMOVED,
    WAL_LIMIT,
    WAL_PAGES,
    OutboxError,
    OutboxFile,
)

__all__ = ["LOW_SPACE", "MAX_UNREMOVED", "WAL_LIMIT", "WAL_PAGES", "Outbox", "OutboxError"]

RETRY_REMOVE = 1.0  # seconds between retries of failed deletions

PRUNE_EVERY = 1.0  # seconds between deletions of kept samples past the window


def _uptime() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)  # counts suspend too (Linux)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


class Outbox(OutboxFile):
    """Samples waiting for the broker, oldest first. Thread-safe.

    Raises :class:`OutboxError` when ``path`` is not a usable outbox."""

    def __init__(self, path: str) -> None:
        self._retry_at = 0.0
        self.last_ack: float | None = None  # uptime of the latest PUBACK taken
        self._prune_at = 0.0
        super().__init__(path)

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
                # a resent sample acknowledged again is no longer waiting
                self._forget_absent_acks()

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
            if self.last_ack is not None:
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
            if (aged or full) and self._unremoved:
                self._forget_absent_acks()
            return aged + full

    def _forget_absent_acks(self) -> None:
        """Keep in the acknowledgements waiting to be deleted (their deletion
        failed: the disk is full) only samples still stored: not one dropped by
        the bounds meanwhile, nor a resent one acknowledged a second time (else
        :meth:`__len__` counts them out twice, and went below 0)."""
        waiting = list(self._unremoved)
        present: set[int] = set()
        for i in range(0, len(waiting), 500):  # SQLite's bound on variables
            chunk = waiting[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT seq FROM samples WHERE seq IN ({marks})", chunk)
            present.update(r[0] for r in rows)
        for seq in waiting:
            if seq not in present:
                self._unremoved.pop(seq, None)

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
