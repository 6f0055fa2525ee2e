"""``<state_dir>/status.json``: what ``edgeagent status`` reads.

Written atomically (a temporary file renamed over it) and padded to whole
blocks, so that on a full file system, where the temporary file cannot be
written, the agent can still overwrite the file in place: its blocks are
already allocated. A reader may then, rarely, see a torn file; it reads again.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["BLOCK", "read_status", "write_status"]

BLOCK = 4096


def _encode(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, indent=1, default=repr).encode()
    return data + b" " * (-(len(data) + 1) % BLOCK) + b"\n"


def write_status(path: str, body: dict[str, Any]) -> None:
    """Replace the file at ``path``; raises OSError when neither way worked."""
    data = _encode(body)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    fd = os.open(path, os.O_WRONLY)  # in place, over blocks the file already has
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            raise OSError(28, "No space left on device", path)
        os.pwrite(fd, data.ljust(size), 0)
    finally:
        os.close(fd)


def read_status(path: str, tries: int = 3) -> dict[str, Any]:
    """The status at ``path``; raises OSError or ValueError."""
    for attempt in range(tries):
        try:
            with open(path, encoding="utf-8") as fh:
                body = json.load(fh)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            return body
        except ValueError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)  # overwritten in place just now (full disk): read again
    raise AssertionError("unreachable")  # pragma: no cover
