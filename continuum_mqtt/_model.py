"""The object model: :class:`ActiveObject`, the :func:`active` marker, and what a
running method may ask of its call: :func:`progress`, :func:`cancelled`,
:func:`check_cancelled` and :func:`current_call` (who called it).

Nothing here imports a heavy library; cloud-side classes subclass
:class:`ActiveObject` and mark the methods that may be called remotely.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._errors import Cancelled

if TYPE_CHECKING:
    import threading

__all__ = [
    "ActiveObject",
    "ActiveSpec",
    "CallContext",
    "CancelScope",
    "active",
    "active_methods",
    "cancelled",
    "check_cancelled",
    "class_path",
    "current_call",
    "progress",
]

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
    open: bool = False
    """Any caller may call it, on any instance, not only the object's owner and
    the accounts it granted (protocol.md section 21): e.g. ``predict`` of a
    shared model. Objects of a class with open methods are visible to all."""
    long: bool = False
    """The method computes for long (trains a model...): a node runs at most
    its long-call budget of such calls at once (``--long-workers``), so light
    calls keep the other workers and cores (docs/architecture.md, "Threads and
    long calls"). A hint about scheduling only: the call behaves the same."""


@overload
def active(fn: F, /) -> F: ...
@overload
def active(
    *, readonly: bool = False, snapshot: bool = False, open: bool = False, long: bool = False
) -> Callable[[F], F]: ...
def active(
    fn: F | None = None,
    /,
    *,
    readonly: bool = False,
    snapshot: bool = False,
    open: bool = False,
    long: bool = False,
) -> F | Callable[[F], F]:
    """Mark a public method as callable remotely, bare (``@active``) or with options
    (``@active(readonly=True)``, ``@active(snapshot=True)``, ``@active(open=True)``,
    ``@active(long=True)``, see :class:`ActiveSpec`).
    The function itself is returned unchanged, with the metadata stored on it, so
    it runs the same in local mode and on a node."""
    if readonly and snapshot:
        raise TypeError("a readonly method changes nothing to snapshot")
    spec = ActiveSpec(readonly=readonly, snapshot=snapshot, open=open, long=long)

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
    __continuum_warm_up_long__: bool = False
    """True: :meth:`__continuum_warm_up__` pays for long calls only
    (``@active(long=True)``): a node whose long calls run in worker processes
    (``--long-calls process``) warms up there, not in its own process."""

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


# -- cancellation -------------------------------------------------------------


class CancelScope:
    """When the call now running should stop: at ``deadline`` (a
    ``time.monotonic()`` value; None: never) or once ``shutdown`` is set (the
    node is stopping; None: never). The node, and local mode, enter one around
    every call (``with CancelScope(deadline, shutdown): ...``); a method asks
    through :func:`cancelled` and :func:`check_cancelled`."""

    __slots__ = ("_token", "deadline", "shutdown")

    def __init__(
        self, deadline: float | None = None, shutdown: threading.Event | None = None
    ) -> None:
        self.deadline = deadline
        self.shutdown = shutdown
        self._token: contextvars.Token[CancelScope | None] | None = None

    def reason(self) -> str | None:
        """``"shutdown"``, ``"deadline"``, or None while the call may go on."""
        if self.shutdown is not None and self.shutdown.is_set():
            return "shutdown"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None

    def __enter__(self) -> CancelScope:
        self._token = _cancel_scope.set(self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _cancel_scope.reset(self._token)
            self._token = None


_cancel_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "continuum_cancel_scope", default=None
)


def cancelled() -> bool:
    """Whether the active call now running should stop: its deadline (the
    request's ``timeout_ms``) has passed, or its node is shutting down.

    Outside an active call (a plain local method call) it is always False.
    A long method asks now and then (once per epoch, per batch...) and stops,
    leaving the object as it was, or calls :func:`check_cancelled`.
    """
    scope = _cancel_scope.get()
    return scope is not None and scope.reason() is not None


def check_cancelled() -> None:
    """Raise :class:`~continuum_mqtt.Cancelled` (code ``cancelled``, field
    ``reason``: ``"deadline"`` or ``"shutdown"``) when the active call now
    running should stop (see :func:`cancelled`); otherwise, and outside an
    active call, do nothing.

    Call it where stopping leaves the object unchanged: compute into locals
    and assign to ``self`` only at the end. A mutating call that raises it is
    answered ``cancelled`` and checkpointed as it left the object, never
    journaled (docs/protocol.md §9).
    """
    scope = _cancel_scope.get()
    why = None if scope is None else scope.reason()
    if why is not None:
        raise Cancelled(
            "the node is shutting down" if why == "shutdown" else "the call's deadline passed",
            reason=why,
        )


# -- the call's context -----------------------------------------------------------


@dataclass(frozen=True)
class CallContext:
    """Who called the active method now running (:func:`current_call`):
    ``caller``, the broker account of the request (its topic's caller level,
    ``"anonymous"`` without one: docs/protocol.md section 21); ``admin``,
    whether that caller has admin rights on the node running the call; ``obj``,
    the id of the object called (None for a pool call). Read-only: the node,
    and local mode, set it around every call they run."""

    caller: str
    admin: bool = False
    obj: str | None = None

    @contextlib.contextmanager
    def scope(self) -> Iterator[CallContext]:
        """Make this the context of the code run inside ``with``: what a node
        (thread or worker process) and local mode do around each call."""
        token = _call_context.set(self)
        try:
            yield self
        finally:
            _call_context.reset(token)


_call_context: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "continuum_call_context", default=None
)


def current_call() -> CallContext | None:
    """The :class:`CallContext` of the active call now running (its caller,
    whether an admin, the object), or None outside one: a plain local method
    call, a constructor, a feed sample (docs/protocol.md section 19), a
    journal replay. A method that acts on others' behalf (a driver fanning
    out to blocks with the node's own client) checks its caller's rights with
    it before it acts."""
    return _call_context.get()
