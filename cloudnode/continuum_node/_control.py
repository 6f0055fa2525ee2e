"""The node's control methods (protocol §17): create, delete, bind, unbind,
promote, replicas, aliases, access, list and residency, sent by the gateway
on ``<root>/node/<n>/ctl``.

Arguments come in ``kwargs`` and are bound against the method's signature
before it runs: a missing or unknown one is the caller's fault
(``bad_request``); a failure while running is not (``method_error``, or the
method's own error).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from continuum_mqtt import BadRequest, UnknownClass
from continuum_mqtt.service import (
    ANONYMOUS,
    Access,
    Dispatcher,
    ReplyChannel,
    Request,
    Topics,
    bind_arguments,
    canonical_class_path,
    check_level,
    lookup_method,
    method,
    remote_error,
)

from ._durability import Durability
from ._feeds import Bindings
from ._replication import Replication
from ._resident import Resident, Residents

__all__ = ["Control"]

log = logging.getLogger("continuum.node")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a text string")
    return value


def _node_ids(value: Any) -> list[str]:
    """A list of node ids from a control request, checked."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'replicas' must be a list of node ids")
    try:
        return [check_level("node id", v) for v in value]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _text_list(name: str, value: Any) -> list[str]:
    """A list of text strings of a control request (aliases, object ids), checked."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name!r} must be a list of text strings")
    return list(value)


class Control:
    def __init__(
        self,
        node_id: str,
        topics: Topics,
        classes: dict[str, type],
        residents: Residents,
        durability: Durability,
        replication: Replication,
        bindings: Bindings,
    ) -> None:
        self.node_id = node_id
        self.topics = topics
        self.classes = classes
        self.residents = residents
        self.durability = durability
        self.replication = replication
        self.bindings = bindings
        self.dispatcher = Dispatcher("node control", bad_arguments=BadRequest, positional=False)
        self.dispatcher.register(self)

    def handle(self, req: Request, chan: ReplyChannel) -> None:
        """A request on the node's ctl topic (runs on a worker). Not started
        once its deadline passed: the gateway gave up, and creating the object
        now would orphan it."""
        self.dispatcher.serve(req, chan)

    # -- the methods ---------------------------------------------------------------
    @method
    def create(
        self,
        obj: str,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        replicas: list[str] | None = None,
        aliases: list[str] | None = None,
        owner: str = ANONYMOUS,
        grants: list[str] | None = None,
    ) -> dict[str, Any]:
        access = Access.of(owner, grants or [])
        cls = canonical_class_path(_text("cls", cls))
        klass = self.classes.get(cls)
        if klass is None:
            raise UnknownClass(f"node {self.node_id} does not host class {cls!r}", cls=cls)
        obj = _text("obj", obj)
        nodes = _node_ids(replicas)
        names = _text_list("aliases", aliases)
        if not isinstance(args, list | None) or not isinstance(kwargs, dict | None):
            raise BadRequest("'args' must be a list and 'kwargs' a map")
        pos, named = list(args or []), dict(kwargs or {})
        with self.residents.lock:
            existing = self.residents.get(obj)
            if existing is not None:
                return {"id": obj, "class": existing.cls_path, "node": self.node_id}
            q = self.residents.quarantine.get(obj)
            if q is not None:
                raise q.error(self.node_id)
            bind_arguments(klass, pos, named, f"{klass.__qualname__}()")
            try:
                instance = klass(*pos, **named)
            except Exception as exc:
                raise remote_error(exc) from exc
            res = Resident(obj, cls, instance, replicas=nodes, aliases=names, access=access)
            self.durability.persist(res)
            self.residents.put(res)
        if res.replicas:
            self.replication.replicate(res)
        log.info(
            "created %s %s%s",
            cls,
            obj,
            f" (replicas: {', '.join(res.replicas)})" if res.replicas else "",
        )
        return {"id": obj, "class": cls, "node": self.node_id, "replicas": res.replicas}

    @method
    def delete(self, obj: str) -> dict[str, Any]:
        return self.durability.delete(_text("obj", obj))

    @method
    def bind(self, obj: str, topic: str, method: str) -> dict[str, Any]:
        """Feed the messages of ``topic`` (a device's metrics) to ``obj.method``."""
        res = self.residents.held(_text("obj", obj))
        if not isinstance(topic, str) or not self.topics.is_metrics(topic):
            raise BadRequest(f"only device metrics topics can feed objects, not {topic!r}")
        lookup_method(res.klass, _text("method", method))  # (it may be evicted)
        with res.state:
            with res.lock:
                res.feeds[topic] = method
            self.durability.persist_or_rollback(res)
        self.bindings.add(topic, res)
        log.info("feeding %s to %s.%s", topic, obj, method)
        return {"id": obj, "feeds": dict(res.feeds)}

    @method
    def unbind(self, obj: str, topic: str) -> dict[str, Any]:
        res = self.residents.held(_text("obj", obj))
        with res.state:
            self.bindings.remove_all(res)
            with res.lock:
                res.feeds.pop(topic, None)
            self.bindings.add_all(res)
            self.durability.persist_or_rollback(res)
        return {"id": obj, "feeds": dict(res.feeds)}

    @method
    def promote(self, obj: str, replicas: list[str] | None = None) -> dict[str, Any]:
        return self.replication.promote(_text("obj", obj), _node_ids(replicas))

    @method
    def replicas(self, obj: str, replicas: list[str] | None = None) -> dict[str, Any]:
        """Replace the replicas of our primary ``obj``; the live ones get its
        whole state now, and every later change as usual (the gateway's
        ``drain`` moves an object without a replica this way, then promotes
        the new copy)."""
        res = self.residents.held(_text("obj", obj))  # a primary
        nodes = [r for r in _node_ids(replicas) if r != self.node_id]
        with res.state:
            with res.lock:
                res.replicas = list(dict.fromkeys(nodes))
            self.durability.persist_or_rollback(res)
            if res.replicas:
                self.replication.replicate(res)
        log.info("%s %s: replicas now %s", res.cls_path, obj, res.replicas)
        return {"id": obj, "node": self.node_id, "replicas": res.replicas}

    @method(name="aliases")
    def set_aliases(self, obj: str, aliases: list[str]) -> dict[str, Any]:
        """Replace the names the directory knows the object by (kept with it so
        that a directory can be rebuilt from the nodes)."""
        names = _text_list("aliases", aliases)
        self._change(obj, "aliases", names)
        return {"id": obj, "aliases": names}

    @method
    def access(self, obj: str, owner: str, grants: list[str] | None = None) -> dict[str, Any]:
        """Replace the object's owner and grants (the gateway's ``grant``,
        ``revoke`` and ``set_owner``); replicas follow."""
        access = Access.of(owner, grants or [])
        self._change(obj, "access", access)
        return {"id": obj, **access.wire()}

    def _change(self, obj: str, attr: str, value: Any) -> None:
        """Set a record field of ``obj`` (any role), durably; replicas follow."""
        res = self.residents.held(_text("obj", obj), any_role=True)
        with res.state:
            with res.lock:
                setattr(res, attr, value)
            self.durability.persist_or_rollback(res)
            if res.role == "primary" and res.replicas:
                self.replication.replicate(res)

    @method(name="list")
    def listing(self, **_ignored: Any) -> list[dict[str, Any]]:
        """Every object held, replicas and quarantined ones included, each
        with whether it is ``resident`` (False: evicted to the state dir);
        any kwargs ignored, as before."""
        return self.residents.listing()

    @method
    def residency(self, objs: list[str] | None = None) -> list[list[Any]]:
        """``[id, resident, used]`` of the objects ``objs`` held here (None:
        every one): whether it is loaded (False: evicted to the state dir) and
        when it last ran a job (Unix seconds; its load at the node's start
        counts); the gateway's ``objects(residency=True)``, protocol §17."""
        offset = time.time() - time.monotonic()
        if objs is None:
            held = self.residents.all()
        else:
            found = (self.residents.get(oid) for oid in _text_list("objs", objs))
            held = [r for r in found if r is not None]
        return [[r.id, r.resident, round(r.used + offset, 3)] for r in held]
