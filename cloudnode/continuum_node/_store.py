"""Durable resident objects.

Each object has a *checkpoint* (its whole record, cloudpickled behind a
checked header, :mod:`continuum_node._checkpoint`; written atomically: temp file,
fsync, rename, fsync of the folder) and a *journal*: an append-only file of the
mutating calls made since, one checksummed CBOR entry each (method, arguments,
request id, outcome), fsynced before the call's reply is sent
(:mod:`continuum_node._journal`). Appending a call costs the same whatever the
object's size; a checkpoint is written every ``checkpoint_every`` calls, on
create, bind or promote, and after methods marked ``@active(snapshot=True)``.
A restarted node loads the checkpoint and replays the journal's later calls.

A write that fails (disk full, I/O error) raises :class:`StorageError` and
leaves the files as they were before it: a partial journal entry is cut off,
a partial checkpoint is a temp file that is removed. A damaged file found at
load is never silently skipped: a torn journal tail is cut off (the bytes kept
in ``objects/damaged/``), anything else quarantines the object
(:mod:`continuum_node._quarantine`).

Checkpoints are cloudpickle files written and read by the node itself: a
trusted local disk, never anything that arrived over the network. Journal
entries are CBOR, like the calls they record.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from continuum_mqtt import StorageError
from continuum_mqtt.service import encode

from . import _checkpoint, _journal
from ._legacy import install_legacy_names
from ._quarantine import (
    DAMAGED,
    QUARANTINE,
    Quarantined,
    archive,
    load_quarantined,
    move_aside,
    stamp,
)

__all__ = ["Inventory", "StateDirInUse", "Store", "Unloadable", "dumps_state", "loads_state"]

log = logging.getLogger("continuum.node.store")

Loaded = tuple[dict[str, Any], list[dict[str, Any]]]  # checkpoint record, later entries


def dumps_state(record: dict[str, Any]) -> bytes:
    """An object's record as bytes, for checkpoints and node-to-node syncs."""
    return cloudpickle.dumps(record, protocol=5)


def loads_state(data: bytes) -> dict[str, Any]:
    """Only for bytes from this node's disk or a trusted node (never a device)."""
    install_legacy_names()
    return cloudpickle.loads(data)


class StateDirInUse(RuntimeError):
    """Another process (a running node, a repair command) holds the state dir."""


class Unloadable(Exception):
    """An object whose files cannot be loaded faithfully; ``damaged``: its files
    are bad (moved aside), otherwise they are left in place."""

    def __init__(self, q: Quarantined, damaged: bool) -> None:
        super().__init__(q.reason)
        self.quarantined = q
        self.damaged = damaged


@dataclass
class Inventory:
    objects: list[Loaded] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def lock_state_dir(objects: Path) -> int:
    """An exclusive lock on the objects folder, held while the fd is open."""
    fd = os.open(objects / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(f"{objects} is in use by another process (a running node?)") from None
    return fd


class Store:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lockfd = lock_state_dir(self.dir)
        self._dirfd = os.open(self.dir, os.O_RDONLY)
        self._journals: dict[str, int] = {}  # object id -> open journal fd
        self._ends: dict[str, int] = {}  # object id -> journal bytes known good

    def _path(self, oid: str, suffix: str) -> Path:
        if not oid or "/" in oid or oid.startswith("."):
            raise ValueError(f"bad object id {oid!r}")
        return self.dir / f"{oid}.{suffix}"

    # -- writing -----------------------------------------------------------------
    def checkpoint(self, oid: str, record: dict[str, Any]) -> int:
        """Write the whole record durably and start an empty journal; returns
        the checkpoint's size in bytes. On StorageError the previous checkpoint
        and journal are untouched."""
        data = _checkpoint.pack(dumps_state(record))
        path = self._path(oid, "snapshot")
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            os.fsync(self._dirfd)  # the rename is durable before the journal is emptied
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.error("cannot checkpoint %s: %s; the previous one stands", oid, exc)
            raise StorageError(
                f"cannot checkpoint {oid}: {exc.strerror or exc}", errno=exc.errno
            ) from exc
        # The checkpoint holds everything journaled so far (entries carry
        # sequence numbers, so entries left by a failed truncation are skipped).
        try:
            os.ftruncate(self._journal_fd(oid), 0)
            self._ends[oid] = 0
        except (OSError, StorageError) as exc:
            log.warning("%s: cannot empty the journal after a checkpoint: %s", oid, exc)
            self._close_journal(oid)
        return len(data)

    def append(self, oid: str, entry: dict[str, Any]) -> int:
        """Journal one call durably; returns the bytes written. Raises
        UnencodableResult when the entry cannot be CBOR-encoded, StorageError
        when it cannot be written (the journal is then as before the call)."""
        data = _journal.frame(encode(entry))
        fd = self._journal_fd(oid)
        end = self._ends[oid]
        try:
            _write_all(fd, data)
            os.fdatasync(fd)
        except OSError as exc:
            self._undo_append(oid, fd, end)
            log.error("cannot journal a call of %s: %s; the call is undone", oid, exc)
            raise StorageError(
                f"cannot journal a call of {oid}: {exc.strerror or exc}", errno=exc.errno
            ) from exc
        self._ends[oid] = end + len(data)
        return len(data)

    def _undo_append(self, oid: str, fd: int, end: int) -> None:
        """Cut a partly written entry off, so nothing is ever appended after it."""
        try:
            os.ftruncate(fd, end)
            os.fdatasync(fd)
        except OSError as exc:  # the next load finds and cuts the torn tail
            log.error("%s: cannot cut a failed journal entry off: %s", oid, exc)
            self._close_journal(oid)

    def _journal_fd(self, oid: str) -> int:
        fd = self._journals.get(oid)
        if fd is None:
            path = self._path(oid, "journal")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise StorageError(
                    f"cannot open the journal of {oid}: {exc.strerror or exc}", errno=exc.errno
                ) from exc
            self._journals[oid] = fd
            self._ends[oid] = os.fstat(fd).st_size
        return fd

    def _close_journal(self, oid: str) -> None:
        fd = self._journals.pop(oid, None)
        self._ends.pop(oid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self, oid: str) -> None:
        """Close the object's journal (it was evicted; reopened when appended to)."""
        self._close_journal(oid)

    def delete(self, oid: str) -> None:
        self._close_journal(oid)
        for suffix in ("snapshot", "journal"):
            self._path(oid, suffix).unlink(missing_ok=True)
        os.fsync(self._dirfd)

    def discard_quarantined(self, q: Quarantined) -> None:
        """A caller deleted a quarantined object: its files go to damaged/
        (moved aside) or away (left in place: they were intact)."""
        folder = self.dir / QUARANTINE / q.id
        if q.moved and folder.exists():
            dest = archive(self.dir, folder, "deleted")
            log.warning("quarantined object %s deleted; its files are kept in %s", q.id, dest)
        else:
            self.delete(q.id)

    # -- loading -----------------------------------------------------------------
    def load_all(self) -> list[Loaded]:
        """Every healthy object's checkpoint and the journal entries after it."""
        return self.inventory().objects

    def inventory(self, each: Callable[[Loaded], None] | None = None) -> Inventory:
        """Every object: loaded, or quarantined (damaged files moved aside now;
        objects quarantined by earlier runs included). Torn journal tails are
        cut off here, before anything is appended. With ``each``, every loaded
        object is given to it as it is read, not kept in ``objects`` (a node
        with a residency budget keeps only a stub of most: one object's state
        in memory at a time)."""
        out = Inventory(quarantined=load_quarantined(self.dir))
        held = {q.id for q in out.quarantined}
        for path in sorted(self.dir.glob("*.snapshot")):
            oid = path.name.removesuffix(".snapshot")
            if oid in held:  # put back by hand? 'continuum-node quarantine' decides
                log.error("%s: left alone, the object is quarantined", path.name)
                continue
            try:
                loaded = self._load(oid)
            except Unloadable as exc:
                try:
                    self._set_aside(exc)
                except OSError as err:  # still quarantined; judged again next start
                    log.error("%s: cannot move its files aside: %s", oid, err)
                out.quarantined.append(exc.quarantined)
                continue
            if each is None:
                out.objects.append(loaded)
            else:
                each(loaded)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for journal in self.dir.glob("*.journal"):
            if not journal.with_suffix(".snapshot").exists() and journal.stem not in held:
                dest = archive(self.dir, journal, "orphan")
                log.warning("journal %s has no checkpoint; moved to %s", journal.name, dest)
        return out

    def reload(self, oid: str) -> Loaded:
        """One object as its files hold it (after a failed write). Raises
        Unloadable (files moved aside when damaged and possible)."""
        self._close_journal(oid)
        try:
            return self._load(oid)
        except Unloadable as exc:
            with contextlib.suppress(OSError):
                self._set_aside(exc)
            raise

    def _set_aside(self, exc: Unloadable) -> None:
        if exc.damaged:
            oid = exc.quarantined.id
            files = {"snapshot": self._path(oid, "snapshot"), "journal": self._path(oid, "journal")}
            move_aside(self.dir, exc.quarantined, files)

    def _load(self, oid: str) -> Loaded:
        record = self._read_checkpoint(oid)
        journal = self._path(oid, "journal")
        try:
            data = journal.read_bytes() if journal.exists() else b""
        except OSError as exc:
            raise _unreadable(record, f"cannot read its journal: {exc}") from exc
        found = _journal.scan(data)
        if found.problem == "corrupt":
            raise Unloadable(
                Quarantined.from_record(
                    record,
                    f"journal damaged in the middle: {found.detail} (entry {found.index});"
                    " calls acknowledged after it would be lost by replaying only the prefix",
                    "journal",
                ),
                damaged=True,
            )
        if found.problem == "torn":
            self._cut_tail(oid, journal, data, found)
        entries, gap = _journal.since(found.entries, record.get("seq", 0))
        if gap is not None:
            raise Unloadable(Quarantined.from_record(record, gap, "journal"), damaged=True)
        return record, entries

    def _read_checkpoint(self, oid: str) -> dict[str, Any]:
        path = self._path(oid, "snapshot")
        try:
            body, legacy = _checkpoint.unpack(path.read_bytes())
        except _checkpoint.CheckpointDamaged as exc:
            raise Unloadable(Quarantined(oid, str(exc), "checkpoint"), damaged=True) from None
        except OSError as exc:
            raise Unloadable(
                Quarantined(oid, f"cannot read its checkpoint: {exc}", "storage"), damaged=False
            ) from exc
        try:
            record = loads_state(body)
        except Exception as exc:
            # intact bytes (checksum passed) that do not load: the code, not the disk
            missing = isinstance(exc, ImportError | AttributeError)
            why = f"its checkpoint cannot be loaded ({type(exc).__name__}: {exc})"
            raise Unloadable(
                Quarantined(oid, why, "class" if missing or not legacy else "checkpoint"),
                damaged=legacy and not missing,
            ) from exc
        if not isinstance(record, dict) or record.get("id") != oid:
            raise Unloadable(
                Quarantined(oid, "its checkpoint holds another object's record", "checkpoint"),
                damaged=True,
            )
        if legacy:
            log.warning("%s: checkpoint from before checksums; rewritten at the next one", oid)
        return record

    def _cut_tail(self, oid: str, journal: Path, data: bytes, found: _journal.Scan) -> None:
        """Repair a torn tail: keep its bytes aside, then truncate the journal."""
        tail = data[found.good_end :]
        kept = self.dir / DAMAGED / f"{oid}.journal.{stamp()}.tail"
        try:
            kept.parent.mkdir(exist_ok=True)
            kept.write_bytes(tail)
            where = f"kept in {DAMAGED}/{kept.name}"
        except OSError as exc:
            where = f"not kept ({exc}); they were {tail[:4096].hex()}"
        try:
            fd = os.open(journal, os.O_WRONLY)
            try:
                os.ftruncate(fd, found.good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _unreadable(None, f"cannot cut the torn tail of its journal: {exc}", oid) from exc
        log.warning(
            "%s: torn journal tail cut off: %s (a crash while appending; that call was"
            " never acknowledged); %d entries kept; the bytes are %s",
            journal.name,
            found.detail,
            len(found.entries),
            where,
        )

    def close(self) -> None:
        for oid in list(self._journals):
            self._close_journal(oid)
        os.close(self._dirfd)
        os.close(self._lockfd)


def _unreadable(record: dict[str, Any] | None, reason: str, oid: str = "") -> Unloadable:
    if record is None:
        return Unloadable(Quarantined(oid, reason, "storage"), damaged=False)
    return Unloadable(Quarantined.from_record(record, reason, "storage"), damaged=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
