"""The service toolkit: the public API for writing a service on continuum.

A service talks to the broker only through a :class:`Transport`
(:class:`MqttTransport` in production, :class:`FakeTransport` in tests, linked
by a :class:`FakeBus`), serves requests with :func:`accept`, a
:class:`ReplyChannel` and a :class:`Dispatcher` of :func:`method`\\ s, keeps
changing requests exactly-once with :class:`ExactlyOnce`, follows node
liveness with :class:`Liveness`, and calls other services with a
:class:`Requester`. docs/toolkit.md is the guide.

Names load on first use, so that importing one piece (the client imports the
requester) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._codec import decode, encode, is_json
    from .._errors import error_from_envelope
    from .._invoke import bind_arguments, describe_class, invoke, lookup_method, remote_error
    from .._model import class_path
    from .._mqtt import (
        BrokerURL,
        PublishOptions,
        new_client_id,
        private_client_id,
        set_nodelay,
        varint,
    )
    from .._protocol import (
        ANONYMOUS,
        DEFAULT_ROOT,
        LEGACY_MODULES,
        PROTOCOL_VERSION,
        Request,
        Topics,
        as_caller,
        call_subscriptions,
        canonical_class_path,
        check_create,
        split_call,
        valid_topic_text,
    )
    from .._protocol import _check_level as check_level
    from .._service import (
        ConfigError,
        Service,
        add_common_arguments,
        add_rights_arguments,
        fsync_path,
        parse_args,
        rights_from,
        sd_notify,
        serve,
        setup_logging,
        wait_for_signal,
    )
    from ._access import EVERYONE, MAX_ALIAS_CHARS, MAX_ALIASES, Access, Rights
    from ._dispatch import CONTEXT, NO_CONTEXT, Context, Dispatcher, MethodSpec, method
    from ._fake import FakeBus, FakeTransport, topic_matches
    from ._liveness import GATEWAY, MAX_STATUS, Liveness, StatusChange, parse_status
    from ._metrics import CallMeter, add_metrics_arguments, metrics_registry, start_metrics
    from ._mqtt import MqttTransport
    from ._once import Claim, ExactlyOnce, MemoryOutcomes, OutcomeStore
    from ._reply import Outcome, ReplyChannel, accept, answer, scoped_id
    from ._requester import Pending, ProgressFn, Requester
    from ._transport import Message, MessageHandler, Publication, Transport

_LAZY: dict[str, tuple[str, str]] = {
    # transport
    "Message": ("._transport", "Message"),
    "MessageHandler": ("._transport", "MessageHandler"),
    "Publication": ("._transport", "Publication"),
    "PublishOptions": (".._mqtt", "PublishOptions"),
    "Transport": ("._transport", "Transport"),
    "MqttTransport": ("._mqtt", "MqttTransport"),
    "FakeBus": ("._fake", "FakeBus"),
    "FakeTransport": ("._fake", "FakeTransport"),
    "topic_matches": ("._fake", "topic_matches"),
    # requests and replies
    "Outcome": ("._reply", "Outcome"),
    "ReplyChannel": ("._reply", "ReplyChannel"),
    "accept": ("._reply", "accept"),
    "answer": ("._reply", "answer"),
    "scoped_id": ("._reply", "scoped_id"),
    "Pending": ("._requester", "Pending"),
    "ProgressFn": ("._requester", "ProgressFn"),
    "Requester": ("._requester", "Requester"),
    # exactly-once, liveness, dispatch
    "Claim": ("._once", "Claim"),
    "ExactlyOnce": ("._once", "ExactlyOnce"),
    "MemoryOutcomes": ("._once", "MemoryOutcomes"),
    "OutcomeStore": ("._once", "OutcomeStore"),
    "GATEWAY": ("._liveness", "GATEWAY"),
    "MAX_STATUS": ("._liveness", "MAX_STATUS"),
    "Liveness": ("._liveness", "Liveness"),
    "StatusChange": ("._liveness", "StatusChange"),
    "parse_status": ("._liveness", "parse_status"),
    "CONTEXT": ("._dispatch", "CONTEXT"),
    "NO_CONTEXT": ("._dispatch", "NO_CONTEXT"),
    "Context": ("._dispatch", "Context"),
    "Access": ("._access", "Access"),
    "Rights": ("._access", "Rights"),
    "EVERYONE": ("._access", "EVERYONE"),
    "MAX_ALIASES": ("._access", "MAX_ALIASES"),
    "MAX_ALIAS_CHARS": ("._access", "MAX_ALIAS_CHARS"),
    "Dispatcher": ("._dispatch", "Dispatcher"),
    # metrics (prometheus_client imported only when used)
    "CallMeter": ("._metrics", "CallMeter"),
    "add_metrics_arguments": ("._metrics", "add_metrics_arguments"),
    "metrics_registry": ("._metrics", "metrics_registry"),
    "start_metrics": ("._metrics", "start_metrics"),
    "MethodSpec": ("._dispatch", "MethodSpec"),
    "method": ("._dispatch", "method"),
    # the protocol
    "BrokerURL": (".._mqtt", "BrokerURL"),
    "new_client_id": (".._mqtt", "new_client_id"),
    "private_client_id": (".._mqtt", "private_client_id"),
    "varint": (".._mqtt", "varint"),
    "set_nodelay": (".._mqtt", "set_nodelay"),
    "valid_topic_text": (".._protocol", "valid_topic_text"),
    "check_create": (".._protocol", "check_create"),
    "ANONYMOUS": (".._protocol", "ANONYMOUS"),
    "as_caller": (".._protocol", "as_caller"),
    "call_subscriptions": (".._protocol", "call_subscriptions"),
    "split_call": (".._protocol", "split_call"),
    "canonical_class_path": (".._protocol", "canonical_class_path"),
    "LEGACY_MODULES": (".._protocol", "LEGACY_MODULES"),
    "DEFAULT_ROOT": (".._protocol", "DEFAULT_ROOT"),
    "PROTOCOL_VERSION": (".._protocol", "PROTOCOL_VERSION"),
    "Request": (".._protocol", "Request"),
    "Topics": (".._protocol", "Topics"),
    "check_level": (".._protocol", "_check_level"),
    "decode": (".._codec", "decode"),
    "encode": (".._codec", "encode"),
    "is_json": (".._codec", "is_json"),
    "error_from_envelope": (".._errors", "error_from_envelope"),
    # hosting active objects
    "bind_arguments": (".._invoke", "bind_arguments"),
    "describe_class": (".._invoke", "describe_class"),
    "invoke": (".._invoke", "invoke"),
    "lookup_method": (".._invoke", "lookup_method"),
    "remote_error": (".._invoke", "remote_error"),
    "class_path": (".._model", "class_path"),
    # running a service process
    "ConfigError": (".._service", "ConfigError"),
    "Service": (".._service", "Service"),
    "add_common_arguments": (".._service", "add_common_arguments"),
    "add_rights_arguments": (".._service", "add_rights_arguments"),
    "rights_from": (".._service", "rights_from"),
    "fsync_path": (".._service", "fsync_path"),
    "parse_args": (".._service", "parse_args"),
    "sd_notify": (".._service", "sd_notify"),
    "serve": (".._service", "serve"),
    "setup_logging": (".._service", "setup_logging"),
    "wait_for_signal": (".._service", "wait_for_signal"),
}


def __getattr__(name: str) -> Any:
    found = _LAZY.get(name)
    if found is None:
        raise AttributeError(f"module 'continuum_mqtt.service' has no attribute {name!r}")
    module, attr = found
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ANONYMOUS",
    "CONTEXT",
    "DEFAULT_ROOT",
    "EVERYONE",
    "GATEWAY",
    "LEGACY_MODULES",
    "MAX_ALIASES",
    "MAX_ALIAS_CHARS",
    "MAX_STATUS",
    "NO_CONTEXT",
    "PROTOCOL_VERSION",
    "Access",
    "BrokerURL",
    "CallMeter",
    "Claim",
    "ConfigError",
    "Context",
    "Dispatcher",
    "ExactlyOnce",
    "FakeBus",
    "FakeTransport",
    "Liveness",
    "MemoryOutcomes",
    "Message",
    "MessageHandler",
    "MethodSpec",
    "MqttTransport",
    "Outcome",
    "OutcomeStore",
    "Pending",
    "ProgressFn",
    "Publication",
    "PublishOptions",
    "ReplyChannel",
    "Request",
    "Requester",
    "Rights",
    "Service",
    "StatusChange",
    "Topics",
    "Transport",
    "accept",
    "add_common_arguments",
    "add_metrics_arguments",
    "add_rights_arguments",
    "answer",
    "as_caller",
    "bind_arguments",
    "call_subscriptions",
    "canonical_class_path",
    "check_create",
    "check_level",
    "class_path",
    "decode",
    "describe_class",
    "encode",
    "error_from_envelope",
    "fsync_path",
    "invoke",
    "is_json",
    "lookup_method",
    "method",
    "metrics_registry",
    "new_client_id",
    "parse_args",
    "parse_status",
    "private_client_id",
    "remote_error",
    "rights_from",
    "scoped_id",
    "sd_notify",
    "serve",
    "set_nodelay",
    "setup_logging",
    "split_call",
    "start_metrics",
    "topic_matches",
    "valid_topic_text",
    "varint",
    "wait_for_signal",
]
