"""Named service methods: the :func:`method` decorator and the :class:`Dispatcher`.

The dispatcher binds a request's arguments to the method's signature before
anything runs, and maps errors so that the caller learns whose fault it was:

- a :class:`~continuum_mqtt.ContinuumError` raised by the method goes out as it is;
- arguments that do not bind: ``bad_arguments`` (or the class the service
  chose, e.g. ``bad_request`` for node control); argument names starting with
  ``_`` (reserved for context): ``bad_request``; an unknown name:
  ``unknown_method``;
- any other exception raised inside the method (a ``TypeError`` included):
  ``method_error`` with the traceback, never the caller's fault; a service
  may translate some first (the gateway: ``sqlite3.Error`` -> ``storage``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .._errors import BadArguments, BadRequest, ContinuumError, DeadlineExpired, UnknownMethod
from .._invoke import bind_arguments, remote_error
from .._protocol import ANONYMOUS, Request
from ._once import ExactlyOnce
from ._reply import Outcome, ReplyChannel, answer

__all__ = ["CONTEXT", "NO_CONTEXT", "Context", "Dispatcher", "MethodSpec", "method"]

log = logging.getLogger("continuum_mqtt.service")

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__continuum_method__"

CONTEXT = ("deadline", "rid", "reply", "caller", "ctx")
"""What a method may ask for (``context=``), passed as keyword ``_<name>``:
``deadline`` (the request's, a ``time.monotonic()`` value or None), ``rid``
(the request id of a ``changes`` method, None otherwise), ``reply`` (the
:class:`~continuum_mqtt.service.ReplyChannel`, for progress updates) and
``caller`` (the request's caller: the broker username its topic carries);
``ctx`` all of them as one :class:`Context`."""


@dataclass(frozen=True)
class Context:
    """A request's context, for a method that asks for ``ctx``."""

    deadline: float | None = None
    rid: str | None = None
    reply: ReplyChannel | None = None
    caller: str = ANONYMOUS


NO_CONTEXT = Context()


@dataclass(frozen=True)
class MethodSpec:
    """Metadata :func:`method` stores on a function."""

    name: str | None = None
    """The wire name (default: the function's name)."""
    changes: bool = False
    """It changes state: exactly-once by request id (:meth:`Dispatcher.serve`)."""
    context: tuple[str, ...] = ()
    """Context it takes as keyword ``_<name>`` (see :data:`CONTEXT`)."""


@overload
def method(fn: F, /) -> F: ...
@overload
def method(
    *, name: str | None = None, changes: bool = False, context: tuple[str, ...] = ()
) -> Callable[[F], F]: ...
def method(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    changes: bool = False,
    context: tuple[str, ...] = (),
) -> F | Callable[[F], F]:
    """Mark a function or method as a service method, bare (``@method``) or
    with options (``@method(changes=True, context=("deadline",))``). The
    function is returned unchanged with a :class:`MethodSpec` stored on it;
    :meth:`Dispatcher.register` collects the marked methods of an object."""
    unknown = [c for c in context if c not in CONTEXT]
    if unknown:
        raise TypeError(f"unknown context {unknown}: choose among {CONTEXT}")
    spec = MethodSpec(name, changes, tuple(context))

    def mark(f: F) -> F:
        setattr(f, _ATTR, spec)
        return f

    return mark(fn) if fn is not None else mark


def spec_of(fn: Any) -> MethodSpec | None:
    spec = getattr(fn, _ATTR, None)
    return spec if isinstance(spec, MethodSpec) else None


class Dispatcher:
    """A registry of named methods and the one way to run a request on them.

    ``service`` names it in messages; ``bad_arguments`` is the error class for
    arguments that do not bind; ``positional=False`` ignores a request's
    positional ``args`` (node control takes keyword arguments only);
    ``translate`` may turn an exception raised inside a method into a
    :class:`~continuum_mqtt.ContinuumError` (None: ``method_error``).
    """

    def __init__(
        self,
        service: str = "service",
        *,
        bad_arguments: type[ContinuumError] = BadArguments,
        positional: bool = True,
        translate: Callable[[Exception], ContinuumError | None] | None = None,
    ) -> None:
        self.service = service
        self.bad_arguments = bad_arguments
        self.positional = positional
        self.translate = translate
        self._methods: dict[str, tuple[Callable[..., Any], MethodSpec]] = {}

    # -- registration ----------------------------------------------------------------
    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        changes: bool | None = None,
        context: tuple[str, ...] | None = None,
    ) -> Callable[..., Any]:
        """Register ``fn``; options override those stored by :func:`method`."""
        found = spec_of(fn) or MethodSpec()
        spec = MethodSpec(
            name or found.name or fn.__name__,
            found.changes if changes is None else changes,
            found.context if context is None else tuple(context),
        )
        assert spec.name is not None
        self._methods[spec.name] = (fn, spec)
        return fn

    def register(self, obj: Any) -> Dispatcher:
        """Register every :func:`method` of ``obj`` (bound to it)."""
        for attr in dir(type(obj)):
            spec = spec_of(inspect.getattr_static(type(obj), attr, None))
            if spec is not None:
                self.add(getattr(obj, attr))
        return self

    def names(self) -> list[str]:
        return sorted(self._methods)

    def spec(self, name: str) -> MethodSpec | None:
        found = self._methods.get(name)
        return found[1] if found is not None else None

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    # -- running ---------------------------------------------------------------------
    def dispatch(self, req: Request, **context: Any) -> Any:
        """Run ``req``; raises :class:`~continuum_mqtt.ContinuumError` only (mapped
        as the module says). ``context`` values (see :data:`CONTEXT`) reach the
        methods that asked for them."""
        found = self._methods.get(req.method)
        if found is None:
            raise UnknownMethod(
                f"the {self.service} has no method {req.method!r}", method=req.method
            )
        fn, spec = found
        if any(k.startswith("_") for k in req.kwargs):
            raise BadRequest("argument names starting with '_' are reserved")
        args = req.args if self.positional else []
        kwargs = dict(req.kwargs)
        for key in spec.context:
            kwargs["_" + key] = Context(**context) if key == "ctx" else context.get(key)
        try:  # with the context: positional arguments must not reach it
            bind_arguments(fn, args, kwargs, f"{self.service} {req.method}")
        except BadArguments as exc:
            if self.bad_arguments is BadArguments:
                raise
            raise self.bad_arguments(exc.message) from None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, ContinuumError):
                translated = self.translate(exc) if self.translate is not None else None
                if translated is not None:
                    raise translated from exc
                log.exception("%s %s failed", self.service, req.method)
            wrapped = remote_error(exc)
            if wrapped is exc:
                raise
            raise wrapped from exc

    def outcome(self, req: Request, **context: Any) -> Outcome:
        """:meth:`dispatch` as an outcome: ``(True, result)`` or ``(False, envelope)``."""
        try:
            return (True, self.dispatch(req, **context))
        except ContinuumError as exc:
            return (False, exc.to_envelope())

    def serve(self, req: Request, chan: ReplyChannel, *, once: ExactlyOnce | None = None) -> None:
        """Run ``req`` and answer on ``chan``: not started once its deadline
        passed (``deadline_expired``); with ``once``, methods marked
        ``changes`` are exactly-once by request id (a resend gets the first
        outcome; while the first still runs, no second reply)."""
        if chan.expired():
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        spec = self.spec(req.method)
        rid = req.id if once is not None and spec is not None and spec.changes else None
        if once is not None and rid is not None:
            claim = once.begin(rid)
            if claim.running:
                return
            if claim.done and claim.outcome is not None:
                answer(chan, claim.outcome)
                return
        outcome = self.outcome(req, deadline=chan.deadline, rid=rid, reply=chan, caller=req.caller)
        if once is not None and rid is not None:
            once.finish(rid, outcome, method=req.method)
        answer(chan, outcome)
