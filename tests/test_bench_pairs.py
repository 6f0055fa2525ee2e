"""bench.fleet_ai's paired light-call figure: the storm's trainings paused
and resumed while light calls run, each call counted in the span it fell
wholly within (after the span settled)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from bench.fleet_ai import _alternate, _split


def test_each_call_counts_in_the_span_it_fell_wholly_within() -> None:
    spans = [(0.0, 2.0, False), (2.0, 4.0, True), (4.0, 6.0, False)]
    pings = [
        (0.1, 1.0),  # before the first span settled: out
        (0.5, 1.0),
        (1.9995, 1.0),  # ends in the next span: out
        (2.1, 1.0),  # not settled: out
        (2.5, 3.0),
        (3.9, 1.0),
        (4.3, 2.0),
        (6.5, 1.0),  # after the last span: out
    ]
    running, paused = _split(pings, spans)
    assert running == [1.0, 2.0] and paused == [3.0, 1.0]


def test_the_workers_are_stopped_every_other_span_and_left_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = psutil.Process(child.pid)
    seen: list[str] = []

    def watch() -> None:
        end = time.monotonic() + 1.1
        while time.monotonic() < end:
            seen.append(proc.status())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        spans = _alternate([child.pid], 1.2, 0.3)
        watcher.join()
        assert [stopped for _, _, stopped in spans] == [False, True, False, True]
        assert psutil.STATUS_STOPPED in seen and psutil.STATUS_SLEEPING in seen
        assert proc.status() != psutil.STATUS_STOPPED  # resumed at the end
        child.kill()
        child.wait()
        assert len(_alternate([child.pid], 0.2, 0.1)) == 2  # a worker gone: no error
    finally:
        child.kill()
        child.wait()
