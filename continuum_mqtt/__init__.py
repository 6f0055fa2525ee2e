"""continuum: active objects over MQTT for the edge-to-cloud continuum.

Edge code needs only :func:`connect` (or :class:`Client`); cloud code defines
:class:`ActiveObject` subclasses with :func:`active` methods.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import (
    _codec,  # noqa: F401 - light; continuum_mqtt._codec is used as an attribute
    _errors,
)
from ._errors import *  # noqa: F403 - the error classes: their __all__ is part of ours
from ._protocol import DEFAULT_ROOT, PROTOCOL_VERSION

if TYPE_CHECKING:
    from ._client import Client
    from ._datasets import Dataset, create_dataset, open_dataset
    from ._edgelstm import EdgeLSTM, ExportError
    from ._fanout import FanOutResult
    from ._local import LocalClient
    from ._model import (
        ActiveObject,
        ActiveSpec,
        CallContext,
        CancelScope,
        active,
        cancelled,
        check_cancelled,
        current_call,
        progress,
    )
    from ._offload import Offloaded, Offloader
    from ._proxy import ClassStub, ObjectProxy, RemoteMethod

# Loaded on first use: the object model and local mode need `inspect` and
# friends (about 2 MB), which an edge board that only calls never does; the
# client needs paho-mqtt and ssl (about 12 MB), which a module that only
# encodes samples (continuum_mqtt.samples: firmware-sim's wire engine) never does.
_LAZY = {
    "ClassStub": "._proxy",
    "Client": "._client",
    "EdgeLSTM": "._edgelstm",
    "ExportError": "._edgelstm",
    "Offloaded": "._offload",
    "Offloader": "._offload",
    "FanOutResult": "._fanout",
    "Dataset": "._datasets",
    "create_dataset": "._datasets",
    "open_dataset": "._datasets",
    "ObjectProxy": "._proxy",
    "RemoteMethod": "._proxy",
    "LocalClient": "._local",
    "ActiveObject": "._model",
    "ActiveSpec": "._model",
    "active": "._model",
    "CallContext": "._model",
    "CancelScope": "._model",
    "cancelled": "._model",
    "check_cancelled": "._model",
    "current_call": "._model",
    "progress": "._model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'continuum_mqtt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ROOT",
    "PROTOCOL_VERSION",
    "ActiveObject",
    "ActiveSpec",
    "CallContext",
    "CancelScope",
    "ClassStub",
    "Client",
    "Dataset",
    "EdgeLSTM",
    "ExportError",
    "FanOutResult",
    "LocalClient",
    "ObjectProxy",
    "Offloaded",
    "Offloader",
    "RemoteMethod",
    "active",
    "cancelled",
    "check_cancelled",
    "connect",
    "create_dataset",
    "current_call",
    "open_dataset",
    "progress",
    *_errors.__all__,  # the error classes, error_class, error_from_envelope
]


def connect(url: str = "mqtt://127.0.0.1:1883", **options: object) -> Client | LocalClient:
    """A client for ``url``: ``mqtt://host:port`` (or ``mqtts://``) for a deployment,
    ``local:`` for local mode (objects in this process). Use it with ``with``."""
    if url.startswith("local"):
        from ._local import LocalClient

        return LocalClient(**options)  # type: ignore[arg-type]
    from ._client import Client

    return Client(url, **options)  # type: ignore[arg-type]
