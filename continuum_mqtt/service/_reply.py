"""Serving requests: :func:`accept` turns an inbound message into a decoded
:class:`~continuum_mqtt.service.Request` and a :class:`ReplyChannel`; every reply,
progress update and error goes back through the channel, encoded like the
request (CBOR or JSON), checked for encodability and size before it is
published."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .._codec import JSON, decode, encode, is_json
from .._errors import (
    BadRequest,
    ContinuumError,
    PayloadTooLarge,
    UnencodableResult,
    error_from_envelope,
)
from .._protocol import (
    ANONYMOUS,
    Request,
    Topics,
    error_reply,
    progress_reply,
    result_reply,
    valid_topic_text,
)
from ._transport import Message, Transport

__all__ = ["Outcome", "ReplyChannel", "accept", "answer", "scoped_id"]

log = logging.getLogger("continuum.server")

Outcome = tuple[bool, Any]
"""The outcome of a request: ``(True, result)`` or ``(False, error envelope)``."""


class ReplyChannel:
    """Where the replies of one request go (nowhere when ``topic`` is None).
    ``on_done(code)``, when set, runs once with the final reply's outcome
    code (``"ok"`` or the error's code): a service's metrics hook."""

    __slots__ = (
        "_seq",
        "correlation",
        "deadline",
        "json",
        "max_payload",
        "on_done",
        "rid",
        "topic",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        topic: str | None,
        correlation: bytes | None,
        json_payload: bool,
        max_payload: int,
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.correlation = correlation
        self.json = json_payload
        self.max_payload = max_payload
        self.rid: str | None = None
        self.deadline: float | None = None  # time.monotonic() value
        self._seq = 0
        self.on_done: Callable[[str], None] | None = None

    def _publish(self, body: dict[str, Any]) -> bool:
        if self.topic is None:
            return False
        payload = encode(body, self.json)
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(
                f"reply of {len(payload)} bytes exceeds the limit of {self.max_payload}",
                limit=self.max_payload,
            )
        self.transport.publish(
            self.topic,
            payload,
            qos=1,
            correlation=self.correlation,
            content_type=JSON if self.json else None,
        )
        return True

    def result(self, value: Any) -> None:
        try:
            self._publish(result_reply(self.rid, value))
        except (UnencodableResult, PayloadTooLarge) as exc:
            self.error(exc)
            return
        if self.on_done is not None:
            self._done("ok")

    def progress(self, value: Any) -> None:
        self._seq += 1
        try:
            self._publish(progress_reply(self.rid, self._seq, value))
        except (UnencodableResult, PayloadTooLarge) as exc:
            log.warning("dropped progress update %d of %s: %s", self._seq, self.rid, exc)

    def error(self, exc: ContinuumError) -> None:
        try:
            self._publish(error_reply(self.rid, exc.to_envelope()))
        except (UnencodableResult, PayloadTooLarge):
            self._publish(error_reply(self.rid, exc.trimmed().to_envelope()))
        if self.on_done is not None:
            self._done(exc.code)

    def _done(self, code: str) -> None:
        hook, self.on_done = self.on_done, None
        if hook is not None:
            hook(code)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def answer(chan: ReplyChannel, outcome: Outcome) -> None:
    """Send ``outcome`` (a first run's, or a stored one for a resent request)."""
    ok, value = outcome
    if ok:
        chan.result(value)
    else:
        chan.error(error_from_envelope(value))


def accept(
    msg: Message,
    transport: Transport,
    topics: Topics,
    max_payload: int,
    max_reply: int,
    caller: str = ANONYMOUS,
) -> tuple[Request | None, ReplyChannel]:
    """Decode ``msg``, a request from ``caller`` (:func:`split_call` of its
    topic). On a bad request the error is already answered and the request is
    None. A request whose reply topic lies outside the reply tree, or, for a
    caller with a username, outside ``<root>/reply/<caller>/``, is never
    answered (a service must not be made to publish on arbitrary topics, nor
    into another account's replies). The request's ``id`` is scoped to its
    caller (:func:`scoped_id`)."""
    if msg.retain:
        # A retained request is never run (docs/protocol.md §5): it would run
        # again at every resubscription. Services subscribe with Retain As
        # Published, so the flag is also set on one delivered live.
        log.warning("dropped a retained request on %s", msg.topic)
        return None, ReplyChannel(transport, None, None, False, max_reply)
    payload = msg.payload
    json_payload = is_json(payload, msg.content_type)
    chan = ReplyChannel(transport, None, msg.correlation, json_payload, max_reply)
    response_topic = msg.response_topic
    try:
        if len(payload) > max_payload:
            chan.topic = _reply_topic(response_topic, topics, msg.topic, caller)
            raise PayloadTooLarge(
                f"request of {len(payload)} bytes exceeds the limit of {max_payload}",
                limit=max_payload,
                size=len(payload),
            )
        try:
            body = decode(payload, json_payload)
        except BadRequest:
            chan.topic = _reply_topic(response_topic, topics, msg.topic, caller)
            raise
        named = response_topic
        if isinstance(body, dict):
            rid = body.get("id")
            chan.rid = rid if isinstance(rid, str) else None
            reply_to = body.get("reply_to")
            named = response_topic or (reply_to if isinstance(reply_to, str) else None)
        chan.topic = _reply_topic(named, topics, msg.topic, caller)
        if named is not None and chan.topic is None:
            return None, chan  # a refused reply topic: not run either (logged)
        req = Request.from_wire(body)
        req.caller = caller
        if req.id is not None:
            req.id = scoped_id(caller, req.id)
        if req.timeout_ms is not None:
            chan.deadline = time.monotonic() + req.timeout_ms / 1000.0
        return req, chan
    except ContinuumError as exc:
        if chan.topic is None:
            log.warning("dropped a request on %s without a usable reply topic: %s", msg.topic, exc)
        else:
            chan.error(exc)
        return None, chan


def scoped_id(caller: str, rid: str) -> str:
    """A request id as services key it (exactly-once tables, journals): one
    caller's ids never meet another's. Usernames have no ``/``; an anonymous
    caller's id is kept as it is unless it has one."""
    return rid if caller == ANONYMOUS and "/" not in rid else f"{caller}/{rid}"


def _reply_topic(
    candidate: str | None, topics: Topics, where: str, caller: str = ANONYMOUS
) -> str | None:
    if candidate is None:
        return None
    prefix = topics.reply_prefix if caller == ANONYMOUS else f"{topics.reply_prefix}{caller}/"
    if (
        not isinstance(candidate, str)
        or not candidate.startswith(prefix)
        or "+" in candidate
        or "#" in candidate
        or not valid_topic_text(candidate)
    ):
        log.warning("refusing reply topic %r of a request on %s", candidate, where)
        return None
    return candidate
