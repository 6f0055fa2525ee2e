"""What durability and replication cost per call.

    python -m bench.durability [--calls 500]

For a tiny object (Counter.add) and a large one (a trained Forecaster holding
the node_3 series, Forecaster.ingest), the p50/p99 latency of a mutating call on:
an in-memory node; a durable node journaling each call (the default); a durable
node writing a full checkpoint after every call (``--checkpoint-every 1``, the
naive approach, for comparison); and a durable primary with one replica.
Prints a table and writes JSON (reports/bench-durability.json).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ._common import columns, deployment, format_table, log, options, parser, write_json

MODULES = ["examples.counter", "continuum_node.forecast"]
KINDS = ("counter_add", "forecaster_ingest")
COLUMNS = columns(
    "mode:node< | counter_add_p50_ms:Counter.add p50> | counter_add_p99_ms:p99> | "
    "forecaster_ingest_p50_ms:Forecaster.ingest p50> | forecaster_ingest_p99_ms:p99>"
)


def latencies(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return {"p50_ms": statistics.median(ts), "p99_ms": ts[int(0.99 * (len(ts) - 1))]}


def run(mode: str, calls: int) -> dict[str, Any]:
    node_args: list[str] = []
    nodes, durable, replicas = 1, mode != "memory", 0
    if mode == "checkpoint-every-call":
        node_args = ["--checkpoint-every", "1"]
    if mode == "replicated":
        nodes, replicas = 2, 1
    with deployment() as dep:
        dep.start(
            [f"node{i + 1}" for i in range(nodes)], *node_args, modules=MODULES, durable=durable
        )
        return measure(dep, mode, calls, replicas)


def measure(dep: Any, mode: str, calls: int, replicas: int) -> dict[str, Any]:
    with dep.client(timeout=120) as c:
        counter = c.stub("examples.counter.Counter").create(replicas=replicas)
        fc = c.stub("continuum_node.forecast.Forecaster").create(replicas=replicas)
        fc.load_csv("node_3_utilisation.csv")
        fc.train(epochs=1)
        row = {
            "mode": mode,
            "counter_add": latencies(lambda i: counter.add(1), calls),
            "forecaster_ingest": latencies(
                lambda i: fc.ingest({"dev": "d", "seq": i + 1, "cpu": 1.0, "mem": 2.0}), calls
            ),
        }
        snaps = sorted(dep.tmp.glob("node*/objects/*.snapshot"))
        row["checkpoint_bytes"] = sorted(p.stat().st_size for p in snaps)
        return row


def main(argv: list[str] | None = None) -> int:
    ap = parser("durability", __doc__.split("\n\n")[0])
    options(ap, "calls  500  calls per measurement")
    args = ap.parse_args(argv)
    rows = []
    for mode in ("memory", "journal", "checkpoint-every-call", "replicated"):
        log(f"{mode}...")
        rows.append(run(mode, args.calls))
    print(f"\ncost of a mutating call ({args.calls} sequential calls each), ms")
    table = [
        {
            "mode": r["mode"],
            **{f"{k}_{q}": f"{r[k][q]:.3f}" for k in KINDS for q in ("p50_ms", "p99_ms")},
        }
        for r in rows
    ]
    print(format_table(table, COLUMNS))
    print(f"\ncheckpoint sizes (journal mode): {rows[1]['checkpoint_bytes']} bytes")
    write_json(args.json, {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
