"""The cloud node: hosts resident objects and runs their active methods.

Threading model: the MQTT network thread only decodes and routes; each resident
object is an actor with its own mailbox, drained by a worker pool, so calls on
one object run one at a time, in arrival order, and calls on different objects
run in parallel.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from continuum._client import Requester
from continuum._codec import decode, encode, is_json
from continuum._errors import (
    BadRequest,
    Busy,
    ContinuumError,
    DeadlineExpired,
    ObjectNotHere,
    StorageError,
    UnencodableResult,
    UnknownClass,
    UnknownMethod,
    error_from_envelope,
)
from continuum._invoke import bind_arguments, describe_class, invoke, lookup_method, remote_error
from continuum._model import ActiveObject, class_path
from continuum._mqtt import BrokerURL, Connection, Message
from continuum._protocol import DEFAULT_ROOT, PROTOCOL_VERSION, Request, Topics, _check_level
from continuum._server import ReplyChannel, accept

from ._held import HeldFeeds
from ._quarantine import Quarantine, Quarantined
from ._store import Store, Unloadable, dumps_state, loads_state

__all__ = ["Node", "load_classes"]

log = logging.getLogger("continuum.node")

_BATCH = 32  # calls an actor runs before yielding its worker to other objects
_RESULTS_KEPT = 1024  # per object: results of recent mutating calls, for exactly-once


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


def _node_ids(value: Any) -> list[str]:
    """A list of node ids from a control request, checked."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'replicas' must be a list of node ids")
    try:
        return [_check_level("node id", v) for v in value]
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _alias_list(value: Any) -> list[str]:
    """The aliases of a control request, checked."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("'aliases' must be a list of text strings")
    return list(value)


def _is_class_path(name: str) -> bool:
    return name.rpartition(".")[2][:1].isupper()


class _Ack:
    """A QoS 1 message acknowledged only once every object it feeds has
    processed it (and, on a durable node, persisted the result)."""

    __slots__ = ("lock", "mid", "qos", "remaining")

    def __init__(self, mid: int, qos: int, remaining: int) -> None:
        self.mid, self.qos, self.remaining = mid, qos, remaining
        self.lock = threading.Lock()

    def done(self, conn: Connection) -> None:
        with self.lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            conn.client.ack(self.mid, self.qos)


FEED_HOLD = 1.0  # seconds a sample that skips ahead waits for the gap to fill


class _FeedOrder:
    """Puts one device's samples back in ``seq`` order. A bridge can forward a
    QoS 1 message out of order around a reconnect, and consumers drop a seq
    below the last one seen as a redelivery; so a sample that skips ahead is
    held until the missing ones arrive, or for FEED_HOLD seconds at most."""

    __slots__ = ("held", "next", "since")

    def __init__(self) -> None:
        self.next: int | None = None
        self.held: dict[int, Any] = {}
        self.since = 0.0

    def offer(self, seq: int, item: Any) -> list[Any]:
        if self.next is None or seq < self.next or seq in self.held:
            # first seen, or a late or duplicate one: on at once (consumers dedupe)
            if self.next is None:
                self.next = seq + 1
            return [item]
        if seq > self.next:
            self.held[seq] = item
            self.since = self.since or time.monotonic()
            return []
        out = [item]
        self.next = seq + 1
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        if not self.held:
            self.since = 0.0
        return out

    def expire(self, hold: float) -> list[Any]:
        if not self.held or time.monotonic() - self.since < hold:
            return []
        seqs = sorted(self.held)
        out = [self.held.pop(s) for s in seqs]
        self.next = seqs[-1] + 1
        self.since = 0.0
        return out


class _Job:
    __slots__ = ("ack", "chan", "req")

    def __init__(self, req: Request, chan: ReplyChannel | None, ack: _Ack | None = None) -> None:
        self.req = req
        self.chan = chan
        self.ack = ack


class _Resident:
    """One object and its mailbox."""

    __slots__ = (
        "aliases",
        "cls_path",
        "feeds",
        "id",
        "inflight",
        "instance",
        "journaled",
        "lock",
        "mailbox",
        "replicas",
        "results",
        "role",
        "scheduled",
        "seq",
    )

    def __init__(
        self,
        oid: str,
        cls_path: str,
        instance: Any,
        feeds: dict[str, str] | None = None,
        results: dict[str, tuple[bool, Any]] | None = None,
        role: str = "primary",
        replicas: list[str] | None = None,
        aliases: list[str] | None = None,
    ) -> None:
        self.id = oid
        self.aliases: list[str] = list(aliases or [])  # the directory's names for it
        # A primary serves calls and ships its state to its replicas after each
        # mutating call; a replica only holds the latest state until promoted.
        self.role = role
        self.replicas: list[str] = list(replicas or [])
        self.seq = 0  # mutating calls applied, ever (journal entries carry it)
        self.journaled = 0  # calls in the journal since the last checkpoint
        self.cls_path = cls_path
        self.instance = instance
        self.feeds: dict[str, str] = dict(feeds or {})  # topic -> active method
        # request id -> (ok, value or error envelope) of recent mutating calls:
        # a redelivered or retried request gets this answer instead of a rerun.
        self.results: OrderedDict[str, tuple[bool, Any]] = OrderedDict(results or {})
        self.inflight: set[str] = set()  # ids queued or running
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
        state_dir: str | None = None,
        session_expiry: int = 24 * 3600,
        max_queue: int = 10_000,
        max_node_queue: int = 100_000,
        sync_timeout: float = 5.0,
        checkpoint_every: int = 1000,
    ) -> None:
        self.node_id = node_id
        self.topics = Topics(root)
        self.classes = classes
        self.max_payload = max_payload
        self.max_reply = max_reply or max_payload
        self.objects: dict[str, _Resident] = {}
        self._objects_lock = threading.Lock()
        self._feeds: dict[str, list[_Resident]] = {}  # topic -> objects fed by it
        self._orders: dict[str, _FeedOrder] = {}  # topic -> its samples' order
        self._order_lock = threading.Lock()
        self._stopping = threading.Event()
        self.store = Store(state_dir) if state_dir else None
        self.quarantine = Quarantine()  # objects held but not served
        self._held: HeldFeeds[_Resident, _Job] = HeldFeeds()  # samples waiting for the disk
        self._status_seen: tuple[int, int] | None = None  # (objects, quarantine changes)
        self.max_queue = max_queue
        self.max_node_queue = max_node_queue
        self._queued = 0  # calls waiting in all mailboxes
        self._queued_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"continuum-node-{node_id}")
        # Syncs from primaries never wait behind calls (two nodes replicating to
        # each other with busy pools would otherwise deadlock until timeouts).
        self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix=f"continuum-sync-{node_id}")
        self.sync_timeout = sync_timeout
        self.checkpoint_every = checkpoint_every
        self._node_state: dict[str, str] = {}  # other nodes' liveness, from their status
        self.requester = Requester(self.topics, f"node-{node_id}", owner=broker.username)
        self._started = time.time()
        self._call_topic = self.topics.node_call(node_id)
        self._ctl_topic = self.topics.node_ctl(node_id)
        self._sync_topic = self.topics.node_sync(node_id)
        self._status_topic = self.topics.node_status(node_id)
        # One instance per stateless class serves its pool (shared subscription).
        self._pools: dict[str, Any] = {
            self.topics.pool_call(path): None
            for path, cls in classes.items()
            if getattr(cls, "__continuum_stateless__", False)
        }
        self.conn = Connection(
            broker,
            client_id=f"node-{node_id}",
            on_message=self._on_message,
            subscriptions={
                self._call_topic: 1,
                self._ctl_topic: 1,
                self._sync_topic: 1,
                self.requester.reply_topic: 1,
                self.topics.node_status_all: 1,
                **{
                    self.topics.pool_share(p): 1
                    for p in sorted(self.classes)
                    if self.topics.pool_call(p) in self._pools
                },
            },
            will=(self._status_topic, encode({"state": "offline", "node": node_id}), True),
            on_connected=self._publish_status,
            # A durable node keeps its broker session across restarts, so the
            # samples published to its feeds meanwhile wait for it.
            session_expiry=session_expiry if state_dir else None,
            manual_ack=True,
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for path, cls in self.classes.items():
            warm_up = getattr(cls, "__continuum_warm_up__", None)
            if warm_up is not None:
                t0 = time.perf_counter()
                warm_up()
                log.debug("warmed up %s in %.2f s", path, time.perf_counter() - t0)
            if self.topics.pool_call(path) in self._pools:
                self._pools[self.topics.pool_call(path)] = cls()
        if self.store is not None:
            self._restore()
        threading.Thread(
            target=self._flush_held_feeds, name=f"continuum-feeds-{self.node_id}", daemon=True
        ).start()
        self.requester.start(self.conn)
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
        self._stopping.set()
        try:
            info = self.conn.publish(
                self._status_topic, encode({"state": "offline", "node": self.node_id}), retain=True
            )
            info.wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.requester.stop()
        self.conn.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sync_pool.shutdown(wait=True, cancel_futures=True)
        if self.store is not None:
            self.store.close()

    def _restore(self) -> None:
        assert self.store is not None
        found = self.store.inventory()
        for q in found.quarantined:
            self.quarantine.add(q)
        for rec, journal in found.objects:
            if rec.get("class") not in self.classes:
                why = f"class {rec.get('class')} is not hosted by this node (see --module)"
                self.quarantine.add(Quarantined.from_record(rec, why, "class"))
                continue
            res = self._revive(rec, journal)
            self.objects[res.id] = res
            if res.role == "primary":
                for topic in res.feeds:
                    self._add_feed(topic, res)
        if self.objects or self.quarantine:
            log.info(
                "restored %d object(s) from %s, %d quarantined",
                len(self.objects),
                self.store.dir,
                len(self.quarantine),
            )

    def _revive(self, rec: dict[str, Any], journal: list[dict[str, Any]]) -> _Resident:
        """An object from its checkpoint record and the journal entries after it."""
        res = self._resident_from(rec)
        for entry in journal:  # the calls made after the checkpoint, in order
            with contextlib.suppress(ContinuumError):
                invoke(res.instance, entry["method"], entry["args"], entry["kwargs"])
            res.seq = entry["seq"]
            if entry.get("rid") is not None:
                self._remember(res, entry["rid"], (entry["ok"], entry["value"]))
        res.journaled = len(journal)
        return res

    def _rollback(self, res: _Resident) -> None:
        """A change could not be made durable: put the object back as its files
        hold it (the change and its stored outcome gone), or quarantine it when
        they cannot be read. Reloading costs nothing until a write fails, where
        copying the object before every call would cost on every call."""
        assert self.store is not None
        fed = set(res.feeds) if res.role == "primary" else set()
        try:
            fresh = self._revive(*self.store.reload(res.id))
        except Unloadable as exc:
            with self._objects_lock:
                self.objects.pop(res.id, None)
            self._refeed(res, fed, set())
            self.quarantine.add(exc.quarantined)
            return
        with res.lock:
            res.instance, res.seq, res.journaled = fresh.instance, fresh.seq, fresh.journaled
            res.results, res.feeds, res.aliases = fresh.results, fresh.feeds, fresh.aliases
            res.role, res.replicas = fresh.role, fresh.replicas
        self._refeed(res, fed, set(res.feeds) if res.role == "primary" else set())
        log.warning("%s rolled back to its last durable state (seq %d)", res.id, res.seq)

    def _persist_or_rollback(self, res: _Resident) -> None:
        try:
            self._persist(res)
        except StorageError:
            self._rollback(res)
            raise

    @staticmethod
    def _record(res: _Resident) -> dict[str, Any]:
        """Everything that makes up an object: what snapshots and replicas hold."""
        return {
            "id": res.id,
            "class": res.cls_path,
            "feeds": res.feeds,
            "results": res.results,
            "role": res.role,
            "replicas": res.replicas,
            "aliases": res.aliases,
            "seq": res.seq,
            "instance": res.instance,
        }

    @staticmethod
    def _resident_from(rec: dict[str, Any]) -> _Resident:
        res = _Resident(
            rec["id"],
            rec["class"],
            rec["instance"],
            rec.get("feeds"),
            rec.get("results"),
            rec.get("role", "primary"),
            rec.get("replicas"),
            rec.get("aliases"),
        )
        res.seq = rec.get("seq", 0)
        return res

    def _persist(self, res: _Resident) -> None:
        """Checkpoint the whole object (durable node only)."""
        if self.store is not None:
            self.store.checkpoint(res.id, self._record(res))
            res.journaled = 0

    def _commit(
        self, res: _Resident, req: Request, outcome: tuple[bool, Any], snapshot: bool
    ) -> None:
        """Make a mutating call durable (journal entry or checkpoint) and
        replicated; runs before the caller hears of the call."""
        res.seq += 1
        self._remember(res, req.id, outcome)
        entry = {
            "seq": res.seq,
            "method": req.method,
            "args": req.args,
            "kwargs": req.kwargs,
            "rid": req.id,
            "ok": outcome[0],
            "value": outcome[1],
        }
        if self.store is not None:
            try:
                if snapshot or res.journaled >= self.checkpoint_every:
                    self._persist(res)
                else:
                    try:
                        self.store.append(res.id, entry)
                        res.journaled += 1
                    except UnencodableResult:  # the outcome cannot be journaled: checkpoint
                        self._persist(res)
            except Exception:  # not durable: not acknowledged, not remembered, undone
                self._rollback(res)
                raise
        if res.replicas:
            self._replicate(res, None if snapshot else entry)

    def _replicate(self, res: _Resident, entry: dict[str, Any] | None = None) -> None:
        """Bring the object's live replicas up to date and wait for them, so that
        every acknowledged mutation survives the primary. A journaled call is
        shipped as the call itself (the replica applies it, as a restart replays
        a journal); a snapshot method, or a replica that is behind, gets the
        whole state (cloudpickle: node-to-node sync topic, trusted services only)."""
        targets = [r for r in res.replicas if self._node_state.get(r) == "online"]
        if not targets:
            return
        state: bytes | None = None
        pending = []
        for r in targets:
            if entry is not None:
                body: dict[str, Any] = {"obj": res.id, "cls": res.cls_path, "apply": entry}
            else:
                state = state or dumps_state(self._record(res))
                body = {"obj": res.id, "cls": res.cls_path, "state": state}
            pending.append((r, self._sync_send(r, body)))
        for r, fut in pending:
            try:
                fut.result()
            except ContinuumError as exc:
                if entry is not None and not exc.data.get("fenced"):
                    # behind, new, or the call cannot be shipped as such: send everything
                    state = state or dumps_state(self._record(res))
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

    def _fence(self, res: _Resident, new_primary: str) -> None:
        """Our replica was promoted (the gateway took us for dead): we are no
        longer the primary. Drop our copy and refuse the call in hand, whose
        caller then finds the object on its new node (same request id)."""
        log.warning(
            "%s %s was promoted on %s: dropping our stale copy", res.cls_path, res.id, new_primary
        )
        with contextlib.suppress(ObjectNotHere):
            self._delete(res.id)
        raise ObjectNotHere(f"object {res.id} moved to node {new_primary}", node=self.node_id)

    def _sync_send(self, node: str, body: dict[str, Any]) -> Future[Any]:
        return self.requester.send(
            self.topics.node_sync(node),
            Request("sync", [], {**body, "primary": self.node_id}),
            self.sync_timeout,
        )

    def _add_feed(self, topic: str, res: _Resident) -> None:
        fed = self._feeds.setdefault(topic, [])
        if res not in fed:
            fed.append(res)
        self.conn.subscribe(topic, 1)

    def _remove_feeds(self, res: _Resident) -> None:
        for topic in list(res.feeds):
            self._drop_feed(topic, res)

    def _drop_feed(self, topic: str, res: _Resident) -> None:
        fed = self._feeds.get(topic, [])
        if res in fed:
            fed.remove(res)
        if not fed:
            self._feeds.pop(topic, None)
            self.conn.unsubscribe(topic)

    def _refeed(self, res: _Resident, before: set[str], after: set[str]) -> None:
        """Feed subscriptions from ``before`` to ``after``, touching only the
        topics that change (an unsubscription drops what the broker queued)."""
        for topic in before - after:
            self._drop_feed(topic, res)
        for topic in after:
            self._add_feed(topic, res)

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
            "objects": len(self.objects) + len(self.quarantine),
            "quarantined": self.quarantine.status(),
        }

    def _publish_status(self) -> None:
        """On every (re)connect: announce ourselves, resend syncs in flight."""
        self._status_seen = (len(self.objects), self.quarantine.changed)
        self.conn.publish(self._status_topic, encode(self.manifest()), retain=True)
        self.requester.resend_all()

    def _status_changed(self) -> None:
        """Republish the manifest when its object count or quarantine changed."""
        seen = (len(self.objects), self.quarantine.changed)
        if seen != self._status_seen and self.conn.connected:
            self._status_seen = seen
            self.conn.publish(self._status_topic, encode(self.manifest()), retain=True)

    # -- network thread --------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        fed = self._feeds.get(msg.topic)
        if fed:
            self._route_feed(msg, fed)
            return
        if msg.qos:
            self.conn.client.ack(msg.mid, msg.qos)  # anything else is acknowledged on receipt
        topic = msg.topic
        if topic == self.requester.reply_topic:
            self.requester.on_reply(msg)
            return
        other = self.topics.node_of_status(topic)
        if other is not None:
            self._node_status(other, msg.payload)
            return
        req, chan = accept(msg, self.conn, self.topics, self.max_payload, self.max_reply)
        if req is None:
            return
        if topic == self._call_topic:
            self._route_call(req, chan)
        elif topic in self._pools:
            self._pool.submit(self._run_pooled, self._pools[topic], req, chan)
        elif topic == self._ctl_topic:
            self._pool.submit(self._control, req, chan)
        elif topic == self._sync_topic:
            self._sync_pool.submit(self._sync, req, chan)

    def _node_status(self, node: str, payload: bytes | bytearray) -> None:
        try:
            status = decode(payload) if payload else {}
        except ContinuumError:
            return
        state = status.get("state") if isinstance(status, dict) else None
        self._node_state[node] = "online" if state == "online" else "offline"

    def _route_feed(self, msg: Message, fed: list[_Resident]) -> None:
        """A message on a feed topic (a device's metrics) becomes a call of the
        bound method with the decoded sample; it is acknowledged to the broker
        only after every bound object has processed (and persisted) it.
        Samples are put back in ``seq`` order first (see :class:`_FeedOrder`)."""
        try:
            if len(msg.payload) > self.max_payload:
                raise BadRequest(f"feed message of {len(msg.payload)} bytes over the limit")
            sample = decode(msg.payload, is_json(msg.payload, None))
        except ContinuumError as exc:
            log.warning("dropped a malformed message on feed %s: %s", msg.topic, exc)
            if msg.qos:
                self.conn.client.ack(msg.mid, msg.qos)
            return
        seq = sample.get("seq") if isinstance(sample, dict) else None
        if isinstance(seq, bool) or not isinstance(seq, int):
            self._feed_now(msg, sample)
            return
        with self._order_lock:
            order = self._orders.setdefault(msg.topic, _FeedOrder())
            ready = order.offer(seq, (msg, sample))
        for m, s in ready:
            self._feed_now(m, s)

    def _flush_held_feeds(self) -> None:
        """Release samples held for a gap that did not fill within FEED_HOLD."""
        while not self._stopping.wait(0.25):
            self._status_changed()
            self._release_held()
            with self._order_lock:
                ready = [
                    item for order in self._orders.values() for item in order.expire(FEED_HOLD)
                ]
            for m, s in ready:
                try:
                    self._feed_now(m, s)
                except Exception:  # this thread must outlive any sample
                    log.exception("cannot deliver a held sample of %s", m.topic)

    def _feed_now(self, msg: Message, sample: Any) -> None:
        # (object, method) pairs now: bindings may change while samples are held
        targets = [
            (r, m) for r in list(self._feeds.get(msg.topic, [])) if (m := r.feeds.get(msg.topic))
        ]
        if not targets:
            if msg.qos:
                self.conn.client.ack(msg.mid, msg.qos)
            return
        ack = _Ack(msg.mid, msg.qos, len(targets)) if msg.qos else None
        for res, method in targets:
            self._enqueue(res, _Job(Request(method, [sample], {}), None, ack))

    def _enqueue(self, res: _Resident, job: _Job) -> None:
        with self._queued_lock:
            self._queued += 1
        with res.lock:
            res.mailbox.append(job)
            if res.scheduled:
                return
            res.scheduled = True
        self._pool.submit(self._drain, res)

    def _route_call(self, req: Request, chan: ReplyChannel) -> None:
        if req.obj is None:
            chan.error(BadRequest("a call needs the field 'obj'"))
            return
        res = self.objects.get(req.obj)
        if res is None or res.role != "primary":
            chan.error(self._not_here(req.obj))
            return
        try:
            lookup_method(type(res.instance), req.method)
        except ContinuumError as exc:
            chan.error(exc)
            return
        rid = req.id
        done = None
        with res.lock:
            if rid is not None:
                done = res.results.get(rid)
                if done is None and rid in res.inflight:
                    return  # a redelivery of a call not finished yet: its reply will come
            if done is None:
                if len(res.mailbox) >= self.max_queue or self._queued >= self.max_node_queue:
                    chan.error(
                        Busy(
                            f"queue full on node {self.node_id} ({len(res.mailbox)} calls for"
                            f" this object, {self._queued} in all); retry later",
                            node=self.node_id,
                        )
                    )
                    return
                if rid is not None:
                    res.inflight.add(rid)
        if done is not None:
            self._answer_again(chan, done)
            return
        self._enqueue(res, _Job(req, chan))

    @staticmethod
    def _answer_again(chan: ReplyChannel, done: tuple[bool, Any]) -> None:
        ok, value = done
        if ok:
            chan.result(value)
        else:
            chan.error(error_from_envelope(value))

    # -- workers -----------------------------------------------------------------
    def _drain(self, res: _Resident) -> None:
        for _ in range(_BATCH):
            with res.lock:
                if not res.mailbox:
                    res.scheduled = False
                    return
                job = res.mailbox.popleft()
            with self._queued_lock:
                self._queued -= 1
            try:
                self._run(res, job)
            except Exception:  # never leave the actor wedged (scheduled, never drained)
                log.exception("call %s on %s failed in the node", job.req.method, res.id)
                self._forget(res, job.req.id)
        self._pool.submit(self._drain, res)  # still scheduled: let other objects in

    def _run(self, res: _Resident, job: _Job) -> None:
        req, chan = job.req, job.chan
        if self.objects.get(res.id) is not res:  # deleted, fenced or quarantined since
            self._gone(res, job)
            return
        if chan is None:
            self._run_feed(res, job)
            return
        rid = req.id
        if chan.expired():
            self._forget(res, rid)
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        spec = lookup_method(type(res.instance), req.method)
        outcome: tuple[bool, Any]
        try:
            outcome = (True, invoke(res.instance, req.method, req.args, req.kwargs, chan.progress))
        except ContinuumError as exc:
            outcome = (False, exc.to_envelope())
        if spec.readonly:
            self._forget(res, rid)
        else:
            try:
                self._commit(res, req, outcome, spec.snapshot)
            except (ObjectNotHere, StorageError) as exc:  # fenced, or not durable (undone)
                chan.error(exc)
                return
            except Exception as exc:
                log.exception("cannot persist %s after %s", res.id, req.method)
                chan.error(remote_error(exc))
                return
        self._answer_again(chan, outcome)

    def _gone(self, res: _Resident, job: _Job) -> None:
        """A job for an object no longer served here: a call is refused like a
        new one would be; a sample is acknowledged and dropped, as samples for
        an object that is not here are."""
        if job.chan is None:
            if job.ack is not None:
                job.ack.done(self.conn)
            return
        self._forget(res, job.req.id)
        job.chan.error(self._not_here(res.id))

    def _not_here(self, oid: str) -> ContinuumError:
        """Why a call on ``oid`` is refused: quarantined, or not held as primary."""
        q = self.quarantine.get(oid)
        if q is not None:
            return q.error(self.node_id)
        return ObjectNotHere(f"object {oid} is not on node {self.node_id}", node=self.node_id)

    @staticmethod
    def _run_pooled(instance: Any, req: Request, chan: ReplyChannel) -> None:
        """A call for a stateless class's pool: no mailbox, no persistence."""
        if chan.expired():
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        try:
            chan.result(invoke(instance, req.method, req.args, req.kwargs, chan.progress))
        except ContinuumError as exc:
            chan.error(exc)

    def _run_feed(self, res: _Resident, job: _Job) -> None:
        """A device sample: run the bound method; acknowledge the message to the
        broker once it is committed (never, if it could not be persisted: the
        broker delivers it again after a reconnect)."""
        req = job.req
        if self._held.behind(res, job):
            return
        spec = lookup_method(type(res.instance), req.method)
        outcome: tuple[bool, Any]
        try:
            outcome = (True, invoke(res.instance, req.method, req.args, req.kwargs))
        except ContinuumError as exc:
            outcome = (False, exc.to_envelope())
            log.warning("feed %s.%s on %s failed: %s", res.cls_path, req.method, res.id, exc)
        if not spec.readonly:
            try:
                self._commit(res, req, outcome, spec.snapshot)
            except StorageError as exc:  # undone, not acknowledged: held (see _held)
                log.error("%s: a feed sample waits for the disk: %s", res.id, exc)
                self._held.hold(res, job)
                return
            except Exception:
                log.exception("cannot persist %s after a feed sample; not acknowledged", res.id)
                return
        if job.ack is not None:
            job.ack.done(self.conn)

    def _release_held(self) -> None:
        """Requeue the samples held for the disk, first in line; only while no
        worker runs the object, so that their order holds."""
        for res in self._held.due():
            with res.lock:
                if res.scheduled:
                    continue
                jobs = self._held.take(res)
                res.mailbox.extendleft(reversed(jobs))
                res.scheduled = bool(jobs)
            with self._queued_lock:
                self._queued += len(jobs)
            if jobs:
                self._pool.submit(self._drain, res)

    @staticmethod
    def _remember(res: _Resident, rid: str | None, outcome: tuple[bool, Any]) -> None:
        if rid is None:
            return
        with res.lock:
            res.inflight.discard(rid)
            res.results[rid] = outcome
            while len(res.results) > _RESULTS_KEPT:
                res.results.popitem(last=False)

    @staticmethod
    def _forget(res: _Resident, rid: str | None) -> None:
        if rid is not None:
            with res.lock:
                res.inflight.discard(rid)

    def _control(self, req: Request, chan: ReplyChannel) -> None:
        if chan.expired():  # the gateway gave up: creating now would orphan the object
            chan.error(DeadlineExpired(f"deadline passed before {req.method} started; not run"))
            return
        try:
            if req.method == "create":
                chan.result(self._create(**req.kwargs))
            elif req.method == "delete":
                chan.result(self._delete(**req.kwargs))
            elif req.method == "bind":
                chan.result(self._bind(**req.kwargs))
            elif req.method == "unbind":
                chan.result(self._unbind(**req.kwargs))
            elif req.method == "promote":
                chan.result(self._promote(**req.kwargs))
            elif req.method == "aliases":
                chan.result(self._set_aliases(**req.kwargs))
            elif req.method == "list":
                chan.result(
                    [
                        {
                            "id": r.id,
                            "class": r.cls_path,
                            "feeds": dict(r.feeds),
                            "role": r.role,
                            "replicas": list(r.replicas),
                            "aliases": list(r.aliases),
                            "quarantined": False,
                            "reason": None,
                        }
                        for r in list(self.objects.values())
                    ]
                    + [q.listing() for q in self.quarantine.all()]
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
        replicas: list[str] | None = None,
        aliases: list[str] | None = None,
    ) -> dict[str, Any]:
        klass = self.classes.get(cls)
        if klass is None:
            raise UnknownClass(f"node {self.node_id} does not host class {cls!r}", cls=cls)
        replicas = _node_ids(replicas)
        names = _alias_list(aliases)
        args, kwargs = list(args or []), dict(kwargs or {})
        with self._objects_lock:
            existing = self.objects.get(obj)
            if existing is not None:
                return {"id": obj, "class": existing.cls_path, "node": self.node_id}
            q = self.quarantine.get(obj)
            if q is not None:
                raise q.error(self.node_id)
            bind_arguments(klass, args, kwargs, f"{klass.__qualname__}()")
            try:
                instance = klass(*args, **kwargs)
            except Exception as exc:
                raise remote_error(exc) from exc
            res = _Resident(obj, cls, instance, replicas=replicas, aliases=names)
            self._persist(res)
            self.objects[obj] = res
        if res.replicas:
            self._replicate(res)
        log.info(
            "created %s %s%s",
            cls,
            obj,
            f" (replicas: {', '.join(res.replicas)})" if res.replicas else "",
        )
        return {"id": obj, "class": cls, "node": self.node_id, "replicas": res.replicas}

    def _delete(self, obj: str) -> dict[str, Any]:
        with self._objects_lock:
            res = self.objects.pop(obj, None)
        if res is None and (q := self.quarantine.pop(obj)) is not None:
            if self.store is not None:
                self.store.discard_quarantined(q)
            log.warning("deleted quarantined object %s (%s)", obj, q.reason)
            return {"id": obj, "deleted": True}
        if res is None:
            raise ObjectNotHere(f"object {obj} is not on node {self.node_id}", node=self.node_id)
        self._remove_feeds(res)
        if self.store is not None:
            self.store.delete(obj)
        log.info("deleted %s %s", res.cls_path, obj)
        return {"id": obj, "deleted": True}

    def _sync(self, req: Request, chan: ReplyChannel) -> None:
        """A primary's state for an object we replicate (trusted node-to-node topic)."""
        try:
            kw = req.kwargs
            obj, cls = kw["obj"], kw["cls"]
            if cls not in self.classes:
                raise UnknownClass(f"node {self.node_id} does not host class {cls!r}", cls=cls)
            if "apply" in kw:
                chan.result(self._apply(obj, kw["apply"]))
                return
            state = kw["state"]
            if not isinstance(state, bytes):
                raise BadRequest("sync: 'state' must be bytes")
            rec = loads_state(state)
            rec.update(id=obj, role="replica", replicas=[])
            res = self._resident_from(rec)
            with self._objects_lock:
                current = self.objects.get(obj)
                if current is not None and current.role == "primary":
                    raise ObjectNotHere(
                        f"{obj} is primary on {self.node_id}; refusing a sync", fenced=True
                    )
                if (q := self.quarantine.get(obj)) is not None:
                    raise q.error(self.node_id)
                self.objects[obj] = res
            try:
                self._persist(res)
            except StorageError:  # the copy stays as its files hold it
                with self._objects_lock:
                    if current is None:
                        self.objects.pop(obj, None)
                    else:
                        self.objects[obj] = current
                raise
            chan.result({"id": obj, "node": self.node_id})
        except KeyError as exc:
            chan.error(BadRequest(f"sync: missing {exc}"))
        except ContinuumError as exc:
            chan.error(exc)
        except Exception as exc:
            log.exception("sync of %s failed", req.kwargs.get("obj"))
            chan.error(remote_error(exc))

    def _apply(self, obj: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Apply a call the primary made to our replica; a replica that is not
        exactly one call behind asks for the whole state (``resync``)."""
        res = self.objects.get(obj)
        if res is not None and res.role == "primary":
            raise ObjectNotHere(f"{obj} is primary on {self.node_id}; refusing a sync", fenced=True)
        if res is None or res.role != "replica" or res.seq != entry["seq"] - 1:
            have = None if res is None else res.seq
            raise ObjectNotHere(f"replica of {obj} on {self.node_id} is at {have}", resync=True)
        req = Request(entry["method"], entry["args"], entry["kwargs"], id=entry["rid"])
        with contextlib.suppress(ContinuumError):
            invoke(res.instance, req.method, req.args, req.kwargs)
        self._commit(res, req, (entry["ok"], entry["value"]), snapshot=False)
        return {"id": obj, "node": self.node_id, "seq": res.seq}

    def _promote(self, obj: str, replicas: list[str] | None = None) -> dict[str, Any]:
        """Make our replica of ``obj`` the primary (the gateway does this when
        the primary's last will arrives)."""
        replicas = _node_ids(replicas)
        res = self._resident(obj, any_role=True)
        with res.lock:
            res.role = "primary"
            res.replicas = [r for r in (replicas or []) if r != self.node_id]
        for topic in res.feeds:
            self._add_feed(topic, res)
        self._persist_or_rollback(res)
        if res.replicas:
            self._replicate(res)
        log.info("promoted %s %s to primary", res.cls_path, obj)
        return {"id": obj, "node": self.node_id, "replicas": res.replicas}

    def _resident(self, obj: str, any_role: bool = False) -> _Resident:
        res = self.objects.get(obj)
        if res is None and (q := self.quarantine.get(obj)) is not None:
            raise q.error(self.node_id)
        if res is None or not (any_role or res.role == "primary"):
            raise ObjectNotHere(f"object {obj} is not on node {self.node_id}", node=self.node_id)
        return res

    def _bind(self, obj: str, topic: str, method: str) -> dict[str, Any]:
        """Feed the messages of ``topic`` (a device's metrics) to ``obj.method``."""
        res = self._resident(obj)
        if not isinstance(topic, str) or not self.topics.is_metrics(topic):
            raise BadRequest(f"only device metrics topics can feed objects, not {topic!r}")
        lookup_method(type(res.instance), method)
        with res.lock:
            res.feeds[topic] = method
        self._persist_or_rollback(res)
        self._add_feed(topic, res)
        log.info("feeding %s to %s.%s", topic, obj, method)
        return {"id": obj, "feeds": dict(res.feeds)}

    def _unbind(self, obj: str, topic: str) -> dict[str, Any]:
        res = self._resident(obj)
        self._remove_feeds(res)
        with res.lock:
            res.feeds.pop(topic, None)
        for t in res.feeds:
            self._add_feed(t, res)
        self._persist_or_rollback(res)
        return {"id": obj, "feeds": dict(res.feeds)}

    def _set_aliases(self, obj: str, aliases: list[str]) -> dict[str, Any]:
        """Replace the names the directory knows the object by (kept with it so
        that a directory can be rebuilt from the nodes)."""
        names = _alias_list(aliases)
        res = self._resident(obj, any_role=True)
        with res.lock:
            res.aliases = names
        self._persist_or_rollback(res)
        if res.role == "primary" and res.replicas:
            self._replicate(res)
        return {"id": obj, "aliases": names}
