"""The checkpoint file format: a checked header, then the cloudpickled record.

::

    magic  b"CNCK"         4 bytes
    version 1              2 bytes, big-endian
    length                 8 bytes, big-endian: bytes of the body that follows
    crc32 of the body      4 bytes, big-endian
    body                   cloudpickle of the object's record

A 0-byte, truncated, extended or bit-flipped file is refused by :func:`unpack`
before anything is unpickled. Files written before this format (a bare
cloudpickle, starting with the pickle protocol opcode) are still read, once,
with a warning; the next checkpoint rewrites them framed.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["CheckpointDamaged", "pack", "unpack"]

MAGIC = b"CNCK"
VERSION = 1
_HEADER = struct.Struct(">4sHQI")
_LEGACY = b"\x80"  # pickle PROTO opcode: a checkpoint from before the header


class CheckpointDamaged(Exception):
    """The checkpoint's bytes are not what was written (reason in the message)."""


def pack(body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, len(body), zlib.crc32(body)) + body


def unpack(data: bytes) -> tuple[bytes, bool]:
    """The body of a checkpoint file, and whether it is a legacy (unchecked) one.
    Raises CheckpointDamaged when the file cannot be trusted."""
    if not data:
        raise CheckpointDamaged("the checkpoint is empty (0 bytes)")
    if not data.startswith(MAGIC):
        if data.startswith(_LEGACY):
            return data, True
        raise CheckpointDamaged("the checkpoint has no valid header (bad magic)")
    if len(data) < _HEADER.size:
        raise CheckpointDamaged(f"the checkpoint header is truncated ({len(data)} bytes)")
    _, version, length, crc = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CheckpointDamaged(f"unknown checkpoint format version {version}")
    body = data[_HEADER.size :]
    if len(body) != length:
        raise CheckpointDamaged(
            f"the checkpoint is {'truncated' if len(body) < length else 'longer than written'}"
            f" ({len(body)} of {length} body bytes)"
        )
    if zlib.crc32(body) != crc:
        raise CheckpointDamaged("the checkpoint fails its checksum (crc32)")
    return body, False
