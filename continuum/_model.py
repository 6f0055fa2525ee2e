"""The object model: :class:`ActiveObject`, the :func:`active` marker and :func:`progress`.

Nothing here imports a heavy library; cloud-side classes subclass
:class:`ActiveObject` and mark the methods that may be called remotely.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["ActiveObject", "ActiveSpec", "active", "active_methods", "class_path", "progress"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__continuum_active__"


@dataclass(frozen=True)
class ActiveSpec:
    """Metadata stored on a function marked with :func:`active`."""

    readonly: bool = False
    """The method does not mutate the object (no snapshot needed after it runs)."""
    timeout: float | None = None
    """Default deadline in seconds for calls of this method (None: the caller's default)."""


@overload
def active(fn: F, /) -> F: ...
@overload
def active(*, readonly: bool = False, timeout: float | None = None) -> Callable[[F], F]: ...
def active(
    fn: F | None = None, /, *, readonly: bool = False, timeout: float | None = None
) -> F | Callable[[F], F]:
    """Mark a public method as callable remotely, bare (``@active``) or with options
    (``@active(readonly=True)``). The function itself is returned unchanged, with the
    metadata stored on it, so it runs the same in local mode and on a node."""
    spec = ActiveSpec(readonly=readonly, timeout=timeout)

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError("@active decorates functions")
        if f.__name__.startswith("_"):
            raise TypeError(f"@active cannot expose private method {f.__name__!r}")
        setattr(f, _ATTR, spec)
        return f

    if fn is not None:
        return mark(fn)
    return mark


def _spec_of(obj: Any) -> ActiveSpec | None:
    spec = getattr(obj, _ATTR, None)
    return spec if isinstance(spec, ActiveSpec) else None


def active_methods(cls: type) -> dict[str, ActiveSpec]:
    """Public methods of ``cls`` marked active (inherited ones included)."""
    found: dict[str, ActiveSpec] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        spec = _spec_of(inspect.getattr_static(cls, name, None))
        if spec is not None:
            found[name] = spec
    return found


def class_path(cls: type) -> str:
    """The dotted path an edge stub uses to name ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


class ActiveObject:
    """Base class for objects whose :func:`active` methods run where the object lives.

    A subclass is a plain Python class: ``__init__`` takes the creation arguments,
    attributes hold the object's data, and methods marked :func:`active` are the
    only ones a remote caller can reach.
    """

    __active_methods__: dict[str, ActiveSpec] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__active_methods__ = active_methods(cls)


# -- progress ---------------------------------------------------------------

_progress_sink: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "continuum_progress_sink", default=None
)


def progress(update: Any) -> None:
    """Send a progress update to the caller of the active method now running.

    Updates reach the caller in order, before the final result. Outside an
    active call (a plain local method call) this does nothing, so application
    code can call it unconditionally.
    """
    sink = _progress_sink.get()
    if sink is not None:
        sink(update)
