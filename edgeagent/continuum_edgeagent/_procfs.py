"""The board's metrics read straight from Linux's /proc and /sys, as psutil
computes them (psutil 7, Linux), without importing psutil: its import alone
costs the agent about 0.7 MB of its 30 MB budget (docs/edgeagent.md,
Footprint). Elsewhere than Linux the sampler uses psutil itself.

Each reading is the psutil call it replaces, the same figure:

* ``cpu_percent()``: ``psutil.cpu_percent(None)`` (busy share of the CPU
  time since the previous call, from the ``cpu`` line of /proc/stat; iowait
  counts as idle, guest time is in user time already);
* ``mem_percent()``: ``psutil.virtual_memory().percent`` (MemTotal less
  MemAvailable, of MemTotal);
* ``disk_percent(path)``: ``psutil.disk_usage(path).percent`` (of the space an
  unprivileged user can use);
* ``net()``: ``psutil.net_io_counters()`` (bytes received and sent, summed
  over every interface of /proc/net/dev, a counter that goes back, as a
  32-bit one on a 32-bit kernel does, carried on as psutil's ``nowrap``);
* ``temperatures()``: the ``current`` values of
  ``psutil.sensors_temperatures()`` (hwmon sensors; thermal zones when the
  board has none).
"""

from __future__ import annotations

import glob
import os

__all__ = ["PROC", "SYS", "ProcFS", "available"]

PROC = "/proc"
SYS = "/sys"


def available() -> bool:
    """True on Linux with a readable /proc."""
    return os.access(f"{PROC}/stat", os.R_OK) and os.access(f"{PROC}/meminfo", os.R_OK)


def _percent(used: float, total: float) -> float:
    return round(used / total * 100, 1) if total else 0.0


def _sensor(path: str) -> str:
    """``.../temp1_input`` -> ``.../temp1``."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/{name.split('_')[0]}"


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


class ProcFS:
    """One board's counters; keeps what the next reading is a delta of."""

    def __init__(self) -> None:
        self._cpu = self._cpu_times()  # the first cpu_percent() is relative to this
        self._net_last: dict[str, tuple[int, int]] = {}
        self._net_carry: dict[str, list[int]] = {}

    # -- cpu ------------------------------------------------------------------------
    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        """(total, busy) clock ticks of the ``cpu`` line of /proc/stat."""
        with open(f"{PROC}/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:11]]
        # user nice system idle iowait irq softirq steal guest guest_nice
        total = sum(fields) - sum(fields[8:10])  # guest time is in user / nice already
        return total, total - sum(fields[3:5])  # idle and iowait

    def cpu_percent(self) -> float:
        (t0, b0), (t1, b1) = self._cpu, self._cpu_times()
        self._cpu = (t1, b1)
        total, busy = t1 - t0, b1 - b0
        if total <= 0:
            return 0.0
        return round(min(max(busy / total * 100, 0.0), 100.0), 1)

    # -- memory, disk -----------------------------------------------------------------
    @staticmethod
    def mem_percent() -> float:
        kib: dict[str, int] = {}
        for line in _read(f"{PROC}/meminfo").splitlines():
            name, _, rest = line.partition(":")
            value = rest.split()
            if value:
                kib[name] = int(value[0])
        total = kib["MemTotal"]
        avail = kib.get("MemAvailable")
        if avail is None:  # kernels before 3.14
            avail = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
        if avail > total:  # a container's view (psutil, after procps)
            avail = kib.get("MemFree", 0)
        return _percent(total - max(avail, 0), total)

    @staticmethod
    def disk_percent(path: str) -> float:
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return _percent(used, used + st.f_bavail * st.f_frsize)

    # -- network ----------------------------------------------------------------------
    def net(self) -> tuple[int, int]:
        """(bytes received, bytes sent) since boot, all interfaces."""
        rx = tx = 0
        for line in _read(f"{PROC}/net/dev").splitlines()[2:]:
            name, _, rest = line.rpartition(":")
            fields = rest.split()
            now = (int(fields[0]), int(fields[8]))
            carry = self._net_carry.setdefault(name.strip(), [0, 0])
            last = self._net_last.get(name.strip())
            if last is not None:
                for i in (0, 1):
                    if now[i] < last[i]:  # wrapped, or the interface came back
                        carry[i] += last[i]
            self._net_last[name.strip()] = now
            rx += now[0] + carry[0]
            tx += now[1] + carry[1]
        return rx, tx

    # -- temperature --------------------------------------------------------------------
    @staticmethod
    def temperatures() -> list[float]:
        """Every sensor's temperature, °C (empty: the board has none)."""
        found = glob.glob(f"{SYS}/class/hwmon/hwmon*/temp*_*")
        found += glob.glob(f"{SYS}/class/hwmon/hwmon*/device/temp*_*")
        bases = sorted({_sensor(p) for p in found})
        for p in glob.glob(f"{SYS}/devices/platform/coretemp.*/hwmon/hwmon*/temp*_*"):
            base = _sensor(p)
            alias = f"{SYS}/class/hwmon/" + base.split("/hwmon/", 1)[1]
            if alias not in bases and base not in bases:
                bases.append(base)
        values: list[float] = []
        if bases:
            for base in bases:
                try:
                    current = float(_read(base + "_input")) / 1000.0
                    _read(os.path.join(os.path.dirname(base), "name"))  # psutil skips nameless
                except (OSError, ValueError):
                    continue
                values.append(current)
            return values
        for zone in sorted(glob.glob(f"{SYS}/class/thermal/thermal_zone*")):
            try:
                current = float(_read(os.path.join(zone, "temp"))) / 1000.0
                _read(os.path.join(zone, "type"))
            except (OSError, ValueError):
                continue
            values.append(current)
        return values
