"""``continuum-node quarantine``: the way out of a quarantine, node stopped.

``list``     what is quarantined in a state dir, and why.
``release``  put an object back in service:
             - journal damaged in the middle: keep the checkpoint and the
               journal's valid prefix (the calls before the damage); the rest of
               the journal is kept in ``objects/damaged/`` for inspection;
             - checkpoint damaged: only with ``--checkpoint FILE``, a replacement
               (e.g. from a backup of the state dir); checked before use.
``drop``     give the object up: its files go to ``objects/damaged/``; then
             delete it through the gateway so the directory forgets it too.

Each refuses while a node runs on the state dir (the node holds a lock on it),
and nothing is ever deleted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from continuum_mqtt.service import fsync_path

from . import _checkpoint, _journal
from ._quarantine import (
    QUARANTINE,
    REASON,
    Quarantined,
    archive,
    load_quarantined,
)
from ._store import StateDirInUse, lock_state_dir

__all__ = ["drop", "main", "release"]


class RepairError(Exception):
    """The operation cannot be done as asked (message says why)."""


def release(state_dir: str | os.PathLike[str], oid: str, checkpoint: str | None = None) -> str:
    objects = Path(state_dir) / "objects"
    q, folder = _find(objects, oid)
    dest = objects / f"{oid}.snapshot"
    if dest.exists():
        raise RepairError(f"{dest} exists: the node already holds an object {oid}")
    lock = lock_state_dir(objects)
    try:
        if checkpoint is not None:
            data = _checked(Path(checkpoint).read_bytes(), checkpoint)
            _write_synced(dest, data)
            what = f"replacement checkpoint {checkpoint}"
        elif q.kind == "journal":
            data = _checked((folder / "snapshot").read_bytes(), "its checkpoint")
            journal = folder / "journal"
            raw = journal.read_bytes() if journal.exists() else b""
            end, calls = _journal.replayable(_journal.scan(raw), q.seq or 0)
            _write_synced(objects / f"{oid}.journal", raw[:end])
            _write_synced(dest, data)
            what = (
                f"its checkpoint (seq {q.seq}) and the {calls} call(s) journaled before the"
                f" damage; {len(raw) - end} journal byte(s) after it not replayed"
            )
        else:
            raise RepairError(
                f"{oid}: {q.reason}. Its checkpoint cannot be trusted: give a replacement"
                " with --checkpoint FILE, or 'drop' the object"
            )
        kept = archive(objects, folder, "released")
    finally:
        os.close(lock)
    return f"released {oid} with {what}; the quarantined files are kept in {kept}"


def drop(state_dir: str | os.PathLike[str], oid: str) -> str:
    objects = Path(state_dir) / "objects"
    _, folder = _find(objects, oid)
    lock = lock_state_dir(objects)
    try:
        kept = archive(objects, folder, "dropped")
    finally:
        os.close(lock)
    return (
        f"dropped {oid}: the node will no longer hold it (files kept in {kept});"
        f" delete it through the gateway too, e.g. 'continuum delete {oid}'"
    )


def _find(objects: Path, oid: str) -> tuple[Quarantined, Path]:
    folder = objects / QUARANTINE / oid
    if "/" in oid or oid.startswith(".") or not (folder / REASON).is_file():
        raise RepairError(f"no quarantined object {oid!r} in {objects}")
    found = [q for q in load_quarantined(objects) if q.id == oid]
    return found[0], folder


def _checked(data: bytes, what: str) -> bytes:
    try:
        _checkpoint.unpack(data)
    except _checkpoint.CheckpointDamaged as exc:
        raise RepairError(f"{what}: {exc}") from None
    return data


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".repair")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum-node quarantine",
        description="Inspect and resolve quarantined objects of a durable node's state dir."
        " Stop the node first; start it again afterwards.",
    )
    sub = p.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "list the quarantined objects and why"),
        ("release", "put an object back: checkpoint + the journal's valid prefix"),
        ("drop", "give an object up (files kept in objects/damaged/)"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--state-dir", required=True, help="the node's --state-dir")
        if name != "list":
            s.add_argument("obj", help="object id")
        if name == "release":
            s.add_argument(
                "--checkpoint", metavar="FILE", help="a replacement checkpoint (from a backup)"
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "list":
            for q in load_quarantined(Path(args.state_dir) / "objects"):
                print(f"{q.id}\t{q.kind}\t{q.cls or '-'}\t{q.reason}")
            return 0
        if args.action == "release":
            print(release(args.state_dir, args.obj, args.checkpoint))
        else:
            print(drop(args.state_dir, args.obj))
    except (RepairError, StateDirInUse, OSError) as exc:
        print(f"continuum-node quarantine: {exc}", file=sys.stderr)
        return 2
    return 0
