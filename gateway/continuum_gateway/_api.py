"""The gateway's methods (docs/protocol.md §16): create, resolve, alias,
unalias, delete, bind, unbind and the listings, over the directory and the
nodes' control methods. Registered on the gateway's dispatcher by their
:func:`~continuum_mqtt.service.method` marks; they know nothing of MQTT."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from continuum_mqtt import (
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    NoNodeAvailable,
    NotConnected,
    ObjectNotHere,
    QuotaExceeded,
    UnknownClass,
    UnknownObject,
)
from continuum_mqtt.service import (
    NO_CONTEXT,
    Context,
    Rights,
    Topics,
    canonical_class_path,
    check_create,
    method,
)

from ._directory import Directory
from ._fleet import keeps_aliases
from ._rights import DirectoryRights, access_of

__all__ = ["DirectoryApi", "NodeCall"]

log = logging.getLogger("continuum.gateway")

MAX_PAGE = 10_000
"""The most objects one page of ``objects`` may ask for (``limit``)."""

NodeCall = Callable[[str, str, dict[str, Any], float | None], Any]
"""``node_call(node, method, kwargs, deadline)``: a control request to a node
(§17), its result, or a :class:`~continuum_mqtt.ContinuumError`."""


class DirectoryApi:
    """``node_call`` reaches the nodes; ``pool`` runs the best-effort
    clean-up of a failed create, ``alias_pool`` (one thread, so that the
    last list sent wins) the alias lists pushed to nodes; ``token`` marks the
    creates this process started."""

    def __init__(
        self,
        directory: Directory,
        topics: Topics,
        node_call: NodeCall,
        *,
        pool: Executor,
        alias_pool: Executor,
        node_timeout: float = 30.0,
        token: str | None = None,
        rights: Rights | None = None,
        max_objects: int = 0,
    ) -> None:
        self.directory = directory
        self.rights = rights or Rights()
        self.access = DirectoryRights(directory, self.rights)
        # objects an account may own (0: no limit; admins, the anonymous caller
        # of a development broker included, have none)
        self.max_objects = max_objects
        self.topics = topics
        self.node_call = node_call
        self.pool = pool
        self.alias_pool = alias_pool
        self.node_timeout = node_timeout
        self.token = token or uuid.uuid4().hex

    # -- create ------------------------------------------------------------------------
    @method(changes=True, context=("ctx",))
    def create(
        self,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        node: str | None = None,
        alias: str | None = None,
        replicas: int = 0,
        _ctx: Context = NO_CONTEXT,
    ) -> dict[str, Any]:
        check_create(cls, replicas)
        self.rights.check_caller(_ctx.caller)
        if alias is not None:
            self.rights.check_alias(alias, _ctx.caller)
        self._check_quota(_ctx.caller)
        cls = canonical_class_path(cls)
        work = self.directory.running(_ctx.rid) if _ctx.rid is not None else None
        if work is not None:  # resent after a gateway restart: finish that same object
            oid, holders = str(work["oid"]), [str(h) for h in work["holders"]]
            log.warning("create %s was resent after a restart: finishing object %s", _ctx.rid, oid)
        else:
            holders = self._place(cls, node, replicas)
            if alias is not None:
                self.directory.check_alias_free(alias, "")
            oid = uuid.uuid4().hex
            if _ctx.rid is not None:
                self._remember_create(_ctx.rid, oid, holders, _ctx.deadline)
        target, backups = holders[0], holders[1:]
        create: dict[str, Any] = {
            "obj": oid,
            "cls": cls,
            "args": args or [],
            "kwargs": kwargs or {},
            "replicas": backups,
            "owner": _ctx.caller,
        }
        if alias is not None and self.keeps_aliases(target):
            create["aliases"] = [alias]
        try:
            self.node_call(target, "create", create, _ctx.deadline)
        except (DeadlineExpired, NotConnected) as exc:
            # the node may have created it after all: no directory entry will
            # ever name it, so take it back
            self.discard(oid, holders, _ctx.rid, exc)
            raise
        try:
            info = self.directory.add_object(
                oid, cls, target, alias, backups, rid=_ctx.rid, owner=_ctx.caller
            )
        except BaseException as exc:  # e.g. the alias was taken meanwhile
            self.discard(oid, holders, _ctx.rid, exc)
            raise
        log.info(
            "created %s %s on %s%s%s",
            cls,
            oid,
            target,
            f" as {alias!r}" if alias else "",
            f", replicas on {', '.join(backups)}" if backups else "",
        )
        return info

    def _check_quota(self, caller: str) -> None:
        if not self.max_objects or self.rights.is_admin(caller):  # anonymous: an admin
            return
        if self.directory.owned(caller) >= self.max_objects:
            raise QuotaExceeded(
                f"{caller} owns {self.max_objects} objects, its limit: delete some first",
                what="objects",
                limit=self.max_objects,
            )

    def _place(self, cls: str, node: str | None, replicas: int) -> list[str]:
        placed = self.directory.place(cls, node, 1 + replicas)
        if not placed:
            if node is not None:
                state = self.directory.node_state(node)
                if state != "online":
                    raise NoNodeAvailable(f"node {node!r} is {state}", node=node)
                if cls in self.directory.node_manifest(node).get("classes", {}):
                    raise NoNodeAvailable(
                        f"node {node!r} is draining: no object is placed on it", node=node
                    )
                raise UnknownClass(f"node {node!r} does not host class {cls!r}", cls=cls)
            raise NoNodeAvailable(f"no live node hosts class {cls!r}", cls=cls)
        if len(placed) < 1 + replicas:
            raise NoNodeAvailable(
                f"{replicas} replica(s) need {1 + replicas} live nodes hosting {cls!r};"
                f" there are {len(placed)}",
                cls=cls,
            )
        return placed

    def _remember_create(
        self, rid: str, oid: str, holders: list[str], deadline: float | None
    ) -> None:
        """Before asking the node: the object id this request creates, so that
        a resend after a crash finishes it instead of creating another."""
        left = (deadline - time.monotonic()) if deadline is not None else self.node_timeout
        work = {
            "oid": oid,
            "holders": holders,
            "deadline": time.time() + max(0.0, left),
            "owner": self.token,
        }
        self.directory.start_running(rid, "create", work)

    def discard(
        self, oid: str, holders: list[str], rid: str | None = None, exc: BaseException | None = None
    ) -> None:
        """Tombstone an object that the directory does not record, and delete
        it, in the background (best effort), from the nodes that may hold it;
        a node that is offline deletes it when it returns (reconciliation)."""
        outcome = None
        if isinstance(exc, ContinuumError):
            outcome = (False, exc.to_envelope())
        try:
            self.directory.discard(oid, rid, outcome)
        except sqlite3.Error as err:
            log.error("could not record the discarding of %s: %s", oid, err)

        def run() -> None:
            for holder in holders:
                try:
                    self.node_call(holder, "delete", {"obj": oid}, time.monotonic() + 5.0)
                except ContinuumError as exc:
                    if not isinstance(exc, ObjectNotHere):
                        log.warning("could not discard %s on %s: %s", oid, holder, exc)

        log.warning("discarding object %s on %s: its create did not complete", oid, holders)
        self.pool.submit(run)  # not the upkeep thread: failover must not wait behind it

    # -- aliases -----------------------------------------------------------------------
    def keeps_aliases(self, node: str) -> bool:
        return keeps_aliases(self.directory.node_manifest(node))

    def push_aliases(self, oid: str) -> None:
        """Best effort, in order: tell the holders of ``oid`` its aliases (nodes
        keep them, so that the directory can be rebuilt from the nodes)."""

        def run() -> None:
            info = self.directory.find(oid)
            if info is None:
                return
            for holder in [info["node"], *info["replicas"]]:
                if self.directory.node_state(holder) != "online" or not self.keeps_aliases(holder):
                    continue
                try:
                    self.node_call(
                        holder,
                        "aliases",
                        {"obj": oid, "aliases": info["aliases"]},
                        time.monotonic() + 5.0,
                    )
                except ObjectNotHere:
                    pass
                except ContinuumError as exc:
                    log.warning("could not send the aliases of %s to node %s: %s", oid, holder, exc)

        with contextlib.suppress(RuntimeError):  # shut down
            self.alias_pool.submit(run)

    @method(context=("ctx",))
    def resolve(self, ref: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        return self.access.resolve(ref, _ctx.caller)

    MAX_RESOLVE_MANY = 1000

    @method(context=("ctx",))
    def resolve_many(self, refs: list[str], _ctx: Context = NO_CONTEXT) -> list[dict[str, Any]]:
        """``resolve`` for up to 1,000 references at once: for each, in order,
        its object info, or ``{"error": envelope}`` (the error ``resolve``
        would give, with the same visibility rules)."""
        if not isinstance(refs, list) or len(refs) > self.MAX_RESOLVE_MANY:
            raise BadRequest(f"refs must be a list of at most {self.MAX_RESOLVE_MANY} references")
        self.rights.check_caller(_ctx.caller)
        opened = self.access.open_classes()
        out: list[dict[str, Any]] = []
        for ref in refs:
            try:
                info = self.directory.resolve(ref)
                if not self.access.visible(info, _ctx.caller, opened):
                    raise UnknownObject(f"no object with id or alias {ref!r}", ref=ref)
                out.append(info)
            except ContinuumError as exc:
                out.append({"error": exc.to_envelope()})
        return out

    @method(changes=True, context=("ctx",))
    def alias(self, ref: str, name: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        info = self.access.managed(ref, _ctx.caller)
        self.rights.check_alias(name, _ctx.caller)
        if name not in info["aliases"]:
            self.rights.check_aliases([*info["aliases"], name])
        info = self.directory.set_alias(info["id"], name, rid=_ctx.rid)
        self.push_aliases(info["id"])
        return info

    @method(changes=True, context=("ctx",))
    def unalias(self, name: str, _ctx: Context = NO_CONTEXT) -> None:
        self.rights.check_caller(_ctx.caller)
        named = self.directory.find(name) if isinstance(name, str) else None
        if named is not None and name in named["aliases"]:
            if not self.access.visible(named, _ctx.caller):
                return  # as for a missing alias: nothing said about another's names
            self.rights.check_manage(access_of(named), _ctx.caller, f"alias {name!r}")
        oid = self.directory.remove_alias(name, rid=_ctx.rid)
        if oid is not None:
            self.push_aliases(oid)

    # -- delete, bind ------------------------------------------------------------------
    @method(changes=True, context=("ctx",))
    def delete(
        self,
        ref: str,
        _ctx: Context = NO_CONTEXT,
    ) -> dict[str, Any]:
        info = self.access.managed(ref, _ctx.caller)
        for holder in [info["node"], *info["replicas"]]:
            if self.directory.node_state(holder) == "online":
                with contextlib.suppress(ObjectNotHere):
                    self.node_call(holder, "delete", {"obj": info["id"]}, _ctx.deadline)
        result = {"id": info["id"], "deleted": True}
        self.directory.delete_object(info["id"], rid=_ctx.rid, result=result)
        log.info("deleted %s %s", info["class"], info["id"])
        return result

    def _metrics_topic(self, device: str) -> str:
        try:
            return self.topics.metrics(device)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    @method(changes=True, context=("ctx",))
    def bind(
        self,
        ref: str,
        device: str,
        method: str,
        _ctx: Context = NO_CONTEXT,
    ) -> dict[str, Any]:
        """Feed device ``device``'s metrics to ``method`` of the object, on its
        node: the caller must manage the object and be the device (or an admin)."""
        info = self.access.managed(ref, _ctx.caller)
        topic = self._metrics_topic(device)
        self.rights.check_device(device, _ctx.caller)
        self.node_call(
            info["node"],
            "bind",
            {"obj": info["id"], "topic": topic, "method": method},
            _ctx.deadline,
        )
        return {**info, "topic": topic}

    @method(changes=True, context=("ctx",))
    def unbind(self, ref: str, device: str, _ctx: Context = NO_CONTEXT) -> dict[str, Any]:
        info = self.access.managed(ref, _ctx.caller)
        topic = self._metrics_topic(device)
        self.node_call(info["node"], "unbind", {"obj": info["id"], "topic": topic}, _ctx.deadline)
        return {**info, "topic": topic}

    # -- listings ----------------------------------------------------------------------
    @method(context=("ctx",))
    def nodes(self, _ctx: Context = NO_CONTEXT) -> list[dict[str, Any]]:
        return self.access.nodes(self.directory.nodes(), _ctx.caller)

    @method
    def classes(self) -> dict[str, Any]:
        return self.directory.classes()

    @method(context=("ctx",))
    def objects(
        self,
        cls: str | None = None,
        node: str | None = None,
        residency: bool = False,
        offset: int = 0,
        limit: int | None = None,
        _ctx: Context = NO_CONTEXT,
    ) -> list[dict[str, Any]]:
        for name, value in (("offset", offset), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadRequest(f"'{name}' must be an integer")
        if offset < 0 or (limit is not None and not 1 <= limit <= MAX_PAGE):
            raise BadRequest(f"'offset' >= 0 and 1 <= 'limit' <= {MAX_PAGE}")
        found = self.directory.objects(
            canonical_class_path(cls) if isinstance(cls, str) else cls, node
        )
        seen = self.access.objects(found, _ctx.caller)
        if offset or limit is not None:  # a page: the caller's objects, oldest first
            seen = seen[offset : None if limit is None else offset + limit]
        if residency is True:
            self._residency(seen, _ctx.deadline)
        return seen

    def _residency(self, objs: list[dict[str, Any]], deadline: float | None) -> None:
        """Mark each of ``objs`` ``resident`` (true or false) and ``used`` (its
        last job, Unix s) as its node says (``residency``, protocol §17); null
        where its node is offline or does not answer in time. One request per
        node, for its objects among ``objs`` (a page), one after the other (on
        this worker: never queued behind itself on the gateway's pool)."""
        ids: dict[str, list[str]] = {}
        for o in objs:
            ids.setdefault(o["node"], []).append(o["id"])
        seen: dict[str, dict[str, tuple[bool, float]]] = {}
        for n in sorted(ids):
            if self.directory.node_state(n) != "online":
                continue
            try:
                rows = self.node_call(n, "residency", {"objs": ids[n]}, deadline)
                seen[n] = {row[0]: (bool(row[1]), float(row[2])) for row in rows}
            except Exception as exc:  # offline meanwhile, an old node, timed out
                log.info("residency of node %s unknown: %s", n, exc)
        for o in objs:
            resident, used = seen.get(o["node"], {}).get(o["id"], (None, None))
            o["resident"], o["used"] = resident, used
