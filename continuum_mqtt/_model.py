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
    """The method does not change the object: nothing is persisted or replicated
    after it runs, and a retry simply runs it again."""
    snapshot: bool = False
    """On a durable node, persist a full snapshot after this method instead of
    journaling the call. Use it for methods that change much of the object, are
    slow to replay, or are not deterministic (see docs/architecture.md)."""


@overload
def active(fn: F, /) -> F: ...
@overload
def active(*, readonly: bool = False, snapshot: bool = False) -> Callable[[F], F]: ...
def active(
    fn: F | None = None, /, *, readonly: bool = False, snapshot: bool = False
) -> F | Callable[[F], F]:
    """Mark a public method as callable remotely, bare (``@active``) or with options
    (``@active(readonly=True)``, ``@active(snapshot=True)``, see :class:`ActiveSpec`).
    The function itself is returned unchanged, with the metadata stored on it, so
    it runs the same in local mode and on a node."""
    if readonly and snapshot:
        raise TypeError("a readonly method changes nothing to snapshot")
    spec = ActiveSpec(readonly=readonly, snapshot=snapshot)

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
    __continuum_stateless__: bool = False

    @classmethod
    def __continuum_warm_up__(cls) -> None:
        """Called once by a node that hosts the class, before it serves calls:
        pay one-time costs here (lazy imports, kernel set-up) instead of in
        the first caller's call. Does nothing by default."""

    def __init_subclass__(cls, *, stateless: bool | None = None, **kwargs: Any) -> None:
        """``class Scorer(ActiveObject, stateless=True)``: instances hold no state
        worth keeping, so every node hosting the class keeps one and serves the
        class's *pool*: calls spread over those nodes (MQTT 5 shared
        subscription), and adding a node adds throughput. Its ``__init__`` takes
        no arguments and its active methods may run concurrently."""
        super().__init_subclass__(**kwargs)
        cls.__active_methods__ = active_methods(cls)
        if stateless is not None:
            cls.__continuum_stateless__ = stateless


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
