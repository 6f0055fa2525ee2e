"""Replication and fencing (protocol §18), between Python nodes only.

A primary with replicas, before a mutating call's reply, ships the call to
each live replica (``apply``: its journal entry, replayed as a restart
replays a journal) or, for a snapshot method or a replica that is behind,
the whole record (``state``: cloudpickle, so the sync topic is for trusted
services only), and waits for them: every acknowledged mutation survives the
primary. The gateway *promotes* a replica when the primary dies; the
promoted node *fences* the old primary by refusing its syncs as a primary
itself, and the old primary then drops its stale copy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from continuum_mqtt import BadRequest, ContinuumError, ObjectNotHere, StorageError, UnknownClass
from continuum_mqtt.service import (
    ReplyChannel,
    Request,
    Topics,
    canonical_class_path,
    invoke,
    remote_error,
)

from ._durability import Durability
from ._feeds import Bindings
from ._resident import Resident, Residents
from ._store import dumps_state, loads_state

__all__ = ["Replication", "Send"]

log = logging.getLogger("continuum.node")

Send = Callable[[str, Request, float], "Future[Any]"]  # topic, request, timeout -> reply


@dataclass(eq=False, repr=False)
class Replication:
    """``send`` is a requester's send (node-to-node requests); ``online(node)``
    tells whether a node is live (from its retained status)."""

    node_id: str
    topics: Topics
    send: Send
    residents: Residents
    durability: Durability
    bindings: Bindings
    classes: dict[str, type]
    online: Callable[[str], bool]
    sync_timeout: float = 5.0

    # -- the primary's side ------------------------------------------------------
    def replicate(self, res: Resident, entry: dict[str, Any] | None = None) -> None:
        """Bring the object's live replicas up to date and wait for them: the
        call as ``entry``, or (None, or a replica behind) the whole state.
        Raises ObjectNotHere when a replica turns out to be the primary now."""
        targets = [r for r in res.replicas if self.online(r)]
        if not targets:
            return
        state: bytes | None = None
        pending = []
        for r in targets:
            if entry is not None:
                body: dict[str, Any] = {"obj": res.id, "cls": res.cls_path, "apply": entry}
            else:
                state = state or dumps_state(res.record())
                body = {"obj": res.id, "cls": res.cls_path, "state": state}
            pending.append((r, self._sync_send(r, body)))
        for r, fut in pending:
            try:
                fut.result()
            except ContinuumError as exc:
                if entry is not None and not exc.data.get("fenced"):
                    # behind, new, or the call cannot be shipped as such: send everything
                    state = state or dumps_state(res.record())
                    try:
                        self._sync_send(
                            r, {"obj": res.id, "cls": res.cls_path, "state": state}
                        ).result()
                        continue
                    except ContinuumError as exc2:
                        exc = exc2
                if exc.data.get("fenced"):
                    self._fence(res, r)
                log.warning("replica %s of %s did not confirm a sync: %s", r, res.id, exc)

    def _sync_send(self, node: str, body: dict[str, Any]) -> Future[Any]:
        return self.send(
            self.topics.node_sync(node),
            Request("sync", [], {**body, "primary": self.node_id}),
            self.sync_timeout,
        )

    def _fence(self, res: Resident, new_primary: str) -> None:
        """Our replica was promoted (the gateway took us for dead): we are no
        longer the primary. Drop our copy and refuse the call in hand, whose
        caller then finds the object on its new node (same request id)."""
        log.warning(
            "%s %s was promoted on %s: dropping our stale copy", res.cls_path, res.id, new_primary
        )
        with contextlib.suppress(ObjectNotHere):
            self.durability.delete(res.id)
        raise ObjectNotHere(f"object {res.id} moved to node {new_primary}", node=self.node_id)

    # -- the replica's side ------------------------------------------------------
    def handle(self, req: Request, chan: ReplyChannel) -> None:
        """A request on our sync topic (a primary's state or call)."""
        try:
            chan.result(self.receive(req.kwargs))
        except KeyError as exc:
            chan.error(BadRequest(f"sync: missing {exc}"))
        except ContinuumError as exc:
            chan.error(exc)
        except Exception as exc:
            log.exception("sync of %s failed", req.kwargs.get("obj"))
            chan.error(remote_error(exc))

    def receive(self, kw: dict[str, Any]) -> dict[str, Any]:
        obj, cls = kw["obj"], canonical_class_path(kw["cls"])
        if cls not in self.classes:
            raise UnknownClass(f"node {self.node_id} does not host class {cls!r}", cls=cls)
        if "apply" in kw:
            return self.apply(obj, kw["apply"])
        state = kw["state"]
        if not isinstance(state, bytes):
            raise BadRequest("sync: 'state' must be bytes")
        rec = loads_state(state)
        rec.update(id=obj, role="replica", replicas=[])
        res = Resident.from_record(rec)
        with self.residents.lock:
            current = self.residents.get(obj)
            if current is not None and current.role == "primary":
                raise self._refused(obj)
            if (q := self.residents.quarantine.get(obj)) is not None:
                raise q.error(self.node_id)
            self.residents.put(res)
        try:
            self.durability.persist(res)
        except StorageError:  # the copy stays as its files hold it
            with self.residents.lock:
                if current is None:
                    self.residents.pop(obj)
                else:
                    self.residents.put(current)
            raise
        return {"id": obj, "node": self.node_id}

    def apply(self, obj: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Apply a call the primary made to our replica; a replica that is not
        exactly one call behind asks for the whole state (``resync``)."""
        res = self.residents.get(obj)
        if res is not None and res.role == "primary":
            raise self._refused(obj)
        if res is None or res.role != "replica" or res.seq != entry["seq"] - 1:
            have = None if res is None else res.seq
            raise ObjectNotHere(f"replica of {obj} on {self.node_id} is at {have}", resync=True)
        req = Request(entry["method"], entry["args"], entry["kwargs"], id=entry["rid"])
        with res.state:
            with contextlib.suppress(ContinuumError):
                invoke(res.instance, req.method, req.args, req.kwargs)
            self.durability.commit(res, req, (entry["ok"], entry["value"]), snapshot=False)
        return {"id": obj, "node": self.node_id, "seq": res.seq}

    def _refused(self, obj: str) -> ObjectNotHere:
        return ObjectNotHere(f"{obj} is primary on {self.node_id}; refusing a sync", fenced=True)

    # -- failover ------------------------------------------------------------------
    def promote(self, obj: str, replicas: list[str]) -> dict[str, Any]:
        """Make our replica of ``obj`` the primary (the gateway does this when
        the primary's last will arrives), with ``replicas`` as its replicas."""
        res = self.residents.held(obj, any_role=True)
        with res.state:
            with res.lock:
                res.role = "primary"
                res.replicas = [r for r in replicas if r != self.node_id]
            self.bindings.add_all(res)
            self.durability.persist_or_rollback(res)
            if res.replicas:
                self.replicate(res)
        log.info("promoted %s %s to primary", res.cls_path, obj)
        return {"id": obj, "node": self.node_id, "replicas": res.replicas}
