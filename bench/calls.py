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
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import _common as common
from ._floor import CHILD_CONTINUUM, CHILD_RAW, RawRequester, Services, startup_once
from ._timing import interleaved_pipelined, interleaved_sequential, median, summarize

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
    p = common.parser(
        "calls",
        "Measure continuum call latency, pipelined throughput, 1 KiB / 1 MiB echo "
        "round trips and process start to first call, each beside the bare MQTT "
        "request/response floor through the same mosquitto. Starts and stops its "
        "own broker, gateway, cloud node and bare responder.",
        quick="a few hundred calls of each kind (under 30 s; for tests); overrides the counts",
    )
    common.options(
        p,
        """
        calls            5000   sequential calls
        pipelined-calls  20000  calls in the pipelined throughput run
        window           64     calls outstanding when pipelined
        trials           5      pipelined runs per kind, alternating; the median is reported
        warmup           300    warm-up calls before each series
        echo-calls       1000   1 KiB echo round trips
        big-calls        100    1 MiB echo round trips
        start-runs       7      fresh processes for start to first call; the median is reported
        keep-logs        -      keep the service logs (their folder is printed)
        """,
    )
    return p


def _apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.calls, args.pipelined_calls, args.warmup, args.trials = 300, 1500, 50, 3
        args.echo_calls, args.big_calls, args.start_runs = 100, 10, 3


# -- measurements -------------------------------------------------------------------------
def _echo_check(call: Any, data: bytes) -> Any:
    def run() -> None:
        got = call(data)
        if len(got) != len(data):
            raise RuntimeError(f"echo returned {len(got)} bytes, sent {len(data)}")

    return run


def measure_calls(svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    """Floor, lite floor and continuum side by side, interleaved in blocks/trials."""
    import continuum_mqtt

    floor = RawRequester(svc.url, svc.raw_topic)
    lite = RawRequester(svc.url, svc.raw_topic, lite=True)
    out: dict[str, Any] = {"floor": {}, "floor_lite": {}, "continuum": {}}
    try:
        with continuum_mqtt.Client(svc.url) as client:
            obj = client.stub(CLASS).create(start=0, alias=ALIAS)
            add, echo = obj.add, obj.echo
            small = b"x" * 16

            common.log(f"sequential: {args.calls} round trips each (16 B bare, Counter.add(1))")
            seq = interleaved_sequential(
                {
                    "floor": lambda: floor.call(small),
                    "floor_lite": lambda: lite.call(small),
                    "continuum": lambda: add(1),
                },
                args.calls,
                args.warmup,
            )
            for name, samples in seq.items():
                out[name]["sequential"] = summarize(samples)

            common.log(
                f"pipelined: {args.pipelined_calls} calls each, {args.window} in flight, "
                f"{args.trials} alternating trials"
            )
            before = add(0)
            pipe = interleaved_pipelined(
                {
                    "floor": lambda: floor.request(small),
                    "floor_lite": lambda: lite.request(small),
                    "continuum": lambda: add.future(1),
                },
                args.pipelined_calls,
                args.window,
                args.trials,
            )
            moved = add(0) - before
            want = pipe["continuum"]["calls_per_trial"] * args.trials
            if moved != want:
                raise RuntimeError(f"the counter moved by {moved}, not {want}: calls were lost")
            for name, figures in pipe.items():
                out[name]["pipelined"] = figures

            for label, size, n in (
                ("echo_1kib", 1024, args.echo_calls),
                ("echo_1mib", 1 << 20, args.big_calls),
            ):
                data = os.urandom(size)
                common.log(f"echo {size} B: {n} round trips each (bare, Counter.echo)")
                seq = interleaved_sequential(
                    {
                        "floor": _echo_check(floor.call, data),
                        "continuum": _echo_check(echo, data),
                    },
                    n,
                    max(2, n // 10),
                    block=max(1, n // 5),
                )
                for name, samples in seq.items():
                    out[name][label] = summarize(samples)
    finally:
        floor.close()
        lite.close()
    return out


def measure_startup(svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    n = args.start_runs
    common.log(f"start to first call: {n} fresh processes each (bare paho, continuum), alternating")
    # One throw-away run each, so that both see warm file caches and .pyc files.
    startup_once(CHILD_RAW, [svc.url, svc.raw_topic])
    startup_once(CHILD_CONTINUUM, [svc.url, ALIAS])
    floor: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    for _ in range(n):
        floor.append(startup_once(CHILD_RAW, [svc.url, svc.raw_topic]))
        ours.append(startup_once(CHILD_CONTINUUM, [svc.url, ALIAS]))
    return {
        "continuum": _medians(ours),
        "floor": _medians(floor),
        "python_only": _python_only(n),
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = list(runs[0])
    out: dict[str, Any] = {k: median([r[k] for r in runs]) for k in keys}
    out["runs"] = len(runs)
    out["spawn_ms_all"] = [round(r["spawn_ms"], 1) for r in runs]
    return out


def _python_only(n: int) -> dict[str, float]:
    """Spawn to the first line of code of an empty ``python -c``: the interpreter's share."""
    vals = []
    for _ in range(n):
        t = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            capture_output=True,
            check=True,
            cwd=common.REPO,
        )
        vals.append((float(proc.stdout) - t) * 1000.0)
    return {"spawn_ms": median(vals)}


# -- the report ----------------------------------------------------------------------------
COLUMNS = common.columns(
    "metric< | ours:continuum> | floor> | ratio> | goal< | verdict:< | lite:floor-lite> | "
    "reference:dataClay>"
)


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def build_report(calls: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    ours, floor, lite = calls["continuum"], calls["floor"], calls["floor_lite"]
    rows: list[dict[str, Any]] = []
    goals: list[dict[str, Any]] = []

    def goal(text: str, ok: bool, **figures: float) -> None:
        goals.append({"goal": text, **figures, "pass": ok})

    def lat_row(metric: str, key: str, q: str, ref: float | None = None) -> dict[str, Any]:
        o, f = ours[key][q], floor[key][q]
        row: dict[str, Any] = {
            "metric": metric,
            "ours": _f(o),
            "floor": _f(f),
            "ratio": f"{o / f:.2f}x",
            "lite": _f(lite[key][q]) if key in lite else "",
            "reference": _f(ref, 1) if ref is not None else "",
        }
        rows.append(row)
        return row

    row = lat_row("call p50 (ms)", "sequential", "p50_ms", REFERENCE["call_p50_ms"])
    o, f = ours["sequential"]["p50_ms"], floor["sequential"]["p50_ms"]
    limit = GOALS["p50_vs_floor_max"]
    ok = o <= limit * f
    row.update(goal=f"<= {limit}x floor", verdict="PASS" if ok else "FAIL")
    goal(f"call p50 <= {limit}x floor p50", ok, ours_ms=o, floor_ms=f, limit_ms=limit * f)
    lat_row("call p90 (ms)", "sequential", "p90_ms")
    lat_row("call p99 (ms)", "sequential", "p99_ms", REFERENCE["call_p99_ms"])

    t_o, t_f = ours["pipelined"]["calls_per_s"], floor["pipelined"]["calls_per_s"]
    limit = GOALS["throughput_vs_floor_min"]
    ok = t_o >= limit * t_f
    rows.append(
        {
            "metric": f"pipelined, {ours['pipelined']['window']} in flight (calls/s)",
            "ours": _f(t_o, 0),
            "floor": _f(t_f, 0),
            "ratio": f"{t_o / t_f:.0%}",
            "goal": f">= {limit:.0%} of floor",
            "verdict": "PASS" if ok else "FAIL",
            "lite": _f(lite["pipelined"]["calls_per_s"], 0),
            "reference": _f(REFERENCE["throughput_calls_per_s"], 0) + " (4 thr)",
        }
    )
    rows.append(
        {
            "metric": "  trials min-max (calls/s)",
            "ours": "{:.0f}-{:.0f}".format(
                ours["pipelined"]["min_calls_per_s"], ours["pipelined"]["max_calls_per_s"]
            ),
            "floor": "{:.0f}-{:.0f}".format(
                floor["pipelined"]["min_calls_per_s"], floor["pipelined"]["max_calls_per_s"]
            ),
            "lite": "{:.0f}-{:.0f}".format(
                lite["pipelined"]["min_calls_per_s"], lite["pipelined"]["max_calls_per_s"]
            ),
        }
    )
    goal(
        f"pipelined throughput >= {limit:.0%} of floor",
        ok,
        ours_calls_per_s=t_o,
        floor_calls_per_s=t_f,
        limit_calls_per_s=limit * t_f,
    )

    lat_row("echo 1 KiB p50 (ms)", "echo_1kib", "p50_ms")
    lat_row("echo 1 MiB p50 (ms)", "echo_1mib", "p50_ms", REFERENCE["echo_1mib_ms"])

    st_o, st_f = start["continuum"], start["floor"]
    limit_ms = GOALS["start_to_first_call_max_ms"]
    ok = st_o["spawn_ms"] <= limit_ms
    rows.append(
        {
            "metric": "start to first call, from spawn (ms)",
            "ours": _f(st_o["spawn_ms"], 1),
            "floor": _f(st_f["spawn_ms"], 1),
            "ratio": f"{st_o['spawn_ms'] / st_f['spawn_ms']:.2f}x",
            "goal": f"<= {limit_ms:.0f} ms",
            "verdict": "PASS" if ok else "FAIL",
            "reference": _f(REFERENCE["start_to_first_call_ms"], 0),
        }
    )
    goal(
        f"spawn to first call <= {limit_ms:.0f} ms",
        ok,
        ours_ms=st_o["spawn_ms"],
        floor_ms=st_f["spawn_ms"],
        limit_ms=limit_ms,
    )
    for key, label, digits in (
        ("since_exec_ms", "  from process creation (ms, +-10)", 0),
        ("code_ms", "  from first line of code (ms)", 1),
        ("import_ms", "    import", 1),
        ("connect_ms", "    connect (floor: +SUBACK)", 1),
        ("resolve_ms", "    resolve alias (gateway)", 1),
        ("call_ms", "    first call", 1),
    ):
        rows.append(
            {
                "metric": label,
                "ours": _f(st_o[key], digits),
                "floor": _f(st_f[key], digits),
                "ratio": f"{st_o[key] / st_f[key]:.2f}x" if st_f[key] else "",
            }
        )
    rows.append(
        {
            "metric": "  empty python -c, from spawn (ms)",
            "ours": _f(start["python_only"]["spawn_ms"], 1),
            "floor": _f(start["python_only"]["spawn_ms"], 1),
        }
    )
    return {"rows": rows, "goals": goals}


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    import paho.mqtt

    return {
        **common.machine(args),
        "paho_mqtt": paho.mqtt.__version__,
        "cbor2": version("cbor2"),
        "qos": 1,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = _meta(args)
    t0 = time.monotonic()
    with Services(keep_logs=args.keep_logs) as svc:
        calls = measure_calls(svc, args)
        start = measure_startup(svc, args)
    meta["seconds"] = round(time.monotonic() - t0, 1)
    report = build_report(calls, start)
    return {
        "meta": meta,
        "floor": calls["floor"],
        "floor_lite": calls["floor_lite"],
        "continuum": calls["continuum"],
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
            args.trials,
        )
        < 1
    ):
        build_parser().error("counts and --window must be at least 1")
    result = common.run_or_interrupted(run, args, COLUMNS)
    if result is None:
        return 130
    failed = [g["goal"] for g in result["goals"] if not g["pass"]]
    print(
        f"\ngoals: {len(result['goals']) - len(failed)}/{len(result['goals'])} pass"
        + (f"; missed: {'; '.join(failed)}" if failed else "")
    )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
