"""The gateway: the object directory service, and node liveness from retained
status messages and last wills. It is on the path of directory operations
(create, resolve, alias, delete, listings) only, never of calls."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from continuum._client import Requester
from continuum._codec import decode, encode
from continuum._errors import (
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    NoNodeAvailable,
    NotConnected,
    ObjectNotHere,
    StorageError,
    UnknownClass,
    UnknownMethod,
    error_from_envelope,
)
from continuum._invoke import bind_arguments, remote_error
from continuum._mqtt import BrokerURL, Connection, Message
from continuum._protocol import DEFAULT_ROOT, PROTOCOL_VERSION, Request, Topics
from continuum._server import ReplyChannel, accept

from . import _records as rec
from ._directory import Directory
from ._fleet import MARKER_PREFIX, empty_directory_refusal, held_counts, keeps_aliases
from ._integrity import DirectoryRefused, check_directory
from ._reconcile import Reconciler, parse_list

__all__ = ["Gateway"]

log = logging.getLogger("continuum.gateway")

# The largest node status kept (a node hosting a few hundred classes sends a few KB).
MAX_STATUS = 256 * 1024
# How often interrupted creates are settled and old records pruned.
HOUSEKEEPING_S = 30.0


class Gateway:
    def __init__(
        self,
        broker: BrokerURL,
        db_path: str,
        *,
        gateway_id: str = "gateway",
        root: str = DEFAULT_ROOT,
        workers: int = 4,
        max_payload: int = 1024 * 1024,
        node_timeout: float = 30.0,
        failover_delay: float = 2.0,
        tombstone_days: float = rec.TOMBSTONE_DAYS,
        status_wait: float = 10.0,
    ) -> None:
        for warning in check_directory(db_path):  # raises DirectoryRefused
            log.warning("%s", warning)
        self.topics = Topics(root)
        self.broker = broker
        self.directory = Directory(db_path)
        self._was_empty = self.directory.is_empty()
        self.max_payload = max_payload
        self.node_timeout = node_timeout
        self.failover_delay = failover_delay
        self.tombstone_days = tombstone_days
        self.status_wait = status_wait
        # exactly-once: outcomes live in the directory; this is what runs now
        self._running: set[str] = set()
        self._recent_lock = threading.Lock()
        self._token = uuid.uuid4().hex  # marks the creates this process started
        self.gateway_id = gateway_id
        self._ready = threading.Event()  # the directory is trusted: serve, reconcile
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._marker = MARKER_PREFIX + uuid.uuid4().hex.encode()
        self._statuses: dict[str, dict[str, Any]] = {}  # latest online status per node
        self._reconciled: set[str] = set()
        self._reconcile_queued: set[str] = set()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="continuum-gateway")
        # Status updates are applied in arrival order, one at a time.
        self._status_pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-status")
        self._upkeep = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-upkeep")
        # alias lists pushed to nodes in order, so that the last one sent wins
        self._alias_pool = ThreadPoolExecutor(1, thread_name_prefix="continuum-gateway-aliases")
        self._housekeeper: threading.Thread | None = None
        self.requester = Requester(self.topics, f"gw-{gateway_id}", owner=broker.username)
        self.reconciler = Reconciler(self.directory, self._node_call, self._upkeep_deadline)
        self.conn = Connection(
            broker,
            client_id=f"gw-{gateway_id}",
            on_message=self._on_message,
            # gateway/call is subscribed once the directory is trusted (start)
            subscriptions={self.topics.node_status_all: 1, self.requester.reply_topic: 1},
            will=(self.topics.gateway_status, encode({"state": "offline"}), True),
            on_connected=self._publish_status,
        )
        self._methods: dict[str, Callable[..., Any]] = {
            "create": self.create,
            "resolve": self.resolve,
            "alias": self.alias,
            "unalias": self.unalias,
            "delete": self.delete,
            "bind": self.bind,
            "unbind": self.unbind,
            "nodes": self.nodes,
            "classes": self.classes,
            "objects": self.objects,
        }

    def start(self) -> None:
        """Connect, learn what the nodes hold, and serve, or raise
        :class:`DirectoryRefused` (an empty directory while nodes hold objects)."""
        self.requester.start(self.conn)
        self.conn.start()
        self._await_statuses()
        if self._was_empty:
            counts = held_counts(self._statuses)
            if counts:
                raise DirectoryRefused(
                    empty_directory_refusal(
                        self.directory.path, counts, str(self.broker), self.topics.root
                    )
                )
        self._ready.set()
        self.conn.subscribe(self.topics.gateway_call, 1)
        self._announce()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="continuum-gateway-housekeeping", daemon=True
        )
        self._housekeeper.start()
        log.info(
            "gateway %s on %s, directory %s", self.gateway_id, self.conn.broker, self.directory.path
        )

    def _await_statuses(self) -> None:
        """Wait until the retained node statuses have all been applied."""
        self.conn.publish(self.requester.reply_topic, self._marker, qos=1)
        if not self._synced.wait(self.status_wait):
            log.warning(
                "the node statuses did not all arrive within %.0f s; going on without them",
                self.status_wait,
            )

    def stop(self) -> None:
        self._stopping.set()
        try:
            self.conn.publish(
                self.topics.gateway_status, encode({"state": "offline"}), retain=True
            ).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.requester.stop()
        self.conn.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._status_pool.shutdown(wait=True)
        self._upkeep.shutdown(wait=False, cancel_futures=True)
        self._alias_pool.shutdown(wait=False, cancel_futures=True)
        if self._housekeeper is not None:
            self._housekeeper.join(5)
        self.directory.close()  # after a writer still at work (it takes the lock)

    def _publish_status(self) -> None:
        """On every (re)connect: resend node requests in flight, announce ourselves."""
        self.requester.resend_all()
        if self._ready.is_set():
            self._announce()

    def _announce(self) -> None:
        self.conn.publish(
            self.topics.gateway_status,
            encode({"state": "online", "protocol": PROTOCOL_VERSION, "started": time.time()}),
            retain=True,
        )

    # -- network thread ----------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        topic = msg.topic
        if topic == self.requester.reply_topic:
            if msg.payload == self._marker:
                self._status_pool.submit(self._synced.set)  # after the statuses before it
                return
            self.requester.on_reply(msg)
            return
        node = self.topics.node_of_status(topic)
        if node is not None:
            self._status_pool.submit(self._node_status, node, bytes(msg.payload))
            return
        if topic == self.topics.gateway_call:
            req, chan = accept(msg, self.conn, self.topics, self.max_payload, self.max_payload)
            if req is not None:
                self._pool.submit(self._serve, req, chan)

    def _node_status(self, node: str, payload: bytes) -> None:
        if not payload:  # retained status cleared
            self._statuses.pop(node, None)
            self.directory.forget_node(node)
            return
        try:
            if len(payload) > MAX_STATUS:
                # kept whole in the directory and echoed by nodes()/classes():
                # one oversized status would break those replies for everyone
                raise BadRequest(f"status of {len(payload)} bytes (limit {MAX_STATUS})")
            status = decode(payload)
            if not isinstance(status, dict):
                raise BadRequest("status must be a map")
            host = status.get("host")
            if host is not None and not (isinstance(host, str) and len(host) <= 255):
                raise BadRequest("status 'host' must be a host name")
            classes = status.get("classes", {})
            if not isinstance(classes, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in classes.items()
            ):
                raise BadRequest("status 'classes' must map class paths to maps")
        except ContinuumError as exc:
            log.warning("ignoring malformed status of node %s: %s", node, exc)
            return
        before = self.directory.node_state(node)
        online = status.get("state") == "online"
        self.directory.node_status(node, status)
        log.info("node %s is %s", node, "online" if online else "offline")
        if online:
            self._statuses[node] = status
            self._quarantine(node, status.get("quarantined"))
        else:
            self._statuses.pop(node, None)
        if not online and before == "online":
            self._upkeep.submit(self._failover, node)
        elif online and self._should_reconcile(node, before, status):
            self._reconcile_queued.add(node)
            self._upkeep.submit(self._reconcile, node)

    def _should_reconcile(self, node: str, before: str, status: dict[str, Any]) -> bool:
        """A node coming back, or seen for the first time by this gateway
        process while it holds objects (or the directory lists some on it)."""
        if node in self._reconcile_queued:
            return False
        if before == "offline":
            return True
        if node in self._reconciled:
            return False
        return node in held_counts({node: status}) or bool(self.directory.objects_on(node))

    def _quarantine(self, node: str, quarantined: Any) -> None:
        if quarantined is None:
            return
        entries: dict[str, str] = {}
        if isinstance(quarantined, list):
            for q in quarantined:
                if isinstance(q, dict) and isinstance(q.get("id"), str):
                    reason = q.get("reason")
                    entries[q["id"]] = reason if isinstance(reason, str) else "quarantined"
        for oid in self.directory.apply_quarantine(node, entries):
            if oid in entries:
                log.error(
                    "object %s is unavailable: quarantined on node %s: %s", oid, node, entries[oid]
                )
            else:
                log.warning("object %s is available again on node %s", oid, node)

    _CHANGES = frozenset({"create", "alias", "unalias", "delete", "bind", "unbind"})
    _WITH_RID = frozenset({"create", "alias", "unalias", "delete"})

    def _serve(self, req: Request, chan: ReplyChannel) -> None:
        """Run one gateway request. Requests that change the directory are
        exactly-once by request id, like calls on nodes, also across a restart
        of the gateway (the outcomes are in the directory, written with the
        change): a resent request gets the first outcome (or, while the first
        still runs, no second reply)."""
        if chan.expired():
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        rid = req.id if req.method in self._CHANGES else None
        if rid is not None:
            with self._recent_lock:
                if rid in self._running:
                    return
                done = self._stored_outcome(rid)
                if done is None:
                    self._running.add(rid)
            if done is not None:
                self._answer(chan, done)
                return
        outcome: tuple[bool, Any]
        try:
            outcome = (True, self._dispatch(req, chan, rid))
        except ContinuumError as exc:
            outcome = (False, exc.to_envelope())
        except sqlite3.Error as exc:
            log.error("gateway %s: the directory failed: %s", req.method, exc)
            outcome = (
                False,
                StorageError(f"the directory could not record it: {exc}").to_envelope(),
            )
        except Exception as exc:
            log.exception("gateway %s failed", req.method)
            outcome = (False, remote_error(exc).to_envelope())
        if rid is not None:
            try:
                if outcome[0] or outcome[1].get("code") != StorageError.code:
                    self.directory.store_outcome(rid, req.method, outcome)
            except (sqlite3.Error, ContinuumError) as exc:
                log.error("could not store the outcome of %s %s: %s", req.method, rid, exc)
            finally:
                with self._recent_lock:
                    self._running.discard(rid)
        self._answer(chan, outcome)

    def _stored_outcome(self, rid: str) -> tuple[bool, Any] | None:
        try:
            return self.directory.outcome(rid)
        except (sqlite3.Error, ContinuumError) as exc:
            log.error("could not read the outcome of %s: %s", rid, exc)
            return None

    @staticmethod
    def _answer(chan: ReplyChannel, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            chan.result(value)
        else:
            chan.error(error_from_envelope(value))

    def _dispatch(self, req: Request, chan: ReplyChannel, rid: str | None = None) -> Any:
        fn = self._methods.get(req.method)
        if fn is None:
            raise UnknownMethod(f"the gateway has no method {req.method!r}", method=req.method)
        if any(k.startswith("_") for k in req.kwargs):
            raise BadRequest("argument names starting with '_' are reserved")
        bind_arguments(fn, req.args, req.kwargs, f"gateway {req.method}")
        if req.method in ("create", "delete", "bind", "unbind"):
            req.kwargs["_deadline"] = chan.deadline
        if req.method in self._WITH_RID and rid is not None:
            req.kwargs["_rid"] = rid
        return fn(*req.args, **req.kwargs)

    # -- directory methods ---------------------------------------------------------
    def _node_call(
        self, node: str, method: str, kwargs: dict[str, Any], deadline: float | None
    ) -> Any:
        timeout = self.node_timeout
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        req = Request(method, [], kwargs)
        return self.requester.send(self.topics.node_ctl(node), req, timeout).result()

    def _keeps_aliases(self, node: str) -> bool:
        return keeps_aliases(self.directory.node_manifest(node))

    def create(
        self,
        cls: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        node: str | None = None,
        alias: str | None = None,
        replicas: int = 0,
        _deadline: float | None = None,
        _rid: str | None = None,
    ) -> dict[str, Any]:
        if not isinstance(cls, str) or not cls:
            raise BadRequest("create: 'cls' must be a class path")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise BadRequest("create: 'replicas' must be a non-negative integer")
        work = self.directory.running(_rid) if _rid is not None else None
        if work is not None:  # resent after a gateway restart: finish that same object
            oid, holders = str(work["oid"]), [str(h) for h in work["holders"]]
            log.warning("create %s was resent after a restart: finishing object %s", _rid, oid)
        else:
            holders = self._place(cls, node, replicas)
            if alias is not None:
                self.directory.check_alias_free(alias, "")
            oid = uuid.uuid4().hex
            if _rid is not None:
                self._remember_create(_rid, oid, holders, _deadline)
        target, backups = holders[0], holders[1:]
        create: dict[str, Any] = {
            "obj": oid,
            "cls": cls,
            "args": args or [],
            "kwargs": kwargs or {},
            "replicas": backups,
        }
        if alias is not None and self._keeps_aliases(target):
            create["aliases"] = [alias]
        try:
            self._node_call(target, "create", create, _deadline)
        except (DeadlineExpired, NotConnected) as exc:
            # the node may have created it after all: no directory entry will
            # ever name it, so take it back
            self._discard(oid, holders, _rid, exc)
            raise
        try:
            info = self.directory.add_object(oid, cls, target, alias, backups, rid=_rid)
        except BaseException as exc:  # e.g. the alias was taken meanwhile
            self._discard(oid, holders, _rid, exc)
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

    def _place(self, cls: str, node: str | None, replicas: int) -> list[str]:
        placed = self.directory.place(cls, node, 1 + replicas)
        if not placed:
            if node is not None:
                state = self.directory.node_state(node)
                if state != "online":
                    raise NoNodeAvailable(f"node {node!r} is {state}", node=node)
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
            "owner": self._token,
        }
        self.directory.start_running(rid, "create", work)

    def _discard(
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
                    self._node_call(holder, "delete", {"obj": oid}, time.monotonic() + 5.0)
                except ContinuumError as exc:
                    if not isinstance(exc, ObjectNotHere):
                        log.warning("could not discard %s on %s: %s", oid, holder, exc)

        log.warning("discarding object %s on %s: its create did not complete", oid, holders)
        self._pool.submit(run)  # not the upkeep thread: failover must not wait behind it

    # -- housekeeping ------------------------------------------------------------------
    def _housekeep(self) -> None:
        """Every ``HOUSEKEEPING_S``: settle interrupted creates, prune outcomes
        beyond their bounds; hourly: prune old tombstones."""
        last_prune = 0.0
        while not self._stopping.is_set():
            try:
                self._settle_interrupted()
                hourly = time.monotonic() - last_prune > 3600
                stones, outcomes = self.directory.prune(self.tombstone_days if hourly else None)
                if hourly:
                    last_prune = time.monotonic()
                if stones or outcomes:
                    log.info("pruned %d tombstones and %d outcomes", stones, outcomes)
            except (sqlite3.Error, ContinuumError) as exc:
                log.error("housekeeping failed: %s", exc)
            self._stopping.wait(HOUSEKEEPING_S)

    def _settle_interrupted(self) -> None:
        """Creates interrupted by a restart of the gateway and not resent
        before their deadline: the caller was told nothing succeeded (a
        deadline error), so the object is taken back, as a create that
        times out is."""
        with self.directory.transaction() as c:
            interrupted = rec.running_creates(c)
        now = time.time()
        for rid, work in interrupted:
            if work.get("owner") == self._token or float(work.get("deadline", 0)) > now:
                continue
            with self._recent_lock:
                if rid in self._running:
                    continue
                self._running.add(rid)
            try:
                err = DeadlineExpired(
                    "the gateway restarted while this create ran and it was not resent in time"
                )
                self._discard(str(work["oid"]), [str(h) for h in work["holders"]], rid, err)
            finally:
                with self._recent_lock:
                    self._running.discard(rid)

    # -- liveness --------------------------------------------------------------------
    def _wait_ready(self) -> bool:
        while not self._ready.wait(0.5):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def _failover(self, dead: str) -> None:
        """The primary ``dead`` is gone: promote a live replica of each of its
        objects. It must stay gone for ``failover_delay`` first: a broker
        restart delivers every node's last will, and promoting a replica of a
        live primary would make two primaries (the old one is fenced at its
        next call in any case)."""
        if not self._wait_ready():
            return
        end = time.monotonic() + self.failover_delay
        while time.monotonic() < end:
            if self.directory.node_state(dead) == "online":
                log.info("node %s is back within %.1f s: no failover", dead, self.failover_delay)
                return
            time.sleep(0.05)
        for obj in self.directory.objects_on(dead):
            live = [
                r for r in obj["replicas"] if r != dead and self.directory.node_state(r) == "online"
            ]
            if not live:
                if obj["replicas"]:
                    log.error(
                        "object %s lost its primary %s and has no live replica", obj["id"], dead
                    )
                continue
            new, rest = live[0], [r for r in obj["replicas"] if r not in (dead, live[0])]
            t0 = time.monotonic()
            try:
                self._node_call(
                    new, "promote", {"obj": obj["id"], "replicas": rest}, self._upkeep_deadline()
                )
            except ContinuumError as exc:
                log.error("cannot promote the replica of %s on %s: %s", obj["id"], new, exc)
                continue
            self.directory.move(obj["id"], new, rest, moved_from=dead)
            log.warning(
                "failover: %s %s moved from %s to its replica on %s in %.0f ms",
                obj["class"],
                obj["id"],
                dead,
                new,
                (time.monotonic() - t0) * 1000,
            )

    def _upkeep_deadline(self) -> float:
        # Liveness upkeep talks to nodes that may be junk (anyone who can
        # publish a status): short deadlines, on its own thread, never in the
        # way of clients.
        return time.monotonic() + 3.0

    def _list_deadline(self, node: str) -> float:
        """The upkeep deadline, plus a second per 2,000 objects the node
        reports holding (a long list), at most ``node_timeout``."""
        n = held_counts({node: self._statuses.get(node, {})}).get(node, 0)
        return time.monotonic() + min(3.0 + n / 2000, max(3.0, self.node_timeout))

    def _reconcile(self, node: str) -> None:
        """A node came (back) online: account for every object it holds (see
        :mod:`._reconcile`: deleted only with a tombstone, else adopted or reported)."""
        self._reconcile_queued.discard(node)
        if not self._wait_ready():
            return
        try:
            listed = self._node_call(node, "list", {}, self._list_deadline(node))
            held = parse_list(node, listed)
        except (ContinuumError, ValueError) as exc:
            log.warning("cannot list the objects of node %s: %s", node, exc)
            return
        try:
            self.reconciler.run(node, held)
        except sqlite3.Error as exc:
            log.error("cannot reconcile node %s: the directory failed: %s", node, exc)
            return
        self._reconciled.add(node)

    # -- aliases on nodes --------------------------------------------------------------
    def _push_aliases(self, oid: str) -> None:
        """Best effort, in order: tell the holders of ``oid`` its aliases (nodes
        keep them, so that the directory can be rebuilt from the nodes)."""

        def run() -> None:
            info = self.directory.find(oid)
            if info is None:
                return
            for holder in [info["node"], *info["replicas"]]:
                if self.directory.node_state(holder) != "online" or not self._keeps_aliases(holder):
                    continue
                try:
                    self._node_call(
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
            self._alias_pool.submit(run)

    def resolve(self, ref: str) -> dict[str, Any]:
        return self.directory.resolve(ref)

    def alias(self, ref: str, name: str, _rid: str | None = None) -> dict[str, Any]:
        info = self.directory.set_alias(ref, name, rid=_rid)
        self._push_aliases(info["id"])
        return info

    def unalias(self, name: str, _rid: str | None = None) -> None:
        oid = self.directory.remove_alias(name, rid=_rid)
        if oid is not None:
            self._push_aliases(oid)

    def delete(
        self, ref: str, _deadline: float | None = None, _rid: str | None = None
    ) -> dict[str, Any]:
        info = self.directory.resolve(ref)
        for holder in [info["node"], *info["replicas"]]:
            if self.directory.node_state(holder) == "online":
                with contextlib.suppress(ObjectNotHere):
                    self._node_call(holder, "delete", {"obj": info["id"]}, _deadline)
        result = {"id": info["id"], "deleted": True}
        self.directory.delete_object(info["id"], rid=_rid, result=result)
        log.info("deleted %s %s", info["class"], info["id"])
        return result

    def bind(
        self, ref: str, device: str, method: str, _deadline: float | None = None
    ) -> dict[str, Any]:
        """Feed device ``device``'s metrics to ``method`` of the object, on its node."""
        info = self.directory.resolve(ref)
        try:
            topic = self.topics.metrics(device)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._node_call(
            info["node"], "bind", {"obj": info["id"], "topic": topic, "method": method}, _deadline
        )
        return {**info, "topic": topic}

    def unbind(self, ref: str, device: str, _deadline: float | None = None) -> dict[str, Any]:
        info = self.directory.resolve(ref)
        try:
            topic = self.topics.metrics(device)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._node_call(info["node"], "unbind", {"obj": info["id"], "topic": topic}, _deadline)
        return {**info, "topic": topic}

    def nodes(self) -> list[dict[str, Any]]:
        return self.directory.nodes()

    def classes(self) -> dict[str, Any]:
        return self.directory.classes()

    def objects(self, cls: str | None = None, node: str | None = None) -> list[dict[str, Any]]:
        return self.directory.objects(cls, node)
