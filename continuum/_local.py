"""Local mode: the same client API with objects in this process, no broker.

Arguments and results cross the same codec as on the wire, and calls go
through the same validation as on a node, so code that works here works
offloaded (the paper's "develop locally, offload later").
"""

from __future__ import annotations

import importlib
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from ._client import ObjectProxy, ProgressFn, _Directory
from ._errors import (
    AliasTaken,
    BadRequest,
    ContinuumError,
    UnknownClass,
    UnknownObject,
)
from ._invoke import bind_arguments, describe_class, invoke, remote_error, roundtrip
from ._model import ActiveObject

__all__ = ["LocalClient"]

_NODE = "local"


class _Local:
    __slots__ = ("aliases", "cls", "instance", "lock")

    def __init__(self, cls: str, instance: Any) -> None:
        self.cls = cls
        self.instance = instance
        self.lock = threading.Lock()
        self.aliases: list[str] = []


class LocalClient(_Directory):
    """A client whose objects live in this process (``continuum.connect("local:")``).

    Classes are imported by path on first use, which is why local mode needs
    the application code installed; a remote :class:`Client` never does.
    """

    def __init__(self, *, timeout: float = 30.0, workers: int = 8, **remote_options: Any) -> None:
        # Options that only mean something remotely (broker, root, qos...) are
        # accepted and ignored, so the same code runs in both modes.
        self.timeout = timeout
        self._workers = workers
        self._objects: dict[str, _Local] = {}
        self._aliases: dict[str, str] = {}
        self._classes: dict[str, type] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def connect(self) -> LocalClient:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="continuum-local")
        return self

    def close(self, *, with_will: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
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
    def _class(self, path: str) -> type:
        cls = self._classes.get(path)
        if cls is None:
            mod, _, name = path.rpartition(".")
            try:
                cls = getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError, ValueError) as exc:
                raise UnknownClass(f"cannot import class {path!r}: {exc}", cls=path) from None
            if not (isinstance(cls, type) and issubclass(cls, ActiveObject)):
                raise UnknownClass(f"{path!r} is not an ActiveObject class", cls=path)
            self._classes[path] = cls
        return cls

    def _find(self, ref: str) -> str:
        if ref in self._objects:
            return ref
        oid = self._aliases.get(ref)
        if oid is None:
            raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
        return oid

    def _info(self, oid: str) -> dict[str, Any]:
        o = self._objects[oid]
        return {
            "id": oid,
            "class": o.cls,
            "node": _NODE,
            "node_state": "online",
            "aliases": sorted(o.aliases),
        }

    def _set_alias(self, oid: str, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise BadRequest("an alias is a non-empty text string")
        owner = self._aliases.get(name)
        if owner is not None and owner != oid:
            raise AliasTaken(f"alias {name!r} already names object {owner}", alias=name)
        if owner is None:
            self._aliases[name] = oid
            self._objects[oid].aliases.append(name)

    def _gateway(self, method: str, /, **kw: Any) -> Any:
        with self._lock:
            if method == "create":
                cls = self._class(kw["cls"])
                args, kwargs = roundtrip(kw.get("args") or []), roundtrip(kw.get("kwargs") or {})
                alias = kw.get("alias")
                if alias is not None and alias in self._aliases:
                    raise AliasTaken(
                        f"alias {alias!r} already names object {self._aliases[alias]}", alias=alias
                    )
                bind_arguments(cls, args, kwargs, f"{cls.__qualname__}()")
                try:
                    instance = cls(*args, **kwargs)
                except Exception as exc:
                    raise remote_error(exc) from exc
                oid = uuid.uuid4().hex
                self._objects[oid] = _Local(kw["cls"], instance)
                if alias is not None:
                    self._set_alias(oid, alias)
                return self._info(oid)
            if method == "resolve":
                return self._info(self._find(kw["ref"]))
            if method == "alias":
                oid = self._find(kw["ref"])
                self._set_alias(oid, kw["name"])
                return self._info(oid)
            if method == "unalias":
                oid_of = self._aliases.pop(kw["name"], None)
                if oid_of is not None and oid_of in self._objects:
                    self._objects[oid_of].aliases.remove(kw["name"])
                return None
            if method == "delete":
                oid = self._find(kw["ref"])
                for a in self._objects.pop(oid).aliases:
                    self._aliases.pop(a, None)
                return {"id": oid, "deleted": True}
            if method == "nodes":
                return [
                    {
                        "id": _NODE,
                        "state": "online",
                        "classes": sorted(self._classes),
                        "objects": len(self._objects),
                    }
                ]
            if method == "classes":
                return {
                    p: {**describe_class(c), "nodes": [_NODE]}
                    for p, c in sorted(self._classes.items())
                }
            if method == "objects":
                return [
                    {"id": oid, **{k: v for k, v in self._info(oid).items() if k != "id"}}
                    for oid, o in self._objects.items()
                    if kw.get("cls") in (None, o.cls)
                ]
        raise BadRequest(f"unknown directory method {method!r}")

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
            with self._lock:
                oid = f"pool:{proxy._class_path}"
                if oid not in self._objects:
                    cls = self._class(proxy._class_path)
                    if not getattr(cls, "__continuum_stateless__", False):
                        raise UnknownClass(f"{proxy._class_path} is not stateless: it has no pool")
                    self._objects[oid] = _Local(proxy._class_path, cls())
            return self._pool.submit(self._run, oid, method, args, kwargs, on_progress)
        return self._pool.submit(self._run, proxy._id, method, args, kwargs, on_progress)

    def _run(
        self,
        oid: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        on_progress: ProgressFn | None,
    ) -> Any:
        obj = self._objects.get(oid)
        if obj is None:
            raise UnknownObject(f"no object {oid}", ref=oid)
        sink = None if on_progress is None else (lambda update: on_progress(roundtrip(update)))
        try:
            args, kwargs = roundtrip(args), roundtrip(kwargs)
        except ContinuumError as exc:
            raise BadRequest(f"cannot encode the arguments: {exc.message}") from None
        with obj.lock:
            result = invoke(obj.instance, method, args, kwargs, sink)
        return roundtrip(result)
