"""Running one active call on one object: shared by cloud nodes and local mode,
so both give the same results and the same errors."""

from __future__ import annotations

import inspect
import math
import traceback
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from ._codec import decode, encode
from ._errors import (
    METHOD_ERROR,
    ApplicationError,
    BadArguments,
    ContinuumError,
    MethodNotActive,
    RemoteError,
    UnknownMethod,
)
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
    # docs/protocol.md §8: unknown_method when there is no such attribute,
    # method_not_active when it exists (private, or not marked @active).
    if hasattr(cls, name):
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
    """Wrap an exception raised by application code for the wire. Continuum
    errors, and application errors with a code of their own, keep their code and
    extra fields; anything else becomes ``method_error``."""
    if isinstance(exc, ContinuumError) and not (
        isinstance(exc, ApplicationError) and exc.code == METHOD_ERROR
    ):
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


_DOC_MAX = 2000  # characters of a manifest doc (a status must stay small)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, its lines joined by spaces."""
    lines: list[str] = []
    for line in inspect.cleandoc(doc or "").splitlines():
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line.strip())
    text = " ".join(lines)
    return text if len(text) <= _DOC_MAX else text[: _DOC_MAX - 1] + "\u2026"


def _plain(value: Any) -> bool:
    """A default any client can read: null, booleans, integers, finite floats,
    text, and arrays and text-keyed maps of those (what JSON carries)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _parameters(sig: inspect.Signature, drop_self: bool) -> dict[str, Any]:
    """``params`` (names in order), ``required`` (names a call must pass) and
    ``defaults`` (name -> default, for the defaults with a plain form)."""
    ps = list(sig.parameters.values())
    if drop_self and ps and ps[0].name == "self":
        ps = ps[1:]
    return {
        "params": [p.name for p in ps],
        "required": [p.name for p in ps if p.default is p.empty and p.kind not in _VARIADIC],
        "defaults": {
            p.name: list(p.default) if isinstance(p.default, tuple) else p.default
            for p in ps
            if p.default is not p.empty and _plain(p.default)
        },
    }


def describe_class(cls: type) -> dict[str, Any]:
    """The manifest entry of a class (docs/protocol.md §15): how to construct
    it, and its active methods with their parameters."""
    methods = {}
    for name, spec in sorted(_specs(cls).items()):
        fn = getattr(cls, name)
        methods[name] = {
            "readonly": spec.readonly,
            "snapshot": spec.snapshot,
            **({"open": True} if spec.open else {}),
            **({"long": True} if spec.long else {}),
            **_parameters(_signature(fn), drop_self=True),
            "doc": _first_paragraph(inspect.getdoc(fn)),
        }
    init = cls.__init__  # type: ignore[misc]
    return {
        "doc": _first_paragraph(inspect.getdoc(cls)),
        "stateless": bool(getattr(cls, "__continuum_stateless__", False)),
        # its own docstring only: getdoc() would inherit object.__init__'s
        "init": {
            **_parameters(_signature(cls), drop_self=False),
            "doc": _first_paragraph(None if init is object.__init__ else init.__doc__),
        },
        "methods": methods,
    }
