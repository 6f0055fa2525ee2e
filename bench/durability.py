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

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import continuum
from continuum._demo import LocalDeployment

MODULES = ["examples.counter", "cloudnode.forecast"]


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
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalDeployment(
            state_dir=tmp, modules=MODULES, nodes=nodes, durable=durable, node_args=node_args
        ) as dep,
        continuum.Client(dep.url, timeout=120) as c,
    ):
        counter = c.stub("examples.counter.Counter").create(replicas=replicas)
        fc = c.stub("cloudnode.forecast.Forecaster").create(replicas=replicas)
        fc.load_csv("node_3_utilisation.csv")
        fc.train(epochs=1)
        row = {
            "mode": mode,
            "counter_add": latencies(lambda i: counter.add(1), calls),
            "forecaster_ingest": latencies(
                lambda i: fc.ingest({"dev": "d", "seq": i + 1, "cpu": 1.0, "mem": 2.0}), calls
            ),
        }
        snaps = sorted(Path(tmp).glob("node*/objects/*.snapshot"))
        row["checkpoint_bytes"] = sorted(p.stat().st_size for p in snaps)
        return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.durability", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--calls", type=int, default=500, help="calls per measurement (default: %(default)s)"
    )
    ap.add_argument(
        "--json", default="reports/bench-durability.json", help="JSON output (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    rows = []
    for mode in ("memory", "journal", "checkpoint-every-call", "replicated"):
        print(f"[bench] {mode}...", file=sys.stderr, flush=True)
        rows.append(run(mode, args.calls))
    print(f"\ncost of a mutating call ({args.calls} sequential calls each), ms")
    print(f"{'node':<24}{'Counter.add p50':>16}{'p99':>8}{'Forecaster.ingest p50':>23}{'p99':>8}")
    for r in rows:
        a, f = r["counter_add"], r["forecaster_ingest"]
        print(
            f"{r['mode']:<24}{a['p50_ms']:>16.3f}{a['p99_ms']:>8.3f}{f['p50_ms']:>23.3f}{f['p99_ms']:>8.3f}"
        )
    sizes = rows[1]["checkpoint_bytes"]
    print(f"\ncheckpoint sizes (journal mode): {sizes} bytes")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
