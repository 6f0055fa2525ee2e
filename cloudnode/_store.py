"""Durable resident objects.

Each object has a *checkpoint* (its whole record, cloudpickled, written
atomically: temp file, fsync, rename, fsync of the folder) and a *journal*: an
append-only file of the mutating calls made since, one CBOR entry each
(method, arguments, request id, outcome), fsynced before the call's reply is
sent. Appending a call costs the same whatever the object's size; a checkpoint
is written every ``checkpoint_every`` calls, on create, bind or promote, and
after methods marked ``@active(snapshot=True)``. A restarted node loads the
checkpoint and replays the journal's later calls.

Checkpoints are cloudpickle files written and read by the node itself: a
trusted local disk, never anything that arrived over the network. Journal
entries are CBOR, like the calls they record.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import cloudpickle

from continuum._codec import decode, encode
from continuum._errors import ContinuumError

__all__ = ["Store", "dumps_state", "loads_state"]

log = logging.getLogger("continuum.node.store")

_HEADER = struct.Struct(">II")  # length, crc32 of the entry


def dumps_state(record: dict[str, Any]) -> bytes:
    """An object's record as bytes, for checkpoints and node-to-node syncs."""
    return cloudpickle.dumps(record, protocol=5)


def loads_state(data: bytes) -> dict[str, Any]:
    """Only for bytes from this node's disk or a trusted node (never a device)."""
    return cloudpickle.loads(data)


class Store:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dirfd = os.open(self.dir, os.O_RDONLY)
        self._journals: dict[str, int] = {}  # object id -> open journal fd

    def _path(self, oid: str, suffix: str) -> Path:
        if not oid or "/" in oid or oid.startswith("."):
            raise ValueError(f"bad object id {oid!r}")
        return self.dir / f"{oid}.{suffix}"

    def checkpoint(self, oid: str, record: dict[str, Any]) -> int:
        """Write the whole record durably and start an empty journal; returns
        the checkpoint's size in bytes."""
        data = dumps_state(record)
        path = self._path(oid, "snapshot")
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        # The checkpoint holds everything journaled so far (entries carry
        # sequence numbers, so a crash before this truncation only leaves
        # entries that replay skips).
        fd = self._journal_fd(oid)
        os.ftruncate(fd, 0)
        os.fsync(self._dirfd)
        return len(data)

    def append(self, oid: str, entry: dict[str, Any]) -> int:
        """Journal one call durably; returns the bytes written.
        Raises UnencodableResult when the entry cannot be CBOR-encoded."""
        body = encode(entry)
        fd = self._journal_fd(oid)
        _write_all(fd, _HEADER.pack(len(body), zlib.crc32(body)) + body)
        os.fdatasync(fd)
        return _HEADER.size + len(body)

    def _journal_fd(self, oid: str) -> int:
        fd = self._journals.get(oid)
        if fd is None:
            path = self._path(oid, "journal")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._journals[oid] = fd
        return fd

    def delete(self, oid: str) -> None:
        fd = self._journals.pop(oid, None)
        if fd is not None:
            os.close(fd)
        for suffix in ("snapshot", "journal"):
            self._path(oid, suffix).unlink(missing_ok=True)
        os.fsync(self._dirfd)

    def load_all(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Every object's checkpoint and the journal entries written after it."""
        out = []
        for path in sorted(self.dir.glob("*.snapshot")):
            try:
                record = loads_state(path.read_bytes())
            except Exception as exc:  # a damaged checkpoint must not stop the node
                log.error("cannot load checkpoint %s: %s", path.name, exc)
                continue
            journal = path.with_suffix(".journal")
            entries = _read_journal(journal) if journal.exists() else []
            seq = record.get("seq", 0)
            out.append((record, [e for e in entries if e.get("seq", 0) > seq]))
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        return out

    def close(self) -> None:
        for fd in self._journals.values():
            os.close(fd)
        self._journals.clear()
        os.close(self._dirfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_journal(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    entries, pos = [], 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            # A torn write from a crash: that call was never acknowledged.
            log.warning("%s: ignoring a torn entry at byte %d", path.name, pos)
            break
        try:
            entries.append(decode(body))
        except ContinuumError as exc:  # never keep a node from starting
            log.error(
                "%s: cannot decode the entry at byte %d (%s); replay stops here",
                path.name,
                pos,
                exc,
            )
            break
        pos += _HEADER.size + length
    return entries
