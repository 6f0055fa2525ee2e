"""Pool scaling: a stateless class served by 1, 2, 3 nodes through one MQTT 5
shared subscription. Prints a table and writes JSON.

    python -m bench.pool [--rounds 3000] [--calls 2000] [--window 32] [--nodes 1,2,3]

The work is CPU-bound (iterated SHA-256, ``--rounds``), so throughput should grow
with nodes until the machine's cores run out: on a 2-core box the client, the
broker and the nodes share two cores, and a third node can add little.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import continuum
from continuum._demo import LocalDeployment

HASHER = "examples.pool.Hasher"


def measure(url: str, calls: int, window: int, rounds: int) -> dict[str, Any]:
    with continuum.Client(url, timeout=60) as client:
        pool = client.pool(HASHER)
        for _ in range(50):
            pool.digest(b"warm", rounds=rounds)
        pids: dict[int, int] = {}
        t0 = time.perf_counter()
        inflight: deque[Future[Any]] = deque()
        for i in range(calls):
            if len(inflight) >= window:
                inflight.popleft().result()
            inflight.append(pool.digest.future(i.to_bytes(4, "big"), rounds=rounds))
        while inflight:
            inflight.popleft().result()
        elapsed = time.perf_counter() - t0
        for _ in range(200):
            pid = pool.whoami()
            pids[pid] = pids.get(pid, 0) + 1
    return {"calls_per_s": calls / elapsed, "seconds": elapsed, "serving_processes": len(pids)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--nodes", default="1,2,3", help="node counts to measure (default: %(default)s)"
    )
    ap.add_argument(
        "--calls", type=int, default=2000, help="calls per measurement (default: %(default)s)"
    )
    ap.add_argument(
        "--window", type=int, default=32, help="calls outstanding (default: %(default)s)"
    )
    ap.add_argument(
        "--rounds", type=int, default=3000, help="SHA-256 rounds per call (default: %(default)s)"
    )
    ap.add_argument(
        "--json", default="reports/bench-pool.json", help="JSON output (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    rows = []
    for k in [int(x) for x in args.nodes.split(",")]:
        print(f"[bench] {k} node(s)...", file=sys.stderr, flush=True)
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalDeployment(state_dir=tmp, modules=["examples.pool"], nodes=k) as dep,
        ):
            r = measure(dep.url, args.calls, args.window, args.rounds)
        rows.append({"nodes": k, **r})
    base = rows[0]["calls_per_s"]
    print(
        f"\npool scaling: {HASHER}.digest, {args.rounds} SHA-256 rounds, {args.window} outstanding, {os.cpu_count()} cores"
    )
    print(f"{'nodes':>5} {'calls/s':>10} {'speed-up':>9} {'serving':>8}")
    for r in rows:
        r["speedup"] = r["calls_per_s"] / base
        print(
            f"{r['nodes']:>5} {r['calls_per_s']:>10.0f} {r['speedup']:>8.2f}x {r['serving_processes']:>8}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
