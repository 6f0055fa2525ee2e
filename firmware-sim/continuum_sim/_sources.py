"""What the simulated boards measure: replay of a real series, or a synthetic
board model. Both are deterministic for a seed, per device: device ``i`` of a
run gives the same series whatever the number of devices, the rate or the
command (``run`` publishes exactly what ``export`` writes).

Pure Python (no numpy): the simulator stays as light as the edge agent. The
series a replay reads are loaded by :mod:`._series`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from continuum_mqtt.samples import encode_sample

from ._series import DEFAULT_SYNTHETIC_START, SAMPLE_PERIOD, Series, load_series, parse_time

__all__ = ["Fleet", "FleetSpec", "Rng", "device_ids"]

_M64 = (1 << 64) - 1
_TWO_PI = 2.0 * math.pi


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Rng:
    """A 64-bit LCG (upper 53 bits used): 8 bytes of state per device instead of
    the 2.5 KB of a ``random.Random``, and as fast per draw."""

    __slots__ = ("s",)

    def __init__(self, seed: int, stream: int = 0) -> None:
        self.s = _splitmix64(_splitmix64(seed & _M64) ^ _splitmix64(stream + 0x632BE59BD9B4E019))

    def random(self) -> float:
        s = (self.s * 6364136223846793005 + 1442695040888963407) & _M64
        self.s = s
        return (s >> 11) * 1.1102230246251565e-16

    def gauss(self) -> float:
        """A standard normal draw (Box-Muller, one value per two uniforms)."""
        u = self.random() or 1e-300
        return math.sqrt(-2.0 * math.log(u)) * math.cos(_TWO_PI * self.random())


# -- the fleet -----------------------------------------------------------------------------


def device_ids(n: int, prefix: str = "sim-") -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


@dataclass(frozen=True)
class FleetSpec:
    """Everything that decides the samples (not how fast they are sent)."""

    devices: int
    source: str = "synthetic"  # "synthetic", "node_3", "orangepi" or a CSV path
    seed: int = 0
    prefix: str = "sim-"
    fields: str = "full"  # "full": the agent's optional fields too; "minimal": cpu, mem
    start: float | None = None  # board time of the first sample; None: see Fleet
    jitter: float = 0.5  # replay: std of the noise added to CPU and MEM, percentage points
    ts_jitter: float = 1.0  # std of the noise on sample times, seconds
    offsets: bool = True  # replay: each device starts at its own row and phase
    seq_start: int = 1
    period: float = SAMPLE_PERIOD  # synthetic: board seconds between samples

    @property
    def replay(self) -> bool:
        return self.source != "synthetic"


class _Extras:
    """The agent's optional fields (load1, disk, net_rx, net_tx, temp) of a board,
    driven by its CPU; with sensor dropouts (fields missing for a while)."""

    __slots__ = (
        "cores",
        "disk",
        "disk_growth",
        "drop_left",
        "drop_mask",
        "drop_p",
        "has_temp",
        "load",
        "rng",
        "rx",
        "rx_rate",
        "temp_base",
        "tx",
        "tx_ratio",
    )

    def __init__(self, rng: Rng) -> None:
        r = rng.random
        self.rng = rng
        self.cores = (2, 4, 4, 8)[int(r() * 4)]
        self.disk = 15.0 + 55.0 * r()
        self.disk_growth = 0.004 * r()
        self.has_temp = r() < 0.8  # a board without a temperature sensor never sends temp
        self.temp_base = 32.0 + 15.0 * r()
        self.rx_rate = 10 ** (4.5 + 3.0 * r())  # bytes per sample at full activity
        self.tx_ratio = 0.1 + 0.9 * r()
        self.drop_p = 0.002 + 0.02 * r()
        self.drop_left = 0
        self.drop_mask = 0
        self.load = 0.0
        self.rx = int(r() * 1e9)
        self.tx = int(self.rx * self.tx_ratio)

    def reboot(self) -> None:
        self.rx = self.tx = 0
        self.load = 0.0

    def fill(self, m: dict[str, Any], cpu: float) -> None:
        rng = self.rng
        r = rng.random
        self.load = 0.7 * self.load + 0.3 * (cpu / 100.0 * self.cores * (0.8 + 0.4 * r()))
        disk = self.disk + self.disk_growth
        if disk > 95.0 or r() < 0.0005:  # logs rotated / cleaned up
            disk -= 5.0 + 10.0 * r()
        self.disk = disk
        act = 0.2 + cpu / 100.0
        rx = int(self.rx_rate * act * (0.5 + r()))
        self.rx += rx
        self.tx += int(rx * self.tx_ratio * (0.5 + r()))
        mask = 0
        if self.drop_left:
            self.drop_left -= 1
            mask = self.drop_mask
        elif r() < self.drop_p:
            self.drop_left = int(r() * 24)
            self.drop_mask = mask = 1 + int(r() * 31)  # a non-empty subset of the 5 fields
        if not mask & 1:
            m["load1"] = round(self.load, 2)
        if not mask & 2:
            m["disk"] = round(disk, 2)
        if not mask & 4:
            m["net_rx"] = self.rx
        if not mask & 8:
            m["net_tx"] = self.tx
        if self.has_temp and not mask & 16:
            m["temp"] = round(self.temp_base + 0.35 * cpu + 0.8 * rng.gauss(), 1)


class _Board:
    """Synthetic board: daily cycle, noise, bursts, slow memory leaks that end in
    an out-of-memory reboot, random reboots (memory and network counters reset,
    a boot CPU spike), sensor dropouts."""

    __slots__ = (
        "boot_left",
        "burst_left",
        "burst_level",
        "burst_p",
        "cpu_base",
        "cpu_noise",
        "day_amp",
        "extras",
        "k",
        "leak",
        "leak_acc",
        "mem_base",
        "peak",
        "phase",
        "reboot_p",
        "reboots",
        "rng",
        "t0",
    )

    def __init__(self, rng: Rng, start: float) -> None:
        r = rng.random
        self.rng = rng
        self.cpu_base = 3.0 + 25.0 * r()
        self.day_amp = 5.0 + 35.0 * r()
        self.peak = 86400.0 * r()  # time of day (UTC) of the daily peak: boards in many time zones
        self.cpu_noise = 0.5 + 4.0 * r()
        self.burst_p = 0.003 + 0.03 * r()
        self.mem_base = 15.0 + 45.0 * r()
        self.leak = 0.02 + 0.15 * r() if r() < 0.3 else 0.0  # percentage points a sample
        self.reboot_p = 0.0003 + 0.002 * r()
        self.phase = SAMPLE_PERIOD * r()
        self.t0 = start + self.phase
        self.k = 0
        self.burst_left = 0
        self.burst_level = 0.0
        self.boot_left = 0
        self.leak_acc = 0.0
        self.reboots = 0
        self.extras = _Extras(rng)

    def step(self, period: float, ts_jitter: float, fields: bool) -> tuple[float, dict[str, Any]]:
        rng = self.rng
        r = rng.random
        ts = self.t0 + self.k * period
        self.k += 1
        if ts_jitter:
            ts += ts_jitter * rng.gauss()
        if self.boot_left:
            self.boot_left -= 1
            cpu = 55.0 + 40.0 * r()
        else:
            tod = ts % 86400.0
            cpu = (
                self.cpu_base
                + self.day_amp * 0.5 * (1.0 + math.cos(_TWO_PI * (tod - self.peak) / 86400.0))
                + self.cpu_noise * rng.gauss()
            )
            if self.burst_left:
                self.burst_left -= 1
                cpu += self.burst_level
            elif r() < self.burst_p:
                self.burst_left = int(r() * 12)
                self.burst_level = 20.0 + 50.0 * r()
                cpu += self.burst_level
        cpu = 0.0 if cpu < 0.0 else 100.0 if cpu > 100.0 else cpu
        self.leak_acc += self.leak
        mem = self.mem_base + self.leak_acc + 0.1 * cpu + 0.4 * rng.gauss()
        if mem >= 97.0 or r() < self.reboot_p:  # out of memory, or a power cut / update
            self.reboots += 1
            self.leak_acc = 0.0
            self.boot_left = 1
            mem = self.mem_base * 0.8 + 0.4 * rng.gauss()
            cpu = 60.0 + 30.0 * r()
            self.extras.reboot()
        mem = 0.0 if mem < 0.0 else 100.0 if mem > 100.0 else mem
        m: dict[str, Any] = {"cpu": round(cpu, 2), "mem": round(mem, 2)}
        if fields:
            self.extras.fill(m, cpu)
        return ts, m


class _Replayer:
    """One device replaying a series from its own row, at its own phase, with noise."""

    __slots__ = ("base", "cpu", "extras", "k", "mem", "n", "rng", "row0", "span", "times")

    def __init__(self, rng: Rng, series: Series, start: float, offsets: bool) -> None:
        r = rng.random
        self.rng = rng
        self.times, self.cpu, self.mem = series.times, series.cpu, series.mem
        self.n = len(series)
        self.span = series.span
        self.row0 = int(r() * len(series)) if offsets else 0
        phase = SAMPLE_PERIOD * r() if offsets else 0.0
        # board time of row ``row0``: start (+ phase); later rows keep the series' own spacing
        self.base = start + phase - series.times[self.row0]
        self.k = 0
        self.extras = _Extras(rng)

    def step(self, jitter: float, ts_jitter: float, fields: bool) -> tuple[float, dict[str, Any]]:
        lap, row = divmod(self.row0 + self.k, self.n)
        self.k += 1
        ts = self.base + self.times[row] + lap * self.span
        cpu, mem = self.cpu[row], self.mem[row]
        if jitter:
            g = self.rng.gauss
            cpu = min(100.0, max(0.0, cpu + jitter * g()))
            mem = min(100.0, max(0.0, mem + jitter * g()))
        if ts_jitter:
            ts += ts_jitter * self.rng.gauss()
        m: dict[str, Any] = {"cpu": cpu, "mem": mem}
        if fields:
            self.extras.fill(m, cpu)
        return ts, m


class Fleet:
    """N simulated boards. ``payload(i)`` gives device ``i``'s next sample,
    encoded with :func:`continuum_mqtt.samples.encode_sample` (the agent's own);
    ``seq`` runs from ``seq_start`` per device, with no gaps, through reboots.

    The first sample's board time is ``spec.start``; by default the series' own
    first timestamp for a replay and 2024-09-02 00:00 UTC for synthetic boards
    (fixed, so a seed gives the same bytes on every run).
    """

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.ids = device_ids(spec.devices, spec.prefix)
        self.series: Series | None = load_series(spec.source) if spec.replay else None
        if spec.start is not None:
            start = spec.start
        elif self.series is not None:
            start = self.series.times[0]
        else:
            start = parse_time(DEFAULT_SYNTHETIC_START)
        self.start = start
        self.seq = [spec.seq_start] * spec.devices
        self._fields = spec.fields == "full"
        self.boards: list[Any] = []
        for i in range(spec.devices):
            rng = Rng(spec.seed, i)
            if self.series is not None:
                self.boards.append(_Replayer(rng, self.series, start, spec.offsets))
            else:
                self.boards.append(_Board(rng, start))

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, i: int) -> tuple[str, int, float, dict[str, Any]]:
        """Device ``i``'s next sample: ``(device id, seq, ts, metrics)``."""
        spec = self.spec
        board = self.boards[i]
        if self.series is not None:
            ts, m = board.step(spec.jitter, spec.ts_jitter, self._fields)
        else:
            ts, m = board.step(spec.period, spec.ts_jitter, self._fields)
        seq = self.seq[i]
        self.seq[i] = seq + 1
        return self.ids[i], seq, ts, m

    def payload(self, i: int) -> bytes:
        dev, seq, ts, m = self.sample(i)
        return encode_sample(dev, seq, ts, m)

    def rows(self, samples: int) -> Iterator[tuple[str, int, float, dict[str, Any]]]:
        """``samples`` samples of every device, device by device."""
        for i in range(len(self.ids)):
            for _ in range(samples):
                yield self.sample(i)

    def reboots(self) -> int:
        return sum(getattr(b, "reboots", 0) for b in self.boards)
