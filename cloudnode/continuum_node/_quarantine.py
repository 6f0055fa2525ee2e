"""Quarantined objects: held by the node but not served, never silently dropped.

An object is quarantined when the node cannot load it faithfully:

* ``checkpoint``: its checkpoint is empty, truncated or fails its checksum;
* ``journal``: its journal is damaged in the middle (acknowledged calls come
  after the damage, so replaying the prefix would silently roll it back);
* ``class``: its checkpoint is intact but cannot be loaded here (the class is
  not hosted by this node, or unpickling it fails): a configuration problem;
* ``storage``: the node could not read its files back after a failed write.

For damaged files (``checkpoint``, ``journal``) the files are moved aside into
``objects/quarantine/<id>/`` with a ``reason.json``, so the node's next start
finds the object quarantined again until an operator decides (see
:mod:`continuum_node._repair`). The other kinds leave the files where they are and
are judged again at the next start.

Nothing here deletes a file: damaged bytes end up in ``objects/damaged/``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from continuum_mqtt import Unavailable
from continuum_mqtt.service import fsync_path

__all__ = ["Quarantine", "Quarantined", "archive", "list_entry", "load_quarantined", "move_aside"]

log = logging.getLogger("continuum.node.store")

QUARANTINE = "quarantine"
DAMAGED = "damaged"
REASON = "reason.json"


def list_entry(
    oid: str,
    cls: str | None,
    feeds: dict[str, str],
    role: str | None,
    replicas: list[str],
    aliases: list[str],
    reason: str | None = None,
) -> dict[str, Any]:
    """An object's node control ``list`` entry (protocol §17); quarantined when
    a ``reason`` is given."""
    return {
        "id": oid,
        "class": cls,
        "feeds": dict(feeds),
        "role": role,
        "replicas": list(replicas),
        "aliases": list(aliases),
        "quarantined": reason is not None,
        "reason": reason,
    }


@dataclass
class Quarantined:
    id: str
    reason: str
    kind: str  # "checkpoint" | "journal" | "class" | "storage"
    cls: str | None = None
    role: str | None = None
    replicas: list[str] = field(default_factory=list)
    feeds: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    seq: int | None = None  # the checkpoint's, when it could be read
    since: float = field(default_factory=time.time)
    moved: bool = False  # files moved into objects/quarantine/<id>/

    @classmethod
    def from_record(cls, rec: dict[str, Any], reason: str, kind: str) -> Quarantined:
        """What an intact checkpoint record tells about the object."""
        return cls(
            str(rec.get("id")),
            reason,
            kind,
            cls=rec.get("class"),
            role=rec.get("role", "primary"),
            replicas=list(rec.get("replicas") or []),
            feeds=dict(rec.get("feeds") or {}),
            aliases=list(rec.get("aliases") or []),
            seq=rec.get("seq", 0),
        )

    def error(self, node: str) -> Unavailable:
        """What a call on the object is answered (protocol §8)."""
        return Unavailable(
            f"object {self.id} is quarantined on node {node}: {self.reason}",
            node=node,
            reason=self.reason,
        )

    def listing(self) -> dict[str, Any]:
        """The node control ``list`` entry (protocol §17)."""
        return list_entry(
            self.id, self.cls, self.feeds, self.role, self.replicas, self.aliases, self.reason
        )


class Quarantine:
    """The node's quarantined objects (thread-safe); ``changed`` counts changes
    so that the status manifest can be republished."""

    def __init__(self) -> None:
        self._items: dict[str, Quarantined] = {}
        self._lock = threading.Lock()
        self.changed = 0

    def add(self, q: Quarantined) -> None:
        with self._lock:
            self._items[q.id] = q
            self.changed += 1
        log.error(
            "object %s (%s) is QUARANTINED: %s; calls on it are answered 'unavailable'%s",
            q.id,
            q.cls or "class unknown",
            q.reason,
            f"; its files are in {QUARANTINE}/{q.id}/ (see 'continuum-node quarantine --help')"
            if q.moved
            else "",
        )

    def get(self, oid: str) -> Quarantined | None:
        return self._items.get(oid)

    def pop(self, oid: str) -> Quarantined | None:
        with self._lock:
            q = self._items.pop(oid, None)
            if q is not None:
                self.changed += 1
            return q

    def all(self) -> list[Quarantined]:
        with self._lock:
            return sorted(self._items.values(), key=lambda q: q.id)

    def __len__(self) -> int:
        return len(self._items)

    def status(self) -> list[dict[str, Any]]:
        """The status manifest's ``quarantined`` field (protocol §15)."""
        return [{"id": q.id, "reason": q.reason} for q in self.all()]


def move_aside(objects: Path, q: Quarantined, files: dict[str, Path]) -> None:
    """Move an object's damaged files (name in the folder -> current path) into
    ``objects/quarantine/<id>/`` with its reason. An older quarantine folder of
    the same id is archived first."""
    folder = objects / QUARANTINE / q.id
    if folder.exists():
        archive(objects, folder, "superseded")
    folder.mkdir(parents=True)
    q.moved = True
    # the reason first: a crash midway leaves the object listed, never hidden
    _write_synced(folder / REASON, json.dumps(asdict(q), indent=1).encode())
    for name, path in files.items():
        if path.exists():
            os.replace(path, folder / name)
    fsync_path(folder)
    fsync_path(folder.parent)
    fsync_path(objects)


def load_quarantined(objects: Path) -> list[Quarantined]:
    """The objects quarantined on disk by earlier runs."""
    out = []
    for reason in sorted((objects / QUARANTINE).glob(f"*/{REASON}")):
        try:
            fields = json.loads(reason.read_text())
            out.append(Quarantined(**fields))
        except (OSError, ValueError, TypeError) as exc:
            oid = reason.parent.name
            log.error("cannot read %s: %s", reason, exc)
            out.append(Quarantined(oid, f"unreadable quarantine record: {exc}", "checkpoint"))
    return out


def archive(objects: Path, path: Path, why: str) -> Path:
    """Move a file or folder into ``objects/damaged/`` under a new unique name."""
    damaged = objects / DAMAGED
    damaged.mkdir(exist_ok=True)
    dest = damaged / f"{path.name}.{stamp()}.{why}"
    os.replace(path, dest)
    fsync_path(damaged)
    return dest


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f".{time.time_ns() % 1_000_000_000:09d}"


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
