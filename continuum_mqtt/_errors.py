"""The exception tree and the wire error envelope.

One root (:class:`ContinuumError`), one class per stable wire code. Every class
that declares a ``code`` registers itself under it when it is created (no
hand-kept table; a code taken twice is refused): the client rebuilds a known
code into its class, anything else arrives as :class:`RemoteError` carrying the
remote code, type, message and traceback.

Applications raise subclasses of :class:`ApplicationError` with namespaced
codes (``forecast.series_too_short``); the protocol's own codes have no dot.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

__all__ = [
    "AliasTaken",
    "ApplicationError",
    "BadArguments",
    "BadRequest",
    "Busy",
    "Cancelled",
    "ContinuumError",
    "DeadlineExpired",
    "Forbidden",
    "MethodNotActive",
    "NoNodeAvailable",
    "NotConnected",
    "ObjectNotHere",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RemoteError",
    "StorageError",
    "Unavailable",
    "UnencodableResult",
    "UnknownClass",
    "UnknownMethod",
    "UnknownObject",
    "error_class",
    "error_from_envelope",
]

# code -> the class that declared it; filled by ContinuumError.__init_subclass__.
_REGISTRY: dict[str, type[ContinuumError]] = {}

# The code of every application exception without a code of its own: never
# registered (RemoteError is what a client makes of it).
METHOD_ERROR = "method_error"

_PROTOCOL_CODE = re.compile(r"[a-z][a-z0-9_]*\Z")
_APP_CODE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+\Z")

# Envelope keys that are not extra fields.
_RESERVED = frozenset({"code", "type", "message", "traceback", "remote_type", "remote_code"})


def _register(cls: type[ContinuumError]) -> None:
    code = cls.__dict__["code"]
    if not isinstance(code, str):
        raise TypeError(f"{cls.__qualname__}.code must be a string, not {type(code).__name__}")
    if code == METHOD_ERROR:
        return
    if cls._namespaced:
        if not _APP_CODE.match(code):
            raise TypeError(
                f"{cls.__qualname__}.code = {code!r}: an application error code is "
                "'<namespace>.<name>', lowercase letters, digits and '_' (forecast.series_too_short)"
            )
    elif not _PROTOCOL_CODE.match(code):
        raise TypeError(
            f"{cls.__qualname__}.code = {code!r}: protocol codes are lowercase words without a "
            "dot; applications subclass ApplicationError for namespaced codes"
        )
    taken = _REGISTRY.get(code)
    if taken is not None and (taken.__module__, taken.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):  # the same class defined again (a reloaded module) takes its place
        raise TypeError(
            f"error code {code!r} of {cls.__module__}.{cls.__qualname__} is already "
            f"taken by {taken.__module__}.{taken.__qualname__}"
        )
    _REGISTRY[code] = cls


def error_class(code: str) -> type[ContinuumError] | None:
    """The class registered for a wire code in this process (None if none is)."""
    return _REGISTRY.get(code)


class ContinuumError(Exception):
    """Root of every continuum error. ``code`` is the stable wire code.

    A subclass that declares ``code`` registers itself under it (the client
    rebuilds that code into it); a code may be declared by one class only.
    """

    code: str = "internal"
    _namespaced: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _register(cls)

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

    def trimmed(self, limit: int = 1000) -> ContinuumError:
        """This error without extra fields, its texts cut to ``limit`` characters:
        what to send when its full envelope cannot be (unencodable, too large).
        Same class, code and ``type``; ``__init__`` is not called."""
        err = type(self).__new__(type(self), self.message[:limit])
        err.__dict__.update(self.__dict__)
        ContinuumError.__init__(err, self.message[:limit])
        if isinstance(err, RemoteError):
            err.traceback = err.traceback[-limit:]
        return err


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


class Cancelled(ContinuumError):
    """The call was stopped at a cancellation point of its method
    (``continuum_mqtt.check_cancelled()``): its deadline passed (``reason``
    ``"deadline"``) or its node is shutting down (``reason`` ``"shutdown"``)."""

    code = "cancelled"


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


class QuotaExceeded(ContinuumError):
    """The caller's account reached one of its limits (``limit`` and ``what``
    say which: objects owned, calls in flight, bytes queued). Free some, or ask
    an operator for a higher limit; other accounts are not affected."""

    code = "quota_exceeded"


class Forbidden(ContinuumError):
    """The caller (the broker account the request came from, protocol.md section
    21) has no right to do this: call another owner's object, manage it, take
    an alias outside its namespace, bind another device's metrics."""

    code = "forbidden"


class NotConnected(ContinuumError):
    """The client is not connected to the broker."""

    code = "not_connected"


class RemoteError(ContinuumError):
    """An exception raised inside the remote method, or a code this process has
    no class for (an application error whose class is not imported here).

    ``code`` and ``remote_code`` are the wire code (``method_error`` for a plain
    application exception), ``remote_type`` the remote exception's class name,
    ``traceback`` its formatted traceback (when the node sends it), ``data`` the
    envelope's extra fields.
    """

    code = METHOD_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        remote_type: str = "",
        traceback: str = "",
        remote_code: str = METHOD_ERROR,
        **data: Any,
    ) -> None:
        super().__init__(message, **data)
        self.remote_type = remote_type
        self.traceback = traceback
        self.remote_code = remote_code
        self.code = remote_code

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}" if self.remote_type else self.message

    def to_envelope(self) -> dict[str, Any]:
        env = super().to_envelope()
        env.update(code=self.remote_code, type=self.remote_type)
        if self.traceback or self.remote_code == METHOD_ERROR:  # app codes relay as they came
            env["traceback"] = self.traceback
        return env


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Extra fields travel in CBOR and JSON: plain data only."""
    if isinstance(value, _PLAIN):
        return
    if depth < 32 and isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, where, depth + 1)
        return
    if depth < 32 and isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: map keys must be strings, not {type(k).__name__}")
            _check_plain(v, where, depth + 1)
        return
    raise TypeError(
        f"{where} must be plain data (str, int, float, bool, None, lists, maps), "
        f"not {type(value).__name__}"
    )


class ApplicationError(ContinuumError):
    """Base of the typed errors an application raises from its active methods.

    A subclass declares a namespaced wire ``code`` (``"<namespace>.<name>"``,
    lowercase: ``forecast.series_too_short``); it registers itself under it when
    it is created, and a code may be declared by one class only. Raised inside
    an active method, it reaches the caller with that ``code``, ``type`` (the
    class name), ``message`` and its keyword arguments as extra fields (plain
    data; readable as ``exc.data[name]`` or ``exc.<name>``)::

        class SeriesTooShort(continuum_mqtt.ApplicationError):
            code = "forecast.series_too_short"

        raise SeriesTooShort("need more rows", rows=5, need=7)

    A Python client that has the class (its module imported) gets an instance
    of it, rebuilt without calling ``__init__``; one without it gets a
    :class:`RemoteError` whose ``code``/``remote_code`` is the code. A
    subclass without a code of its own is sent with its parent's code; raised
    directly, ``ApplicationError`` travels like any exception (``method_error``).
    """

    code = METHOD_ERROR
    _namespaced = True
    _remote_type: str  # set on a rebuilt error raised by a subclass without a code of its own

    def __init__(self, message: str = "", **data: Any) -> None:
        for name, value in data.items():
            if not name.isidentifier() or name in _RESERVED:
                raise TypeError(f"{type(self).__name__}: {name!r} cannot be an extra field")
            _check_plain(value, f"{type(self).__name__}.{name}")
        super().__init__(message, **data)

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data")
        if data is not None and name in data:
            return data[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_envelope(self) -> dict[str, Any]:
        env = super().to_envelope()
        env["type"] = self.__dict__.get("_remote_type") or type(self).__name__
        return env

    @classmethod
    def _rebuild(cls, message: str, remote_type: str, data: dict[str, Any]) -> ApplicationError:
        """The instance a client makes of a wire envelope (``__init__`` not called:
        a subclass's own signature need not match the envelope)."""
        err = cls.__new__(cls, message)
        ContinuumError.__init__(err, message, **data)
        if remote_type and remote_type != cls.__name__:
            err._remote_type = remote_type
        return err


def error_from_envelope(env: Any) -> ContinuumError:
    """Rebuild the exception for a wire error envelope: the class registered for
    its code in this process, else RemoteError carrying the code."""
    if not isinstance(env, dict):
        return RemoteError(f"malformed error envelope: {env!r}", remote_type="ProtocolError")
    code = str(env.get("code", "internal"))
    message = str(env.get("message", ""))
    extra = {
        k: v
        for k, v in env.items()
        if isinstance(k, str) and k.isidentifier() and k not in _RESERVED
    }
    cls = _REGISTRY.get(code)
    if cls is not None and issubclass(cls, ApplicationError):
        return cls._rebuild(message, str(env.get("type", "")), extra)
    if cls is not None:
        return cls(message, **extra)
    return RemoteError(
        message,
        remote_type=str(env.get("type", "")),
        traceback=str(env.get("traceback", "")),
        remote_code=code,
        **extra,
    )
