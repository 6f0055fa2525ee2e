"""Checks of the directory file before the gateway trusts it.

SQLite is forgiving in ways that lose data silently: it takes a 0-byte file
for a new, empty database, and it ignores every WAL frame from the first one
whose checksum fails (a flipped byte in the WAL of a killed gateway drops the
acknowledged transactions after it). These checks run before SQLite opens the
file for writing, and modify nothing: a refusal leaves every file as it was.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
from dataclasses import dataclass

__all__ = [
    "RECOVERY_DOC",
    "DirectoryRefused",
    "WalReport",
    "check_directory",
    "integrity_errors",
    "remove_empty_wal",
    "verify_wal",
]

RECOVERY_DOC = "docs/recovery.md"
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = 0x377F0682  # | 1: checksums in big-endian words
WAL_VERSION = 3007000
WAL_HEADER = 32
FRAME_HEADER = 24


class DirectoryRefused(Exception):
    """The gateway will not start on this directory; the message says why and
    what to do. ``exit 2`` (the documented code for a refused configuration)."""


@dataclass
class WalReport:
    """What SQLite would make of a WAL file (see https://www.sqlite.org/fileformat.html,
    "WAL file format")."""

    frames: int = 0  # whole frames in the file
    valid: int = 0  # frames SQLite would read (up to the first bad one)
    commits: int = 0  # commit frames among the valid ones
    bad_frame: int | None = None  # 1-based index of the first frame SQLite would stop at
    bad_current: bool = False  # it has the current salts (not an older generation's frame)
    after_bad: int = 0  # frames with the current salts after it: what SQLite would drop
    commits_after_bad: int = 0
    header_ok: bool = True

    @property
    def damaged(self) -> bool:
        """True when SQLite would silently drop frames that were written in
        the WAL's current generation (a torn last frame alone is not damage)."""
        if not self.header_ok:
            return self.frames > 0
        return self.after_bad > 0


def _checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def verify_wal(path: str) -> WalReport:
    """Walk the frames of the WAL file at ``path`` as SQLite's recovery does."""
    with open(path, "rb") as fh:
        data = fh.read()
    report = WalReport()
    if len(data) < WAL_HEADER:
        return report  # empty or a torn header: no frame was ever committed after it
    magic, version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    big = bool(magic & 1)
    sane = (
        magic & 0xFFFFFFFE == WAL_MAGIC
        and version == WAL_VERSION
        and 512 <= page_size <= 65536
        and page_size & (page_size - 1) == 0
    )
    if not sane or _checksum(data[:24], 0, 0, big) != (c1, c2):
        report.header_ok = False
        # the page size is unknown: count what could be frames of the smallest pages
        report.frames = (len(data) - WAL_HEADER) // (FRAME_HEADER + 512)
        return report
    frame_size = FRAME_HEADER + page_size
    report.frames = (len(data) - WAL_HEADER) // frame_size
    s0, s1 = c1, c2
    for i in range(report.frames):
        off = WAL_HEADER + i * frame_size
        header = data[off : off + FRAME_HEADER]
        _page, commit, f1, f2, k1, k2 = struct.unpack(">6I", header)
        current = (f1, f2) == (salt1, salt2)
        if report.bad_frame is None:
            if current:
                s0, s1 = _checksum(header[:8], s0, s1, big)
                s0, s1 = _checksum(data[off + FRAME_HEADER : off + frame_size], s0, s1, big)
            if current and (s0, s1) == (k1, k2):
                report.valid += 1
                report.commits += commit != 0
                continue
            report.bad_frame = i + 1
            report.bad_current = current
            continue
        if current:
            report.after_bad += 1
            report.commits_after_bad += commit != 0
    return report


def _wal_message(path: str, wal: str, r: WalReport) -> str:
    if not r.header_ok:
        what = (
            f"its header is damaged (bad magic number, version or checksum) and it holds "
            f"{r.frames} frame(s) or more: SQLite would ignore all of them"
        )
    else:
        what = (
            f"frame {r.bad_frame} of {r.frames} fails its checksum (or its salt) and "
            f"{r.after_bad} later frame(s) of the same generation, {r.commits_after_bad} "
            f"of them commits, follow it: SQLite would silently drop those transactions"
        )
    return (
        f"directory {path}: the write-ahead log {wal} is damaged: {what}. Refusing to start; "
        f"no file was modified. Keep the files for inspection and see {RECOVERY_DOC} "
        f"('A damaged WAL'): rebuild the directory from the nodes, or restore a backup."
    )


def integrity_errors(path: str, limit: int = 20) -> list[str]:
    """``PRAGMA integrity_check`` through a read-only connection (which never
    checkpoints the WAL into the file): [] when the file is sound. It reads
    every page, so a damaged page anywhere is found, and checks that every
    index agrees with its table (``quick_check`` skips that)."""
    extra = [f for f in (f"{path}-wal", f"{path}-shm") if not os.path.exists(f)]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"cannot open: {exc}"]
    try:
        rows = conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        conn.close()
        remove_empty_wal(path, extra)
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found


def remove_empty_wal(path: str, created: list[str]) -> None:
    """A read-only connection to a WAL-mode file creates an empty ``-wal``
    and a ``-shm`` it cannot remove: take away those it created."""
    wal = f"{path}-wal"
    if wal in created and os.path.exists(wal) and os.path.getsize(wal) == 0:
        for f in created:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)


def check_directory(path: str) -> list[str]:
    """Raise :class:`DirectoryRefused` unless ``path`` is absent (a new
    directory) or a sound SQLite file whose WAL SQLite would read whole.
    Returns warnings worth logging (a torn last frame in the WAL)."""
    warnings: list[str] = []
    if path == ":memory:":
        return warnings
    wal = f"{path}-wal"
    wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
    if not os.path.exists(path):
        if wal_size > 0:
            raise DirectoryRefused(
                f"directory {path} does not exist but its write-ahead log {wal} "
                f"({wal_size} bytes) does: SQLite would apply it to a new, empty file. "
                f"Refusing to start; no file was modified. Put the directory file back, or "
                f"move {wal} aside; see {RECOVERY_DOC}."
            )
        return warnings
    size = os.path.getsize(path)
    if size == 0:
        raise DirectoryRefused(
            f"directory {path} is an empty (0-byte) file: SQLite would take it for a new, "
            f"empty directory and the gateway would not know any object. Refusing to start; "
            f"no file was modified. Restore a backup or rebuild the directory from the "
            f"nodes; see {RECOVERY_DOC}."
        )
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise DirectoryRefused(
            f"directory {path} is not a SQLite database (its first bytes are damaged). "
            f"Refusing to start; no file was modified; see {RECOVERY_DOC}."
        )
    if wal_size > 0:
        report = verify_wal(wal)
        if report.damaged:
            raise DirectoryRefused(_wal_message(path, wal, report))
        if report.bad_current:
            warnings.append(
                f"directory {path}: the last frame(s) of {wal} from frame {report.bad_frame} "
                f"on are incomplete or fail their checksum: a write torn by a crash, which "
                f"SQLite ignores (it was never committed)"
            )
    errors = integrity_errors(path)
    if errors:
        shown = "; ".join(errors[:5]) + (
            f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        )
        raise DirectoryRefused(
            f"directory {path} fails SQLite's integrity check: {shown}. Refusing to start; "
            f"no file was modified. Keep it for inspection and see {RECOVERY_DOC}: restore "
            f"a backup or rebuild the directory from the nodes."
        )
    return warnings
