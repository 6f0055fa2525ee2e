"""Dynamic offloading: per call, run a method on its node or on this board
(docs/protocol.md §24).

An :class:`Offloader` pairs a remote method with a local equivalent (for the
forecaster: :class:`~continuum_mqtt.EdgeLSTM` built from ``edge_export()``)
and chooses per call where it runs:

* on the node when the link is up and the measured round trip fits the
  call's deadline;
* on the board when the client is not connected (``link_down``), when the
  round trip (an EWMA of the measured ones, times ``margin``) would miss the
  deadline (``deadline``), or for ``cooldown`` seconds after the node answered
  ``busy``, ``unavailable``, ``no_node``, ``not_connected`` or the call missed
  its deadline (the call that got the answer runs on the board too:
  ``fallback:<code>``), and at once for a call waiting for its reply when the
  link goes down (``fallback:link_down``).

While it runs calls on the board because of the round trip, it sends one of
them to the node as well every ``probe_interval`` seconds, only to measure
(its value is dropped): so a link that got faster wins the calls back. Use it
for methods whose result depends only on their arguments (no side effects).

Every result is an :class:`Offloaded` saying where it ran and why;
:meth:`Offloader.stats` counts both ways and every reason.

Edge-safe: the standard library only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ._errors import ContinuumError

__all__ = ["OFFLOAD_CODES", "Offloaded", "Offloader"]

OFFLOAD_CODES = frozenset({"busy", "unavailable", "no_node", "not_connected", "deadline_expired"})
"""Error codes of a remote call after which it runs on the board instead."""

REMOTE, LOCAL = "remote", "local"


@dataclass(frozen=True)
class Offloaded:
    """One call's value and where it ran: ``where`` is ``"remote"`` or
    ``"local"``; ``reason`` why (``"ok"`` for a remote call; ``"link_down"``,
    ``"deadline"``, ``"cooldown"`` or ``"fallback:<code>"`` for a local one);
    ``seconds`` the call's wall time; ``rtt`` the round-trip estimate then."""

    value: Any
    where: str
    reason: str
    seconds: float
    rtt: float | None

    @property
    def local(self) -> bool:
        return self.where == LOCAL


def _link_up_of(method: Any) -> bool:
    """Whether the method's client is connected (a local-mode client always is)."""
    backend = method._proxy._backend
    if not hasattr(backend, "_conn"):
        return True
    conn = backend._conn
    return conn is not None and bool(conn.connected)


class Offloader:
    """The offload policy for one method (see the module docstring).

    ``local``: the board's equivalent, called with the call's arguments (None:
    none yet, every call is remote; it may be set later); ``deadline``: the
    default deadline of a call in seconds (None: the client's); ``margin``:
    the round-trip estimate must fit ``deadline / margin``; ``alpha``: the EWMA
    weight of a new round trip; ``watch``: how often (seconds) the link is
    checked while a remote call waits for its reply, so that a link lost
    meanwhile answers the call from the board at once (``fallback:link_down``;
    0: not checked, the call waits for its deadline); ``link_up``: a callable
    saying whether the link is up (default: the method's client is connected).
    """

    def __init__(
        self,
        local: Callable[..., Any] | None = None,
        *,
        deadline: float | None = None,
        margin: float = 1.5,
        alpha: float = 0.3,
        cooldown: float = 5.0,
        probe_interval: float = 10.0,
        watch: float = 0.25,
        link_up: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if margin < 1.0 or not 0.0 < alpha <= 1.0 or cooldown < 0 or probe_interval < 0:
            raise ValueError("margin >= 1, 0 < alpha <= 1, cooldown and probe_interval >= 0")
        self.local = local
        self.deadline = deadline
        self.margin = margin
        self.alpha = alpha
        self.cooldown = cooldown
        self.probe_interval = probe_interval
        self.watch = watch
        self.link_up = link_up
        self._clock = clock
        self._lock = threading.Lock()
        self.rtt: float | None = None
        self._until = 0.0  # local until then (cooldown)
        self._why = ""
        self._last_remote = -1e18  # when a remote call last started
        self._probing = False
        self._counts: dict[str, int] = {REMOTE: 0, LOCAL: 0, "fallback": 0, "probes": 0}
        self._reasons: dict[str, int] = {}

    # -- the policy --------------------------------------------------------------------
    def observe(self, seconds: float) -> None:
        """Record a measured round trip (seconds)."""
        with self._lock:
            self.rtt = seconds if self.rtt is None else self.rtt + self.alpha * (seconds - self.rtt)

    def choose(self, method: Any, deadline: float) -> tuple[str, str]:
        """``(where, reason)`` for a call now with ``deadline`` seconds."""
        if self.local is None:
            return REMOTE, "ok"
        up = self.link_up() if self.link_up is not None else _link_up_of(method)
        if not up:
            return LOCAL, "link_down"
        now = self._clock()
        with self._lock:
            if now < self._until:
                return LOCAL, self._why
            if self.rtt is not None and self.rtt * self.margin > deadline:
                return LOCAL, "deadline"
        return REMOTE, "ok"

    def _fail(self, code: str) -> None:
        with self._lock:
            self._until = self._clock() + self.cooldown
            self._why = f"cooldown:{code}"

    # -- calls -------------------------------------------------------------------------
    def submit(
        self, method: Any, *args: Any, deadline: float | None = None, **kwargs: Any
    ) -> Future[Offloaded]:
        """Call ``method(*args, **kwargs)`` where the policy says (see
        :meth:`choose`); a future of its :class:`Offloaded`. A local run
        completes before this returns; a remote one in the client's thread
        (where a fallback runs ``local`` too: keep it quick)."""
        if deadline is None:
            deadline = self.deadline
        if deadline is None:
            deadline = float(getattr(method._proxy._backend, "timeout", 30.0))
        t0 = time.perf_counter()
        where, reason = self.choose(method, deadline)
        out: Future[Offloaded] = Future()
        if where == LOCAL:
            self._run_local(out, reason, t0, args, kwargs)
            if reason == "deadline":
                self._maybe_probe(method, args, kwargs, deadline)
            return out
        with self._lock:
            self._last_remote = self._clock()
        fut = method.options(timeout=deadline).future(*args, **kwargs)
        settled = [False]

        def claim() -> bool:
            """The first of the reply and the link watch to answer wins."""
            with self._lock:
                first, settled[0] = not settled[0], True
            return first

        def fallback(code: str) -> None:
            with self._lock:
                self._counts["fallback"] += 1
            self._run_local(out, f"fallback:{code}", t0, args, kwargs)

        def watch() -> None:
            """While the reply is awaited: the link went down, the board answers."""
            if settled[0]:
                return
            up = self.link_up() if self.link_up is not None else _link_up_of(method)
            if not up and self.local is not None:
                if claim():
                    fallback("link_down")
                return
            self._watch_later(watch)

        def done(f: Future[Any]) -> None:
            if not claim():
                return  # answered by the board already (the link went down)
            seconds = time.perf_counter() - t0
            exc = f.exception()
            if exc is None:
                self.observe(seconds)
                self._count(REMOTE, "ok")
                out.set_result(Offloaded(f.result(), REMOTE, "ok", seconds, self.rtt))
                return
            code = exc.code if isinstance(exc, ContinuumError) else None
            if code == "deadline_expired":
                self.observe(max(seconds, deadline))  # at least that long
            if code in OFFLOAD_CODES and self.local is not None:
                self._fail(code)
                fallback(code)
            else:
                out.set_exception(exc)

        fut.add_done_callback(done)
        if not out.done():
            self._watch_later(watch)
        return out

    def _watch_later(self, fn: Callable[[], None]) -> None:
        if self.watch > 0:
            t = threading.Timer(self.watch, fn)
            t.daemon = True
            t.start()

    def call(self, method: Any, *args: Any, deadline: float | None = None, **kwargs: Any) -> Any:
        """:meth:`submit` and wait: the :class:`Offloaded`."""
        return self.submit(method, *args, deadline=deadline, **kwargs).result()

    def run_local(self, reason: str, *args: Any, **kwargs: Any) -> Offloaded:
        """Run on the board now, whatever the policy, counted under ``reason``
        (e.g. ``"no_object"``: the remote object is not known yet)."""
        out: Future[Offloaded] = Future()
        self._run_local(out, reason, time.perf_counter(), args, kwargs)
        return out.result()

    def _run_local(
        self,
        out: Future[Offloaded],
        reason: str,
        t0: float,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        local = self.local
        try:
            if local is None:
                raise RuntimeError("no local fallback")
            value = local(*args, **kwargs)
        except BaseException as exc:  # the caller's future carries it
            out.set_exception(exc)
            return
        self._count(LOCAL, reason)
        out.set_result(Offloaded(value, LOCAL, reason, time.perf_counter() - t0, self.rtt))

    def _maybe_probe(
        self, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float
    ) -> None:
        """Now and then, the same call to the node only to measure its round trip."""
        now = self._clock()
        with self._lock:
            if self._probing or now - self._last_remote < self.probe_interval:
                return
            self._probing = True
            self._last_remote = now
            self._counts["probes"] += 1
        t0 = time.perf_counter()
        # long enough to measure a slow link, so a deadline miss is not all it learns
        fut = method.options(timeout=max(deadline * self.margin * 2, 1.0)).future(*args, **kwargs)

        def done(f: Future[Any]) -> None:
            seconds = time.perf_counter() - t0
            exc = f.exception()
            if exc is None or getattr(exc, "code", None) == "deadline_expired":
                self.observe(seconds)
            with self._lock:
                self._probing = False

        fut.add_done_callback(done)

    def _count(self, where: str, reason: str) -> None:
        with self._lock:
            self._counts[where] += 1
            key = f"{where}:{reason}"
            self._reasons[key] = self._reasons.get(key, 0) + 1

    def stats(self) -> dict[str, Any]:
        """``remote``, ``local``, ``fallback`` (remote calls redone locally) and
        ``probes`` counts, ``reasons`` (``"<where>:<reason>"`` -> count) and the
        round-trip estimate ``rtt_s``."""
        with self._lock:
            return {**self._counts, "reasons": dict(self._reasons), "rtt_s": self.rtt}
