"""Durable resident objects: one snapshot file per object in the node's state
directory, written atomically (temp file, fsync, rename, fsync of the folder)
before the reply of a mutating call is sent.

Snapshots are cloudpickle files written and read by the node itself: a trusted
local disk, never anything that arrived over the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cloudpickle

__all__ = ["Store", "dumps_state", "loads_state"]


def dumps_state(record: dict[str, Any]) -> bytes:
    """An object's record as bytes, for snapshots and node-to-node syncs."""
    return cloudpickle.dumps(record, protocol=5)


def loads_state(data: bytes) -> dict[str, Any]:
    """Only for bytes from this node's disk or a trusted node (never a device)."""
    return cloudpickle.loads(data)


log = logging.getLogger("continuum.node.store")


class Store:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir) / "objects"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dirfd = os.open(self.dir, os.O_RDONLY)

    def _path(self, oid: str) -> Path:
        if not oid or "/" in oid or oid.startswith("."):
            raise ValueError(f"bad object id {oid!r}")
        return self.dir / f"{oid}.snapshot"

    def save(self, oid: str, record: dict[str, Any]) -> int:
        """Write ``record`` durably; returns the snapshot size in bytes."""
        data = dumps_state(record)
        path = self._path(oid)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        os.fsync(self._dirfd)
        return len(data)

    def delete(self, oid: str) -> None:
        try:
            self._path(oid).unlink()
            os.fsync(self._dirfd)
        except FileNotFoundError:
            pass

    def load_all(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.dir.glob("*.snapshot")):
            try:
                records.append(loads_state(path.read_bytes()))
            except Exception as exc:  # a damaged snapshot must not stop the node
                log.error("cannot load snapshot %s: %s", path.name, exc)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        return records

    def close(self) -> None:
        os.close(self._dirfd)
