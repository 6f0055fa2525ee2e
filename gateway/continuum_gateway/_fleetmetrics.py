"""Fleet metrics: the edge agents' retained statuses as Prometheus metrics
(``continuum-gateway --metrics-port P --fleet-metrics N``; docs/metrics.md).

The agents never import prometheus_client nor serve HTTP (boards sit behind
site brokers and NAT, and the agent's 30 MB budget has no room for it): each
publishes its counts, outbox depth and oldest waiting sample in its retained
``<root>/dev/<device>/status`` (protocol §23), and its forecasts, retained,
on ``<root>/dev/<device>/forecast``. The gateway, the one cloud service that
is always there, subscribes to both and keeps one small record per device.

Series: fleet aggregates (bounded whatever the fleet's size), and per-device
series for the ``per_device`` devices with the deepest outbox (then the
oldest waiting sample): at 10,000 devices, the ones worth a look, in a
bounded number of series. At most :data:`MAX_DEVICES` devices are tracked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import Message, Transport, decode, is_json

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["MAX_DEVICES", "Device", "FleetMetrics"]

log = logging.getLogger("continuum.gateway")

MAX_DEVICES = 1_000_000  # devices tracked at most (a record is about 300 bytes)
MAX_PAYLOAD = 4096  # a status or forecast larger than this is ignored


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass
class Device:
    """What the last status and forecast of one device said."""

    online: bool = False
    outbox: float | None = None  # samples waiting on the board
    oldest: float | None = None  # Unix s of the oldest waiting sample
    connects: float | None = None
    dropped: float = 0.0
    failed: float = 0.0
    resent: float = 0.0
    forecast: float | None = None  # Unix s of its last forecast


class FleetMetrics:
    """Devices under ``root``; ``clock`` is Unix time (tests)."""

    def __init__(
        self, root: str, *, per_device: int = 100, clock: Callable[[], float] = time.time
    ) -> None:
        self.prefix = f"{root}/dev/"
        self.per_device = max(0, per_device)
        self.clock = clock
        self.devices: dict[str, Device] = {}
        self.ignored = 0  # malformed statuses and forecasts, devices beyond MAX_DEVICES
        self._lock = threading.Lock()

    @property
    def subscriptions(self) -> list[str]:
        return [f"{self.prefix}+/status", f"{self.prefix}+/forecast"]

    def install(self, transport: Transport, registry: CollectorRegistry) -> None:
        for topic in self.subscriptions:
            transport.subscribe(topic, 1)
        registry.register(_Collector(self))

    # -- network thread ------------------------------------------------------------
    def on_message(self, msg: Message) -> bool:
        """Take ``msg`` if it is a device status or forecast; False otherwise."""
        topic = msg.topic
        if not topic.startswith(self.prefix):
            return False
        device, _, kind = topic[len(self.prefix) :].partition("/")
        if kind not in ("status", "forecast") or not device:
            return False
        if not msg.payload:  # a retained status cleared: forget the device
            if kind == "status":
                with self._lock:
                    self.devices.pop(device, None)
            return True
        try:
            if len(msg.payload) > MAX_PAYLOAD:
                raise ValueError("too large")
            body = decode(msg.payload, is_json(msg.payload, msg.content_type))
            if not isinstance(body, dict):
                raise ValueError("not a map")
        except (ContinuumError, ValueError):
            self.ignored += 1
            return True
        with self._lock:
            rec = self.devices.get(device)
            if rec is None:
                if len(self.devices) >= MAX_DEVICES:
                    self.ignored += 1
                    return True
                rec = self.devices[device] = Device()
            if kind == "forecast":
                rec.forecast = _num(body.get("ts")) or rec.forecast
            else:
                self._status(rec, body)
        return True

    @staticmethod
    def _status(rec: Device, body: dict[str, Any]) -> None:
        rec.online = body.get("state") == "online"
        for key in ("dropped", "failed", "resent"):
            value = _num(body.get(key))
            if value is not None:
                setattr(rec, key, value)
        if "outbox" in body:  # newer agents (protocol §23)
            rec.outbox = _num(body.get("outbox"))
            rec.oldest = _num(body.get("oldest"))
            rec.connects = _num(body.get("connects"))

    def snapshot(self) -> dict[str, Device]:
        with self._lock:
            return {d: Device(**vars(r)) for d, r in self.devices.items()}


class _Collector:
    def __init__(self, fleet: FleetMetrics) -> None:
        self.fleet = fleet

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fleet = self.fleet
        devices = fleet.snapshot()
        now = fleet.clock()
        recs = list(devices.values())
        states = GaugeMetricFamily(
            "continuum_fleet_devices",
            "Edge agents by their retained status: online, offline",
            labels=["state"],
        )
        up = sum(1 for r in recs if r.online)
        states.add_metric(["online"], up)
        states.add_metric(["offline"], len(recs) - up)
        yield states
        depths = [r.outbox for r in recs if r.outbox is not None]
        yield GaugeMetricFamily(
            "continuum_fleet_outbox_samples",
            "Samples waiting in the agents' outboxes, all devices (as last reported)",
            value=sum(depths),
        )
        yield GaugeMetricFamily(
            "continuum_fleet_outbox_depth_max",
            "Samples waiting in the fullest outbox of one device",
            value=max(depths, default=0.0),
        )
        yield GaugeMetricFamily(
            "continuum_fleet_oldest_sample_age_seconds",
            "Age of the oldest sample waiting on any device (0: none waiting)",
            value=max((now - r.oldest for r in recs if r.oldest is not None), default=0.0),
        )
        forecasts = [now - r.forecast for r in recs if r.forecast is not None]
        yield GaugeMetricFamily(
            "continuum_fleet_forecast_age_seconds_max",
            "Age of the stalest last forecast among devices that have one",
            value=max(forecasts, default=0.0),
        )
        yield GaugeMetricFamily(
            "continuum_fleet_devices_forecasting",
            "Devices with a forecast (retained on dev/<device>/forecast)",
            value=len(forecasts),
        )
        for name, key, what in _COUNTS:
            yield CounterMetricFamily(
                f"continuum_fleet_{name}",
                f"{what}, summed over all devices",
                value=sum(getattr(r, key) for r in recs),
            )
        yield CounterMetricFamily(
            "continuum_fleet_reconnects",
            "Agent reconnections to their broker after their first connection, all devices",
            value=sum(max(0.0, r.connects - 1) for r in recs if r.connects is not None),
        )
        yield CounterMetricFamily(
            "continuum_fleet_ignored_messages",
            "Device statuses and forecasts ignored: malformed, or beyond the devices tracked",
            value=fleet.ignored,
        )
        yield from _per_device(devices, fleet.per_device, now)


_COUNTS = (
    ("dropped_samples", "dropped", "Samples dropped by the agents' outbox bounds"),
    ("failed_samples", "failed", "Samples the agents could not store"),
    ("resent_samples", "resent", "Acknowledged samples sent again after a reconnect"),
)


def _worst(item: tuple[str, Device]) -> tuple[float, float, str]:
    dev, r = item
    return (-(r.outbox or 0.0), r.oldest if r.oldest is not None else float("inf"), dev)


def _per_device(devices: dict[str, Device], limit: int, now: float) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    chosen = sorted(devices.items(), key=_worst)[:limit]
    up = GaugeMetricFamily(
        "continuum_device_up", "1 if the device's agent is online", labels=["device"]
    )
    depth = GaugeMetricFamily(
        "continuum_device_outbox_samples", "Samples waiting in its outbox", labels=["device"]
    )
    oldest = GaugeMetricFamily(
        "continuum_device_oldest_sample_age_seconds",
        "Age of its oldest waiting sample (0: none waiting)",
        labels=["device"],
    )
    forecast = GaugeMetricFamily(
        "continuum_device_forecast_age_seconds",
        "Age of its last forecast (absent: none seen)",
        labels=["device"],
    )
    dropped = CounterMetricFamily(
        "continuum_device_dropped_samples", "Samples its outbox dropped", labels=["device"]
    )
    reconnects = CounterMetricFamily(
        "continuum_device_reconnects",
        "Its agent's reconnections after the first connection",
        labels=["device"],
    )
    for dev, r in chosen:
        up.add_metric([dev], 1.0 if r.online else 0.0)
        dropped.add_metric([dev], r.dropped)
        if r.outbox is not None:
            depth.add_metric([dev], r.outbox)
            oldest.add_metric([dev], 0.0 if r.oldest is None else max(0.0, now - r.oldest))
        if r.connects is not None:
            reconnects.add_metric([dev], max(0.0, r.connects - 1))
        if r.forecast is not None:
            forecast.add_metric([dev], max(0.0, now - r.forecast))
    yield from (up, depth, oldest, forecast, dropped, reconnects)
