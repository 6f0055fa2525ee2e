"""Timing of the benchmarks: percentiles and summaries of latency samples, and
the drivers that take them (sequential, pipelined, interleaved between kinds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

__all__ = [
    "interleaved_pipelined",
    "interleaved_sequential",
    "median",
    "percentile",
    "pipelined",
    "sequential",
    "summarize",
]


# -- statistics ------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    s = sorted(samples_ms)
    return {
        "n": len(s),
        "p50_ms": percentile(s, 0.50),
        "p90_ms": percentile(s, 0.90),
        "p99_ms": percentile(s, 0.99),
        "min_ms": s[0] if s else float("nan"),
        "max_ms": s[-1] if s else float("nan"),
        "mean_ms": sum(s) / len(s) if s else float("nan"),
    }


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 0.5)


# -- timing drivers --------------------------------------------------------------------
def sequential(call: Callable[[], Any], n: int, warmup: int = 0) -> list[float]:
    """``n`` calls one after another; the latency of each in ms."""
    for _ in range(warmup):
        call()
    out = [0.0] * n
    clock = time.perf_counter
    for i in range(n):
        t = clock()
        call()
        out[i] = (clock() - t) * 1000.0
    return out


def pipelined(issue: Callable[[], Future[Any]], total: int, window: int) -> dict[str, Any]:
    """``total`` calls with ``window`` outstanding: the caller's thread issues a new
    call as soon as one completes (a semaphore of ``window`` permits released by each
    future's completion), so between ``window - 1`` and ``window`` calls are in flight
    at any time. Returns calls/s and the most seen in flight."""
    sem = threading.Semaphore(window)
    lock = threading.Lock()
    state: dict[str, Any] = {"inflight": 0, "max": 0, "errors": 0, "first_error": None}

    def done(f: Future[Any]) -> None:
        with lock:
            state["inflight"] -= 1
            if f.exception() is not None:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or repr(f.exception())
        sem.release()

    t0 = time.perf_counter()
    for _ in range(total):
        sem.acquire()
        with lock:
            state["inflight"] += 1
            if state["inflight"] > state["max"]:
                state["max"] = state["inflight"]
        issue().add_done_callback(done)
    for _ in range(window):  # wait for the tail
        sem.acquire()
    elapsed = time.perf_counter() - t0
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} of {total} calls failed: {state['first_error']}")
    return {
        "calls": total,
        "window": window,
        "seconds": elapsed,
        "calls_per_s": total / elapsed,
        "max_in_flight": state["max"],
    }


def interleaved_sequential(
    calls: dict[str, Callable[[], Any]], n: int, warmup: int, block: int = 250
) -> dict[str, list[float]]:
    """``n`` sequential calls of each kind, in alternating blocks of ``block`` (the
    order flips every round), so that slow drift of the machine hits every kind alike."""
    for call in calls.values():
        sequential(call, 0, warmup)
    out: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    done = 0
    while done < n:
        k = min(block, n - done)
        for name in names:
            out[name] += sequential(calls[name], k)
        names.reverse()
        done += k
    return out


def interleaved_pipelined(
    issuers: dict[str, Callable[[], Future[Any]]], total: int, window: int, trials: int
) -> dict[str, dict[str, Any]]:
    """``trials`` pipelined runs of ``total // trials`` calls for each kind, alternating
    kinds; the median trial is the figure (pipelined throughput on a small machine swings
    by 2x between runs of a few seconds: scheduling of 3-4 busy processes on few cores)."""
    per = max(1, total // trials)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in issuers}
    names = list(issuers)
    for _ in range(trials):
        for name in names:
            runs[name].append(pipelined(issuers[name], per, window))
        names.reverse()
    out = {}
    for name, rs in runs.items():
        rates = [r["calls_per_s"] for r in rs]
        out[name] = {
            "calls_per_s": median(rates),
            "trials_calls_per_s": [round(x, 1) for x in rates],
            "min_calls_per_s": min(rates),
            "max_calls_per_s": max(rates),
            "calls_per_trial": per,
            "trials": trials,
            "window": window,
            "max_in_flight": max(r["max_in_flight"] for r in rs),
        }
    return out
