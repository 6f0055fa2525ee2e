"""The board's metrics, read with psutil (the fields of continuum_mqtt.samples)."""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["Sampler"]

log = logging.getLogger("edgeagent")


class Sampler:
    """Reads one sample's metrics; optional fields the board lacks are left out."""

    def __init__(self, disk_path: str = "/") -> None:
        import psutil

        self._psutil = psutil
        self.disk_path = disk_path
        psutil.cpu_percent(None)  # the first reading is a baseline (0.0): take it now
        self._has_temp = hasattr(psutil, "sensors_temperatures")
        self._warned: set[str] = set()

    def _optional(self, name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # a missing sensor or mount never stops sampling
            if name not in self._warned:
                self._warned.add(name)
                log.info("metric %s not available on this board: %s", name, exc)
            return None

    def read(self) -> dict[str, Any]:
        ps = self._psutil
        out: dict[str, Any] = {
            "cpu": float(ps.cpu_percent(None)),
            "mem": float(ps.virtual_memory().percent),
        }
        out["load1"] = self._optional("load1", lambda: round(os.getloadavg()[0], 3))
        out["disk"] = self._optional("disk", lambda: float(ps.disk_usage(self.disk_path).percent))
        net = self._optional("net", ps.net_io_counters)
        if net is not None:
            out["net_rx"] = int(net.bytes_recv)
            out["net_tx"] = int(net.bytes_sent)
        if self._has_temp:
            temp = self._optional("temp", self._temperature)
            if temp is None:
                self._has_temp = False  # no sensor: stop asking
            else:
                out["temp"] = temp
        return {k: v for k, v in out.items() if v is not None}

    def _temperature(self) -> float | None:
        readings = self._psutil.sensors_temperatures()
        values = [t.current for ts in readings.values() for t in ts if t.current is not None]
        return round(max(values), 1) if values else None
