"""continuum: active objects over MQTT for the edge-to-cloud continuum.

Edge code needs only :func:`connect` (or :class:`Client`); cloud code defines
:class:`ActiveObject` subclasses with :func:`active` methods.
"""

from __future__ import annotations

from ._client import ClassStub, Client, ObjectProxy, RemoteMethod
from ._errors import (
    AliasTaken,
    BadArguments,
    BadRequest,
    Busy,
    ContinuumError,
    DeadlineExpired,
    MethodNotActive,
    NoNodeAvailable,
    NotConnected,
    ObjectNotHere,
    PayloadTooLarge,
    RemoteError,
    Unavailable,
    UnencodableResult,
    UnknownClass,
    UnknownMethod,
    UnknownObject,
)
from ._local import LocalClient
from ._model import ActiveObject, ActiveSpec, active, progress
from ._protocol import DEFAULT_ROOT, PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ROOT",
    "PROTOCOL_VERSION",
    "ActiveObject",
    "ActiveSpec",
    "AliasTaken",
    "BadArguments",
    "BadRequest",
    "Busy",
    "ClassStub",
    "Client",
    "ContinuumError",
    "DeadlineExpired",
    "LocalClient",
    "MethodNotActive",
    "NoNodeAvailable",
    "NotConnected",
    "ObjectNotHere",
    "ObjectProxy",
    "PayloadTooLarge",
    "RemoteError",
    "RemoteMethod",
    "Unavailable",
    "UnencodableResult",
    "UnknownClass",
    "UnknownMethod",
    "UnknownObject",
    "active",
    "connect",
    "progress",
]


def connect(url: str = "mqtt://127.0.0.1:1883", **options: object) -> Client | LocalClient:
    """A client for ``url``: ``mqtt://host:port`` (or ``mqtts://``) for a deployment,
    ``local:`` for local mode (objects in this process). Use it with ``with``."""
    if url.startswith("local"):
        return LocalClient(**options)  # type: ignore[arg-type]
    return Client(url, **options)  # type: ignore[arg-type]
