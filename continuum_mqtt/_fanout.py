"""Fan-out: one method called on many objects, where each lives.

``client.fan_out(objects, "forecast", ...)`` (:meth:`_Directory.fan_out`)
resolves the references it does not know in bulk, groups the objects by the
node that holds them, keeps at most ``window`` calls in flight per node (each
completion sends that node's next call, from the thread that completed it) and
returns a :class:`FanOutResult`: the value or the error of every object, never
an exception for one failure. The whole operation has one deadline; every call
carries the time left of it. ``per_object`` adds keyword arguments of one
object's own to its call (a block's seed, its part of a parameter sweep). On
the wire these are ordinary calls (docs/protocol.md §20.11).

Edge-safe: imports the standard library only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ._errors import BadRequest, ContinuumError, DeadlineExpired, RemoteError

if TYPE_CHECKING:
    from ._proxy import ObjectProxy

__all__ = ["FanOutResult", "FanOutTarget", "ProgressFn2", "run_fan_out"]

ProgressFn2 = Callable[[int, int], None]
"""``on_progress(done, total)``, in the calling thread."""

log = logging.getLogger("continuum.client")

_PROGRESS_EVERY = 0.05  # s between progress callbacks, at most one per interval


@dataclass
class FanOutResult:
    """What :meth:`fan_out` returns: ``results`` (key -> value) and ``errors``
    (key -> :class:`~continuum_mqtt.ContinuumError`), where the key of an
    object is the reference it was given by (an id or alias as passed, the id
    of an :class:`ObjectProxy`); every object is in exactly one of the two.
    ``ids`` maps each key resolved to its object id, ``nodes`` counts the
    objects per node, ``seconds`` is the wall time of the whole operation,
    ``resolve_seconds`` the part spent resolving references in bulk;
    ``order`` lists the keys as given (:meth:`items` follows it)."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, ContinuumError] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    resolve_seconds: float = 0.0
    order: list[str] = field(default_factory=list)  # the keys, in the order given

    @property
    def total(self) -> int:
        return len(self.results) + len(self.errors)

    @property
    def ok(self) -> bool:
        """Whether every object answered with a result."""
        return not self.errors

    def error_counts(self) -> dict[str, int]:
        """How many objects failed with each error code."""
        counts: dict[str, int] = {}
        for err in self.errors.values():
            counts[err.code] = counts.get(err.code, 0) + 1
        return counts

    def __getitem__(self, key: str) -> Any:
        """The value of ``key``; raises its error if it failed."""
        if key in self.errors:
            raise self.errors[key]
        return self.results[key]

    def __len__(self) -> int:
        return self.total

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(key, value or error)`` for every object, in the order given."""
        for key in self.order:
            yield key, self.errors[key] if key in self.errors else self.results[key]

    def raise_first(self) -> None:
        """Raise the first error, if any (for callers that want all or nothing)."""
        for err in self.errors.values():
            raise err

    def __repr__(self) -> str:
        return (
            f"<FanOutResult {len(self.results)} ok, {len(self.errors)} failed"
            f" {self.error_counts()} in {self.seconds:.2f} s>"
        )


class FanOutTarget:
    """What a client gives the fan-out: its calls, where an object lives and a
    bulk resolve (the defaults: one group, one ``get`` per reference)."""

    if TYPE_CHECKING:  # declared only: the client's own (later in its bases) serve
        # _call(proxy, method, args, kwargs, timeout, on_progress): a call's future
        _call: Callable[..., Future[Any]]

        def get(self, ref: str) -> ObjectProxy: ...

    def _node_of(self, proxy: ObjectProxy) -> str | None:
        """The node that holds ``proxy``, when known (None: one shared group)."""
        return None

    def _known(self, ref: str) -> ObjectProxy | None:
        """A proxy for ``ref`` without asking anyone, when it is an id known here."""
        return None

    def _placed(self, proxy: ObjectProxy) -> bool:
        """Whether a call to ``proxy`` can be sent without a lookup first (a
        client's ``_call`` may block on one: never in the thread that
        completes calls, where the fan-out sends)."""
        return True

    def _resolve_many(
        self, refs: list[str], timeout: float
    ) -> dict[str, ObjectProxy | ContinuumError]:
        out: dict[str, ObjectProxy | ContinuumError] = {}
        for ref in refs:
            try:
                out[ref] = self.get(ref)
            except ContinuumError as exc:
                out[ref] = exc
        return out


@dataclass(eq=False)
class _Run:
    """The state of one fan-out: per-node queues and the counts, under a lock."""

    target: FanOutTarget
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    window: int
    deadline: float
    result: FanOutResult
    queues: dict[str | None, deque[tuple[str, ObjectProxy]]] = field(default_factory=dict)
    keys_of: dict[str, list[str]] = field(default_factory=dict)  # object id -> its references
    per_object: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # key -> kwargs
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # object id -> its kwargs
    lock: threading.Lock = field(default_factory=threading.Lock)
    outstanding: int = 0  # calls not yet finished (queued or in flight)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def add(self, key: str, proxy: ObjectProxy) -> None:
        oid = proxy._id or key
        keys = self.keys_of.get(oid)
        if keys is not None:  # named twice (an alias and the id): called once
            keys.append(key)
            return
        self.keys_of[oid] = [key]
        extra = self.per_object.get(key)
        if extra:
            self.own[oid] = {**self.kwargs, **extra}
        node = self.target._node_of(proxy)
        self.queues.setdefault(node, deque()).append((oid, proxy))
        self.result.nodes[node or ""] = self.result.nodes.get(node or "", 0) + 1
        self.outstanding += 1

    def start(self) -> None:
        for node, queue in self.queues.items():
            for _ in range(min(self.window, len(queue))):
                self._next(node)

    def _next(self, node: str | None) -> None:
        """Send ``node``'s next call (any thread); a call that fails at once
        (its node known offline...) is recorded and the next one sent, in a
        loop rather than by recursion."""
        while True:
            with self.lock:
                queue = self.queues[node]
                if not queue:
                    return
                key, proxy = queue.popleft()
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._record(key, None, DeadlineExpired("the fan-out's deadline passed; not sent"))
                continue
            try:
                kwargs = self.own.get(key, self.kwargs)
                fut = self.target._call(proxy, self.method, self.args, kwargs, left, None)
            except Exception as exc:  # still this object's error, never the round's
                self._record(key, None, _as_error(exc))
                continue
            if fut.done():
                self._record_future(key, fut)
                continue
            fut.add_done_callback(partial(self._finished, key, node))
            return

    def _finished(self, key: str, node: str | None, fut: Future[Any]) -> None:
        if self._record_future(key, fut):
            self._next(node)

    def _record_future(self, key: str, fut: Future[Any]) -> bool:
        exc = fut.exception()
        if exc is None:
            return self._record(key, fut.result(), None)
        return self._record(key, None, _as_error(exc))

    def _record(self, oid: str, value: Any, exc: ContinuumError | None) -> bool:
        """Keep one object's answer; False when it was already given up."""
        with self.lock:
            keys = self.keys_of.pop(oid, None)
            if keys is None:
                return False  # already answered (given up at the deadline)
            for key in keys:
                if exc is None:
                    self.result.results[key] = value
                else:
                    self.result.errors[key] = exc
            self.outstanding -= 1
            if self.outstanding == 0:
                self.changed.notify()
        return True

    def wait(self, total: int, on_progress: ProgressFn2 | None) -> None:
        """Until every object is answered, or the deadline (and a grace for the
        replies of the last calls) has passed: the rest fail with
        ``deadline_expired``."""
        give_up = self.deadline + 1.0
        reported = -1
        with self.lock:
            while self.outstanding > 0:
                now = time.monotonic()
                if now >= give_up:
                    break
                self.changed.wait(min(give_up - now, _PROGRESS_EVERY))
                if on_progress is not None and self.result.total != reported:
                    reported = self.result.total
                    self.lock.release()
                    try:
                        _report(on_progress, reported, total)
                    finally:
                        self.lock.acquire()
            for queue in self.queues.values():  # left unsent or unanswered
                queue.clear()
        self._expire_rest()
        if on_progress is not None and self.result.total != reported:
            _report(on_progress, self.result.total, total)

    def _expire_rest(self) -> None:
        with self.lock:
            for keys in self.keys_of.values():
                for key in keys:
                    self.result.errors[key] = DeadlineExpired(
                        f"no reply for {key} within the fan-out's deadline"
                    )
            self.keys_of.clear()
            self.outstanding = 0


def _as_error(exc: BaseException) -> ContinuumError:
    """A failure as a continuum error (one not from the wire is a bug: still
    one object's error)."""
    if isinstance(exc, ContinuumError):
        return exc
    return RemoteError(repr(exc), remote_type=type(exc).__name__)


def _report(on_progress: ProgressFn2, done: int, total: int) -> None:
    try:
        on_progress(done, total)
    except Exception:  # the caller's bug must not abandon calls in flight
        log.exception("fan-out progress callback failed")


def _key_of(obj: Any) -> str:
    from ._proxy import ObjectProxy

    if isinstance(obj, ObjectProxy):
        if obj._id is None:
            raise BadRequest("a pool has no single object to fan out to")
        return obj._id
    if isinstance(obj, str):
        return obj
    raise TypeError(f"fan_out takes ObjectProxy objects, ids and aliases, not {type(obj).__name__}")


def run_fan_out(
    target: FanOutTarget,
    objects: Iterable[ObjectProxy | str],
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    window: int,
    timeout: float,
    on_progress: ProgressFn2 | None = None,
    per_object: Mapping[str, Mapping[str, Any]] | None = None,
) -> FanOutResult:
    """Call ``method(*args, **kwargs)`` on every object (see the module doc);
    ``per_object`` maps an object's key (its reference as given, the id of a
    proxy) to keyword arguments added to (or replacing) ``kwargs`` for it."""
    if window < 1:
        raise ValueError("window must be at least 1")
    from ._proxy import ObjectProxy

    t0 = time.monotonic()
    deadline = t0 + timeout
    result = FanOutResult()
    proxies: dict[str, ObjectProxy] = {}
    unknown: list[str] = []
    for obj in objects:
        key = _key_of(obj)
        if key in proxies or key in result.ids:
            continue
        if isinstance(obj, ObjectProxy):
            proxy: ObjectProxy | None = obj if target._placed(obj) else None
        else:
            proxy = target._known(key)
        result.ids[key] = key
        result.order.append(key)
        if proxy is None:
            unknown.append(key)
        else:
            proxies[key] = proxy
    if unknown:
        t = time.monotonic()
        resolved = target._resolve_many(unknown, max(0.001, deadline - t))
        result.resolve_seconds = time.monotonic() - t
        for ref in unknown:
            got = resolved.get(ref)
            if isinstance(got, ObjectProxy) and got._id is not None:
                proxies[ref] = got
                result.ids[ref] = got._id
            else:
                del result.ids[ref]
                result.errors[ref] = (
                    got
                    if isinstance(got, ContinuumError)
                    else DeadlineExpired(f"{ref} was not resolved within the fan-out's deadline")
                )
    run = _Run(target, method, args, kwargs, window, deadline, result, per_object=per_object or {})
    for key, proxy in proxies.items():
        run.add(key, proxy)
    total = len(result.ids) + len(result.errors)
    run.start()
    run.wait(total, on_progress)
    result.seconds = time.monotonic() - t0
    return result
