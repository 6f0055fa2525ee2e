"""The gateway's Prometheus metrics (``continuum-gateway --metrics-port``;
docs/metrics.md).

Imported only when the endpoint is asked for: prometheus_client is not
imported by a gateway started without it. Requests are counted and timed by
method and outcome code through a hook on their reply channel
(``Gateway.metrics``); levels (queues, nodes, the objects they hold, the
directory's rows, reconnects) are read at each scrape. With
``--fleet-metrics`` the edge agents' retained statuses are aggregated too
(:mod:`continuum_gateway._fleetmetrics`).

Labels are bounded: methods are the gateway's (any other name counts as
``_other``), codes the registered error codes, nodes the deployment's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from continuum_mqtt.service import (
    CallMeter,
    ReplyChannel,
    Request,
    metrics_registry,
    start_metrics,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ._fleetmetrics import FleetMetrics
    from ._gateway import Gateway

__all__ = ["GatewayMetrics", "install"]

OTHER = "_other"


class GatewayMetrics:
    def __init__(self, gw: Gateway, registry: CollectorRegistry | None = None) -> None:
        self.gw = gw
        self.registry = reg = registry if registry is not None else metrics_registry()
        self.requests = CallMeter(
            reg,
            "continuum_gateway_requests_total",
            "continuum_gateway_request_duration_seconds",
            ("method",),
            "Requests",
        )
        self.fleet: FleetMetrics | None = None
        reg.register(_Levels(gw))

    def install(self) -> GatewayMetrics:
        self.gw.metrics = self
        return self

    def request(self, req: Request, chan: ReplyChannel) -> None:
        """A gateway request arriving (network thread): count and time its reply."""
        method = req.method if req.method in self.gw.dispatcher else OTHER
        self.requests.watch(chan, method)


def install(
    gw: Gateway, port: int, host: str = "127.0.0.1", fleet_devices: int | None = None
) -> GatewayMetrics:
    """Metrics for ``gw`` served on ``host:port``; with ``fleet_devices`` (not
    None) the edge agents' statuses too, per-device series for that many."""
    metrics = GatewayMetrics(gw).install()
    if fleet_devices is not None:
        from ._fleetmetrics import FleetMetrics

        metrics.fleet = FleetMetrics(gw.topics.root, per_device=fleet_devices)
        metrics.fleet.install(gw.transport, metrics.registry)
        gw.fleet = metrics.fleet
    start_metrics(metrics.registry, port, host)
    return metrics


def _depth(pool: Any) -> int:
    queue = getattr(pool, "_work_queue", None)  # ThreadPoolExecutor's
    return queue.qsize() if queue is not None else 0


class _Levels:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gw = self.gw
        queues = GaugeMetricFamily(
            "continuum_gateway_queue_depth",
            "Requests waiting for a worker: nodes (those that wait for a node), "
            "directory (answered by the directory alone), status (node statuses to apply)",
            labels=["pool"],
        )
        queues.add_metric(["nodes"], _depth(gw._pool))
        queues.add_metric(["directory"], _depth(gw._quick_pool))
        queues.add_metric(["status"], _depth(gw._status_pool))
        yield queues
        states = gw.liveness.states()
        nodes = GaugeMetricFamily(
            "continuum_gateway_nodes", "Nodes seen, by state", labels=["state"]
        )
        for state in ("online", "offline"):
            nodes.add_metric([state], sum(1 for s in states.values() if s == state))
        yield nodes
        held = GaugeMetricFamily(
            "continuum_gateway_node_objects",
            "Objects each online node holds, as its last status said: objects (all, any "
            "role), resident (loaded), evicted (in its state dir)",
            labels=["node", "state"],
        )
        for node, status in sorted(gw.liveness.statuses().items()):
            for key in ("objects", "resident", "evicted"):
                value = status.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    held.add_metric([node, key], value)
        yield held
        rows = GaugeMetricFamily(
            "continuum_gateway_directory_rows",
            "Rows of the directory's tables (objects, aliases, tombstones, outcomes, strays)",
            labels=["table"],
        )
        try:
            counts = gw.directory.counts()
        except Exception:  # closed while stopping, or busy: leave it out of this scrape
            counts = {}
        for table, n in sorted(counts.items()):
            if table != "nodes":
                rows.add_metric([table], n)
        yield rows
        yield CounterMetricFamily(
            "continuum_gateway_reconnects",
            "Reconnections to the broker after the first connection",
            value=max(0, getattr(gw.transport, "connects", 0) - 1),
        )
