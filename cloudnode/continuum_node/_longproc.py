"""Long calls in worker processes (``continuum-node --long-calls process``).

A method marked ``@active(long=True)`` (training...) runs in one of
``workers`` worker processes instead of a thread of the node: the object
goes there as its snapshot (cloudpickle, as in a checkpoint), the method runs
on it there, and the object comes back, changed or not, with the method's
value. The node's own process then only waits on a pipe while the long call
computes, so its interpreter lock stays free for the network thread and the
light calls (with threads, a training's Python code holds the lock often
enough to slow every light call: docs/architecture.md "Threads and long
calls" has the measurements).

Semantics are those of a call on a thread: one call at a time per object (the
object's actor is busy meanwhile), progress updates reach the caller in order
(``continuum_mqtt.progress`` in the worker), ``check_cancelled`` sees the
call's deadline (the monotonic clock is the machine's, shared by processes)
and the node's stop, ``current_call`` its caller (sent with the job), and
``continuum_node.peer.peer`` connects as the node's does (its settings come
with the worker's setup); the object the call leaves is what the node keeps
and commits. If a worker process dies (killed, out of memory) the call fails
with ``method_error`` naming it, the object stays as it was before the call,
and a fresh worker takes the next long call.

What crosses the pipe: arguments, values and progress updates as CBOR (the
wire's codec: never a pickle of anything a caller sent), the object as
cloudpickle (made by this node from its own object, as its checkpoints are).
The workers start with the node (importing its modules with its thread
settings, then warming the classes up), so the first long call does not pay
for it, and run at a lower CPU priority: ``priority="idle"`` (the default,
Linux's ``SCHED_IDLE``) gives them only the CPU time no other process wants,
so a light call's thread preempts a training at once on wake-up;
``"low"`` is ``nice`` :data:`NICE`, which leaves a training about a tenth of
a busy core (the choice for a node that is never idle: under ``SCHED_IDLE``
a training there would crawl).

A worker that ran no call for ``idle_exit`` seconds exits (:meth:`LongCalls.reap`,
at the node's ticks): each holds its own interpreter with torch loaded, about
300 MiB, which a node whose trainings come in storms (nightly retraining)
would rather give its resident objects between them. The next long call
starts one again, and pays for the start (a few seconds) itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from continuum_mqtt import CallContext, CancelScope, ContinuumError, RemoteError
from continuum_mqtt.service import Request, decode, encode

from . import peer

__all__ = ["LongCalls"]

log = logging.getLogger("continuum.node.long")

NICE = 10
"""How much lower the workers' CPU priority is than the node's with
``priority="low"`` (and where ``SCHED_IDLE`` is not available)."""

PRIORITIES = ("idle", "low")

Outcome = tuple[bool, Any]


class _Worker:
    def __init__(self, ctx: Any, setup: dict[str, Any], name: str) -> None:
        self.conn, child = ctx.Pipe()
        self.stop = ctx.Event()
        self.proc = ctx.Process(
            target=_child, args=(child, self.stop, setup), name=name, daemon=True
        )
        self.proc.start()
        child.close()

    def close(self) -> None:
        self.stop.set()
        try:
            self.conn.send_bytes(b"")  # an empty message: exit
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class LongCalls:
    """``workers`` worker processes for long calls; ``setup`` is what each
    needs to host the node's classes: ``modules``, ``paths`` and ``threads``
    (intra-op threads), ``interop``, and the node's client settings
    (:func:`continuum_node.peer.settings`, configured before). The node's
    stop reaches running calls through :meth:`cancel_all`."""

    def __init__(
        self,
        workers: int,
        *,
        modules: Sequence[str],
        paths: Sequence[str] = (),
        threads: int | None = None,
        interop: int | None = None,
        priority: str = "idle",
        idle_exit: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("long-call worker processes must be at least 1")
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
        self._ctx = mp.get_context("spawn")  # never fork a threaded process
        self._setup = {
            "modules": list(modules),
            "paths": list(paths),
            "threads": threads,
            "interop": interop,
            "priority": priority,
            "peer": None if (ps := peer.settings()) is None else ps.wire(),
        }
        self.idle_exit = idle_exit
        self._slots = threading.BoundedSemaphore(workers)  # calls at once
        self._idle: list[tuple[_Worker, float]] = []  # and since when, the latest last
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._count = 0
        now = time.monotonic()
        for _ in range(workers):
            self._idle.append((self._spawn(), now))

    def _spawn(self) -> _Worker:
        with self._lock:
            if self._closed:  # the node is stopping: no process outlives it
                raise RemoteError("the node is stopping", remote_type="NodeStopping")
            self._count += 1
            w = _Worker(self._ctx, self._setup, f"continuum-long-{self._count}")
            self._all.append(w)
        return w

    def _take(self) -> _Worker:
        """The worker that was idle last (the others age towards their exit),
        or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()[0]
        log.info("starting a long-call worker process")
        return self._spawn()

    def reap(self, now: float | None = None) -> int:
        """Stop the workers idle for ``idle_exit`` seconds; how many."""
        if not self.idle_exit:
            return 0
        cutoff = (time.monotonic() if now is None else now) - self.idle_exit
        with self._lock:
            gone = [w for w, since in self._idle if since <= cutoff]
            self._idle = [(w, since) for w, since in self._idle if since > cutoff]
            for w in gone:
                self._all.remove(w)
        for w in gone:  # off the ticker: an interpreter with torch takes a moment to exit
            threading.Thread(target=w.close, name="continuum-long-exit", daemon=True).start()
            log.info("long-call worker %s exits, idle %.0f s", w.proc.pid, self.idle_exit)
        return len(gone)

    def run(
        self,
        instance: Any,
        req: Request,
        deadline: float | None,
        progress: Callable[[Any], None] | None,
        call: CallContext | None = None,
    ) -> tuple[Any, Outcome]:
        """Run the method of ``req`` (its args and kwargs) on ``instance`` in
        a worker, as ``call`` (its :func:`~continuum_mqtt.current_call`):
        returns the object as the call left it and the call's outcome ``(ok,
        value or error envelope)``."""
        method = req.method
        try:
            state = cloudpickle.dumps(instance)
        except Exception as exc:  # (an object holding a lock, a socket...): clearly refused
            err = RemoteError(
                f"{type(instance).__name__} cannot go to a worker process for {method}: {exc}",
                remote_type=type(exc).__name__,
            )
            return instance, (False, err.to_envelope())
        self._slots.acquire()
        try:
            w = self._take()
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, RemoteError):  # stopping: the call fails clearly
                return instance, (False, exc.to_envelope())
            raise
        try:
            w.conn.send_bytes(
                encode(
                    {
                        "state": state,
                        "method": method,
                        "args": req.args,
                        "kwargs": req.kwargs,
                        "deadline": deadline,
                        "call": None if call is None else [call.caller, call.admin, call.obj],
                    }
                )
            )
            while True:
                msg = decode(w.conn.recv_bytes())
                if "progress" in msg:
                    if progress is not None:
                        progress(msg["progress"])
                    continue
                obj = cloudpickle.loads(msg["state"])
                return obj, (bool(msg["ok"]), msg["value"])
        except (EOFError, OSError):  # the worker died: a fresh one takes over
            w.close()
            code = w.proc.exitcode
            log.error("long-call worker %s died during %s (exit code %s)", w.proc.pid, method, code)
            with self._lock:
                self._all.remove(w)
            if not self._closed:
                w = self._spawn()
            err = RemoteError(
                f"the worker process running {method} died (exit code {code})",
                remote_type="WorkerDied",
            )
            return instance, (False, err.to_envelope())
        finally:
            with self._lock:
                if not self._closed:
                    self._idle.append((w, time.monotonic()))
            self._slots.release()

    def cancel_all(self) -> None:
        """The node is stopping: running calls see it at their next check."""
        for w in list(self._all):
            w.stop.set()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._all)
        for w in workers:
            w.close()


# -- in the worker process -------------------------------------------------------------------
def _lower_priority(priority: str) -> None:
    """Before any thread starts (OpenMP's inherit it)."""
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError):  # not Linux: nice instead
            pass
    with contextlib.suppress(OSError):  # (a platform without nice: the same priority)
        os.nice(NICE)


def _child(conn: Connection, stop: Any, setup: dict[str, Any]) -> None:
    """A worker's main: host the node's classes, then run calls until told to stop."""
    from continuum_mqtt.service import invoke

    from ._node import load_classes
    from ._threads import hold_torch_threads, set_thread_env

    _lower_priority(setup["priority"])
    if setup["threads"]:
        set_thread_env(setup["threads"])
    hold_torch_threads(setup["threads"], setup["interop"])
    if setup.get("peer"):
        peer.use(peer.PeerSettings.from_wire(setup["peer"]))
    classes = load_classes(setup["modules"], setup["paths"])
    for cls in classes.values():
        warm = getattr(cls, "__continuum_warm_up__", None)
        if warm is not None:
            try:
                warm()
            except Exception:  # a warm-up is an optimisation only
                pass
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        job = decode(data)
        obj = cloudpickle.loads(job["state"])

        def send_progress(update: Any) -> None:
            conn.send_bytes(encode({"progress": update}))

        call = job.get("call")
        ctx = contextlib.nullcontext() if call is None else CallContext(*call).scope()
        try:
            with CancelScope(job["deadline"], stop), ctx:
                value = invoke(obj, job["method"], job["args"], job["kwargs"], send_progress)
            reply = {"ok": True, "value": value}
        except ContinuumError as exc:
            reply = {"ok": False, "value": exc.to_envelope()}
        try:
            conn.send_bytes(encode({**reply, "state": cloudpickle.dumps(obj)}))
        except Exception as exc:  # a value that does not encode: the call fails, clearly
            err = RemoteError(f"{job['method']} returned a value that cannot be sent: {exc}")
            conn.send_bytes(
                encode({"ok": False, "value": err.to_envelope(), "state": cloudpickle.dumps(obj)})
            )
