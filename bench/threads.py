"""Threads: a generic torch class (``examples.model.Regressor``, which imports
torch inside its methods) trained on a node after a burst of concurrent calls,
against the same training in a plain local process; and what a training
storm costs the node's light calls.

    python -m bench.threads             # about 2 minutes
    python -m bench.threads --quick     # smaller trainings, 3 s phases

One run starts its own mosquitto, a gateway and one node hosting
``examples.model`` with ``--intra-op-threads THREADS`` (default: the node's,
cores - 1), as real processes; then:

1. ``local``: ``--repeats`` trainings (``--rows``, ``--epochs``) in a fresh
   plain process, torch imported lazily too, with the same thread setting
   (the thread variables and ``torch.set_num_threads``); again after the node
   phases, in another fresh process: the median of both.
2. ``burst``: 4 client threads call 4 objects at once (``threads``, a short
   ``train``, ``ping``), ``--burst`` rounds each: what made training collapse
   before the node held its thread setting for lazy imports.
3. ``node``: ``--repeats`` trainings of one object, one after the other; the
   seconds are the method's own (the node's clock), so the ratio to ``local``
   is compute only. Goal: node / local <= 1.05.
4. ``idle`` and ``storm``: a light call (``ping`` on an object of its own),
   one after the other, for ``--phase-seconds`` on the idle node, then while
   ``--storm`` client threads keep training objects of their own (the node
   runs ``--long-workers`` of them at once). Goal: storm p50 <= 1.25x idle.

The table goes to stdout, the figures to ``reports/bench-threads.json``.
The local trainer (internal): ``python -m bench.threads local ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _common as common
from ._timing import summarize

MODEL = "examples.model.Regressor"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")

OPTIONS = """
threads        0     intra-op threads of the node and of the local process (0: the node's default, cores - 1)
rows           2000  rows of each training
epochs         20    epochs of each training
repeats        5     trainings timed, locally and on the node
burst          5     rounds of calls of each of the 4 burst threads
storm          4     client threads training during the storm phase
phase-seconds  10.0  seconds of each latency phase
node-args      none  more node arguments, one string (e.g. "--long-workers 2")
"""


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "threads",
        "A lazily importing torch class trained on a node after a burst of calls vs in a "
        "plain process; light-call latency during a training storm vs on an idle node.",
        quick="1000 rows, 5 epochs, 3 trainings, 3 s phases",
    )
    common.options(p, OPTIONS)
    return p


# -- the plain local process -------------------------------------------------------------


def local_main(argv: Sequence[str]) -> int:
    """``local THREADS ROWS EPOCHS REPEATS``: train in this (plain) process with
    ``THREADS`` threads; prints the seconds of each training as JSON."""
    threads, rows, epochs, repeats = (int(a) for a in argv)
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(threads))  # as the node does, before torch loads
    from examples.model import Regressor

    obj = Regressor()
    obj.train(rows=200, epochs=1)  # imports torch lazily, as the node's burst does
    import torch

    torch.set_num_threads(threads)
    obj.train(rows=rows, epochs=epochs)  # warm, as the node is after the burst (not timed)
    runs = [obj.train(rows=rows, epochs=epochs) for _ in range(repeats)]
    seconds = [r["seconds"] for r in runs]
    r = runs[-1]
    print(json.dumps({"seconds": seconds, "torch_threads": r["torch_threads"]}))
    return 0


def _local(threads: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [str(v) for v in (threads, args.rows, args.epochs, args.repeats)]
    env = {k: v for k, v in common.env().items() if k not in THREAD_ENV}
    out = subprocess.run(
        [sys.executable, "-m", "bench.threads", "local", *argv],
        cwd=common.REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- on the node ---------------------------------------------------------------------------


def _burst(c: Any, rounds: int) -> list[dict[str, Any]]:
    objs = [c.stub(MODEL).create() for _ in range(4)]

    def calls(obj: Any) -> list[dict[str, Any]]:
        seen = []
        for _ in range(rounds):
            seen.append(obj.threads())
            obj.train(rows=200, epochs=1)
            obj.ping()
        return seen

    with ThreadPoolExecutor(4) as pool:
        return [r for rs in pool.map(calls, objs) for r in rs]


def _pings(obj: Any, seconds: float) -> list[float]:
    took, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        obj.ping()
        took.append((time.perf_counter() - t) * 1000)
    return took


def _os_threads(pid: int) -> int | None:
    """The threads of process ``pid`` (Linux), OpenMP teams included."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def _storm(c: Any, args: argparse.Namespace, stop: threading.Event, done: list[int]) -> None:
    obj = c.stub(MODEL).create()
    while not stop.is_set():
        obj.train(rows=args.rows, epochs=max(1, args.epochs // 4))
        done.append(1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = common.machine(args)
    threads = args.threads or max(1, (os.cpu_count() or 2) - 1)
    common.log(f"local: {args.repeats} trainings, {threads} thread(s), plain process")
    local = _local(threads, args)
    with common.deployment() as dep:
        for name in THREAD_ENV:  # the node sets them itself
            dep.env.pop(name, None)
        dep.start_gateway("--max-objects", "0")
        extra = ["--intra-op-threads", str(threads)]
        if args.node_args != "none":
            extra += args.node_args.split()
        dep.start_node("n1", *extra, modules=("examples.model",))
        with dep.client(timeout=600) as c:
            common.log(f"burst: 4 threads x {args.burst} rounds")
            seen = _burst(c, args.burst)
            os_threads = _os_threads(dep.pid("n1"))
            obj = c.stub(MODEL).create()
            common.log(f"node: {args.repeats} trainings after the burst")
            node = [obj.train(rows=args.rows, epochs=args.epochs) for _ in range(args.repeats)]
            light = c.stub(MODEL).create()
            light.ping()
            common.log(f"idle: light calls for {args.phase_seconds} s")
            idle = _pings(light, args.phase_seconds)
            stop, done = threading.Event(), list[int]()
            storm = [
                threading.Thread(target=_storm, args=(c, args, stop, done), daemon=True)
                for _ in range(args.storm)
            ]
            for t in storm:
                t.start()
            time.sleep(1.0)  # the storm is on
            common.log(f"storm: light calls for {args.phase_seconds} s, {args.storm} trainers")
            stormy = _pings(light, args.phase_seconds)
            stop.set()
            for t in storm:
                t.join(600)
    common.log(f"local again: {args.repeats} trainings (load may have changed meanwhile)")
    local["seconds"] += _local(threads, args)["seconds"]
    local_s = statistics.median(local["seconds"])
    node_s = statistics.median(r["seconds"] for r in node)
    idle_sum, storm_sum = summarize(idle), summarize(stormy)
    result = {
        "meta": meta,
        "threads": threads,
        "local": {**local, "median_s": local_s},
        "node": {
            "seconds": [r["seconds"] for r in node],
            "median_s": node_s,
            "torch_threads_after_burst": sorted({r["torch_threads"] for r in seen + node}),
            "workers_seen": len({r["thread"] for r in seen}),
            "os_threads_after_burst": os_threads,
        },
        "train_ratio": round(node_s / local_s, 3),
        "idle": idle_sum,
        "storm": {**storm_sum, "trainings_done": len(done)},
        "p50_ratio": round(storm_sum["p50_ms"] / idle_sum["p50_ms"], 2),
        "p99_ratio": round(storm_sum["p99_ms"] / idle_sum["p99_ms"], 2),
    }
    result["table"] = [
        {
            "what": "training (median s)",
            "base": f"{local_s:.3f} local",
            "node": f"{node_s:.3f}",
            "ratio": result["train_ratio"],
            "goal": "<= 1.05",
        },
        {
            "what": "light call p50 ms",
            "base": f"{idle_sum['p50_ms']:.2f} idle",
            "node": f"{storm_sum['p50_ms']:.2f} storm",
            "ratio": result["p50_ratio"],
            "goal": "<= 1.25",
        },
        {
            "what": "light call p99 ms",
            "base": f"{idle_sum['p99_ms']:.2f} idle",
            "node": f"{storm_sum['p99_ms']:.2f} storm",
            "ratio": result["p99_ratio"],
            "goal": "",
        },
    ]
    return result


COLUMNS = "what< | base> | node:node> | ratio:node / base> | goal<"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["local"]:
        return local_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.repeats, args.phase_seconds = 1000, 5, 3, 3.0
        args.burst = 2
    if min(args.rows, args.epochs, args.repeats, args.burst, args.storm, args.phase_seconds) <= 0:
        build_parser().error("counts and seconds must be above 0")
    result = common.run_or_interrupted(run, args, COLUMNS)
    if result is None:
        return 130
    node = result["node"]
    print(
        f"\n{result['threads']} intra-op thread(s); torch threads seen in the node's workers "
        f"after the burst: {node['torch_threads_after_burst']} ({node['workers_seen']} workers, "
        f"{node['os_threads_after_burst']} OS threads in the node); "
        f"{result['storm']['trainings_done']} storm trainings"
    )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
