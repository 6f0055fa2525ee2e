"""What the console knows, fed from MQTT: the fleet, the nodes, the gateway.

Memory is bounded per device: the latest sample, its status counters, the
latest forecast, a ring of the last ``history`` samples (time, cpu, mem), a
ring of forecasts and one of alerts. Every change bumps ``version``, so live
views push only when something changed. Writers are the MQTT network thread;
readers (the web app) take consistent snapshots under the same lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SORT_KEYS", "Device", "FleetState", "NodeInfo"]

SORT_KEYS = ("id", "state", "age", "cpu", "mem", "outbox", "dropped", "forecast", "alert")

# what a node's status says of its load (protocol.md section 15), passed on when present
NODE_LOAD = ("memory", "queued", "running", "long_running", "load")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass(slots=True)
class Device:
    id: str
    history: int
    status: str = "unknown"  # its retained status: online | offline | unknown (none yet)
    seq: int = 0
    ts: float | None = None  # board time of the latest sample
    seen: float | None = None  # console time (Unix s) the latest sample arrived
    cpu: float | None = None
    mem: float | None = None
    outbox: int | None = None  # samples waiting in its outbox (its status, section 23)
    oldest: float | None = None  # board time of the oldest of them (None: none waits)
    dropped: int | None = None
    failed: int | None = None
    resent: int | None = None
    forecast: dict[str, Any] | None = None
    alert: dict[str, Any] | None = None
    alerts_total: int = 0
    samples: deque[tuple[float, float | None, float | None]] = field(init=False)
    forecasts: deque[tuple[float, float | None, float | None, float | None]] = field(init=False)
    alerts: deque[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.history)
        self.forecasts = deque(maxlen=max(1, self.history // 4))
        self.alerts = deque(maxlen=20)

    def state(self, now: float, offline_after: float) -> str:
        """Its status when it publishes one (an edge agent: ``online`` while
        connected, its will says ``offline``); for a device that never did
        (firmware-sim), ``online`` while samples came within ``offline_after`` s."""
        if self.status != "unknown":
            return self.status
        fresh = self.seen is not None and now - self.seen <= offline_after
        return "online" if fresh else "offline"

    def row(self, now: float, offline_after: float) -> dict[str, Any]:
        f = self.forecast or {}
        a = self.alert
        return {
            "id": self.id,
            "state": self.state(now, offline_after),
            "age": None if self.seen is None else round(now - self.seen, 1),
            "seq": self.seq,
            "cpu": self.cpu,
            "mem": self.mem,
            "outbox": self.outbox,
            # how old the oldest waiting sample is (the board's clock against ours)
            "oldest": None if self.oldest is None else round(max(0.0, now - self.oldest), 1),
            "dropped": self.dropped,
            "failed": self.failed,
            "forecast": None if not f else {k: f.get(k) for k in ("cpu", "mem", "band")},
            "alert": None if a is None else {k: a.get(k) for k in ("metric", "actual", "ts")},
            "alerts": self.alerts_total,
        }

    def sort_key(self, key: str, now: float, offline_after: float) -> tuple[int, Any]:
        """(missing last, value) for ``key``."""
        v: Any
        if key == "id":
            return (0, self.id)
        if key == "state":
            return (0, self.state(now, offline_after))
        if key == "age":
            v = None if self.seen is None else now - self.seen
        elif key == "forecast":
            v = _num((self.forecast or {}).get("cpu"))
        elif key == "alert":
            v = None if self.alert is None else _num(self.alert.get("ts"))
        else:
            v = getattr(self, key)
        return (1, 0) if v is None else (0, v)


@dataclass(slots=True)
class NodeInfo:
    id: str
    state: str = "offline"
    since: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)

    def row(self, draining: bool = False) -> dict[str, Any]:
        s = self.status
        classes = s.get("classes")
        out = {
            "id": self.id,
            "state": self.state,
            "since": self.since,
            "host": s.get("host"),
            "pid": s.get("pid"),
            "started": s.get("started"),
            "objects": s.get("objects"),
            "resident": s.get("resident"),
            "evicted": s.get("evicted"),
            "quarantined": len(s.get("quarantined") or ()),
            "classes": sorted(classes) if isinstance(classes, dict) else [],
            "draining": draining,
        }
        for k in NODE_LOAD:  # newer nodes only; numbers (or null) only
            v = s.get(k)
            out[k] = _num(v)
        return out


class FleetState:
    """Devices, nodes and the gateway as the broker last told them."""

    def __init__(
        self,
        history: int = 360,
        max_devices: int = 100_000,
        offline_after: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self.offline_after = offline_after
        self.max_devices = max_devices
        self.clock = clock
        self.lock = threading.Lock()
        self.version = 0
        self.devices: dict[str, Device] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.gateway: str = "unknown"
        self.objects: list[dict[str, Any]] = []
        self.objects_at: float | None = None
        self.objects_error: str | None = None
        self.draining: set[str] = set()  # nodes the gateway drains (its ``nodes``)
        self.ignored = 0  # messages that were not what their topic promises
        self.received = 0  # metrics samples taken (redeliveries excluded)

    # -- writers (the MQTT thread) ----------------------------------------------------
    def _device(self, dev: str) -> Device | None:
        d = self.devices.get(dev)
        if d is None:
            if len(self.devices) >= self.max_devices:
                return None
            d = self.devices[dev] = Device(dev, self.history)
        return d

    def sample(self, dev: str, body: dict[str, Any]) -> None:
        seq = body.get("seq")
        now = self.clock()
        with self.lock:
            d = self._device(dev)
            if d is None:
                return
            if isinstance(seq, int) and not isinstance(seq, bool):
                if seq <= d.seq:
                    return  # a redelivery or a resend (protocol.md section 19)
                d.seq = seq
            d.ts = _num(body.get("ts"))
            d.seen = now
            d.cpu, d.mem = _num(body.get("cpu")), _num(body.get("mem"))
            d.samples.append((d.ts if d.ts is not None else now, d.cpu, d.mem))
            self.received += 1
            self.version += 1

    def device_status(self, dev: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            d = self._device(dev)
            if d is None:
                return
            if body is None:  # an empty retained message: cleared
                d.status = "unknown"
            else:
                d.status = "online" if body.get("state") == "online" else "offline"
                for k in ("dropped", "failed", "resent", "outbox"):
                    v = body.get(k)
                    if isinstance(v, int) and not isinstance(v, bool):
                        setattr(d, k, v)
                if "oldest" in body:
                    d.oldest = _num(body.get("oldest"))
            self.version += 1

    def forecast(self, dev: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            d = self._device(dev)
            if d is None:
                return
            d.forecast = body
            if body:
                ts = _num(body.get("ts"))
                row = (ts or self.clock(), _num(body.get("cpu")), _num(body.get("mem")))
                d.forecasts.append((*row, _num(body.get("band"))))
            self.version += 1

    def alert(self, dev: str, body: dict[str, Any]) -> None:
        with self.lock:
            d = self._device(dev)
            if d is None:
                return
            d.alert = body
            d.alerts.append(body)
            d.alerts_total += 1
            self.version += 1

    def node_status(self, node: str, body: dict[str, Any] | None) -> None:
        with self.lock:
            if body is None:
                self.nodes.pop(node, None)
            else:
                n = self.nodes.setdefault(node, NodeInfo(node))
                n.state = "online" if body.get("state") == "online" else "offline"
                n.since = self.clock()
                if n.state == "online":
                    n.status = body
            self.version += 1

    def gateway_status(self, body: dict[str, Any] | None) -> None:
        with self.lock:
            self.gateway = "online" if body and body.get("state") == "online" else "offline"
            self.version += 1

    def set_draining(self, nodes: set[str]) -> None:
        with self.lock:
            if nodes != self.draining:
                self.draining = nodes
                self.version += 1

    def set_objects(self, objects: list[dict[str, Any]] | None, error: str | None = None) -> None:
        with self.lock:
            if objects is not None:
                self.objects = objects
                self.objects_at = self.clock()
            self.objects_error = error
            self.version += 1

    # -- readers (the web app) --------------------------------------------------------
    def fleet_page(
        self, q: str = "", sort: str = "id", desc: bool = False, offset: int = 0, limit: int = 50
    ) -> dict[str, Any]:
        """One page of the fleet, searched (substring of the id; ``state:offline``,
        ``alert:yes``) and sorted on the server."""
        now = self.clock()
        sort = sort if sort in SORT_KEYS else "id"
        words = q.lower().split()
        with self.lock:
            devs = list(self.devices.values())
            version = self.version
            off = self.offline_after
            online = sum(1 for d in devs if d.state(now, off) == "online")
            if words:
                devs = [d for d in devs if all(_matches(d, w, now, off) for w in words)]
            keys = {d.id: d.sort_key(sort, now, off) for d in devs}
            devs.sort(key=lambda d: keys[d.id])
            if desc:  # missing values stay last either way
                have = [d for d in devs if keys[d.id][0] == 0]
                devs = have[::-1] + devs[len(have) :]
            page = [d.row(now, off) for d in devs[offset : offset + limit]]
            return {
                "version": version,
                "total": len(self.devices),
                "online": online,
                "matched": len(devs),
                "offset": offset,
                "limit": limit,
                "rows": page,
                "gateway": self.gateway,
                "received": self.received,
                "now": now,
            }

    def device_view(self, dev: str, since: float | None = None) -> dict[str, Any] | None:
        now = self.clock()
        with self.lock:
            d = self.devices.get(dev)
            if d is None:
                return None
            samples = [s for s in d.samples if since is None or s[0] > since]
            return {
                "version": self.version,
                "device": d.row(now, self.offline_after),
                "forecast_full": d.forecast,
                "samples": samples,
                "forecasts": list(d.forecasts),
                "alerts": list(d.alerts),
            }

    def nodes_view(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": self.version,
                "gateway": self.gateway,
                "nodes": [self.nodes[k].row(k in self.draining) for k in sorted(self.nodes)],
            }

    def objects_view(self, q: str = "", node: str = "", cls: str = "") -> dict[str, Any]:
        q = q.lower()
        with self.lock:
            objs = [
                o
                for o in self.objects
                if (not node or o.get("node") == node)
                and (not cls or o.get("class") == cls)
                and (not q or q in _object_text(o))
            ]
            return {
                "version": self.version,
                "at": self.objects_at,
                "error": self.objects_error,
                "now": self.clock(),
                "total": len(self.objects),
                "objects": objs[:1000],
            }


def _object_text(o: dict[str, Any]) -> str:
    parts = [str(o.get(k, "")) for k in ("id", "class", "node", "owner")]
    return " ".join(parts + [str(a) for a in o.get("aliases") or ()]).lower()


def _matches(d: Device, word: str, now: float, offline_after: float) -> bool:
    if word.startswith("state:"):
        return d.state(now, offline_after) == word[6:]
    if word == "alert:yes":
        return d.alert is not None
    return word in d.id.lower()
