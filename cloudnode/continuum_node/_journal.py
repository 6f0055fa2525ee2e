"""The journal file format, and how a journal is read back and judged.

A journal is a sequence of frames, one per journaled call::

    length of the body    4 bytes, big-endian
    crc32 of the body     4 bytes, big-endian
    body                  CBOR map {"seq", "method", "args", "kwargs", "rid", "ok", "value"}

Reading stops at the first frame that is not intact. What follows decides
what that damage is (:func:`scan`):

* **torn tail**: nothing valid comes after it (an incomplete header, an
  incomplete body, or a last frame failing its checksum). A crash while
  appending leaves this; the call was never acknowledged (the node replies
  only after the append is fsynced). The node cuts it off before appending
  anything new.
* **corrupt**: a valid frame follows the damage (so calls after it were
  acknowledged), or a frame passes its checksum but is not a journal entry
  (not a torn write: a bug or a foreign file). Replaying the prefix alone
  would silently roll the object back, so the node quarantines it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import decode

__all__ = ["Scan", "frame", "replayable", "scan", "since"]

_FRAME = struct.Struct(">II")  # length, crc32 of the body


def frame(body: bytes) -> bytes:
    """The bytes appended to a journal for one encoded entry."""
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


@dataclass
class Scan:
    """What a journal holds: the entries of its valid prefix, where that prefix
    ends, and what comes after it (``problem``: None, "torn" or "corrupt")."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # where each entry's frame ends
    good_end: int = 0
    size: int = 0
    problem: str | None = None
    detail: str = ""

    @property
    def index(self) -> int:
        """The 1-based position of the first bad entry."""
        return len(self.entries) + 1


def scan(data: bytes) -> Scan:
    out = Scan(size=len(data))
    pos = 0
    while pos < len(data):
        entry, end, why = _frame_at(data, pos)
        if entry is None:
            out.good_end = pos
            if why.startswith("entry"):  # intact bytes that are not an entry: never torn
                out.problem = "corrupt"
                out.detail = f"{why} at byte {pos}"
            elif _valid_frame_after(data, pos, end):
                out.problem = "corrupt"
                out.detail = f"{why} at byte {pos}, with valid entries after it"
            else:
                out.problem = "torn"
                out.detail = f"{why} at byte {pos}, the last {len(data) - pos} byte(s)"
            return out
        out.entries.append(entry)
        out.ends.append(end)
        pos = end
    out.good_end = pos
    return out


def since(entries: list[dict[str, Any]], seq: int) -> tuple[list[dict[str, Any]], str | None]:
    """The entries after checkpoint ``seq`` (earlier ones are already in it: a
    crash between a checkpoint and the journal's truncation leaves them), and
    a problem when their sequence numbers are not consecutive."""
    later = [e for e in entries if e["seq"] > seq]
    want = seq + 1
    for e in later:
        if e["seq"] != want:
            return later, f"the journal skips from seq {want - 1} to {e['seq']}"
        want += 1
    return later, None


def replayable(found: Scan, seq: int) -> tuple[int, int]:
    """The bytes of the longest prefix that replays cleanly after checkpoint
    ``seq``, and how many calls it holds (the way out of a quarantine)."""
    end, want = 0, seq + 1
    for entry, stop in zip(found.entries, found.ends, strict=True):
        if entry["seq"] > seq:
            if entry["seq"] != want:
                break
            want += 1
        end = stop
    return end, want - seq - 1


def _frame_at(data: bytes, pos: int) -> tuple[dict[str, Any] | None, int, str]:
    """The entry at ``pos`` and where the next frame starts, or None, the end of
    the damaged frame as far as its header tells, and what is wrong."""
    rest = len(data) - pos
    if rest < _FRAME.size:
        return None, len(data), f"an incomplete entry header ({rest} of {_FRAME.size} bytes)"
    length, crc = _FRAME.unpack_from(data, pos)
    start = pos + _FRAME.size
    if length == 0:  # never written (an entry is a non-empty map): zeros from a crash?
        return None, start, "an empty entry"
    if length > len(data) - start:
        return None, len(data), f"an incomplete entry ({len(data) - start} of {length} bytes)"
    body = data[start : start + length]
    if zlib.crc32(body) != crc:
        return None, start + length, "an entry failing its checksum"
    try:
        entry = decode(body)
    except ContinuumError as exc:
        return None, start + length, f"entry passes its checksum but cannot be decoded ({exc})"
    if not isinstance(entry, dict) or not _is_seq(entry.get("seq")):
        return None, start + length, "entry passes its checksum but is not a journal entry"
    return entry, start + length, ""


def _valid_frame_after(data: bytes, pos: int, end: int) -> bool:
    """Whether an intact entry starts anywhere after the damaged frame at ``pos``:
    first where its header says the next one starts, then at every byte (the
    header itself may be what is damaged)."""
    if pos < end < len(data) and _frame_at(data, end)[0] is not None:
        return True
    for p in range(pos + 1, len(data) - _FRAME.size):
        length = int.from_bytes(data[p : p + 4], "big")
        if length == 0 or p + _FRAME.size + length > len(data):
            continue
        if not 0xA0 <= data[p + _FRAME.size] <= 0xBF:  # a CBOR map starts every entry
            continue
        if _frame_at(data, p)[0] is not None:
            return True
    return False


def _is_seq(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
