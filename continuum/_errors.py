"""The exception tree and the wire error envelope.

One root (:class:`ContinuumError`), one class per stable wire code. The client
rebuilds known codes into these classes; anything else arrives as
:class:`RemoteError` carrying the remote type, message and traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AliasTaken",
    "BadArguments",
    "BadRequest",
    "Busy",
    "ContinuumError",
    "DeadlineExpired",
    "MethodNotActive",
    "NoNodeAvailable",
    "NotConnected",
    "ObjectNotHere",
    "PayloadTooLarge",
    "RemoteError",
    "StorageError",
    "Unavailable",
    "UnencodableResult",
    "UnknownClass",
    "UnknownMethod",
    "UnknownObject",
    "error_from_envelope",
]


class ContinuumError(Exception):
    """Root of every continuum error. ``code`` is the stable wire code."""

    code: str = "internal"

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_envelope(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
        }
        env.update(self.data)
        return env


class BadRequest(ContinuumError):
    """The request could not be decoded or lacks a required field."""

    code = "bad_request"


class PayloadTooLarge(ContinuumError):
    """The payload exceeds the configured limit (``limit`` bytes)."""

    code = "payload_too_large"


class UnknownObject(ContinuumError):
    """No object with that id or alias exists in the directory."""

    code = "unknown_object"


class ObjectNotHere(ContinuumError):
    """The node addressed does not hold the object; the client re-resolves."""

    code = "object_not_here"


class UnknownClass(ContinuumError):
    """The class path is not hosted by any (or the chosen) node."""

    code = "unknown_class"


class UnknownMethod(ContinuumError):
    """The object's class has no attribute of that name."""

    code = "unknown_method"


class MethodNotActive(ContinuumError):
    """The attribute exists but is private or not marked active."""

    code = "method_not_active"


class BadArguments(ContinuumError):
    """The arguments do not match the method's signature."""

    code = "bad_arguments"


class UnencodableResult(ContinuumError):
    """The method ran but its result cannot be encoded for the wire."""

    code = "unencodable_result"


class DeadlineExpired(ContinuumError, TimeoutError):
    """The call's deadline passed before it completed (or before it started)."""

    code = "deadline_expired"


class Busy(ContinuumError):
    """The node or object queue is full; retry later."""

    code = "busy"


class Unavailable(ContinuumError):
    """The object's node is offline, or the node holds the object in quarantine
    (``node`` and ``reason`` say which and why)."""

    code = "unavailable"


class StorageError(ContinuumError):
    """The node could not make a mutating call durable (disk full, I/O error).

    The call's effect was rolled back and it was not acknowledged; retrying with
    the same request id later is safe."""

    code = "storage"


class NoNodeAvailable(ContinuumError):
    """No live node hosts the requested class."""

    code = "no_node"


class AliasTaken(ContinuumError):
    """The alias already names another object."""

    code = "alias_taken"


class NotConnected(ContinuumError):
    """The client is not connected to the broker."""

    code = "not_connected"


class RemoteError(ContinuumError):
    """An exception raised inside the remote method, or an unknown wire code.

    ``remote_type`` is the remote exception's class name, ``traceback`` its
    formatted traceback (when the node sends it).
    """

    code = "method_error"

    def __init__(
        self,
        message: str = "",
        *,
        remote_type: str = "",
        traceback: str = "",
        remote_code: str = "method_error",
        **data: Any,
    ) -> None:
        super().__init__(message, **data)
        self.remote_type = remote_type
        self.traceback = traceback
        self.remote_code = remote_code

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}" if self.remote_type else self.message

    def to_envelope(self) -> dict[str, Any]:
        env = super().to_envelope()
        env.update(code=self.remote_code, type=self.remote_type, traceback=self.traceback)
        return env


_BY_CODE: dict[str, type[ContinuumError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        PayloadTooLarge,
        UnknownObject,
        ObjectNotHere,
        UnknownClass,
        UnknownMethod,
        MethodNotActive,
        BadArguments,
        UnencodableResult,
        DeadlineExpired,
        Busy,
        Unavailable,
        NoNodeAvailable,
        AliasTaken,
        NotConnected,
        StorageError,
    )
}


def error_from_envelope(env: Any) -> ContinuumError:
    """Rebuild the exception for a wire error envelope; unknown codes become RemoteError."""
    if not isinstance(env, dict):
        return RemoteError(f"malformed error envelope: {env!r}", remote_type="ProtocolError")
    code = str(env.get("code", "internal"))
    message = str(env.get("message", ""))
    reserved = ("code", "type", "message", "traceback", "remote_type", "remote_code")
    extra = {
        k: v
        for k, v in env.items()
        if isinstance(k, str) and k.isidentifier() and k not in reserved
    }
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, **extra)
    return RemoteError(
        message,
        remote_type=str(env.get("type", "")),
        traceback=str(env.get("traceback", "")),
        remote_code=code,
        **extra,
    )
