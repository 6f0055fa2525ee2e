"""The node's Prometheus metrics (``continuum-node --metrics-port``; docs/metrics.md).

Imported only when the endpoint is asked for: prometheus_client is not
imported by a node started without it. What is counted as it happens (calls
by class, method and outcome code, their latency, journal appends and
checkpoints, replication, feed samples and their lag) goes through hooks the
node's parts call when :class:`NodeMetrics` is installed (``Calls.metrics``,
and the store's and replication's methods timed in place); what is a level
(queues, residency, held samples, replicas behind, reconnects) is read from
the node at each scrape, costing the hot path nothing.

Labels are bounded: class paths are those the node hosts, methods those the
class declares active (any other name counts as ``_other``), codes the
registered error codes. Never object ids or device ids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import (
    CallMeter,
    ReplyChannel,
    Request,
    class_path,
    lookup_method,
    metrics_registry,
    start_metrics,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ._node import Node

__all__ = ["NodeMetrics", "install"]

OTHER = "_other"  # the method label of a name that is not an active method
UNKNOWN = "_unknown"  # the class label of a call for an object not held here
DISK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class NodeMetrics:
    """The metrics of ``node``, in ``registry`` (default: a new one)."""

    def __init__(self, node: Node, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Histogram

        self.node = node
        self.registry = reg = registry if registry is not None else metrics_registry()
        self.calls = CallMeter(
            reg,
            "continuum_node_calls_total",
            "continuum_node_call_duration_seconds",
            ("class", "method"),
            "Calls",
        )
        self.journal = Histogram(
            "continuum_node_journal_append_seconds",
            "Seconds to append one journal entry and fdatasync it (durable nodes)",
            buckets=DISK_BUCKETS,
            registry=reg,
        )
        self.checkpoint = Histogram(
            "continuum_node_checkpoint_seconds",
            "Seconds to write one checkpoint (write, fsync, rename, fsync of the folder)",
            buckets=DISK_BUCKETS,
            registry=reg,
        )
        self.replication = Histogram(
            "continuum_node_replication_seconds",
            "Seconds a primary waited for its live replicas to confirm one change",
            buckets=(*DISK_BUCKETS, 2.5, 5.0),
            registry=reg,
        )
        self.samples = Counter(
            "continuum_node_feed_samples_total",
            "Feed samples run and committed on bound objects (one per object fed)",
            registry=reg,
        )
        self.feed_lag = Histogram(
            "continuum_node_feed_lag_seconds",
            "Seconds from a sample's ts (the board's clock) until it was committed here",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self._valid: set[tuple[type, str]] = set()  # (class, method) pairs seen active
        reg.register(_Levels(node))

    def install(self) -> NodeMetrics:
        """Hook into the node's parts (before it starts)."""
        node = self.node
        node.calls.metrics = self
        store = node.store
        if store is not None:
            store.append = _timed(store.append, self.journal.observe)  # type: ignore[method-assign]
            store.checkpoint = _timed(  # type: ignore[method-assign]
                store.checkpoint, self.checkpoint.observe
            )
        rep = node.replication
        rep.replicate = _timed(rep.replicate, self.replication.observe)  # type: ignore[method-assign]
        return self

    # -- hooks (Calls) --------------------------------------------------------------
    def call(self, req: Request, chan: ReplyChannel, instance: Any = None) -> None:
        """A call arriving (network thread): count and time its reply. ``instance``:
        a pool's instance; else the object is looked up by ``req.obj``."""
        if instance is not None:
            klass, path = type(instance), class_path(type(instance))
        else:
            res = self.node.residents.get(req.obj) if req.obj is not None else None
            if res is None:
                self.calls.watch(chan, UNKNOWN, OTHER)
                return
            klass, path = res.klass, res.cls_path
        self.calls.watch(chan, path, req.method if self._active(klass, req.method) else OTHER)

    def sample(self, req: Request) -> None:
        """A feed sample committed (worker): its lag behind the board's clock."""
        self.samples.inc()
        sample = req.args[0] if req.args else None
        ts = sample.get("ts") if isinstance(sample, dict) else None
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            self.feed_lag.observe(max(0.0, time.time() - ts))

    def _active(self, klass: type, method: str) -> bool:
        key = (klass, method)
        if key in self._valid:
            return True
        try:
            lookup_method(klass, method)
        except ContinuumError:
            return False
        self._valid.add(key)
        return True


def install(node: Node, port: int, host: str = "127.0.0.1") -> NodeMetrics:
    """Metrics for ``node``, served on ``host:port``."""
    metrics = NodeMetrics(node).install()
    start_metrics(metrics.registry, port, host)
    return metrics


def _timed(fn: Callable[..., Any], observe: Callable[[float], None]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            observe(time.perf_counter() - t0)

    return timed


class _Levels:
    """What the node holds and waits on, read at each scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        return []  # no fixed description: read at collect time only

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self.node
        residents = node.residents.all()
        info = GaugeMetricFamily("continuum_node_info", "The node's id", labels=["node"])
        info.add_metric([node.node_id], 1)
        yield info
        yield GaugeMetricFamily(
            "continuum_node_queued_calls",
            "Jobs (calls and feed samples) waiting in all mailboxes of the node",
            value=node.calls.scheduler.queued,
        )
        yield GaugeMetricFamily(
            "continuum_node_queue_depth_max",
            "Jobs waiting in the fullest mailbox of one object (the worst object)",
            value=max((len(r.mailbox) for r in residents), default=0),
        )
        loaded = sum(1 for r in residents if r.instance is not None)
        objects = GaugeMetricFamily(
            "continuum_node_objects",
            "Objects held: resident (loaded), evicted (in the state dir), quarantined",
            labels=["state"],
        )
        objects.add_metric(["resident"], loaded)
        objects.add_metric(["evicted"], len(residents) - loaded)
        objects.add_metric(["quarantined"], len(node.residents.quarantine))
        yield objects
        yield CounterMetricFamily(
            "continuum_node_evictions",
            "Objects evicted to the state dir by the residency budget",
            value=node.eviction.evictions,
        )
        yield CounterMetricFamily(
            "continuum_node_reloads",
            "Evicted objects reloaded for a call or a feed sample",
            value=node.eviction.reloads,
        )
        yield CounterMetricFamily(
            "continuum_node_refills",
            "Evicted objects reloaded ahead of any job, while RSS was under the memory budget",
            value=node.eviction.refills,
        )
        online = node.liveness.is_online
        yield GaugeMetricFamily(
            "continuum_node_replicas_behind",
            "Replica copies of this node's primaries on offline nodes (not kept up to date; "
            "they are sent the whole state when their node returns)",
            value=sum(
                1
                for r in residents
                if r.role == "primary"
                for replica in r.replicas
                if not online(replica)
            ),
        )
        held = GaugeMetricFamily(
            "continuum_node_feed_held_samples",
            "Feed samples held, unacknowledged: reorder (waiting for a seq gap), parked "
            "(topic parked, mailbox full), backlog (waiting for room), disk (not durable yet)",
            labels=["reason"],
        )
        feeds, calls = node.feeds, node.calls
        held.add_metric(["reorder"], sum(len(o.held) for o in list(feeds._orders.values())))
        held.add_metric(["parked"], feeds.parked)
        held.add_metric(["backlog"], len(calls.backlog))
        held.add_metric(["disk"], sum(len(q) for q in list(calls.held._held.values())))
        yield held
        yield CounterMetricFamily(
            "continuum_node_reconnects",
            "Reconnections to the broker after the first connection",
            value=max(0, getattr(node.transport, "connects", 0) - 1),
        )
