"""Local mode: the same client API with objects in this process, no broker.

Arguments and results cross the same codec as on the wire, and calls go
through the same validation as on a node, so code that works here works
offloaded (the paper's "develop locally, offload later"). Deadlines too: a
call's timeout runs from its submission; a call still waiting for its object
then is not run (``deadline_expired``), and a running one is cancelled at its
next :func:`~continuum_mqtt.check_cancelled` (as is every running call when
the client closes). A call's :func:`~continuum_mqtt.current_call` is the
caller ``anonymous``, an admin (there are no accounts here).
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from ._errors import (
    AliasTaken,
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    UnknownClass,
    UnknownObject,
)
from ._invoke import bind_arguments, describe_class, invoke, remote_error, roundtrip
from ._model import ActiveObject, CallContext, CancelScope
from ._protocol import ANONYMOUS, Request, check_create
from ._proxy import ObjectProxy, _Directory
from .service._dispatch import Dispatcher, method
from .service._requester import ProgressFn

__all__ = ["LocalClient"]

_NODE = "local"


class _Local:
    __slots__ = ("aliases", "cls", "created", "instance", "lock")

    def __init__(self, cls: str, instance: Any) -> None:
        self.cls = cls
        self.instance = instance
        self.lock = threading.Lock()
        self.aliases: list[str] = []
        self.created = time.time()


class _LocalDirectory:
    """The gateway's methods (docs/protocol.md §16) over the objects of this
    process, with the same checks, errors and answers, on one node
    (``local``): ``create`` takes ``node`` and ``replicas`` and ignores them,
    ``bind``/``unbind`` are refused (no device feeds here)."""

    def __init__(self) -> None:
        self.held: dict[str, _Local] = {}
        self.names: dict[str, str] = {}  # alias -> object id
        self.loaded: dict[str, type] = {}
        self.started = time.time()

    def load(self, path: str) -> type:
        cls = self.loaded.get(path)
        if cls is None:
            mod, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError, ValueError) as exc:
                raise UnknownClass(f"cannot import class {path!r}: {exc}", cls=path) from None
            if not (isinstance(cls, type) and issubclass(cls, ActiveObject)):
                raise UnknownClass(f"{path!r} is not an ActiveObject class", cls=path)
            self.loaded[path] = cls
        return cls

    def find(self, ref: str) -> str:
        if not isinstance(ref, str):
            raise BadRequest("ref must be a text string")
        if ref in self.held:
            return ref
        oid = self.names.get(ref)
        if oid is None:
            raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
        return oid

    def info(self, oid: str) -> dict[str, Any]:
        o = self.held[oid]
        return {
            "id": oid,
            "class": o.cls,
            "node": _NODE,
            "node_state": "online",
            "replicas": [],
            "aliases": sorted(o.aliases),
            "state": "ok",
            "reason": None,
        }

    def check_alias_free(self, name: Any, oid: str) -> None:
        if not isinstance(name, str) or not name:
            raise BadRequest("an alias is a non-empty text string")
        owner = self.names.get(name)
        if owner is not None and owner != oid:
            raise AliasTaken(f"alias {name!r} already names object {owner}", alias=name)

    def set_alias(self, oid: str, name: str) -> None:
        self.check_alias_free(name, oid)
        if name not in self.names:
            self.names[name] = oid
            self.held[oid].aliases.append(name)

    @method
    def create(
        self,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        node: str | None = None,
        alias: str | None = None,
        replicas: int = 0,
    ) -> dict[str, Any]:
        check_create(cls, replicas)
        klass = self.load(cls)
        args, kwargs = roundtrip(args or []), roundtrip(kwargs or {})
        if alias is not None:
            self.check_alias_free(alias, "")
        bind_arguments(klass, args, kwargs, f"{klass.__qualname__}()")
        try:
            instance = klass(*args, **kwargs)
        except Exception as exc:
            raise remote_error(exc) from exc
        oid = uuid.uuid4().hex
        self.held[oid] = _Local(cls, instance)
        if alias is not None:
            self.set_alias(oid, alias)
        return self.info(oid)

    @method
    def resolve(self, ref: str) -> dict[str, Any]:
        return self.info(self.find(ref))

    @method
    def alias(self, ref: str, name: str) -> dict[str, Any]:
        oid = self.find(ref)
        self.set_alias(oid, name)
        return self.info(oid)

    @method
    def unalias(self, name: str) -> None:
        oid = self.names.pop(name, None) if isinstance(name, str) else None
        if oid is not None and oid in self.held:
            self.held[oid].aliases.remove(name)

    @method
    def delete(self, ref: str) -> dict[str, Any]:
        oid = self.find(ref)
        for a in self.held.pop(oid).aliases:
            self.names.pop(a, None)
        return {"id": oid, "deleted": True}

    @method
    def bind(self, ref: str, device: str, method: str) -> dict[str, Any]:
        raise BadRequest("local mode has no device feeds: bind metrics in a deployment")

    @method
    def unbind(self, ref: str, device: str) -> dict[str, Any]:
        raise BadRequest("local mode has no device feeds: bind metrics in a deployment")

    @method
    def nodes(self) -> list[dict[str, Any]]:
        return [
            {
                "id": _NODE,
                "state": "online",
                "since": self.started,
                "classes": sorted(self.loaded),
                "objects": len(self.held),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        ]

    @method
    def classes(self) -> dict[str, Any]:
        return {p: {**describe_class(c), "nodes": [_NODE]} for p, c in sorted(self.loaded.items())}

    @method
    def objects(
        self,
        cls: str | None = None,
        node: str | None = None,
        residency: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for oid, o in self.held.items():
            if cls not in (None, o.cls) or node not in (None, _NODE):
                continue
            info = self.info(oid)
            del info["node_state"]
            seen = {"resident": True, "used": o.created} if residency else {}
            out.append({**info, "created": o.created, **seen})
        return out[offset : None if limit is None else offset + limit]


class LocalClient(_Directory):
    """A client whose objects live in this process (``continuum_mqtt.connect("local:")``).

    Classes are imported by path on first use, which is why local mode needs
    the application code installed; a remote :class:`Client` never does. The
    directory methods answer as the gateway's do (same checks and errors).
    """

    def __init__(self, *, timeout: float = 30.0, workers: int = 8, **remote_options: Any) -> None:
        # Options that only mean something remotely (broker, root, qos...) are
        # accepted and ignored, so the same code runs in both modes.
        self.timeout = timeout
        self._workers = workers
        self._dir = _LocalDirectory()
        self._dispatcher = Dispatcher("local directory").register(self._dir)
        self._pools: dict[str, _Local] = {}  # a stateless class's one instance here
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closing = threading.Event()  # cancels the running calls (close)

    def connect(self) -> LocalClient:
        if self._pool is None:
            self._closing = threading.Event()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="continuum-local")
        return self

    def close(self, *, with_will: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            self._closing.set()
            pool.shutdown(wait=True)

    def __enter__(self) -> LocalClient:
        return self.connect()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> LocalClient:
        return self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.close)

    # -- directory -------------------------------------------------------------
    def _gateway(self, op: str, /, **kw: Any) -> Any:
        req = Request(op, [], {k: v for k, v in kw.items() if v is not None})  # as sent
        with self._lock:
            return self._dispatcher.dispatch(req)

    def _proxy(self, info: dict[str, Any]) -> ObjectProxy:
        return ObjectProxy(self, info["id"], info["class"], info.get("aliases"))

    # -- calls -----------------------------------------------------------------
    def _call(
        self,
        proxy: ObjectProxy,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_progress: ProgressFn | None,
    ) -> Future[Any]:
        if self._pool is None:
            self.connect()
        assert self._pool is not None
        if proxy._id is None:  # a stateless class's pool: one shared instance here
            path = proxy._class_path
            with self._lock:
                if path not in self._pools:
                    cls = self._dir.load(path)
                    if not getattr(cls, "__continuum_stateless__", False):
                        raise UnknownClass(f"{path} is not stateless: it has no pool")
                    self._pools[path] = _Local(path, cls())
                obj: _Local | None = self._pools[path]
        else:
            obj = self._dir.held.get(proxy._id)
        scope = CancelScope(
            time.monotonic() + (self.timeout if timeout is None else timeout), self._closing
        )
        return self._pool.submit(
            self._run, obj, proxy._id, method, args, kwargs, on_progress, scope
        )

    def _run(
        self,
        obj: _Local | None,
        oid: str | None,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        on_progress: ProgressFn | None,
        scope: CancelScope,
    ) -> Any:
        if obj is None:
            raise UnknownObject(f"no object {oid}", ref=oid)
        sink = None if on_progress is None else (lambda update: on_progress(roundtrip(update)))
        try:
            args, kwargs = roundtrip(args), roundtrip(kwargs)
        except ContinuumError as exc:
            raise BadRequest(f"cannot encode the arguments: {exc.message}") from None
        with obj.lock:
            if scope.reason() == "deadline":
                raise DeadlineExpired(f"deadline passed before {method} started; not run")
            # no accounts here: every call is the admin caller "anonymous" (§21)
            with scope, CallContext(ANONYMOUS, True, oid).scope():
                result = invoke(obj.instance, method, args, kwargs, sink)
        return roundtrip(result)
