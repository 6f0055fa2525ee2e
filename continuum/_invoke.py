"""Running one active call on one object: shared by cloud nodes and local mode,
so both give the same results and the same errors."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ._codec import decode, encode
from ._errors import BadArguments, ContinuumError, MethodNotActive, RemoteError, UnknownMethod
from ._model import ActiveObject, ActiveSpec, _progress_sink, active_methods

__all__ = [
    "bind_arguments",
    "describe_class",
    "invoke",
    "lookup_method",
    "remote_error",
    "roundtrip",
]


@lru_cache(maxsize=1024)
def _specs(cls: type) -> dict[str, ActiveSpec]:
    if issubclass(cls, ActiveObject):
        return cls.__active_methods__
    return active_methods(cls)


@lru_cache(maxsize=4096)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def lookup_method(cls: type, name: str) -> ActiveSpec:
    """The spec of ``cls.name`` if it may be called remotely; raises otherwise."""
    spec = _specs(cls).get(name)
    if spec is not None:
        return spec
    if name.startswith("_") or hasattr(cls, name):
        raise MethodNotActive(f"{cls.__qualname__}.{name} is not an active method", method=name)
    raise UnknownMethod(f"{cls.__qualname__} has no method {name!r}", method=name)


def bind_arguments(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], what: str
) -> None:
    """Check the arguments against the signature before running anything."""
    try:
        _signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise BadArguments(f"{what}: {exc}") from None


def remote_error(exc: BaseException) -> ContinuumError:
    """Wrap an exception raised by application code for the wire."""
    if isinstance(exc, ContinuumError):
        return exc
    try:
        message = str(exc)
        tb = "".join(traceback.format_exception(exc))
    except Exception:  # an exception whose text cannot be built (huge ints...)
        message, tb = f"<{type(exc).__name__} with an unprintable message>", ""
    return RemoteError(message[:10_000], remote_type=type(exc).__name__, traceback=tb[-20_000:])


def invoke(
    obj: Any,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
    on_progress: Callable[[Any], None] | None = None,
) -> Any:
    """Validate and run ``obj.method(*args, **kwargs)``.

    Raises :class:`ContinuumError` subclasses only: protocol errors as they are,
    exceptions from the method wrapped in :class:`RemoteError`.
    """
    cls = type(obj)
    lookup_method(cls, method)
    fn = getattr(cls, method)  # the plain function: its signature is cached per class
    bind_arguments(fn, [obj, *args], kwargs, f"{cls.__qualname__}.{method}")
    token = _progress_sink.set(on_progress)
    try:
        return fn(obj, *args, **kwargs)
    except Exception as exc:
        raise remote_error(exc) from exc
    finally:
        _progress_sink.reset(token)


def roundtrip(value: Any) -> Any:
    """What the value becomes after crossing the wire (local mode uses this)."""
    return decode(encode(value))


def describe_class(cls: type) -> dict[str, Any]:
    """The manifest entry of a class: its active methods and their parameters."""
    methods = {}
    for name, spec in sorted(_specs(cls).items()):
        fn = getattr(cls, name)
        params = [p for p in _signature(fn).parameters if p != "self"]
        methods[name] = {
            "readonly": spec.readonly,
            "snapshot": spec.snapshot,
            "params": params,
            "doc": (inspect.getdoc(fn) or "").split("\n", 1)[0],
        }
    return {
        "doc": (inspect.getdoc(cls) or "").split("\n", 1)[0],
        "stateless": bool(getattr(cls, "__continuum_stateless__", False)),
        "methods": methods,
    }
