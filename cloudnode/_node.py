"""The cloud node: hosts resident objects and runs their active methods.

Threading model: the MQTT network thread only decodes and routes; each resident
object is an actor with its own mailbox, drained by a worker pool, so calls on
one object run one at a time, in arrival order, and calls on different objects
run in parallel.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from continuum._codec import encode
from continuum._errors import (
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    ObjectNotHere,
    UnknownClass,
    UnknownMethod,
)
from continuum._invoke import bind_arguments, describe_class, invoke, lookup_method, remote_error
from continuum._model import ActiveObject, class_path
from continuum._mqtt import BrokerURL, Connection, Message
from continuum._protocol import DEFAULT_ROOT, PROTOCOL_VERSION, Request, Topics
from continuum._server import ReplyChannel, accept

__all__ = ["Node", "load_classes"]

log = logging.getLogger("continuum.node")

_BATCH = 32  # calls an actor runs before yielding its worker to other objects


def load_classes(modules: list[str], paths: list[str]) -> dict[str, type]:
    """Import ``modules`` (after adding ``paths`` to sys.path) and collect the
    ActiveObject subclasses they define. Only these classes can be created:
    a request never makes the node import anything."""
    for p in reversed(paths):
        p = os.path.abspath(p)
        if p not in sys.path:
            sys.path.insert(0, p)
    found: dict[str, type] = {}
    for name in modules:
        if ":" in name or (name.count(".") and _is_class_path(name)):
            mod_name, _, attr = name.replace(":", ".").rpartition(".")
            cls = getattr(importlib.import_module(mod_name), attr)
            found[class_path(cls)] = cls
            continue
        mod = importlib.import_module(name)
        for value in vars(mod).values():
            if (
                isinstance(value, type)
                and issubclass(value, ActiveObject)
                and value is not ActiveObject
                and value.__module__ == mod.__name__
            ):
                found[class_path(value)] = value
    return found


def _is_class_path(name: str) -> bool:
    return name.rpartition(".")[2][:1].isupper()


class _Job:
    __slots__ = ("chan", "req")

    def __init__(self, req: Request, chan: ReplyChannel) -> None:
        self.req = req
        self.chan = chan


class _Resident:
    """One object and its mailbox."""

    __slots__ = ("cls_path", "id", "instance", "lock", "mailbox", "scheduled")

    def __init__(self, oid: str, cls_path: str, instance: Any) -> None:
        self.id = oid
        self.cls_path = cls_path
        self.instance = instance
        self.mailbox: deque[_Job] = deque()
        self.lock = threading.Lock()
        self.scheduled = False


class Node:
    def __init__(
        self,
        node_id: str,
        broker: BrokerURL,
        classes: dict[str, type],
        *,
        root: str = DEFAULT_ROOT,
        workers: int = 16,
        max_payload: int = 8 * 1024 * 1024,
        max_reply: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.topics = Topics(root)
        self.classes = classes
        self.max_payload = max_payload
        self.max_reply = max_reply or max_payload
        self.objects: dict[str, _Resident] = {}
        self._objects_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"continuum-node-{node_id}")
        self._started = time.time()
        self._call_topic = self.topics.node_call(node_id)
        self._ctl_topic = self.topics.node_ctl(node_id)
        self._status_topic = self.topics.node_status(node_id)
        self.conn = Connection(
            broker,
            client_id=f"node-{node_id}",
            on_message=self._on_message,
            subscriptions={self._call_topic: 1, self._ctl_topic: 1},
            will=(self._status_topic, encode({"state": "offline", "node": node_id}), True),
            on_connected=self._publish_status,
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.conn.start()
        log.info(
            "node %s serving %d class(es) on %s: %s",
            self.node_id,
            len(self.classes),
            self.conn.broker,
            ", ".join(sorted(self.classes)) or "(none)",
        )

    def stop(self) -> None:
        log.info("node %s stopping", self.node_id)
        try:
            info = self.conn.publish(
                self._status_topic, encode({"state": "offline", "node": self.node_id}), retain=True
            )
            info.wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.conn.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def manifest(self) -> dict[str, Any]:
        return {
            "state": "online",
            "node": self.node_id,
            "protocol": PROTOCOL_VERSION,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self._started,
            "max_payload": self.max_payload,
            "classes": {path: describe_class(cls) for path, cls in sorted(self.classes.items())},
        }

    def _publish_status(self) -> None:
        self.conn.publish(self._status_topic, encode(self.manifest()), retain=True)

    # -- network thread --------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        req, chan = accept(msg, self.conn, self.topics, self.max_payload, self.max_reply)
        if req is None:
            return
        if msg.topic == self._call_topic:
            self._route_call(req, chan)
        elif msg.topic == self._ctl_topic:
            self._pool.submit(self._control, req, chan)

    def _route_call(self, req: Request, chan: ReplyChannel) -> None:
        if req.obj is None:
            chan.error(BadRequest("a call needs the field 'obj'"))
            return
        res = self.objects.get(req.obj)
        if res is None:
            chan.error(
                ObjectNotHere(f"object {req.obj} is not on node {self.node_id}", node=self.node_id)
            )
            return
        try:
            lookup_method(type(res.instance), req.method)
        except ContinuumError as exc:
            chan.error(exc)
            return
        job = _Job(req, chan)
        with res.lock:
            res.mailbox.append(job)
            if res.scheduled:
                return
            res.scheduled = True
        self._pool.submit(self._drain, res)

    # -- workers -----------------------------------------------------------------
    def _drain(self, res: _Resident) -> None:
        for _ in range(_BATCH):
            with res.lock:
                if not res.mailbox:
                    res.scheduled = False
                    return
                job = res.mailbox.popleft()
            self._run(res, job)
        self._pool.submit(self._drain, res)  # still scheduled: let other objects in

    def _run(self, res: _Resident, job: _Job) -> None:
        req, chan = job.req, job.chan
        if chan.expired():
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        try:
            value = invoke(res.instance, req.method, req.args, req.kwargs, chan.progress)
        except ContinuumError as exc:
            chan.error(exc)
            return
        except BaseException as exc:  # pragma: no cover - invoke wraps Exception
            chan.error(remote_error(exc))
            raise
        chan.result(value)

    def _control(self, req: Request, chan: ReplyChannel) -> None:
        try:
            if req.method == "create":
                chan.result(self._create(**req.kwargs))
            elif req.method == "delete":
                chan.result(self._delete(**req.kwargs))
            elif req.method == "list":
                chan.result(
                    [{"id": r.id, "class": r.cls_path} for r in list(self.objects.values())]
                )
            else:
                raise UnknownMethod(f"node control has no method {req.method!r}", method=req.method)
        except TypeError as exc:
            chan.error(BadRequest(f"control {req.method}: {exc}"))
        except ContinuumError as exc:
            chan.error(exc)
        except Exception as exc:
            chan.error(remote_error(exc))

    def _create(
        self,
        obj: str,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        klass = self.classes.get(cls)
        if klass is None:
            raise UnknownClass(f"node {self.node_id} does not host class {cls!r}", cls=cls)
        args, kwargs = list(args or []), dict(kwargs or {})
        with self._objects_lock:
            existing = self.objects.get(obj)
            if existing is not None:
                return {"id": obj, "class": existing.cls_path, "node": self.node_id}
            bind_arguments(klass, args, kwargs, f"{klass.__qualname__}()")
            try:
                instance = klass(*args, **kwargs)
            except Exception as exc:
                raise remote_error(exc) from exc
            self.objects[obj] = _Resident(obj, cls, instance)
        log.info("created %s %s", cls, obj)
        return {"id": obj, "class": cls, "node": self.node_id}

    def _delete(self, obj: str) -> dict[str, Any]:
        with self._objects_lock:
            res = self.objects.pop(obj, None)
        if res is None:
            raise ObjectNotHere(f"object {obj} is not on node {self.node_id}", node=self.node_id)
        log.info("deleted %s %s", res.cls_path, obj)
        return {"id": obj, "deleted": True}
