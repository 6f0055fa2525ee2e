"""What a client hands out: :class:`ClassStub` (a class known only by its
path), :class:`ObjectProxy` (a remote object) and :class:`RemoteMethod` (one
of its active methods), and ``_Directory``, the directory operations that give
them out, shared by :class:`~continuum_mqtt.Client` and local mode over their
``_gateway`` and ``_call``.

Edge-safe: imports nothing outside the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._fanout import FanOutResult, FanOutTarget, ProgressFn2, run_fan_out
from ._protocol import canonical_class_path

if TYPE_CHECKING:
    from .service._requester import ProgressFn

__all__ = ["ClassStub", "ObjectProxy", "RemoteMethod"]


class RemoteMethod:
    """An active method of a remote object: call it, or use :meth:`future`, :meth:`aio`
    or :meth:`options` (per-call deadline and progress callback)."""

    __slots__ = ("_name", "_on_progress", "_proxy", "_timeout")

    def __init__(
        self,
        proxy: ObjectProxy,
        name: str,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        self._proxy = proxy
        self._name = name
        self._timeout = timeout
        self._on_progress = on_progress

    def options(
        self, *, timeout: float | None = None, on_progress: ProgressFn | None = None
    ) -> RemoteMethod:
        """The same method with a deadline (seconds) and/or a progress callback."""
        return RemoteMethod(
            self._proxy,
            self._name,
            timeout if timeout is not None else self._timeout,
            on_progress if on_progress is not None else self._on_progress,
        )

    def future(self, *args: Any, **kwargs: Any) -> Future[Any]:
        p = self._proxy
        return p._backend._call(p, self._name, list(args), kwargs, self._timeout, self._on_progress)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.future(*args, **kwargs).result()

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        import asyncio  # already loaded by the running loop; not at import (38 ms)

        on_progress = self._on_progress
        if on_progress is not None:
            loop = asyncio.get_running_loop()
            cb = on_progress

            def on_progress(update: Any) -> None:
                loop.call_soon_threadsafe(cb, update)

        p = self._proxy
        fut = p._backend._call(p, self._name, list(args), kwargs, self._timeout, on_progress)
        return await asyncio.wrap_future(fut)

    def __repr__(self) -> str:
        return f"<RemoteMethod {self._proxy._class_path}.{self._name} of {self._proxy._id}>"


class ObjectProxy:
    """A remote object. Attribute access gives :class:`RemoteMethod`; the object's
    id, class, aliases and owner are ``_id``, ``_class_path``, ``_aliases`` and
    ``_owner``."""

    def __init__(
        self,
        backend: Any,
        oid: str | None,
        class_path: str,
        aliases: list[str] | None = None,
        owner: str | None = None,
    ) -> None:
        self._backend = backend
        self._id = oid
        self._class_path = class_path
        self._aliases = list(aliases or [])
        self._owner = owner  # the broker account that owns it (protocol.md §21)

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        method = RemoteMethod(self, name)
        self.__dict__[name] = method
        return method

    def __repr__(self) -> str:
        alias = f" alias={self._aliases[0]!r}" if self._aliases else ""
        return f"<{self._class_path} {self._id}{alias}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectProxy) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)


class ClassStub:
    """An application class known only by its path: create instances, find them."""

    def __init__(self, backend: Any, class_path: str) -> None:
        self._backend = backend
        self.class_path = canonical_class_path(class_path)

    def create(
        self,
        *args: Any,
        alias: str | None = None,
        node: str | None = None,
        replicas: int = 0,
        **kwargs: Any,
    ) -> ObjectProxy:
        """Create an instance on ``node`` (or one the gateway picks), optionally
        under ``alias``, with ``replicas`` copies on other nodes kept in sync
        after every mutating call (one is promoted if the primary dies). The
        other arguments go to the class's ``__init__``; ``alias``, ``node`` and
        ``replicas`` are reserved keyword names."""
        info = self._backend._gateway(
            "create",
            cls=self.class_path,
            args=list(args),
            kwargs=kwargs,
            node=node,
            alias=alias,
            replicas=replicas or None,
        )
        return self._backend._proxy(info)

    def get(self, ref: str) -> ObjectProxy:
        """Find an instance by alias or id (it must be of this class)."""
        proxy: ObjectProxy = self._backend.get(ref)
        if proxy._class_path != self.class_path:
            raise TypeError(f"{ref!r} is a {proxy._class_path}, not a {self.class_path}")
        return proxy

    def objects(self) -> list[dict[str, Any]]:
        return self._backend.objects(cls=self.class_path)

    def __repr__(self) -> str:
        return f"<ClassStub {self.class_path}>"


class _Directory(FanOutTarget):
    """The directory operations both clients share, over ``_gateway``, and
    the fan-out over their ``_call``."""

    timeout: float
    OBJECTS_PAGE = 1000  # objects per page of objects(): about 250 KiB of reply

    def _gateway(self, op: str, /, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _proxy(self, info: dict[str, Any]) -> ObjectProxy:  # pragma: no cover - abstract
        raise NotImplementedError

    def stub(self, class_path: str) -> ClassStub:
        """A stub for the class at ``class_path`` (never imported here)."""
        return ClassStub(self, class_path)

    def pool(self, class_path: str) -> ObjectProxy:
        """The pool of a stateless class (``ActiveObject, stateless=True``):
        each call is served by one of the live nodes hosting the class."""
        return ObjectProxy(self, None, canonical_class_path(class_path))

    def get(self, ref: str) -> ObjectProxy:
        """The object with this alias or id."""
        return self._proxy(self._gateway("resolve", ref=ref))

    def alias(self, obj: ObjectProxy | str, name: str) -> ObjectProxy:
        """Give an object an (additional) alias."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        return self._proxy(self._gateway("alias", ref=ref, name=name))

    def unalias(self, name: str) -> None:
        """Remove the alias ``name`` (the object stays; a missing alias is no error)."""
        self._gateway("unalias", name=name)

    def delete(self, obj: ObjectProxy | str) -> None:
        """Delete the object from its node and the directory."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("delete", ref=ref)

    def grant(self, obj: ObjectProxy | str, user: str) -> None:
        """Let the account ``user`` (``"*"``: every account) call the object
        (its owner only; protocol.md section 21)."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("grant", ref=ref, user=user)

    def revoke(self, obj: ObjectProxy | str, user: str) -> None:
        """Take back a :meth:`grant`."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("revoke", ref=ref, user=user)

    def set_owner(self, obj: ObjectProxy | str, owner: str) -> None:
        """Give the object to the account ``owner`` (admins only)."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("set_owner", ref=ref, owner=owner)

    def bind_metrics(self, obj: ObjectProxy | str, device: str, method: str) -> None:
        """Feed every metrics sample that ``device`` publishes to ``obj.method(sample)``,
        on the object's node, without a round trip through the gateway or this client."""
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("bind", ref=ref, device=device, method=method)

    def unbind_metrics(self, obj: ObjectProxy | str, device: str) -> None:
        ref = obj._id if isinstance(obj, ObjectProxy) else obj
        self._gateway("unbind", ref=ref, device=device)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node the directory knows, with its state and classes."""
        return self._gateway("nodes")

    def drain(self, node: str) -> dict[str, Any]:
        """Place no more objects on ``node`` and move the objects whose
        primary it is to other nodes (admins only): ``{"node", "draining",
        "moved", "left": [ids that stayed], "reason", "reasons"}``."""
        return self._gateway("drain", node=node)

    def undrain(self, node: str) -> dict[str, Any]:
        """Let objects be placed on ``node`` again (admins only)."""
        return self._gateway("undrain", node=node)

    def classes(self) -> dict[str, Any]:
        """Classes hosted by live nodes, with their active methods."""
        return self._gateway("classes")

    def objects(
        self, cls: str | None = None, node: str | None = None, *, residency: bool = False
    ) -> list[dict[str, Any]]:
        """Objects in the directory, optionally of one class or on one node.
        ``residency=True``: each also says whether it is ``resident`` in its
        node's memory (False: evicted to the node's state dir) and when it was
        ``used`` last (Unix s), asked of the nodes at the time (both None when
        its node is offline or did not answer). Fetched a page of
        :attr:`OBJECTS_PAGE` at a time (a fleet's listing is larger than one
        reply may be)."""
        out: list[dict[str, Any]] = []
        extra = {"residency": True} if residency else {}
        while True:
            page = self._gateway(
                "objects", cls=cls, node=node, offset=len(out), limit=self.OBJECTS_PAGE, **extra
            )
            out += page
            if len(page) < self.OBJECTS_PAGE:
                return out

    # -- fan-out -----------------------------------------------------------------
    def fan_out(
        self,
        objects: Iterable[ObjectProxy | str],
        method: str,
        *args: Any,
        window: int = 32,
        timeout: float | None = None,
        on_progress: ProgressFn2 | None = None,
        per_object: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> FanOutResult:
        """Call ``method(*args, **kwargs)`` on every object of ``objects``
        (proxies, ids, aliases: those not known here are resolved in bulk),
        where each lives: at most ``window`` calls in flight per node, all
        within ``timeout`` seconds (default: the client's), each carrying the
        time left. Returns a :class:`FanOutResult` with each object's value
        or error (one failure raises nothing). ``on_progress(done, total)``
        runs in this thread, at most every 50 ms. ``per_object`` maps an
        object's key (as given; a proxy's id) to keyword arguments of its own
        call, over ``kwargs``. ``window``, ``timeout``, ``on_progress`` and
        ``per_object`` are reserved keyword names."""
        return run_fan_out(
            self,
            objects,
            method,
            list(args),
            kwargs,
            window=window,
            timeout=self.timeout if timeout is None else timeout,
            on_progress=on_progress,
            per_object=per_object,
        )

    async def afan_out(
        self, objects: Iterable[ObjectProxy | str], method: str, *args: Any, **kwargs: Any
    ) -> FanOutResult:
        """:meth:`fan_out` for asyncio (the same arguments): waits in a worker
        thread; ``on_progress`` runs in the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        cb = kwargs.pop("on_progress", None)
        if cb is not None:

            def on_progress(done: int, total: int) -> None:
                loop.call_soon_threadsafe(cb, done, total)

            kwargs["on_progress"] = on_progress
        return await asyncio.to_thread(self.fan_out, list(objects), method, *args, **kwargs)
