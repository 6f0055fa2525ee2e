"""The board's metrics (the fields of continuum_mqtt.samples): on Linux read
from /proc and /sys as psutil reads them (:mod:`._procfs`, without psutil's
import), elsewhere with psutil."""

from __future__ import annotations

import logging
import os
from typing import Any

from ._procfs import ProcFS, available

__all__ = ["Sampler"]

log = logging.getLogger("edgeagent")


class Sampler:
    """Reads one sample's metrics; optional fields the board lacks are left out."""

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        self._warned: set[str] = set()
        if available():
            self._src: Any = ProcFS()  # takes the cpu baseline
            self._has_temp = True
            return
        import psutil

        self._src = _PsutilSource(psutil)
        psutil.cpu_percent(None)  # the first reading is a baseline (0.0): take it now
        self._has_temp = hasattr(psutil, "sensors_temperatures")

    def _optional(self, name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # a missing sensor or mount never stops sampling
            if name not in self._warned:
                self._warned.add(name)
                log.info("metric %s not available on this board: %s", name, exc)
            return None

    def read(self) -> dict[str, Any]:
        src = self._src
        out: dict[str, Any] = {
            "cpu": float(src.cpu_percent()),
            "mem": float(src.mem_percent()),
        }
        out["load1"] = self._optional("load1", lambda: round(os.getloadavg()[0], 3))
        out["disk"] = self._optional("disk", lambda: float(src.disk_percent(self.disk_path)))
        net = self._optional("net", src.net)
        if net is not None:
            out["net_rx"], out["net_tx"] = int(net[0]), int(net[1])
        if self._has_temp:
            temp = self._optional("temp", self._temperature)
            if temp is None:
                self._has_temp = False  # no sensor: stop asking
            else:
                out["temp"] = temp
        return {k: v for k, v in out.items() if v is not None}

    def _temperature(self) -> float | None:
        values = self._src.temperatures()
        return round(max(values), 1) if values else None


class _PsutilSource:
    """The readings of :class:`._procfs.ProcFS`, from psutil (not Linux)."""

    def __init__(self, psutil: Any) -> None:
        self._ps = psutil

    def cpu_percent(self) -> float:
        return float(self._ps.cpu_percent(None))

    def mem_percent(self) -> float:
        return float(self._ps.virtual_memory().percent)

    def disk_percent(self, path: str) -> float:
        return float(self._ps.disk_usage(path).percent)

    def net(self) -> tuple[int, int]:
        n = self._ps.net_io_counters()
        return int(n.bytes_recv), int(n.bytes_sent)

    def temperatures(self) -> list[float]:
        readings = self._ps.sensors_temperatures()
        return [t.current for ts in readings.values() for t in ts if t.current is not None]
