"""Payload codec: CBOR by default, JSON when the message says so.

Decoding is for untrusted input: bounded nesting, no regular-expression or
MIME tag decoding, and never pickle. Every failure is a :class:`BadRequest`.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from ._errors import BadRequest, UnencodableResult

__all__ = ["CBOR", "JSON", "decode", "encode", "is_json"]

CBOR = "application/cbor"
JSON = "application/json"

MAX_DEPTH = 64


def _keep_tag(tag: int) -> Any:
    def keep(value: Any, immutable: bool) -> cbor2.CBORTag:
        return cbor2.CBORTag(tag, value)

    return keep


# Tags whose built-in decoders do work an attacker can steer (compiling a
# regular expression, parsing a MIME message, huge exponents) come back as raw
# CBORTag values.
# Decimal fractions and bigfloats (tags 4, 5) too: 13 bytes make
# Decimal("1E+10000000"), whose int() takes hours; and shared values and string
# references (28, 29, 25, 256): a few hundred bytes can describe a structure
# with 2**39 leaves, which takes forever to encode again.
_SEMANTIC_OVERRIDES = {tag: _keep_tag(tag) for tag in (4, 5, 25, 28, 29, 35, 36, 256)}


def is_json(payload: bytes | bytearray, content_type: str | None) -> bool:
    """JSON when the Content Type says so, or when a payload without one starts with
    ``{`` (a CBOR request is a map, whose first byte is never ``{``)."""
    if content_type:
        return content_type.split(";", 1)[0].strip().lower() == JSON
    return payload[:1] == b"{"


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (the CBOR decoder bounds its own)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, list | dict):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def decode(payload: bytes | bytearray, json_payload: bool = False) -> Any:
    try:
        if json_payload:
            value = json.loads(payload)
            if _depth(value) > MAX_DEPTH:
                raise BadRequest(f"payload nested deeper than {MAX_DEPTH} levels")
            return value
        return cbor2.loads(payload, semantic_decoders=_SEMANTIC_OVERRIDES, max_depth=MAX_DEPTH)
    except RecursionError as exc:
        raise BadRequest("payload nested too deeply") from exc
    except (
        cbor2.CBORDecodeError,
        ValueError,
        TypeError,
        LookupError,
        OverflowError,
        MemoryError,
    ) as exc:
        kind = "JSON" if json_payload else "CBOR"
        raise BadRequest(f"malformed {kind} payload: {exc}") from exc


def encode(value: Any, json_payload: bool = False) -> bytes:
    """CBOR, or strict JSON (RFC 8259) with ``json_payload``: NaN and the
    infinities have no JSON form (Python's bare ``NaN``/``Infinity`` tokens break
    standard parsers), so a value holding one is unencodable in JSON, like bytes
    (docs/protocol.md §10); CBOR carries them."""
    try:
        if json_payload:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        kind = " as JSON" if json_payload else ""
        raise UnencodableResult(f"cannot encode {type(value).__name__}{kind}: {exc}") from exc
