"""Resident memory of a deployment's processes over time (each with its child
processes), sampled in a thread (psutil), each sample tagged with the
benchmark's phase at that moment."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["RssSampler"]

MIB = 1024 * 1024


class RssSampler:
    """Samples the RSS (MiB) of ``pids`` (name -> pid) every ``period`` s
    while running; ``phase`` names what the benchmark is doing."""

    def __init__(self, pids: Mapping[str, int], period: float = 1.0) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.period = period
        self.phase = "start"
        self.samples: list[dict[str, Any]] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def now(self) -> dict[str, float]:
        """The RSS of every process now, its child processes included (a
        node's long-call workers), MiB (0 for one that has gone)."""
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            try:
                total = proc.memory_info().rss
                for child in proc.children():
                    try:
                        total += child.memory_info().rss
                    except Exception:  # (exited meanwhile)
                        pass
                out[name] = total / MIB
            except Exception:  # (the process has exited)
                out[name] = 0.0
        return out

    def own(self) -> dict[str, float]:
        """The RSS of every process now without its children, MiB: where a
        node's objects live (its long-call workers come and go)."""
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            try:
                out[name] = proc.memory_info().rss / MIB
            except Exception:  # (the process has exited)
                out[name] = 0.0
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(
                {"t": round(time.monotonic() - self._t0, 1), "phase": self.phase, **self.now()}
            )

    def peak(self, names: list[str]) -> float:
        """The highest sum over ``names`` of one sample, MiB."""
        sums = [sum(s.get(n, 0.0) for n in names) for s in self.samples]
        return max(sums, default=sum(self.now().get(n, 0.0) for n in names))
