"""Pool scaling: a stateless class served by 1, 2, 3 nodes through one MQTT 5
shared subscription. Prints a table and writes JSON.

    python -m bench.pool [--rounds 3000] [--calls 2000] [--window 32] [--nodes 1,2,3]

The work is CPU-bound (iterated SHA-256, ``--rounds``), so throughput should grow
with nodes until the machine's cores run out: on a 2-core box the client, the
broker and the nodes share two cores, and a third node can add little.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import continuum_mqtt

from ._common import deployment, format_table, log, options, parser, write_json

HASHER = "examples.pool.Hasher"


COLUMNS = [
    ("nodes", "nodes", ">"),
    ("rate", "calls/s", ">"),
    ("speedup", "speed-up", ">"),
    ("serving_processes", "serving", ">"),
]


def measure(url: str, root: str, calls: int, window: int, rounds: int) -> dict[str, Any]:
    with continuum_mqtt.Client(url, root=root, timeout=60) as client:
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
    ap = parser("pool", __doc__.split("\n\n")[0])
    ap.add_argument(
        "--nodes", default="1,2,3", help="node counts to measure (default: %(default)s)"
    )
    options(
        ap,
        """
        calls   2000  calls per measurement
        window  32    calls outstanding
        rounds  3000  SHA-256 rounds per call
        """,
    )
    args = ap.parse_args(argv)
    rows = []
    for k in [int(x) for x in args.nodes.split(",")]:
        log(f"{k} node(s)...")
        with deployment() as dep:
            dep.start([f"node{i + 1}" for i in range(k)], modules=["examples.pool"])
            r = measure(dep.url, dep.root, args.calls, args.window, args.rounds)
        rows.append({"nodes": k, **r})
    base = rows[0]["calls_per_s"]
    for r in rows:
        r["speedup"] = f"{r['calls_per_s'] / base:.2f}x"
        r["rate"] = f"{r['calls_per_s']:.0f}"
    print(
        f"\npool scaling: {HASHER}.digest, {args.rounds} SHA-256 rounds, {args.window} outstanding, {os.cpu_count()} cores"
    )
    print(format_table(rows, COLUMNS))
    write_json(args.json, {"args": vars(args), "cpus": os.cpu_count(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
