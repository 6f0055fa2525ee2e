"""Call latency, pipelined throughput, payload round trips and start-up time of
continuum, each beside the bare MQTT floor through the same broker.

    python -m bench.calls                 # full run (about a minute)
    python -m bench.calls --quick         # a few hundred calls (under 30 s)
    python -m bench.calls --json out.json

One run starts its own mosquitto (with the project's broker settings), a gateway
and one cloud node (``examples.counter``) as real processes, plus a bare paho
responder process for the floor, and stops them all at the end, on error and on
Ctrl-C. Progress goes to stderr, the table to stdout, the figures to JSON.

What is measured, continuum vs floor (all QoS 1, TCP_NODELAY everywhere, loopback):

* sequential round trips: ``Counter.add(1)`` vs a 16-byte bare request/response
  (MQTT 5 Response Topic + Correlation Data) to the bare responder;
* pipelined throughput with ``--window`` calls outstanding (futures);
* ``Counter.echo(bytes)`` of 1 KiB and 1 MiB vs bare requests of the same size;
* start to first call: a fresh ``python -c`` that imports continuum, connects,
  resolves an existing object by alias and calls it, vs one that imports paho,
  connects, subscribes and makes one bare round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    CHILD_CONTINUUM,
    CHILD_RAW,
    REPO,
    RawRequester,
    Services,
    format_table,
    log,
    pipelined,
    sequential,
    startup_runs,
    summarize,
    terminate_as_interrupt,
)

CLASS = "examples.counter.Counter"
ALIAS = "bench-counter"

# dataClay 4.3.1 (gRPC + Redis) on the same machine, same workload class.
REFERENCE = {
    "call_p50_ms": 2.8,
    "call_p99_ms": 4.9,
    "throughput_calls_per_s": 464.0,  # with 4 client threads
    "echo_1mib_ms": 13.8,
    "start_to_first_call_ms": 387.0,
}

GOALS = {
    "p50_vs_floor_max": 1.5,  # continuum p50 <= 1.5 x floor p50
    "throughput_vs_floor_min": 0.5,  # continuum >= 50 % of the floor's calls/s
    "start_to_first_call_max_ms": 150.0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.calls",
        description=(
            "Measure continuum call latency, pipelined throughput, 1 KiB / 1 MiB echo "
            "round trips and process start to first call, each beside the bare MQTT "
            "request/response floor through the same mosquitto. Starts and stops its "
            "own broker, gateway, cloud node and bare responder."
        ),
    )
    p.add_argument("--calls", type=int, default=5000, help="sequential calls (default: 5000)")
    p.add_argument(
        "--pipelined-calls",
        type=int,
        default=20000,
        help="calls in the pipelined throughput run (default: 20000)",
    )
    p.add_argument(
        "--window", type=int, default=64, help="calls outstanding when pipelined (default: 64)"
    )
    p.add_argument("--warmup", type=int, default=300, help="warm-up calls before each series")
    p.add_argument(
        "--echo-calls", type=int, default=1000, help="1 KiB echo round trips (default: 1000)"
    )
    p.add_argument(
        "--big-calls", type=int, default=100, help="1 MiB echo round trips (default: 100)"
    )
    p.add_argument(
        "--start-runs",
        type=int,
        default=7,
        help="fresh processes for start to first call; the median is reported (default: 7)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few hundred calls of each kind (under 30 s; for tests); overrides the counts",
    )
    p.add_argument(
        "--json",
        dest="json_path",
        default="reports/bench-calls.json",
        help="where to write the figures (default: %(default)s, relative to the repo root)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the service logs (their folder is printed)"
    )
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.calls = 300
        args.pipelined_calls = 1500
        args.warmup = 50
        args.echo_calls = 100
        args.big_calls = 10
        args.start_runs = 3


# -- measurements -------------------------------------------------------------------------
def measure_floor(svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = RawRequester(svc.url, svc.raw_topic)
    try:
        small = b"x" * 16
        log(f"floor: {args.calls} sequential 16 B round trips")
        out["sequential"] = summarize(sequential(lambda: raw.call(small), args.calls, args.warmup))
        log(f"floor: {args.pipelined_calls} pipelined, {args.window} outstanding")
        sequential(lambda: raw.call(small), args.warmup)
        out["pipelined"] = pipelined(lambda: raw.request(small), args.pipelined_calls, args.window)
        for label, size, n in (
            ("echo_1kib", 1024, args.echo_calls),
            ("echo_1mib", 1 << 20, args.big_calls),
        ):
            data = os.urandom(size)
            log(f"floor: {n} sequential {label[5:]} round trips")
            samples = sequential(lambda d=data: _check(raw.call(d), d), n, max(2, n // 10))
            out[label] = summarize(samples)
    finally:
        raw.close()
    return out


def _check(got: Any, want: bytes) -> None:
    if got != want:
        raise RuntimeError(f"echo returned {len(got)} bytes, expected {len(want)}")


def measure_continuum(svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    import continuum

    out: dict[str, Any] = {}
    with continuum.Client(svc.url) as client:
        obj = client.stub(CLASS).create(start=0, alias=ALIAS)
        add = obj.add
        log(f"continuum: {args.calls} sequential Counter.add(1)")
        out["sequential"] = summarize(sequential(lambda: add(1), args.calls, args.warmup))
        log(f"continuum: {args.pipelined_calls} pipelined, {args.window} outstanding")
        sequential(lambda: add(1), args.warmup)
        before = add(0)
        out["pipelined"] = pipelined(lambda: add.future(1), args.pipelined_calls, args.window)
        after = add(0)
        if after - before != args.pipelined_calls:
            raise RuntimeError(f"counter moved by {after - before}, not {args.pipelined_calls}")
        echo = obj.echo
        for label, size, n in (
            ("echo_1kib", 1024, args.echo_calls),
            ("echo_1mib", 1 << 20, args.big_calls),
        ):
            data = os.urandom(size)
            log(f"continuum: {n} sequential Counter.echo of {label[5:]}")
            samples = sequential(lambda d=data: _check(echo(d), d), n, max(2, n // 10))
            out[label] = summarize(samples)
    return out


def measure_startup(svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    n = args.start_runs
    log(f"start to first call: {n} fresh processes each (bare paho, then continuum)")
    # One throw-away run each, so that both see warm file caches and .pyc files.
    startup_runs(CHILD_RAW, [svc.url, svc.raw_topic], 1)
    startup_runs(CHILD_CONTINUUM, [svc.url, ALIAS], 1)
    floor = startup_runs(CHILD_RAW, [svc.url, svc.raw_topic], n)
    ours = startup_runs(CHILD_CONTINUUM, [svc.url, ALIAS], n)
    return {"continuum": ours, "floor": floor, "python_only": _python_only(n)}


def _python_only(n: int) -> dict[str, float]:
    """Spawn to the first line of code of an empty ``python -c``: the interpreter's share."""
    vals = []
    for _ in range(n):
        t = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            capture_output=True,
            check=True,
            cwd=REPO,
        )
        vals.append((float(proc.stdout) - t) * 1000.0)
    vals.sort()
    return {"spawn_ms": vals[len(vals) // 2]}


# -- the report ----------------------------------------------------------------------------
def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def build_report(
    floor: dict[str, Any], ours: dict[str, Any], start: dict[str, Any]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    goals: list[dict[str, Any]] = []

    def lat_row(metric: str, o: float, f: float, ref: float | None, goal: bool = False) -> None:
        row: dict[str, Any] = {
            "metric": metric,
            "ours": _f(o),
            "floor": _f(f),
            "ratio": f"{o / f:.2f}x",
            "reference": _f(ref, 1) if ref is not None else "",
        }
        if goal:
            limit = GOALS["p50_vs_floor_max"]
            ok = o <= limit * f
            row.update(goal=f"<= {limit}x floor", verdict="PASS" if ok else "FAIL")
            goals.append(
                {
                    "goal": f"call p50 <= {limit}x floor p50",
                    "ours_ms": o,
                    "floor_ms": f,
                    "limit_ms": limit * f,
                    "pass": ok,
                }
            )
        rows.append(row)

    s_o, s_f = ours["sequential"], floor["sequential"]
    lat_row("call p50 (ms)", s_o["p50_ms"], s_f["p50_ms"], REFERENCE["call_p50_ms"], goal=True)
    lat_row("call p90 (ms)", s_o["p90_ms"], s_f["p90_ms"], None)
    lat_row("call p99 (ms)", s_o["p99_ms"], s_f["p99_ms"], REFERENCE["call_p99_ms"])

    t_o, t_f = ours["pipelined"]["calls_per_s"], floor["pipelined"]["calls_per_s"]
    limit = GOALS["throughput_vs_floor_min"]
    ok = t_o >= limit * t_f
    window = ours["pipelined"]["window"]
    rows.append(
        {
            "metric": f"pipelined, {window} in flight (calls/s)",
            "ours": _f(t_o, 0),
            "floor": _f(t_f, 0),
            "ratio": f"{t_o / t_f:.0%}",
            "goal": f">= {limit:.0%} of floor",
            "verdict": "PASS" if ok else "FAIL",
            "reference": _f(REFERENCE["throughput_calls_per_s"], 0) + " (4 thr)",
        }
    )
    goals.append(
        {
            "goal": f"pipelined throughput >= {limit:.0%} of floor",
            "ours_calls_per_s": t_o,
            "floor_calls_per_s": t_f,
            "limit_calls_per_s": limit * t_f,
            "pass": ok,
        }
    )

    lat_row("echo 1 KiB p50 (ms)", ours["echo_1kib"]["p50_ms"], floor["echo_1kib"]["p50_ms"], None)
    lat_row(
        "echo 1 MiB p50 (ms)",
        ours["echo_1mib"]["p50_ms"],
        floor["echo_1mib"]["p50_ms"],
        REFERENCE["echo_1mib_ms"],
    )

    st_o, st_f = start["continuum"], start["floor"]
    limit_ms = GOALS["start_to_first_call_max_ms"]
    ok = st_o["spawn_ms"] <= limit_ms
    rows.append(
        {
            "metric": "start to first call, spawn (ms)",
            "ours": _f(st_o["spawn_ms"], 1),
            "floor": _f(st_f["spawn_ms"], 1),
            "ratio": f"{st_o['spawn_ms'] / st_f['spawn_ms']:.2f}x",
            "goal": f"<= {limit_ms:.0f} ms",
            "verdict": "PASS" if ok else "FAIL",
            "reference": _f(REFERENCE["start_to_first_call_ms"], 0),
        }
    )
    goals.append(
        {
            "goal": f"spawn to first call <= {limit_ms:.0f} ms",
            "ours_ms": st_o["spawn_ms"],
            "floor_ms": st_f["spawn_ms"],
            "limit_ms": limit_ms,
            "pass": ok,
        }
    )
    rows.append(
        {
            "metric": "  from process creation (ms, +-10)",
            "ours": _f(st_o["since_exec_ms"], 0),
            "floor": _f(st_f["since_exec_ms"], 0),
            "ratio": f"{st_o['since_exec_ms'] / st_f['since_exec_ms']:.2f}x",
        }
    )
    for key, label in (
        ("code_ms", "  from first line of code (ms)"),
        ("import_ms", "    import"),
        ("connect_ms", "    connect (+SUBACK for floor)"),
        ("resolve_ms", "    resolve alias (gateway)"),
        ("call_ms", "    first call"),
    ):
        rows.append(
            {
                "metric": label,
                "ours": _f(st_o[key], 1),
                "floor": _f(st_f[key], 1),
                "ratio": f"{st_o[key] / st_f[key]:.2f}x" if st_f[key] else "",
            }
        )
    rows.append(
        {"metric": "  bare python -c, spawn (ms)", "ours": _f(start["python_only"]["spawn_ms"], 1)}
    )
    return {"rows": rows, "goals": goals}


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import paho.mqtt

    from continuum._devbroker import find_mosquitto

    mosq = find_mosquitto()
    version = ""
    if mosq:
        try:
            version = subprocess.run(
                [mosq, "-h"], capture_output=True, text=True, timeout=5
            ).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    from importlib.metadata import version as pkg_version

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "cbor2": pkg_version("cbor2"),
        "mosquitto": version,
        "qos": 1,
        "args": {k: v for k, v in vars(args).items() if k != "json_path"},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = _meta(args)
    t0 = time.monotonic()
    with Services(keep_logs=args.keep_logs) as svc:
        floor = measure_floor(svc, args)
        ours = measure_continuum(svc, args)
        start = measure_startup(svc, args)
    meta["seconds"] = round(time.monotonic() - t0, 1)
    report = build_report(floor, ours, start)
    return {
        "meta": meta,
        "floor": floor,
        "continuum": ours,
        "start_to_first_call": start,
        "reference_dataclay": REFERENCE,
        "goals": report["goals"],
        "table": report["rows"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_quick(args)
    if (
        min(
            args.calls,
            args.pipelined_calls,
            args.window,
            args.echo_calls,
            args.big_calls,
            args.start_runs,
        )
        < 1
    ):
        build_parser().error("counts and --window must be at least 1")
    try:
        with terminate_as_interrupt():
            result = run(args)
    except KeyboardInterrupt:
        log("interrupted; every process stopped")
        return 130
    print(format_table(result["table"]))
    failed = [g["goal"] for g in result["goals"] if not g["pass"]]
    print(
        f"\ngoals: {len(result['goals']) - len(failed)}/{len(result['goals'])} pass"
        + (f"; missed: {'; '.join(failed)}" if failed else "")
    )
    path = Path(args.json_path)
    if not path.is_absolute():
        path = REPO / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"figures written to {path} ({result['meta']['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
