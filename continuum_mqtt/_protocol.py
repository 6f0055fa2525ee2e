"""Topic API v1: topic names and envelopes. docs/protocol.md is the normative text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._errors import BadRequest

__all__ = [
    "DEFAULT_ROOT",
    "PROTOCOL_VERSION",
    "Request",
    "Topics",
    "error_reply",
    "progress_reply",
    "result_reply",
]

PROTOCOL_VERSION = 1
DEFAULT_ROOT = "continuum/v1"

#: The caller of a request published on a call topic without a caller level
#: (``.../call``): a client without a broker username. A broker account of
#: this name would share its objects: do not create one (protocol.md section 21).
ANONYMOUS = "anonymous"


def valid_topic_text(text: str) -> bool:
    """Text a broker accepts in a topic name: UTF-8 encodable, at most 65535
    bytes, no control characters or noncharacters (MQTT 5, 1.5.4)."""
    try:
        if len(text.encode("utf-8")) > 65535:
            return False
    except UnicodeEncodeError:  # lone surrogates
        return False
    for c in text:
        o = ord(c)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE:
            return False
    return True


#: Import names of continuum 0.1.0 that class paths may still carry (an edge
#: agent's config, a node's checkpoints, a gateway's directory): the bundled
#: forecaster was ``cloudnode.forecast.Forecaster`` before every installed name
#: took the ``continuum_`` prefix. protocol.md section 8 lists them.
LEGACY_MODULES = {"cloudnode": "continuum_node"}


def canonical_class_path(path: str) -> str:
    """``path`` with a 0.1.0 import name replaced by today's (any other text as it is)."""
    head, dot, rest = path.partition(".")
    new = LEGACY_MODULES.get(head)
    return f"{new}{dot}{rest}" if new is not None and dot else path


def check_create(cls: Any, replicas: Any) -> None:
    """The gateway method ``create``'s own argument checks (protocol.md section
    16), shared by the gateway and local mode: BadRequest when wrong."""
    if not isinstance(cls, str) or not cls:
        raise BadRequest("create: 'cls' must be a class path")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise BadRequest("create: 'replicas' must be a non-negative integer")


def _check_level(kind: str, value: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "/+#")
        or not valid_topic_text(value)
    ):
        raise ValueError(
            f"invalid {kind} {value!r}: must be non-empty text without / + # or control characters"
        )
    return value


def as_caller(call_topic: str, caller: str | None) -> str:
    """``call_topic`` as published by ``caller`` (a broker username; None or
    empty: the anonymous topic itself)."""
    return f"{call_topic}/{_check_level('username', caller)}" if caller else call_topic


def split_call(topic: str, base: str) -> str | None:
    """The caller of a request that arrived on ``topic`` for the call topic
    ``base``: :data:`ANONYMOUS` on ``base`` itself, the username on
    ``base/<username>`` (a level the broker's ACL pins to the publisher's
    account: protocol.md section 21), None when ``topic`` is neither."""
    if topic == base:
        return ANONYMOUS
    if topic.startswith(base) and topic[len(base) : len(base) + 1] == "/":
        level = topic[len(base) + 1 :]
        if level and "/" not in level:
            return level
    return None


def call_subscriptions(call_topic: str) -> tuple[str, str]:
    """What a service subscribes to to serve ``call_topic``: the anonymous topic
    and every caller's."""
    return call_topic, f"{call_topic}/+"


@dataclass(frozen=True)
class Topics:
    """Every topic of the protocol, under one versioned root."""

    root: str = DEFAULT_ROOT

    def node_call(self, node: str, caller: str | None = None) -> str:
        """``<root>/node/<node>/call``, with ``/<caller>`` for a client with a
        broker username (the broker's ACL pins that level to the account)."""
        return as_caller(f"{self.root}/node/{_check_level('node id', node)}/call", caller)

    def node_ctl(self, node: str) -> str:
        return f"{self.root}/node/{_check_level('node id', node)}/ctl"

    def pool_call(self, class_path: str, caller: str | None = None) -> str:
        """Calls for the pool of a stateless class, served by any node hosting it."""
        return as_caller(f"{self.root}/pool/{_check_level('class path', class_path)}/call", caller)

    def pool_share(self, class_path: str, group: str = "continuum") -> str:
        """The MQTT 5 shared subscription a node serves a pool with."""
        return f"$share/{_check_level('share group', group)}/{self.pool_call(class_path)}"

    def node_sync(self, node: str) -> str:
        return f"{self.root}/node/{_check_level('node id', node)}/sync"

    def node_status(self, node: str) -> str:
        return f"{self.root}/node/{_check_level('node id', node)}/status"

    @property
    def node_status_all(self) -> str:
        return f"{self.root}/node/+/status"

    @property
    def gateway_call(self) -> str:
        return f"{self.root}/gateway/call"

    def gateway_call_as(self, caller: str | None) -> str:
        return as_caller(self.gateway_call, caller)

    @property
    def gateway_status(self) -> str:
        return f"{self.root}/gateway/status"

    @property
    def reply_prefix(self) -> str:
        return f"{self.root}/reply/"

    def reply(self, client_id: str, owner: str | None = None) -> str:
        """A client's reply topic: ``<root>/reply/<client id>``, or, for a client
        that authenticates, ``<root>/reply/<username>/<client id>``, so a broker
        ACL ``pattern read <root>/reply/%u/#`` (or ``%c/#``) confines it."""
        cid = _check_level("client id", client_id)
        if owner:
            return f"{self.root}/reply/{_check_level('username', owner)}/{cid}"
        return f"{self.root}/reply/{cid}"

    # -- device (edge agent) topics --------------------------------------------
    def device(self, device: str, kind: str) -> str:
        """``<root>/dev/<device>/<kind>``: kind is metrics, forecast, alert or status."""
        return f"{self.root}/dev/{_check_level('device id', device)}/{_check_level('kind', kind)}"

    def metrics(self, device: str) -> str:
        return self.device(device, "metrics")

    def is_metrics(self, topic: str) -> bool:
        parts = topic[len(self.root) + 1 :].split("/") if topic.startswith(self.root + "/") else []
        if len(parts) != 3 or parts[0] != "dev" or parts[2] != "metrics":
            return False
        try:
            _check_level("device id", parts[1])
        except ValueError:
            return False
        return True

    def node_of_status(self, topic: str) -> str | None:
        parts = topic[len(self.root) + 1 :].split("/") if topic.startswith(self.root + "/") else []
        if len(parts) == 3 and parts[0] == "node" and parts[2] == "status":
            return parts[1]
        return None


@dataclass
class Request:
    """A decoded request envelope (node call, node control or gateway call)."""

    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: str | None = None
    obj: str | None = None
    timeout_ms: float | None = None
    reply_to: str | None = None
    caller: str = ANONYMOUS
    """Who sent it (:func:`split_call` of its topic; never a field of the body)."""

    @classmethod
    def from_wire(cls, body: Any) -> Request:
        if not isinstance(body, dict):
            raise BadRequest(f"request must be a map, got {type(body).__name__}")
        method = body.get("method")
        if not isinstance(method, str) or not method:
            raise BadRequest("request field 'method' must be a non-empty text string")
        args = body.get("args", [])
        if not isinstance(args, list):
            raise BadRequest("request field 'args' must be an array")
        kwargs = body.get("kwargs", {})
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise BadRequest("request field 'kwargs' must be a map with text keys")
        rid = body.get("id")
        if rid is not None and not isinstance(rid, str):
            raise BadRequest("request field 'id' must be a text string")
        obj = body.get("obj")
        if obj is not None and not isinstance(obj, str):
            raise BadRequest("request field 'obj' must be a text string")
        timeout = body.get("timeout_ms")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not -1e12 < timeout < 1e12  # also refuses NaN
        ):
            raise BadRequest("request field 'timeout_ms' must be a number of milliseconds")
        reply_to = body.get("reply_to")
        if reply_to is not None and not isinstance(reply_to, str):
            raise BadRequest("request field 'reply_to' must be a text string")
        return cls(method, args, kwargs, rid, obj, timeout, reply_to)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"method": self.method}
        if self.id is not None:
            body["id"] = self.id
        if self.obj is not None:
            body["obj"] = self.obj
        if self.args:
            body["args"] = self.args
        if self.kwargs:
            body["kwargs"] = self.kwargs
        if self.timeout_ms is not None:
            body["timeout_ms"] = self.timeout_ms
        if self.reply_to is not None:
            body["reply_to"] = self.reply_to
        return body


def result_reply(rid: str | None, value: Any) -> dict[str, Any]:
    return {"id": rid, "kind": "result", "value": value}


def progress_reply(rid: str | None, seq: int, value: Any) -> dict[str, Any]:
    return {"id": rid, "kind": "progress", "seq": seq, "value": value}


def error_reply(rid: str | None, error: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "kind": "error", "error": error}
