"""The agent's state directory: made and checked, and its outbox opened,
before anything else starts (at start and on a reload to a new directory)."""

from __future__ import annotations

import errno
import os

from ._outbox import Outbox, OutboxError

__all__ = ["OUTBOX_FILE", "StateError", "open_outbox"]

OUTBOX_FILE = "outbox.sqlite"
# errors of a full or failing file system: may work later (a restart retries)
_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


class StateError(Exception):
    """``state_dir`` or its outbox cannot be used; the message says why and
    what to do. ``transient``: the file system is full or failing."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _fail(state_dir: str, what: str, exc: OSError) -> StateError:
    return StateError(
        f"state_dir {state_dir}: {what}: {exc.strerror or exc}",
        transient=exc.errno in _TRANSIENT,
    )


def _check_dir(state_dir: str) -> None:
    if os.path.lexists(state_dir) and not os.path.isdir(state_dir):
        raise StateError(f"state_dir {state_dir}: exists and is not a directory")
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        raise _fail(state_dir, "cannot create it", exc) from None
    probe = os.path.join(state_dir, f".probe-{os.getpid()}")
    try:  # an empty file: needs no free space, only write permission
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise _fail(state_dir, "not writable", exc) from None


def open_outbox(state_dir: str) -> Outbox:
    """The outbox in ``state_dir`` (made if need be); raises :class:`StateError`."""
    _check_dir(state_dir)
    path = os.path.join(state_dir, OUTBOX_FILE)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise StateError(f"{path}: not a regular file; move it aside")
    try:
        return Outbox(path)
    except OutboxError as exc:
        raise StateError(str(exc), transient=exc.transient) from None
