"""Fuzzing the inbound handlers of node and gateway: hypothesis strategies, the
filters for bugs already known, and a pipelined MQTT 5 driver.

Shared by ``tests/test_fuzz.py`` (a small, derandomized sample per handler) and
``bench/fuzz.py`` (>= 10,000 cases per handler, outcome histograms, RSS); both
start what they fuzz with :func:`open_target`.

A *case* is one MQTT message: a topic (the handler's, or a malformed one near
it), a payload, MQTT 5 properties (Content Type, Response Topic, Correlation
Data) and the retain flag. The :class:`Fuzzer` publishes cases with a Response
Topic under ``<root>/reply/<fuzzer id>/<handler>`` and one Correlation Data
each, many in flight, and classifies what comes back:

* ``result`` / ``progress+result``: a valid result envelope;
* ``error:<code>``: a structured error envelope with a documented code
  (``error:method_error/<remote type>`` keeps the remote exception's type);
* ``no_reply``: nothing came (a failure where the protocol requires a reply);
* ``BAD:<why>``: anything else (an undecodable or unstructured reply, a wrong
  request id, a reply in the wrong encoding, a reply where none may come).

Known bugs: inputs that trigger a bug already reported are recognised by
:func:`known_bug` and skipped (counted as ``skipped:<bug id>``), so that the
fuzz keeps exploring the rest of the input space instead of killing the
services on every run. Set ``CONTINUUM_FUZZ_KNOWN_BUGS=1`` to send them anyway.
``tests/test_fuzz.py`` has one strict-xfail reproducer per bug: when a bug is
fixed its reproducer passes, the xfail fails, and the filter here goes.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter as Histogram
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import paho.mqtt.client as paho
from continuum_dev.testing import Deployment
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from continuum_mqtt._codec import JSON, decode, is_json
from continuum_mqtt._errors import ContinuumError
from continuum_mqtt._protocol import Topics

__all__ = [
    "COUNTER",
    "DOCUMENTED_CODES",
    "GATEWAY_MAX_PAYLOAD",
    "HANDLERS",
    "JSON",
    "NODE_MAX_PAYLOAD",
    "SINK",
    "Case",
    "Ctx",
    "Fuzzer",
    "broker_rejects",
    "cases_for",
    "known_bug",
    "open_target",
    "unacked_deliveries",
]

COUNTER = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"
NODE_MAX_PAYLOAD = 65536  # the fuzz cluster's node runs with --max-payload 65536
GATEWAY_MAX_PAYLOAD = 1024 * 1024  # the gateway's fixed limit

# The stable wire codes of continuum_mqtt._errors (method_error: RemoteError).
DOCUMENTED_CODES = frozenset(
    {
        "bad_request",
        "payload_too_large",
        "unknown_object",
        "object_not_here",
        "unknown_class",
        "unknown_method",
        "method_not_active",
        "bad_arguments",
        "unencodable_result",
        "deadline_expired",
        "busy",
        "unavailable",
        "no_node",
        "alias_taken",
        "not_connected",
        "method_error",
        "cancelled",
        "forbidden",
        "quota_exceeded",
    }
)

# handler -> does the protocol require a reply to a request on its topic?
HANDLERS: dict[str, bool] = {
    "node_call": True,
    "node_ctl": True,
    "node_feed": False,
    "gateway_call": True,
    "node_status": False,  # <root>/node/+/status: gateway, nodes and clients
    "client_reply": False,
    "node_reply": False,
    "gateway_reply": False,
    "node_sync": True,
}

KNOWN_BUGS_ON = os.environ.get("CONTINUUM_FUZZ_KNOWN_BUGS", "") not in ("", "0")


# -- the context a run fuzzes ---------------------------------------------------------------
@dataclass(frozen=True)
class Ctx:
    """Names the strategies aim at: real objects make the deeper paths reachable."""

    root: str
    reply_prefix: str  # <root>/reply/<fuzzer id>
    node: str = "n1"
    counter: str = ""  # a Counter the node-call fuzz calls
    victim: str = ""  # a Counter that node-ctl / gateway fuzz may bind, promote, delete
    alias: str = ""  # the victim's alias
    sink: str = ""  # a SampleSink fed by ``device``
    device: str = ""
    client_reply: str = ""  # the reply topic of a live continuum_mqtt.Client

    @property
    def topics(self) -> Topics:
        return Topics(self.root)

    def handler_topic(self, handler: str) -> str:
        t = self.topics
        return {
            "node_call": t.node_call(self.node),
            "node_ctl": t.node_ctl(self.node),
            "node_sync": t.node_sync(self.node),
            "node_feed": t.metrics(self.device or "fuzz-device"),
            "gateway_call": t.gateway_call,
            "node_status": t.node_status("{n}"),
            "client_reply": self.client_reply or t.reply("fuzz-client"),
            "node_reply": t.reply(f"node-{self.node}"),
            "gateway_reply": t.reply("gw-gateway"),
        }[handler]

    def limit(self, handler: str) -> int:
        return GATEWAY_MAX_PAYLOAD if handler == "gateway_call" else NODE_MAX_PAYLOAD


# -- a case ------------------------------------------------------------------------------------
@dataclass
class Case:
    """One message. ``topic`` may hold ``{n}``: the driver puts a per-case unique
    token there (junk node ids on status topics never repeat)."""

    family: str
    topic: str
    payload: bytes
    content_type: str | None = None
    response_topic: bool = True
    retain: bool = False
    note: str = ""
    correlation: bytes | None = None  # sent instead of the driver's (reply-topic fuzz)

    def __repr__(self) -> str:
        p = self.payload
        shown = p.hex() if len(p) <= 256 else f"{p[:96].hex()}...{p[-32:].hex()}"
        extra = f", content_type={self.content_type!r}" if self.content_type else ""
        extra += "" if self.response_topic else ", response_topic=False"
        extra += ", retain=True" if self.retain else ""
        extra += f", note={self.note!r}" if self.note else ""
        extra += f", correlation={self.correlation!r}" if self.correlation is not None else ""
        return (
            f"Case({self.family}, topic={_short(self.topic)!r}, {len(p)} bytes "
            f"payload=bytes.fromhex({shown!r}){extra})"
        )

    def reproducer(self) -> dict[str, Any]:
        p = self.payload
        return {
            "family": self.family,
            "topic": _short(self.topic, 300),
            "payload_len": len(p),
            "payload_hex": p.hex() if len(p) <= 2048 else p[:1024].hex() + "...",
            "payload_repr": _describe(p, self.content_type),
            "content_type": self.content_type,
            "response_topic": self.response_topic,
            "retain": self.retain,
            "note": self.note,
            "correlation_hex": None if self.correlation is None else self.correlation.hex(),
        }


def _short(s: str, n: int = 160) -> str:
    return s if len(s) <= n else f"{s[: n // 2]}...<{len(s)} chars>...{s[-n // 4 :]}"


def _describe(payload: bytes, content_type: str | None) -> str:
    try:
        value = decode(payload, is_json(payload, content_type))
    except ContinuumError as exc:
        return f"<undecodable: {str(exc)[:120]}>"
    try:
        text = repr(value)
    except Exception as exc:  # a huge int: repr refuses > 4300 digits
        text = f"<{type(value).__name__}: repr failed: {exc}>"
    return text if len(text) <= 600 else text[:400] + f"...<{len(text)} chars>"


# -- what the broker refuses ---------------------------------------------------------------------
def _bad_char(c: str) -> bool:
    o = ord(c)
    return (
        o < 0x20
        or 0x7F <= o <= 0x9F
        or 0xD800 <= o <= 0xDFFF
        or 0xFDD0 <= o <= 0xFDEF
        or (o & 0xFFFE) == 0xFFFE
    )


def broker_rejects(topic: str) -> bool:
    """True when mosquitto drops the connection of a client that publishes to (or
    subscribes to) ``topic``: control characters, surrogates, noncharacters (MQTT
    5 section 1.5.4), or more than 65535 bytes (paho refuses those itself)."""
    if any(_bad_char(c) for c in topic):
        return True
    try:
        return len(topic.encode()) > 65535
    except UnicodeEncodeError:
        return True


# -- strategies: values ------------------------------------------------------------------------
SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
SEMANTIC_TAGS += (1004, 55799, 43000)

PRIVATE_NAMES = (
    "__init__",
    "__class__",
    "__reduce__",
    "__reduce_ex__",
    "__dict__",
    "__getattribute__",
    "__setattr__",
    "__delattr__",
    "__del__",
    "__new__",
    "__call__",
    "__subclasses__",
    "__init_subclass__",
    "__getstate__",
    "__setstate__",
    "__globals__",
    "__module__",
    "__active_methods__",
    "__continuum_stateless__",
    "_secret",
    "_Counter__value",
    "_remember",
    "_create",
    "_control",
    "_node_call",
    "_failover",
    "_serve",
    "_methods",
    "directory",
    "conn",
    "requester",
    "stop",
    "start",
    "manifest",
    "reset",
    "value",
    "seqs",
    "mro",
    "",
    " ",
    "add ",
    "ADD",
    "a.b",
    "add\x00",
)

_huge_ints = st.one_of(
    st.sampled_from([63, 64, 1024, 1330, 1400]).flatmap(
        lambda e: st.sampled_from([2**e, -(2**e) - 1, 10 ** (e // 3 + 1)])
    ),
    st.integers(0, 16000).map(lambda b: 2**b - 1),  # up to ~4800 digits: past str()'s limit
)
_text = st.one_of(
    st.text(max_size=24),
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(["", "\x00", "online", "offline", "result", "error", "progress"]),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**130), 2**130),
    _huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.binary(max_size=24),
    st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(100), cbor2.CBORSimpleValue(255)]),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.fractions(),
    st.uuids(),
    st.datetimes(timezones=st.just(datetime.UTC)),
    st.dates(),
    st.ip_addresses(),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
)
_keys = st.one_of(_text, st.integers(-5, 5), st.binary(max_size=4), st.none(), st.booleans())


def _tag_content(tag: int, children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plausible content for a semantic tag, or anything (mostly invalid)."""
    small = st.integers(-100, 100)
    plausible = {
        0: st.one_of(st.just("2020-01-01T00:00:00Z"), _text),
        1: st.one_of(st.integers(), st.floats()),
        2: st.binary(max_size=40),
        3: st.binary(max_size=40),
        4: st.lists(st.one_of(small, st.integers()), min_size=2, max_size=2),
        5: st.lists(small, min_size=2, max_size=2),
        25: st.integers(-2, 10),
        28: st.lists(children, max_size=3).map(lambda xs: [*xs, cbor2.CBORTag(29, 0)]),
        29: st.integers(-2, 10),
        30: st.lists(st.integers(), min_size=2, max_size=2),
        35: st.sampled_from(["(a+)+$", "(", "a{99999999}", "[", "(?P<x>"]),
        36: st.sampled_from(["Content-Type: text/plain\n\nhi", "", "\x00"]),
        37: st.binary(min_size=15, max_size=17),
        52: st.tuples(st.integers(0, 40), st.binary(max_size=5)).map(list),
        54: st.tuples(st.integers(0, 200), st.binary(max_size=17)).map(list),
        100: st.integers(),
        256: st.lists(st.one_of(_text, st.just(cbor2.CBORTag(25, 0))), max_size=3),
        258: st.lists(st.one_of(_scalars, children), max_size=4),
        260: st.binary(max_size=17),
        261: st.dictionaries(st.binary(max_size=17), st.integers(-1, 200), max_size=1),
        1004: st.one_of(st.just("2020-01-01"), _text),
    }.get(tag)
    return children if plausible is None else st.one_of(plausible, children)


def _tagged(children: st.SearchStrategy[Any]) -> st.SearchStrategy[cbor2.CBORTag]:
    tags = st.one_of(st.sampled_from(SEMANTIC_TAGS), st.integers(0, 2**64 - 1))
    return tags.flatmap(lambda t: _tag_content(t, children).map(lambda v: cbor2.CBORTag(t, v)))


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_keys, children, max_size=5),
        st.dictionaries(_text, children, max_size=5),
        _tagged(children),
    )


cbor_values: st.SearchStrategy[Any] = st.recursive(_scalars, _extend, max_leaves=12)
"""Random CBOR data items (anything cbor2 can encode), semantic tags with
content that is mostly wrong for them."""

valid_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda c: st.one_of(
        st.lists(c, max_size=5),
        st.dictionaries(_keys, c, max_size=5),
        st.dictionaries(_text, c, max_size=5),
        st.builds(cbor2.CBORTag, st.integers(1 << 16, 2**64 - 1), c),  # no decoder: kept
    ),
    max_leaves=12,
)
"""Data items that decode: what a well-meaning but careless client sends."""

json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        _huge_ints,
        st.floats(allow_nan=True, allow_infinity=True),
        _text,
        st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
    ),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_text, c, max_size=4)),
    max_leaves=10,
)


def weighted(*pairs: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, chosen with the given weights (hypothesis's one_of
    merges repeated branches, so repetition does not weigh)."""
    pool = [strategy for weight, strategy in pairs for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda i: pool[i])


def _encode_cbor(value: Any) -> bytes:
    try:
        return cbor2.dumps(value)
    except Exception:  # an unencodable corner (a naive datetime, ...): plain text instead
        return cbor2.dumps(repr(value)[:100])


_int_digits_lock = threading.Lock()


def _encode_json(value: Any) -> bytes:
    """JSON text, with integers past Python's 4300-digit str() limit written out
    in full (a peer that is not Python may send them)."""
    with _int_digits_lock:
        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)
        try:
            text = json.dumps(value, allow_nan=True)
        finally:
            sys.set_int_max_str_digits(limit)
    return text.encode("utf-8", "surrogatepass")


# -- strategies: payload families ------------------------------------------------------------------
def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Byte-level mutations: (op, position, byte) flip / insert / delete / truncate."""
    buf = bytearray(data)
    for op, pos, byte in ops:
        if not buf:
            buf.append(byte)
            continue
        i = pos % len(buf)
        if op == 0:
            buf[i] = byte
        elif op == 1:
            buf.insert(i, byte)
        elif op == 2:
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


_mutations = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4
)


def raw_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, and valid CBOR with bytes flipped, inserted, deleted or cut."""
    interesting = st.sampled_from(
        [
            b"",
            b"\x00",
            b"\xff",
            b"{",
            b"\x9f",
            b"\xbf",
            b"\x5f",
            b"\x7f",
            b"\xa1",
            b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # array of 2**64-1 items
            b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",  # 4 GiB byte string header
            b"\xd8\x1d\x00",  # shared reference before any shareable
            b"\xd9\x01\x00\x80",  # string-ref namespace, empty
            b"\xf8\x00",  # simple value 0 in two bytes (not well-formed)
            b"\x1c",  # reserved additional info
            b"\xfc\xfd\xfe",
        ]
    )
    return st.one_of(
        st.binary(max_size=64),
        interesting,
        st.builds(lambda v, ops: _mutate(_encode_cbor(v), ops), cbor_values, _mutations),
    )


def deep_payload(
    inner: bytes = b"\x01", prefix: bytes = b"", suffix: bytes = b""
) -> st.SearchStrategy[tuple[bytes, str | None, str]]:
    """Arrays, maps, tags and indefinite-length items nested 10..100000 deep, as
    CBOR or JSON (payload, content type, description)."""
    depth = st.one_of(
        st.integers(10, 100_000),
        st.sampled_from([63, 64, 65, 66, 127, 128, 400, 401, 998, 999, 1000, 1001, 5000]),
    )
    kind = st.sampled_from(
        [
            "array",
            "indef_array",
            "map",
            "indef_map",
            "tag",
            "mixed",
            "json_array",
            "json_object",
            "unclosed",
        ]
    )

    def build(d: int, k: str, seed: int) -> tuple[bytes, str | None, str]:
        note = f"{k} x{d}"
        if k == "array":
            body = b"\x81" * d + inner
        elif k == "indef_array":
            body = b"\x9f" * d + inner + b"\xff" * d
        elif k == "map":
            body = b"\xa1\x61a" * d + inner
        elif k == "indef_map":
            body = b"\xbf\x61a" * d + inner + b"\xff" * d
        elif k == "tag":
            body = b"\xc6" * d + inner  # tag 6: no decoder, a CBORTag per level
        elif k == "mixed":
            levels = [b"\x81", b"\xa1\x61a", b"\xc6", b"\xd8\x1e\x82\x01", b"\xd9\x01\x02\x81"]
            body = b"".join(levels[(seed + i * 7919) % len(levels)] for i in range(d)) + inner
        elif k == "unclosed":
            body = b"\x9f" * d + inner
        elif k == "json_array":
            return b"[" * d + b"1" + b"]" * d, JSON, note
        else:
            return b'{"a":' * d + b"1" + b"}" * d, JSON, note
        return prefix + body + suffix, None, note

    return st.builds(build, depth, kind, st.integers(0, 1000))


def _sized(template: Callable[[int], bytes], target: int) -> bytes:
    """``template(k)`` grows with ``k``; find ``k`` so the payload is ``target`` bytes
    (or as close as CBOR's length headers allow)."""
    k = max(0, target - len(template(0)))
    for _ in range(4):
        n = len(template(k))
        if n == target:
            break
        k = max(0, k + target - n)
    return template(k)


def huge_payload(
    limit: int, envelope: Callable[[bytes], dict[str, Any]]
) -> st.SearchStrategy[tuple[bytes, str | None, str]]:
    """Payloads just under, at and just over ``limit`` bytes (and some far over)."""
    delta = st.one_of(st.integers(-64, 64), st.sampled_from([-4096, -1, 0, 1, 4096, limit]))
    how = st.sampled_from(["cbor_bytes", "cbor_text", "json", "raw"])

    def build(d: int, h: str, fill: int) -> tuple[bytes, str | None, str]:
        target = max(1, limit + d)
        note = f"{h} {target} bytes (limit {limit})"
        if h == "cbor_bytes":
            return _sized(lambda k: cbor2.dumps(envelope(bytes([fill]) * k)), target), None, note
        if h == "cbor_text":
            return (
                _sized(lambda k: cbor2.dumps(envelope("x" * k)), target),
                None,
                note,
            )
        if h == "json":
            return (
                _sized(lambda k: json.dumps(envelope("y" * k)).encode(), target),
                JSON,
                note,
            )
        return bytes([fill]) * target, None, note

    return st.builds(build, delta, how, st.integers(0, 255))


def _topic_level() -> st.SearchStrategy[str]:
    """A topic level mosquitto accepts (no control characters, noncharacters, / + #)."""
    safe = st.characters(exclude_categories=("Cs", "Cc", "Cn"), exclude_characters="/+#")
    return st.one_of(
        st.text(safe, max_size=12),
        st.sampled_from(["", " ", "..", "$SYS", "n1", "N1", "call", "ctl", "status", "\u00e9"]),
        st.builds(lambda c, n: c * n, st.sampled_from("xé€😀"), st.integers(200, 20000)),
    )


def bad_topics(ctx: Ctx, handler: str) -> st.SearchStrategy[str]:
    """Topics near the handler's: extra, empty, long and unicode levels."""
    base = ctx.handler_topic(handler).replace("{n}", "fz-bad")
    levels = base.split("/")
    t = ctx.topics
    real = {t.node_status(ctx.node), t.gateway_status, t.node_status("fz-bad")}

    def build(op: int, i: int, level: str) -> str:
        parts = list(levels)
        i %= len(parts)
        if op == 0:
            parts.append(level)  # an extra level
        elif op == 1:
            parts[i] = level  # one level replaced
        elif op == 2:
            parts.insert(i, level)
        elif op == 3:
            parts.append("")  # trailing slash
        elif op == 4:
            parts[i] = ""  # an empty level
        elif op == 5:
            parts = parts[:-1] if len(parts) > 1 else parts  # one level short
        else:
            parts[-1] = parts[-1].upper()
        topic = "/".join(parts)
        if (
            topic == base
            or topic in real  # spoofing a live service's status is not junk
            or topic.startswith(t.reply_prefix)
            or topic.startswith("$")  # the broker's own tree: it refuses the publish
            or "{n}" in topic
        ):
            topic = base + "/x"
        while len(topic.encode()) > 65000:  # MQTT's limit is 65535 bytes
            topic = topic[: len(topic) * 3 // 4]
        return topic

    return st.builds(build, st.integers(0, 6), st.integers(0, 20), _topic_level())


# -- strategies: request envelopes -----------------------------------------------------------------
def _names(pool: list[str]) -> st.SearchStrategy[str]:
    return weighted((6, st.sampled_from(pool)), (2, st.sampled_from(PRIVATE_NAMES)), (1, _text))


def _maybe_wrong(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return weighted((7, right), (1, valid_values))


def _kwargs(params: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments with text keys: the method's parameters, and junk names."""
    named = st.fixed_dictionaries({}, optional=params) if params else st.just({})
    junk = st.dictionaries(
        st.one_of(_text, st.sampled_from(PRIVATE_NAMES)), valid_values, max_size=2
    )
    return st.one_of(named, named, st.builds(lambda a, b: {**b, **a}, named, junk))


def _reply_to(ctx: Ctx) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda s: f"{ctx.reply_prefix}/body/{s}", _topic_level()),
        st.builds(lambda s: f"{ctx.reply_prefix}/body/{s}", _text),  # may hold any character
        st.sampled_from([f"{ctx.root}/node/{ctx.node}/status", f"{ctx.reply_prefix}/+", "x"]),
    )


def envelope(
    ctx: Ctx,
    methods: list[str],
    params: dict[str, st.SearchStrategy[Any]],
    obj: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[dict[Any, Any]]:
    """Request maps: well-typed fields with random values (most, so the cases get
    past decoding into lookup, argument binding and the methods), one field of a
    wrong type, or every field random; plus unknown fields."""
    typed: dict[Any, st.SearchStrategy[Any]] = {
        "args": st.lists(valid_values, max_size=4),
        "kwargs": _kwargs(params),
        "id": st.one_of(st.text(max_size=12), st.uuids().map(str)),
        "timeout_ms": st.one_of(
            st.integers(1000, 60_000),
            st.integers(-10, 10),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        "reply_to": _reply_to(ctx),
    }
    if obj is not None:
        typed["obj"] = obj
    method = _names(methods)
    required = {"method": method}
    if obj is not None:
        required["obj"] = typed.pop("obj")
    good = st.fixed_dictionaries(required, optional=typed)
    names = sorted([*required, *typed])
    one_wrong = st.builds(lambda d, k, v: {**d, k: v}, good, st.sampled_from(names), cbor_values)
    one_missing = st.builds(
        lambda d, k: {x: v for x, v in d.items() if x != k}, good, st.sampled_from(sorted(required))
    )
    anything = st.fixed_dictionaries(
        {}, optional={k: st.one_of(cbor_values, v) for k, v in {**required, **typed}.items()}
    )
    extra = st.dictionaries(st.one_of(_text, _keys), cbor_values, min_size=1, max_size=2)
    return weighted(
        (14, good),
        (2, st.builds(lambda a, b: {**b, **a}, good, extra)),
        (2, one_wrong),
        (1, one_missing),
        (1, anything),
    )


_CALL_METHODS = ["add", "get", "echo", "fail", "unencodable", "slow", "count_to", "ingest"]
_CTL_METHODS = ["create", "delete", "bind", "unbind", "promote", "list", "sync"]
_GW_METHODS = [
    "create",
    "resolve",
    "alias",
    "unalias",
    "delete",
    "bind",
    "unbind",
    "nodes",
    "classes",
    "objects",
]


def _tame(body: Any) -> Any:
    """``slow`` and ``count_to`` do what they are told (sleep for a day, count to a
    billion): application-level denial of service, not the middleware's. Their
    arguments are bounded so the fuzz measures the middleware."""
    if isinstance(body, dict) and body.get("method") in ("slow", "count_to"):
        body = dict(body)
        if body["method"] == "slow":
            body["args"], body["kwargs"] = [0.001], {}
        else:
            body["args"], body["kwargs"] = [3], {}
    return body


def call_envelopes(ctx: Ctx) -> st.SearchStrategy[Any]:
    obj = _maybe_wrong(st.sampled_from([ctx.counter, ctx.counter, ctx.sink, uuid.uuid4().hex, ""]))
    params = {
        "n": valid_values,
        "data": valid_values,
        "message": valid_values,
        "sample": st.one_of(sample_maps(), valid_values),
    }
    return envelope(ctx, _CALL_METHODS, params, obj).map(_tame)


def ctl_envelopes(ctx: Ctx) -> st.SearchStrategy[Any]:
    objs = st.one_of(st.sampled_from([ctx.victim, "fz-" + uuid.uuid4().hex[:8]]), _text)
    topics = st.one_of(
        st.builds(lambda d: f"{ctx.root}/dev/{d}/metrics", _topic_level()),
        st.builds(lambda d: f"{ctx.root}/dev/{d}/metrics", _text),  # may hold anything
        _text,
        valid_values,
    )
    params = {
        "obj": _maybe_wrong(objs),
        "cls": _maybe_wrong(st.sampled_from([COUNTER, SINK, "os.system", "builtins.eval", ""])),
        "args": st.one_of(st.lists(valid_values, max_size=3), valid_values),
        "kwargs": st.one_of(st.dictionaries(_text, valid_values, max_size=3), valid_values),
        "replicas": st.one_of(st.lists(_text, max_size=3), valid_values),
        "topic": topics,
        "method": _maybe_wrong(_names(["add", "get", "ingest"])),
        "state": st.one_of(st.binary(max_size=32).map(lambda b: b"\x00" + b), valid_values),
        "primary": _text,
    }
    return envelope(ctx, _CTL_METHODS, params)


def sync_envelopes(ctx: Ctx) -> st.SearchStrategy[Any]:
    """Node-to-node syncs. ``state`` is never a valid pickle (it starts with NUL):
    the sync topic unpickles what it gets (see the report), so random bytes
    that happen to be a pickle could run code."""
    params = {
        "obj": _maybe_wrong(st.sampled_from([ctx.victim, "fz-sync", ""])),
        "cls": _maybe_wrong(st.sampled_from([COUNTER, SINK, "x"])),
        "state": st.one_of(st.binary(max_size=64).map(lambda b: b"\x00" + b), valid_values),
        "primary": _text,
    }
    body = envelope(ctx, ["sync"], params)
    return body.map(_no_pickles)


def _not_a_pickle(pad: Any) -> Any:
    return b"\x00" + pad if isinstance(pad, bytes) else pad


def _no_pickles(body: Any) -> Any:
    if isinstance(body, dict):
        kw = body.get("kwargs")
        if isinstance(kw, dict) and isinstance(kw.get("state"), bytes | bytearray):
            kw = {**kw, "state": b"\x00" + bytes(kw["state"])}
            body = {**body, "kwargs": kw}
    return body


def gateway_envelopes(ctx: Ctx) -> st.SearchStrategy[Any]:
    refs = st.one_of(st.sampled_from([ctx.victim, ctx.alias, uuid.uuid4().hex]), _text)
    params = {
        "cls": _maybe_wrong(st.sampled_from([COUNTER, SINK, "os.system", ""])),
        "args": st.one_of(st.lists(valid_values, max_size=3), valid_values),
        "kwargs": st.one_of(st.dictionaries(_text, valid_values, max_size=3), valid_values),
        "node": _maybe_wrong(st.sampled_from([ctx.node, "nope", ""])),
        "alias": _maybe_wrong(_text),
        "replicas": st.one_of(st.integers(-2, 3), valid_values),
        "ref": _maybe_wrong(refs),
        "name": _maybe_wrong(_text),
        "device": _maybe_wrong(st.one_of(_topic_level(), _text)),
        "method": _maybe_wrong(_names(["add", "get", "ingest"])),
    }
    return envelope(ctx, _GW_METHODS, params)


def status_maps() -> st.SearchStrategy[Any]:
    """What a node's retained status looks like, with wrong types."""
    desc = st.fixed_dictionaries(
        {},
        optional={
            "doc": _text,
            "stateless": st.booleans(),
            "methods": st.dictionaries(_text, st.dictionaries(_text, valid_values, max_size=2)),
        },
    )
    classes = st.one_of(
        st.dictionaries(st.sampled_from([COUNTER, SINK, "x.Y"]), desc, max_size=2),
        valid_values,
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "state": st.one_of(st.sampled_from(["online", "offline", "ONLINE", ""]), valid_values),
            "node": _text,
            "protocol": st.one_of(st.integers(-1, 3), valid_values),
            "host": _text,
            "pid": st.one_of(st.integers(), valid_values),
            "started": st.one_of(st.floats(), valid_values),
            "max_payload": st.one_of(st.integers(), valid_values),
            "classes": classes,
        },
    )


def reply_maps(ctx: Ctx) -> st.SearchStrategy[Any]:
    """Reply envelopes that match no call in flight (ids and correlation never do)."""
    ids = st.one_of(
        st.builds(
            lambda n: f"{ctx.client_reply.rsplit('/', 1)[-1]}:{n}", st.integers(10**9, 10**12)
        ),
        st.just(None),
        _text,
        valid_values,
    )
    error = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "code": st.one_of(st.sampled_from(sorted(DOCUMENTED_CODES)), valid_values),
                "type": valid_values,
                "message": valid_values,
                "traceback": valid_values,
                "remote_type": valid_values,
                "node": valid_values,
            },
        ),
        st.dictionaries(_keys, valid_values, max_size=3),
        valid_values,
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "id": ids,
            "kind": st.one_of(st.sampled_from(["result", "error", "progress", "x"]), valid_values),
            "value": valid_values,
            "seq": valid_values,
            "error": error,
        },
    )


def sample_maps() -> st.SearchStrategy[Any]:
    """Device metrics samples with wrong types."""
    return st.fixed_dictionaries(
        {},
        optional={
            "dev": valid_values,
            "seq": st.one_of(st.integers(-5, 10**12), _huge_ints, valid_values),
            "ts": st.one_of(st.floats(), valid_values),
            "cpu": valid_values,
            "mem": valid_values,
        },
    )


# -- strategies: cases per handler -------------------------------------------------------------------
_CONTENT_TYPES = st.sampled_from(
    [
        None,
        None,
        None,
        JSON,
        "application/cbor",
        "APPLICATION/JSON; charset=utf-8",
        "text/plain",
        "application/json;",
        "",
    ]
)


def _messages(
    ctx: Ctx, handler: str, structured: st.SearchStrategy[Any], huge_env: Callable[[Any], Any]
) -> st.SearchStrategy[Case]:
    topic = ctx.handler_topic(handler)
    limit = ctx.limit(handler)

    def c(family: str, payload: bytes, ct: str | None = None, **kw: Any) -> Case:
        return Case(family, kw.pop("topic", topic), payload, ct, **kw)

    envelopes = st.builds(lambda v: c("envelope", _encode_cbor(v)), structured)
    json_envelopes = st.builds(
        lambda v, ct: c("json", _encode_json(v), ct),
        st.one_of(structured.filter(_jsonable).map(_jsonify), json_values),
        st.sampled_from([JSON, JSON, "application/json; charset=utf-8", None]),
    )
    with_reply_to = st.one_of(
        structured,
        st.builds(
            lambda v, rt: {**v, "reply_to": rt} if isinstance(v, dict) else v,
            structured,
            _reply_to(ctx),
        ),
    )
    return weighted(
        (12, envelopes),
        (3, json_envelopes),
        (1, st.builds(lambda p, ct: c("bytes", p, ct), raw_bytes(), _CONTENT_TYPES)),
        (1, st.builds(lambda v: c("cbor", _encode_cbor(v)), cbor_values)),
        (1, st.builds(lambda t: c("json", t.encode(), JSON), st.text(max_size=40))),  # malformed
        (1, st.builds(lambda d: c("deep", d[0], d[1], note=d[2]), deep_payload())),
        (
            1,
            st.builds(
                lambda d: c("deep", d[0], d[1], note=d[2]),
                deep_payload(prefix=_deep_prefix(ctx, handler)),
            ),
        ),
        (1, st.builds(lambda h: c("huge", h[0], h[1], note=h[2]), huge_payload(limit, huge_env))),
        (
            1,
            st.builds(
                lambda t, v: c("topic", _encode_cbor(v), topic=t),
                bad_topics(ctx, handler),
                structured,
            ),
        ),
        (
            1,
            st.builds(
                lambda v: c("no_response_topic", _encode_cbor(v), response_topic=False),
                with_reply_to,
            ),
        ),
        (
            1,
            st.builds(
                lambda v: c("no_response_topic", _encode_json(v), JSON, response_topic=False),
                with_reply_to.filter(_jsonable).map(_jsonify),
            ),
        ),
    )


def _deep_prefix(ctx: Ctx, handler: str) -> bytes:
    """A request map whose last field (``args``) holds the deep value."""
    if handler == "gateway_call":
        head = {"method": "resolve"}
    elif handler == "node_ctl":
        head = {"method": "create", "kwargs": {"obj": "fz-deep", "cls": COUNTER}}
    else:
        head = {"method": "echo", "obj": ctx.counter}
    enc = cbor2.dumps(head)
    n = len(head) + 1
    return bytes([0xA0 + n]) + enc[1:] + cbor2.dumps("args") + b"\x81"


def _jsonable(v: Any) -> bool:
    try:
        _encode_json(_jsonify(v))
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _jsonify(v: Any) -> Any:
    """JSON's view of a CBOR value: text keys, no bytes or tags."""
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonify(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonify(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return repr(v)[:40]


def cases_for(ctx: Ctx, handler: str) -> st.SearchStrategy[Case]:
    """Every family of input for one handler."""
    if handler == "node_call":
        return _messages(
            ctx,
            handler,
            call_envelopes(ctx),
            lambda pad: {"id": "huge", "obj": ctx.counter, "method": "echo", "args": [pad]},
        )
    if handler == "node_ctl":
        return _messages(
            ctx,
            handler,
            ctl_envelopes(ctx),
            lambda pad: {
                "method": "create",
                "kwargs": {"obj": "fz-huge", "cls": COUNTER, "x": pad},
            },
        )
    if handler == "node_sync":
        return _messages(
            ctx,
            handler,
            sync_envelopes(ctx),
            lambda pad: {
                "method": "sync",
                "kwargs": {"obj": "fz", "cls": COUNTER, "state": _not_a_pickle(pad)},
            },
        )
    if handler == "gateway_call":
        return _messages(
            ctx, handler, gateway_envelopes(ctx), lambda pad: {"method": "nodes", "pad": pad}
        )
    if handler == "node_feed":
        return _messages(
            ctx, handler, sample_maps(), lambda pad: {"dev": "fz", "seq": 1, "pad": pad}
        )
    if handler == "node_status":
        return _messages(
            ctx, handler, status_maps(), lambda pad: {"state": "offline", "pad": pad}
        ).flatmap(
            lambda c: st.builds(
                lambda r, e: _status_case(ctx, c, r, e), st.booleans(), st.booleans()
            )
        )
    if handler in ("client_reply", "node_reply", "gateway_reply"):
        return _messages(
            ctx, handler, reply_maps(ctx), lambda pad: {"id": None, "kind": "result", "value": pad}
        ).flatmap(
            lambda c: st.builds(
                lambda corr: _reply_case(c, corr), st.one_of(st.none(), st.binary(max_size=24))
            )
        )
    raise ValueError(f"unknown handler {handler!r}")


def _status_case(ctx: Ctx, case: Case, retain: bool, empty: bool) -> Case:
    case.retain = retain
    if empty and case.family == "bytes":
        case.payload = b""  # a retained status cleared
    node = ctx.topics.node_of_status(case.topic)
    if node is not None and "{n}" not in node:
        # a junk node id is never used twice (see BUG-7 in tests/test_fuzz.py)
        case.topic = ctx.topics.node_status("{n}" + node) if node else ctx.topics.node_status("{n}")
    return case


def _reply_case(case: Case, corr: bytes | None) -> Case:
    case.correlation = corr
    return case


# -- known bugs ---------------------------------------------------------------------------------------
def _body(case: Case) -> Any:
    try:
        return decode(case.payload, is_json(case.payload, case.content_type))
    except ContinuumError:
        return None


def _str_fails(value: Any) -> bool:
    try:
        str(ValueError(value))
        return False
    except Exception:
        return True


def _arg(body: dict[Any, Any], index: int, name: str) -> Any:
    args, kwargs = body.get("args"), body.get("kwargs")
    if isinstance(kwargs, dict) and name in kwargs:
        return kwargs[name]
    if isinstance(args, list) and len(args) > index:
        return args[index]
    return None


def known_bug(ctx: Ctx, handler: str, case: Case) -> str | None:
    """The id of the known, unfixed bug this case would trigger (see
    tests/test_fuzz.py), or None. BUG-1..10 are fixed: their cases run."""
    if KNOWN_BUGS_ON:
        return None
    if len(case.payload) > ctx.limit(handler) and handler != "node_feed":
        return None  # never decoded
    body = _body(case)
    if handler == "node_status" and isinstance(body, dict) and _spoofs_a_host(body):
        return "BUG-11 objects placed on a node that never was"
    return None


def _decimal_bomb(sample: Any) -> bool:
    """SampleSink.ingest does int(sample["seq"]): int() of Decimal("1E+1000000")
    takes ~30 s, of 1E+10000000 hours (tags 4/5 decode to Decimal unbounded)."""
    seq = sample.get("seq") if isinstance(sample, dict) else None
    return isinstance(seq, decimal.Decimal) and seq.is_finite() and seq.adjusted() > 20_000


def _spoofs_a_host(status: dict[Any, Any]) -> bool:
    """An 'online' status naming a class the real node hosts: the gateway places
    new objects of that class on the junk node (it sorts first), and creates
    time out."""
    classes = status.get("classes")
    return (
        status.get("state") == "online"
        and isinstance(classes, dict)
        and any(c in classes for c in (COUNTER, SINK))
    )


def _poisons_directory(status: dict[Any, Any]) -> bool:
    """Directory.nodes()/classes()/place() assume ``classes`` maps text to maps."""
    if "classes" not in status:
        return False
    try:
        json.dumps(status)
    except (TypeError, ValueError):
        return False  # never stored
    classes = json.loads(json.dumps(status))["classes"]
    return not (isinstance(classes, dict) and all(isinstance(d, dict) for d in classes.values()))


# -- checking replies ---------------------------------------------------------------------------------
def classify_reply(body: Any) -> tuple[str, bool, str | None]:
    """(outcome, final, problem) for one decoded reply."""
    if not isinstance(body, dict):
        return "BAD:not a map", True, f"reply is a {type(body).__name__}"
    if "id" not in body:
        return "BAD:no id", True, "reply has no 'id' field"
    kind = body.get("kind")
    if kind == "result":
        if "value" not in body:
            return "BAD:result without value", True, "result without 'value'"
        return "result", True, None
    if kind == "progress":
        if not isinstance(body.get("seq"), int) or "value" not in body:
            return "BAD:progress", False, "progress without seq/value"
        return "progress", False, None
    if kind == "error":
        err = body.get("error")
        if not isinstance(err, dict):
            return "BAD:error not a map", True, f"error is {err!r:.200}"
        code, typ, msg = err.get("code"), err.get("type"), err.get("message")
        if code not in DOCUMENTED_CODES:
            return f"BAD:undocumented code {code!r:.40}", True, f"error code {code!r:.100}"
        if not isinstance(typ, str) or not isinstance(msg, str):
            return "BAD:error type/message", True, f"type={typ!r:.60} message={msg!r:.60}"
        if code == "method_error":
            return f"error:method_error/{typ}", True, None
        return f"error:{code}", True, None
    return f"BAD:kind {kind!r:.40}", True, f"unknown kind {kind!r:.100}"


def _clip(value: Any, n: int = 600) -> str | None:
    if value is None:
        return None
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<repr failed: {exc}>"
    return text if len(text) <= n else text[:n] + f"...<{len(text)} chars>"


@dataclass
class _Pending:
    no: int
    handler: str
    case: Case
    expect: str  # "reply": one is required; "any": optional, checked if it comes
    deadline: float
    reply_json: bool
    rid: Any
    window: bool
    outcome: str | None = None
    dedupe: str | None = None  # the exactly-once key, while in flight
    replies: int = 0
    progress: int = 0
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Failure:
    handler: str
    outcome: str
    problem: str
    case: Case
    no: int

    def __str__(self) -> str:
        return f"[{self.handler} #{self.no}] {self.outcome}: {self.problem}\n  reproducer: {self.case!r}"


_GATEWAY_CHANGES = frozenset({"create", "alias", "unalias", "delete", "bind", "unbind"})


def _dedupe_key(handler: str, case: Case, rid: Any) -> str | None:
    """The key under which the service deduplicates this request while it runs."""
    if not isinstance(rid, str):
        return None
    if handler == "node_call":
        return f"{handler}\x00{rid}"
    if handler == "gateway_call":
        try:
            body = decode(case.payload, is_json(case.payload, case.content_type))
        except ContinuumError:
            return None
        method = body.get("method") if isinstance(body, dict) else None
        if isinstance(method, str) and method in _GATEWAY_CHANGES:
            return f"{handler}\x00{rid}"
    return None


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Fuzzer:
    """A bare MQTT 5 client that publishes cases and checks what comes back.

    It subscribes to the whole topic root (MQTT 5 no-local, so not to its own
    messages): replies to it, status changes of the services (a node or gateway
    that reconnects publishes its status again: a flap), and anything published
    where nothing should be."""

    def __init__(
        self,
        url: str,
        ctx: Ctx | None = None,
        *,
        root: str | None = None,
        fuzz_id: str | None = None,
        reply_timeout: float = 10.0,
        window: int = 256,
        optional_wait: float = 1.0,
    ) -> None:
        self.fuzz_id = fuzz_id or f"fuzz-{uuid.uuid4().hex[:8]}"
        root = root or (ctx.root if ctx else "")
        self.root = root
        self.topics = Topics(root)
        self.reply_prefix = self.topics.reply(self.fuzz_id)
        self.ctx = ctx
        self.reply_timeout = reply_timeout
        self.optional_wait = optional_wait
        self._sem = threading.Semaphore(window)
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Pending] = {}
        # corr -> (how it ended, the request, its outcome) for recent requests
        self._finished: dict[bytes, tuple[str, _Pending, str]] = {}
        self._numbers = itertools.count(1)
        self._inflight_ids: Histogram[str] = Histogram()  # dedupe key -> requests in flight
        self.stats: dict[str, Histogram[str]] = {}
        self.examples: dict[str, dict[str, Any]] = {}  # handler -> outcome -> first case
        self.failures: list[Failure] = []
        self.status_seen: dict[str, list[Any]] = {}
        self._last_status: dict[str, Any] = {}
        self._last_counts: dict[str, Any] = {}
        self.unexpected: list[str] = []
        self.junk_status_topics: set[str] = set()
        self.sent = 0
        host, _, port = url.split("://", 1)[-1].rpartition(":")
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=self.fuzz_id,
            protocol=paho.MQTTv5,
        )
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.on_socket_open = _nodelay  # else each round trip waits out delayed ACKs (40 ms)
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_disconnect = self._on_disconnect
        self.disconnects: list[str] = []
        c.connect(host, int(port), keepalive=30)
        c.loop_start()
        c.subscribe(root + "/#", options=SubscribeOptions(qos=1, noLocal=True))
        if not subscribed.wait(10):
            raise RuntimeError("fuzzer: no SUBACK")
        self.client = c
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="fuzz-reaper", daemon=True)
        self._reaper.start()
        time.sleep(0.2)  # retained statuses arrive

    def close(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_disconnect(self, *a: Any) -> None:
        self.disconnects.append(str(a[3]) if len(a) > 3 else "?")

    # -- receiving -------------------------------------------------------------------------------
    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith(self.reply_prefix + "/") or topic == self.reply_prefix:
            self._on_reply(msg)
            return
        rest = topic[len(self.root) + 1 :].split("/")
        if len(rest) == 3 and rest[0] == "node" and rest[2] == "status":
            self._on_status(rest[1], msg)
            return
        if rest == ["gateway", "status"]:
            self._on_status("gateway", msg)
            return
        allowed = (
            rest[0] == "reply"
            or (rest[0] == "gateway" and rest[1:] == ["call"])
            or (len(rest) == 3 and rest[0] == "node" and rest[2] in ("call", "ctl", "sync"))
            or (len(rest) == 3 and rest[0] in ("client",) and rest[2] == "status")
            or rest[0] == "pool"
        )
        if not allowed and len(self.unexpected) < 100:
            self.unexpected.append(topic)

    def _on_status(self, name: str, msg: paho.MQTTMessage) -> None:
        try:
            body = cbor2.loads(msg.payload) if msg.payload else {}
            state = body.get("state")
        except Exception:
            body, state = {}, "<junk>"
        # A node republishes its status when the number of objects it holds or
        # its quarantine changes (protocol.md section 15): not a reconnect. The
        # same status again, or an offline one, is.
        counts = {k: body.pop(k, None) for k in ("objects", "quarantined", "resident", "evicted")}
        with self._lock:
            seen = self.status_seen.setdefault(name, [])
            last = self._last_status.get(name)
            self._last_status[name] = body
            republished = seen and state == "online" and last is not None and last == body
            if republished and counts != self._last_counts.get(name):
                self._last_counts[name] = counts
                return
            self._last_counts[name] = counts
            seen.append((time.monotonic(), state, msg.retain))

    def _on_reply(self, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        corr = getattr(props, "CorrelationData", None) if props else None
        ctype = getattr(props, "ContentType", None) if props else None
        with self._lock:
            p = self._pending.get(corr) if corr is not None else None
            if p is None:
                prior = self._finished.get(corr) if corr is not None else None
                if prior is not None and prior[0] == "done":
                    first = prior[1]
                    self.failures.append(
                        Failure(
                            first.handler,
                            "BAD:second final reply",
                            f"after {prior[2]}, another reply: {_clip(bytes(msg.payload), 300)}",
                            first.case,
                            first.no,
                        )
                    )
                    return
                self.stats.setdefault("_late", Histogram())["late_reply"] += 1
                if prior is None:
                    return
        if p is None:  # a late reply (after a wait ran out): still checked
            assert prior is not None
            late = prior[1]
            if prior[2] == "no_reply":
                with self._lock:
                    for x in self.failures:
                        if x.no == late.no and "answered late" not in x.problem:
                            waited = time.monotonic() - (late.deadline - self.reply_timeout)
                            x.problem += f" (answered late, after {waited:.1f} s)"
            try:
                body = decode(msg.payload, ctype is not None and JSON in ctype.lower())
                outcome, _, problem = classify_reply(body)
            except ContinuumError as exc:
                outcome, problem = "BAD:undecodable reply", str(exc)
            if problem is not None:
                with self._lock:
                    self.failures.append(
                        Failure(late.handler, outcome, problem, late.case, late.no)
                    )
            return
        got_json = ctype is not None and ctype.split(";")[0].strip().lower() == JSON
        try:
            body = decode(msg.payload, got_json)
        except ContinuumError as exc:
            self._finish(p, "BAD:undecodable reply", f"{exc}: {msg.payload[:200]!r}")
            return
        outcome, final, problem = classify_reply(body)
        if problem is None and got_json != p.reply_json:
            outcome, problem = (
                "BAD:wrong encoding",
                f"request json={p.reply_json}, reply json={got_json}",
            )
        if problem is None and p.expect == "none":
            outcome, problem = "BAD:reply where none may come", repr(body)[:300]
        if problem is None and isinstance(body, dict) and body.get("id") != p.rid:
            outcome = "BAD:wrong id"
            problem = f"reply id {body.get('id')!r:.80} for a request with id {p.rid!r:.80}"
        if problem is not None:
            self._finish(p, outcome, problem)
            return
        if not final:
            p.progress += 1
            return
        if p.progress:
            outcome = "progress+" + outcome
        self._finish(p, outcome, None, body)

    def _finish(self, p: _Pending, outcome: str, problem: str | None, detail: Any = None) -> None:
        corr = str(p.no).encode()
        with self._lock:
            if self._pending.pop(corr, None) is None:
                return
            how = "timeout" if outcome.startswith("no_reply") else "done"
            self._finished[corr] = (how, p, outcome)
            if len(self._finished) > 40_000:
                for k in list(self._finished)[:20_000]:
                    del self._finished[k]
            if p.dedupe is not None:
                self._inflight_ids[p.dedupe] -= 1
                if self._inflight_ids[p.dedupe] <= 0:
                    del self._inflight_ids[p.dedupe]
            p.outcome = outcome
            self.stats.setdefault(p.handler, Histogram())[outcome] += 1
            seen = self.examples.setdefault(p.handler, {})
            if outcome not in seen:
                seen[outcome] = {"case": p.case.reproducer(), "reply": _clip(detail)}
            if problem is not None:
                self.failures.append(Failure(p.handler, outcome, problem, p.case, p.no))
        if p.window:
            self._sem.release()
        p.done.set()

    def _reap(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [p for p in self._pending.values() if p.deadline <= now]
            for p in late:
                if p.expect == "reply":
                    self._finish(p, "no_reply", "no reply within the timeout (one is required)")
                else:
                    self._finish(p, "no_reply(ok)", None)

    # -- sending ----------------------------------------------------------------------------------
    def expectation(self, handler: str, case: Case) -> tuple[str, bool, Any]:
        """(expect, reply_json, request id the reply must carry)."""
        ctx = self.ctx
        assert ctx is not None
        reply_json = is_json(case.payload, case.content_type)
        required = HANDLERS[handler] and case.topic == ctx.handler_topic(handler)
        limit = ctx.limit(handler)
        body = None
        if len(case.payload) <= limit:
            try:
                body = decode(case.payload, reply_json)
            except ContinuumError:
                body = None
        rid = body.get("id") if isinstance(body, dict) else None
        rid = rid if isinstance(rid, str) else None
        if not required:
            return ("none" if handler in ("node_feed",) else "any"), reply_json, rid
        if case.response_topic:
            return "reply", reply_json, rid
        reply_to = body.get("reply_to") if isinstance(body, dict) else None
        if (
            isinstance(reply_to, str)
            and reply_to.startswith(self.reply_prefix + "/")
            and "+" not in reply_to
            and "#" not in reply_to
            and not broker_rejects(reply_to)
        ):
            return "reply", reply_json, rid
        return "any", reply_json, rid

    def submit(self, handler: str, case: Case, expect: str | None = None) -> _Pending:
        """Publish ``case``; returns at once unless the window of cases awaiting a
        reply is full."""
        no = next(self._numbers)
        if "{n}" in case.topic:
            case.topic = case.topic.replace("{n}", f"fz{no}-")
            self.junk_status_topics.add(case.topic)
        exp, reply_json, rid = self.expectation(handler, case)
        if expect is not None:
            exp = expect
        key = _dedupe_key(handler, case, rid)
        with self._lock:
            # Exactly-once: a node (any call) and the gateway (directory changes)
            # give a request id that is still running no second reply.
            if key is not None:
                if exp == "reply" and self._inflight_ids[key] > 0:
                    exp = "any"
                self._inflight_ids[key] += 1
        window = exp == "reply"
        if window:
            self._sem.acquire()
        wait = self.reply_timeout if exp == "reply" else self.optional_wait
        p = _Pending(no, handler, case, exp, time.monotonic() + wait, reply_json, rid, window)
        p.dedupe = key
        corr = str(no).encode()
        with self._lock:
            self._pending[corr] = p
        props = Properties(PacketTypes.PUBLISH)
        if case.response_topic:
            props.ResponseTopic = f"{self.reply_prefix}/{handler}"
        props.CorrelationData = corr if case.correlation is None else case.correlation
        if case.content_type is not None:
            props.ContentType = case.content_type
        self.client.publish(case.topic, case.payload, qos=1, retain=case.retain, properties=props)
        self.sent += 1
        return p

    def run_one(self, handler: str, case: Case) -> str:
        """Publish; when a reply is required, wait for the outcome (the CI tests'
        synchronous mode). Optional replies are checked when they come."""
        p = self.submit(handler, case)
        if p.expect != "reply":
            return "sent"
        p.done.wait(self.reply_timeout + 5)
        return p.outcome or "?"

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every case has its outcome."""
        end = time.monotonic() + (timeout or self.reply_timeout + 5)
        while time.monotonic() < end:
            with self._lock:
                if not self._pending:
                    return
            time.sleep(0.02)

    def request(self, topic: str, body: dict[str, Any], timeout: float = 10.0) -> Any:
        """One valid request (a probe): the decoded reply, or None on timeout."""
        box: dict[str, Any] = {}
        got = threading.Event()
        corr = f"probe-{uuid.uuid4().hex}".encode()
        reply = f"{self.reply_prefix}/probe/{corr.decode()}"

        def on(client: Any, u: Any, msg: paho.MQTTMessage) -> None:
            box["body"] = cbor2.loads(msg.payload)
            got.set()

        self.client.message_callback_add(reply, on)
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = corr
            self.client.publish(topic, cbor2.dumps(body), qos=1, properties=props)
            got.wait(timeout)
        finally:
            self.client.message_callback_remove(reply)
        return box.get("body")

    def flaps(self, name: str) -> list[Any]:
        """Status messages of ``name`` after the first: a service that reconnects
        (or whose last will fired) publishes its status again."""
        with self._lock:
            seen = list(self.status_seen.get(name, []))
        return seen[1:]

    def clear_junk_statuses(self) -> None:
        """Clear the junk statuses, retained or not: an empty retained status is
        how a node id is retired (the gateway forgets it)."""
        for topic in sorted(self.junk_status_topics):
            self.client.publish(topic, b"", qos=1, retain=True)
        self.junk_status_topics.clear()


# -- the broker's view of acknowledgements ---------------------------------------------------------------
_SEND = re.compile(r"Sending PUBLISH to (\S+) \(d\d, q1, r\d, m(\d+),")
_ACK = re.compile(r"Received PUBACK from (\S+) \(Mid: (\d+),")


def unacked_deliveries(log_path: str, client_id: str) -> set[int]:
    """Packet ids of QoS 1 messages mosquitto (``log_type all``) delivered to
    ``client_id`` that the client never acknowledged."""
    open_mids: set[int] = set()
    with open(log_path, errors="replace") as fh:
        for line in fh:
            m = _SEND.search(line)
            if m and m.group(1) == client_id:
                open_mids.add(int(m.group(2)))
                continue
            m = _ACK.search(line)
            if m and m.group(1) == client_id:
                open_mids.discard(int(m.group(2)))
    return open_mids


# -- what is fuzzed ---------------------------------------------------------------------------------
def open_target(dep: Deployment, *node_args: str, **fuzzer_options: Any) -> Fuzzer:
    """Start what the cases aim at on ``dep``: a gateway, node n1 (Counter and
    SampleSink, ``--max-payload NODE_MAX_PAYLOAD``, then ``node_args``), a Counter,
    a SampleSink bound to a fresh device's metrics; and a :class:`Fuzzer` whose
    ``ctx`` names them (no victim yet)."""
    dep.start_gateway()
    dep.start_node(
        "n1",
        "--max-payload",
        str(NODE_MAX_PAYLOAD),
        *node_args,
        modules=("examples.counter", "examples.sink"),
    )
    device = f"fz-dev-{uuid.uuid4().hex[:6]}"
    with dep.client(timeout=30.0) as c:
        counter = c.stub(COUNTER).create()
        sink = c.stub(SINK).create()
        c.bind_metrics(sink, device, "ingest")
    fuzzer = Fuzzer(dep.url, root=dep.root, **fuzzer_options)
    fuzzer.ctx = Ctx(
        root=dep.root,
        reply_prefix=fuzzer.reply_prefix,
        counter=counter._id or "",
        sink=sink._id or "",
        device=device,
    )
    return fuzzer
