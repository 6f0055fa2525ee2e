"""Fleet load: how many simulated boards one firmware-sim process drives through
one mosquitto, with every sample counted at a consumer.

    python -m bench.fleet --devices 10000 --rate 10000 --duration 60
    python -m bench.fleet --quick              # 10 s headline, short steps
    python -m bench.fleet --steps none         # the headline run only

Each run starts its own mosquitto (LocalBroker: TCP_NODELAY, no queue cap), a
consumer process that subscribes to ``<root>/dev/+/metrics`` with QoS 1 and
marks every (device, seq) it receives, and ``firmware-sim run`` as a
subprocess. After the simulator exits, the consumer is told what every device
published (the simulator's ``last_seq``) and waits until it has all of it or
no message came for ``--settle`` seconds; loss is every (device, seq) published
and never received, duplicates are counted apart. CPU of the three processes is
sampled every second (psutil) over the publishing window.

First the headline run (``--devices``, ``--rate``, ``--duration``), then the
rate is stepped up (``--steps``, ``--step-duration`` each) until a step
saturates (achieved < 97 % of the target, loss, or the consumer more than
``--max-lag`` seconds behind), plus one step with ``--engine paho`` at the
headline rate for the cost of paho's publish path. The table goes to stdout,
the figures to ``reports/bench-fleet.json``.

The consumer (internal): ``python -m bench.fleet consumer --broker URL --root ROOT``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from . import _common as common

DEFAULT_STEPS = "5000,10000,15000,20000,25000,30000,40000,50000"


# -- the consumer process -----------------------------------------------------------------


def consumer_main(broker: str, root: str) -> int:
    """Count every (device, seq) of ``<root>/dev/+/metrics``; protocol on stdin/stdout:
    prints ``ready``, a stats JSON line every 0.5 s, and after a ``finish PATH
    SIM_END SETTLE`` line the final JSON (then exits)."""
    from continuum_sim._wire import Subscriber

    from continuum_mqtt.samples import decode_sample
    from continuum_mqtt.service import BrokerURL

    url = BrokerURL.parse(broker)
    seen: dict[str, bytearray] = {}
    counts = {"received": 0, "unique": 0, "duplicates": 0, "bad": 0, "mismatch": 0}
    first_last = [0.0, 0.0]
    prefix = f"{root}/dev/".encode()

    def on_message(topic: bytes, payload: bytes) -> None:
        counts["received"] += 1
        try:
            sample = decode_sample(payload)
            dev, seq = sample["dev"], sample["seq"]
        except Exception:
            counts["bad"] += 1
            return
        if topic != prefix + dev.encode() + b"/metrics":
            counts["mismatch"] += 1
        arr = seen.get(dev)
        if arr is None:
            arr = seen[dev] = bytearray(max(64, seq + 1))
        elif seq >= len(arr):
            arr.extend(bytes(max(seq + 1 - len(arr), len(arr))))
        if arr[seq]:
            counts["duplicates"] += 1
        else:
            arr[seq] = 1
            counts["unique"] += 1
            first_last[1] = time.time()
            if not first_last[0]:
                first_last[0] = first_last[1]

    sub = Subscriber(url.host, url.port, f"fleet-consumer-{uuid.uuid4().hex[:8]}", on_message)
    sub.connect(f"{root}/dev/+/metrics", qos=1)
    print("ready", flush=True)
    command: list[str] = []

    def read_stdin() -> None:
        line = sys.stdin.readline()
        command.extend(line.split())

    threading.Thread(target=read_stdin, daemon=True).start()
    next_stats = time.monotonic() + 0.5
    while not command:
        sub.read(0.05)
        if time.monotonic() >= next_stats:
            print(json.dumps({"t": time.time(), **counts}), flush=True)
            next_stats += 0.5
    _, path, sim_end, settle = command[:4]
    summary = json.loads(Path(path).read_text())
    last: dict[str, int] = summary["last_seq"]
    start = int(summary.get("seq_start", 1))
    expected = sum(max(0, v - start + 1) for v in last.values())
    idle_since = time.monotonic()
    while counts["unique"] < expected and time.monotonic() - idle_since < float(settle):
        if sub.read(0.1):
            idle_since = time.monotonic()
    sub.close()
    lost = 0
    lost_devices = 0
    for dev, hi in last.items():
        arr = seen.get(dev, bytearray())
        got = arr[start : hi + 1].count(1) if hi >= start else 0
        if got < hi - start + 1:
            lost += hi - start + 1 - got
            lost_devices += 1
    unexpected = sum(arr.count(1) for dev, arr in seen.items() if dev not in last) + sum(
        arr[last[d] + 1 :].count(1) for d, arr in seen.items() if d in last
    )
    t_first, t_last = first_last
    result = {
        **counts,
        "expected": expected,
        "lost": lost,
        "lost_devices": lost_devices,
        "unexpected": unexpected,
        "devices_seen": len(seen),
        "first_wall": t_first,
        "last_wall": t_last,
        "lag_after_sim_end_s": max(0.0, t_last - float(sim_end)) if t_last else None,
        "rate": (counts["unique"] - 1) / (t_last - t_first) if t_last > t_first else 0.0,
    }
    print("final " + json.dumps(result), flush=True)
    return 0


# -- one run -------------------------------------------------------------------------------


class _CpuSampler(threading.Thread):
    """CPU percent (of one core) and RSS of some processes, once a second."""

    def __init__(self, procs: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def add(self, name: str, pid: int) -> None:
        self.procs[name] = psutil.Process(pid)

    def run(self) -> None:
        prev: dict[str, float] = {}
        t_prev = time.monotonic()
        while not self.halt.wait(1.0):
            now = time.monotonic()
            row: dict[str, Any] = {"t": time.time()}
            for name, proc in list(self.procs.items()):
                try:
                    ct = proc.cpu_times()
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total = ct.user + ct.system
                if name in prev:
                    row[name] = 100.0 * (total - prev[name]) / (now - t_prev)
                row[f"{name}_rss_mb"] = rss / 2**20
                prev[name] = total
            row["machine"] = psutil.cpu_percent() * psutil.cpu_count()
            t_prev = now
            self.samples.append(row)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [r for r in self.samples if t0 <= r["t"] <= t1]
        out: dict[str, Any] = {}
        for name in [*self.procs, "machine"]:
            vals = [r[name] for r in rows if name in r]
            if vals:
                out[f"cpu_{name}_pct"] = round(sum(vals) / len(vals), 1)
                out[f"cpu_{name}_peak_pct"] = round(max(vals), 1)
        for name in self.procs:
            vals = [r[f"{name}_rss_mb"] for r in self.samples if f"{name}_rss_mb" in r]
            if vals:
                out[f"rss_{name}_peak_mb"] = round(max(vals), 1)
        return out


def run_once(
    devices: int,
    rate: float,
    duration: float,
    *,
    connections: int,
    qos: int,
    engine: str = "wire",
    source: str = "synthetic",
    window: int = 1000,
    settle: float = 10.0,
    label: str = "",
) -> dict[str, Any]:
    root = f"bench-{uuid.uuid4().hex[:6]}/continuum/v1"
    result: dict[str, Any] = {
        "label": label or f"{rate:.0f}/s",
        "devices": devices,
        "rate_target": rate,
        "duration_s": duration,
        "connections": connections,
        "window": window,
        "qos": qos,
        "engine": engine,
        "source": source,
    }
    result["machine_busy_before_pct"] = round(psutil.cpu_percent(0.5) * psutil.cpu_count(), 1)
    with common.deployment(root=root) as dep:
        assert dep.broker is not None and dep.broker.pid is not None
        sim_json = dep.tmp / "sim.json"
        consumer = dep.python(
            "consumer", "-m", "bench.fleet", "consumer", "--broker", dep.url, "--root", root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert consumer.stdout is not None and consumer.stdin is not None
        dep.wait_line("consumer", "ready")
        sampler = _CpuSampler({"broker": dep.broker.pid, "consumer": consumer.pid})
        sampler.start()
        args = [
            "--devices", str(devices), "--rate", str(rate), "--duration", str(duration),
            "--connections", str(connections), "--window", str(window), "--qos", str(qos),
            "--engine", engine, "--json", str(sim_json),
        ]  # fmt: skip
        if source != "synthetic":
            args += ["--source", "replay", "--dataset", source]
        sim = dep.start_firmware_sim(*args)
        sampler.add("sim", sim.pid)
        t_start = time.time()
        rc = sim.wait(duration + 120)
        t_end = time.time()
        if rc not in (0, 1) or not sim_json.exists():
            raise RuntimeError(f"firmware-sim exited with {rc}:\n{dep.log_tail('firmware-sim')}")
        s = json.loads(sim_json.read_text())
        # the consumer's own stats lines are not needed here: drop them
        consumer.stdin.write(f"finish {sim_json} {t_end} {settle}\n")
        consumer.stdin.flush()
        final: dict[str, Any] = {}
        for line in consumer.stdout:
            if line.startswith("final "):
                final = json.loads(line[6:])
                break
        consumer.wait(30)
        sampler.halt.set()
        sampler.join(3)
        # publishing window: from about 1.5 s after start (imports, fleet set-up) to the end
        active_from = t_end - s["elapsed_s"] + 1.0
        cpu = sampler.window(max(active_from, t_start), t_end)
    result.update(
        {
            "sent": s["sent"],
            "acked": s["acked"],
            "sim_rate": s["rate_achieved"],
            "sim_behind_max": s["behind_max"],
            "sim_blocked_s": s.get("blocked_s", 0.0),
            "sim_errors": s["errors"],
            "sim_cpu_us_per_sample": s["cpu_us_per_sample"],
            "received": final.get("received"),
            "unique": final.get("unique"),
            "lost": final.get("lost"),
            "duplicates": final.get("duplicates"),
            "bad": final.get("bad", 0) + final.get("mismatch", 0) + final.get("unexpected", 0),
            "consumer_rate": round(final.get("rate", 0.0), 1),
            "consumer_lag_s": final.get("lag_after_sim_end_s"),
            **cpu,
        }
    )
    lag = result["consumer_lag_s"] or 0.0
    result["lag_s"] = round(lag, 2)
    return result


def saturated(r: dict[str, Any], max_lag: float) -> list[str]:
    why = []
    if r["sim_rate"] < 0.97 * r["rate_target"]:
        why.append(f"sim reached {r['sim_rate']:.0f}/s of {r['rate_target']:.0f}/s")
    if r["lost"]:
        why.append(f"{r['lost']} samples lost")
    if (r["consumer_lag_s"] or 0.0) > max_lag:
        why.append(f"consumer {r['consumer_lag_s']:.1f} s behind at the end (broker queue)")
    return why


def bottleneck(r: dict[str, Any], cores: int) -> str:
    """What limited the run: the simulator's in-flight windows (waiting on PUBACKs),
    the machine's cores (ours or other processes'), or a single-threaded process
    near one core."""
    procs = {n: r.get(f"cpu_{n}_pct", 0.0) for n in ("sim", "broker", "consumer")}
    name, top = max(procs.items(), key=lambda kv: kv[1])
    ours = sum(procs.values())
    machine = r.get("cpu_machine_pct", ours)
    others = max(0.0, machine - ours)
    parts = (
        f"sim {procs['sim']:.0f}%, broker {procs['broker']:.0f}%, "
        f"consumer {procs['consumer']:.0f}%, other processes {others:.0f}%"
    )
    blocked = r.get("sim_blocked_s", 0.0) / max(r["duration_s"], 1e-9)
    found = []
    if machine >= 0.85 * 100 * cores:
        found.append(f"machine CPU {machine:.0f}% of {cores * 100}%")
    if top >= 90:
        found.append(f"{name} CPU {top:.0f}% of its one core")
    if blocked > 0.05 and r["qos"]:
        inflight = r["connections"] * r["window"]
        latency_ms = 1000.0 * inflight / max(r["sim_rate"], 1.0)
        found.append(
            f"the sim's in-flight windows ({r['connections']} x {r['window']} messages) were full "
            f"{blocked:.0%} of the time: PUBACKs came about {latency_ms:.0f} ms after their "
            "PUBLISH (Little's law), so the broker was queueing"
        )
    return "; ".join(found or ["no process at 90% of a core"]) + f" ({parts})"


COLUMNS = common.columns(
    "label:run< | devices> | rate_target:target/s> | sim_rate:sent/s> | consumer_rate:recv/s> | "
    "sent> | lost> | duplicates:dups> | lag_s:lag s> | cpu_sim_pct:sim %> | "
    "cpu_broker_pct:broker %> | cpu_consumer_pct:cons %> | cpu_machine_pct:machine %> | "
    "machine_busy_before_pct:busy before %> | sim_cpu_us_per_sample:sim us/msg> | verdict<"
)


def _fmt_row(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    for key in ("rate_target", "sim_rate", "consumer_rate", "sent"):
        if isinstance(out.get(key), int | float):
            out[key] = f"{out[key]:,.0f}"
    return out


def run_larger_window(
    args: argparse.Namespace,
    rates: list[float],
    stride: float,
    options: dict[str, Any],
    record: Any,
) -> dict[str, Any]:
    """Step ``rates`` (then on by ``stride``) with 4x the in-flight window until
    one saturates."""
    window = args.window * 4
    opts = {**options, "window": window}
    rates = [*rates, *(rates[-1] + stride * i for i in range(1, 5))]
    best: float | None = None
    last: dict[str, Any] = {}
    for rate in rates:
        common.log(f"step: {rate:,.0f} samples/s, window {window}, for {args.step_duration:.0f} s")
        last = record(
            run_once(
                args.devices, rate, args.step_duration, label=f"step {rate:,.0f} w{window}", **opts
            )
        )
        if last["saturated"]:
            break
        best = rate
    return {
        "window": window,
        "max_rate_ok": best,
        "saturated_at": last.get("rate_target") if last.get("saturated") else None,
        "why": last.get("saturated"),
        "bottleneck": last.get("bottleneck"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "fleet",
        "Drive N simulated boards (firmware-sim) through one mosquitto at a "
        "target aggregate rate, count every (device, seq) at a QoS 1 consumer process, "
        "and step the rate up to find where the pipeline saturates and what saturates "
        "first. Starts its own broker for every run.",
        quick="10 s headline, 5 s steps",
    )
    common.options(
        p,
        """
        devices        10000    simulated boards
        rate           10000.0  headline aggregate samples/s
        duration       60.0     headline run, seconds
        step-duration  15.0     each step, seconds
        connections    8        MQTT connections of the simulator
        window         1000     in-flight messages per connection
        max-lag        2.0      consumer lag (s) that counts as saturated
        settle         10.0     consumer wait after the sim ends, seconds
        no-paho        -        skip the --engine paho comparison
        """,
    )
    p.add_argument(
        "--steps",
        default=DEFAULT_STEPS,
        help="rates to step through after the headline run ('none': skip) (default: %(default)s)",
    )
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--source", default="synthetic", help="synthetic, node_3 or orangepi")
    sub = p.add_subparsers(dest="cmd")
    c = sub.add_parser("consumer", help="(internal) the counting consumer")
    c.add_argument("--broker", required=True)
    c.add_argument("--root", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "consumer":
        return consumer_main(args.broker, args.root)
    if args.quick:
        args.duration = min(args.duration, 10.0)
        args.step_duration = min(args.step_duration, 5.0)
    cores = os.cpu_count() or 1
    options = {
        "connections": args.connections,
        "qos": args.qos,
        "source": args.source,
        "window": args.window,
        "settle": args.settle,
    }
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "bench": "fleet",
        **common.machine(args),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }

    def record(r: dict[str, Any]) -> dict[str, Any]:
        why = saturated(r, args.max_lag)
        r["saturated"] = why
        r["bottleneck"] = bottleneck(r, cores)
        r["verdict"] = "saturated" if why else ("ok" if not r["lost"] else "LOSS")
        rows.append(r)
        common.log(
            f"{r['label']}: sent {r['sim_rate']:,.0f}/s, received {r['consumer_rate']:,.0f}/s, "
            f"lost {r['lost']}, dups {r['duplicates']}, lag {r['lag_s']} s; "
            f"CPU sim {r.get('cpu_sim_pct', 0):.0f}% broker {r.get('cpu_broker_pct', 0):.0f}% "
            f"consumer {r.get('cpu_consumer_pct', 0):.0f}%; {'; '.join(why) or 'not saturated'}"
        )
        return r

    with common.terminate_as_interrupt():
        try:
            common.log(
                f"headline: {args.devices} devices, {args.rate:,.0f} samples/s, "
                f"{args.duration:.0f} s, QoS {args.qos}, {args.connections} connections"
            )
            headline = record(
                run_once(args.devices, args.rate, args.duration, label="headline", **options)
            )
            report["headline"] = headline
            steps = [] if args.steps == "none" else [float(x) for x in args.steps.split(",")]
            first_saturated: dict[str, Any] | None = None
            larger: dict[str, Any] | None = None
            for n, rate in enumerate(steps):
                common.log(f"step: {rate:,.0f} samples/s for {args.step_duration:.0f} s")
                r = record(
                    run_once(
                        args.devices, rate, args.step_duration, label=f"step {rate:,.0f}", **options
                    )
                )
                if not r["saturated"]:
                    continue
                first_saturated = r
                if r["sim_blocked_s"] > 0.5 * args.step_duration and args.qos:
                    # The simulator mostly waited with its in-flight windows full: was the
                    # window the limit, or what is behind it? Go on with 4x the window.
                    stride = steps[n] - steps[n - 1] if n else 10000.0
                    larger = run_larger_window(args, steps[n:], stride, options, record)
                break
            if not args.no_paho:
                common.log(
                    f"paho engine: {args.rate:,.0f} samples/s for {args.step_duration:.0f} s"
                )
                record(
                    run_once(
                        args.devices,
                        args.rate,
                        args.step_duration,
                        engine="paho",
                        label="paho engine",
                        **options,
                    )
                )
            ok = [
                r
                for r in rows
                if r["label"].startswith("step")
                and r["window"] == args.window
                and not r["saturated"]
            ]
            report["steps"] = [r for r in rows if r["label"].startswith("step")]
            report["paho"] = next((r for r in rows if r["engine"] == "paho"), None)
            report["max_rate_ok"] = max((r["rate_target"] for r in ok), default=None)
            report["saturation"] = (
                {
                    "rate_target": first_saturated["rate_target"],
                    "why": first_saturated["saturated"],
                    "bottleneck": first_saturated["bottleneck"],
                    "with_larger_window": larger,
                }
                if first_saturated
                else None
            )
            report["goal"] = {
                "devices": args.devices,
                "rate": args.rate,
                "duration_s": args.duration,
                "met": headline["lost"] == 0
                and headline["sim_rate"] >= 0.97 * args.rate
                and headline["consumer_rate"] >= 0.97 * args.rate,
            }
        except KeyboardInterrupt:
            common.log("interrupted")
            return 130
        finally:
            if rows:
                report["rows"] = rows
                common.write_json(args.json, report, indent=1)
    print(common.format_table([_fmt_row(r) for r in rows], COLUMNS))
    print()
    print(f"machine: {cores} cores; every run: one mosquitto, one consumer, one firmware-sim")
    sat = report.get("saturation")
    if sat:
        print(
            f"window {args.window}: fine up to {report['max_rate_ok'] or 0:,.0f} samples/s; "
            f"saturates at {sat['rate_target']:,.0f}: {'; '.join(sat['why'])}\n"
            f"  first limit: {sat['bottleneck']}"
        )
        big = sat.get("with_larger_window")
        if big:
            print(
                f"window {big['window']}: fine up to {big['max_rate_ok'] or 0:,.0f} samples/s"
                + (
                    f"; saturates at {big['saturated_at']:,.0f}: {'; '.join(big['why'])}\n"
                    f"  first limit: {big['bottleneck']}"
                    if big["saturated_at"]
                    else ""
                )
            )
    else:
        print("no step saturated")
    print(f"headline goal met: {report['goal']['met']}  (JSON: {args.json})")
    return 0 if report["goal"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
