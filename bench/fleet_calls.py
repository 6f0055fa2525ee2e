"""Pipelined call throughput of the Python client beside the Node.js client of
examples/js-client on the same broker and object, and a fleet-wide call
(``client.fan_out``) over 10,000 objects on 2 nodes.

    python -m bench.fleet_calls            # 10,000 objects, 20,000 pipelined calls
    python -m bench.fleet_calls --quick    # 1,000 objects, a few thousand calls (< 1 min)
    python -m bench.fleet_calls --profile  # also cProfile the Python pipelined run

One run starts its own mosquitto, a gateway and nodes n1, n2 (``examples.counter``)
as real processes and stops them at the end. Progress on stderr, the table on
stdout, the figures in reports/bench-fleet-calls.json.

* pipelined: ``Counter.add(1)`` on one object on n1 with ``--window`` calls in
  flight, trials alternating between ``node cli.js bench`` (its calls/s, as it
  prints them, timed after its connect and resolve) and the Python client (the
  same driver as bench.calls); the median trial of each. Goal: Python >= 0.8x JS.
* fan-out: ``--objects`` counters, half on each node; one ``fan_out(..., "get")``
  round by proxies (locations cached) and one by aliases from a fresh client
  (bulk ``resolve_many`` included). Goal: a round of 10,000 in <= 5 s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _common as common
from ._timing import median, pipelined

CLASS = "examples.counter.Counter"
JS = common.REPO / "examples" / "js-client"
GOALS = {"python_vs_js_min": 0.8, "fan_out_10k_max_s": 5.0}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "fleet_calls",
        "Python vs Node.js pipelined call throughput on the same broker, and one "
        "fan_out round over many objects on 2 nodes.",
        quick="1,000 objects and a few thousand pipelined calls (under a minute)",
    )
    common.options(
        p,
        """
        objects          10000  objects for the fan-out round, half per node
        pipelined-calls  20000  calls per pipelined trial
        window           64     calls in flight (pipelined; fan-out: per node)
        trials           5      pipelined trials per client, alternating; the median is reported
        profile          -      cProfile one Python pipelined trial (top functions to stderr)
        keep-logs        -      keep the service logs
        """,
    )
    return p


def _js_bench(url: str, root: str, oid: str, calls: int, window: int) -> dict[str, Any]:
    cmd = ["node", str(JS / "cli.js"), "--broker", url, "--root", root, "bench", oid]
    cmd += ["--calls", str(calls), "--inflight", str(window)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"js bench failed: {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def measure_pipelined(dep: Any, client: Any, args: argparse.Namespace) -> dict[str, Any]:
    obj = client.stub(CLASS).create(start=0, node="n1")
    add = obj.add
    pipelined(lambda: add.future(1), 500, args.window)  # warm-up
    js_rates: list[float] = []
    py_rates: list[float] = []
    cpu_us: list[float] = []  # the client process's CPU time per call, all threads
    have_node = shutil.which("node") is not None and (JS / "node_modules").is_dir()
    if not have_node:
        common.log("node or examples/js-client/node_modules missing: Python only")
    for trial in range(args.trials):
        order = ["js", "py"] if trial % 2 == 0 else ["py", "js"]
        for kind in order:
            if kind == "js" and have_node:
                r = _js_bench(dep.url, dep.root, obj._id, args.pipelined_calls, args.window)
                if r["ok"] != r["calls"]:
                    raise RuntimeError(f"js bench: {r['errors']}")
                js_rates.append(float(r["calls_per_s"]))
            elif kind == "py":
                cpu = time.process_time()
                r = pipelined(lambda: add.future(1), args.pipelined_calls, args.window)
                cpu_us.append((time.process_time() - cpu) / args.pipelined_calls * 1e6)
                py_rates.append(r["calls_per_s"])
        common.log(f"trial {trial + 1}: js {js_rates[-1:]} py {py_rates[-1]:.0f} calls/s")
    out: dict[str, Any] = {
        "window": args.window,
        "calls_per_trial": args.pipelined_calls,
        "python_calls_per_s": median(py_rates),
        "python_trials": [round(x) for x in py_rates],
        "python_cpu_us_per_call": median(cpu_us),
    }
    if js_rates:
        out["js_calls_per_s"] = median(js_rates)
        out["js_trials"] = [round(x) for x in js_rates]
        out["ratio"] = out["python_calls_per_s"] / out["js_calls_per_s"]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        pipelined(lambda: add.future(1), args.pipelined_calls, args.window)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    return out


def _create_fleet(client: Any, n: int) -> list[Any]:
    stub = client.stub(CLASS)

    def make(i: int) -> Any:
        return stub.create(start=i, alias=f"dev-{i}", node="n1" if i % 2 == 0 else "n2")

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        objs = list(pool.map(make, range(n)))
    common.log(f"created {n} objects in {time.monotonic() - t0:.1f} s")
    return objs


def measure_fan_out(dep: Any, client: Any, args: argparse.Namespace) -> dict[str, Any]:
    objs = _create_fleet(client, args.objects)
    out: dict[str, Any] = {"objects": args.objects, "window_per_node": args.window}
    client.fan_out(objs[: min(500, len(objs))], "get", window=args.window)  # warm-up
    r = client.fan_out(objs, "get", window=args.window, timeout=120)
    if not r.ok or r.total != args.objects:
        raise RuntimeError(f"fan-out by proxies: {r!r}")
    out["by_proxies_s"] = r.seconds
    out["nodes"] = r.nodes
    with dep.client(timeout=120) as fresh:
        aliases = [f"dev-{i}" for i in range(args.objects)]
        r = fresh.fan_out(aliases, "get", window=args.window, timeout=120)
        if not r.ok or r.results["dev-7"] != 7:
            raise RuntimeError(f"fan-out by aliases: {r!r}")
        out["by_aliases_s"] = r.seconds
        out["by_aliases_resolve_s"] = r.resolve_seconds
    common.log(f"fan-out: proxies {out['by_proxies_s']:.2f} s, aliases {out['by_aliases_s']:.2f} s")
    return out


COLUMNS = common.columns("metric< | value> | goal< | verdict<")


def build_report(pipe: dict[str, Any], fan: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    goals: list[dict[str, Any]] = []
    w = pipe["window"]
    rows.append(
        {
            "metric": f"python pipelined, {w} in flight (calls/s)",
            "value": f"{pipe['python_calls_per_s']:.0f}",
        }
    )
    rows.append(
        {
            "metric": "  python client CPU per call, all threads (us)",
            "value": f"{pipe['python_cpu_us_per_call']:.0f}",
        }
    )
    if "js_calls_per_s" in pipe:
        rows.append(
            {
                "metric": f"node.js pipelined, {w} in flight (calls/s)",
                "value": f"{pipe['js_calls_per_s']:.0f}",
            }
        )
        limit = GOALS["python_vs_js_min"]
        ok = pipe["ratio"] >= limit
        rows.append(
            {
                "metric": "python / node.js",
                "value": f"{pipe['ratio']:.2f}x",
                "goal": f">= {limit}x",
                "verdict": "PASS" if ok else "FAIL",
            }
        )
        goals.append(
            {"goal": f"python pipelined >= {limit}x node.js", "ratio": pipe["ratio"], "pass": ok}
        )
    n = fan["objects"]
    limit_s = GOALS["fan_out_10k_max_s"] * n / 10_000
    for key, label in (("by_proxies_s", "proxies"), ("by_aliases_s", "aliases, bulk resolve")):
        ok = fan[key] <= limit_s
        rows.append(
            {
                "metric": f"fan_out over {n} objects, 2 nodes, by {label} (s)",
                "value": f"{fan[key]:.2f}",
                "goal": f"<= {limit_s:g} s",
                "verdict": "PASS" if ok else "FAIL",
            }
        )
        goals.append(
            {"goal": f"fan_out by {label} <= {limit_s:g} s", "seconds": fan[key], "pass": ok}
        )
    rows.append(
        {
            "metric": "  of which resolve_many of the aliases (s)",
            "value": f"{fan['by_aliases_resolve_s']:.2f}",
        }
    )
    return {"rows": rows, "goals": goals}


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = common.machine(args)
    t0 = time.monotonic()
    with common.deployment(log_level="WARNING", keep=args.keep_logs) as dep:
        dep.start(["n1", "n2"], modules=["examples.counter"])
        common.log(f"mosquitto on {dep.url}; gateway, n1, n2 up")
        with dep.client(timeout=60) as client:
            pipe = measure_pipelined(dep, client, args)
            fan = measure_fan_out(dep, client, args)
    meta["seconds"] = round(time.monotonic() - t0, 1)
    report = build_report(pipe, fan)
    return {"meta": meta, "pipelined": pipe, "fan_out": fan, **report}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.objects, args.pipelined_calls, args.trials = 1000, 3000, 3
    result = common.run_or_interrupted(run, args)
    if result is None:
        return 130
    print(common.format_table(result["rows"], COLUMNS))
    failed = [g["goal"] for g in result["goals"] if not g["pass"]]
    print(f"\ngoals: {len(result['goals']) - len(failed)}/{len(result['goals'])} pass")
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
