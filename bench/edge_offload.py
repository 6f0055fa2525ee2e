"""Edge inference and dynamic offloading (docs/protocol.md §24): where a
forecast runs and what it costs.

    python -m bench.edge_offload            # about 2 minutes
    python -m bench.edge_offload --quick    # fewer calls (about 40 s)

With a broker, a gateway and one node (the forecaster trained on
node_3_utilisation.csv), it measures:

* ``remote``: ``predict(window)`` board -> node -> board on loopback, and
  ``local``: the same forecast by ``continuum_mqtt.EdgeLSTM`` (pure Python)
  from the node's ``edge_export()``; and the export's size and fetch time;
* ``local forecast cost``: RSS and CPU of an edge-only process (no torch, no
  numpy) before and after loading the export, and CPU per forecast;
* the policy (``continuum_mqtt.Offloader``) over the emulated WAN relay
  (bench/_wanrelay.py, 50 ms each way, 1 % loss) with a generous and a tight
  deadline; then over a dead link: a black hole (the relay holds every byte:
  replies never come; the client still believes it is connected) and a cut
  (the relay killed: the client sees the link down).

Each policy row: calls, how many ran remote / local, the reasons, and the
latency of the answers (p50, p99, max). The table goes to stdout, progress to
stderr, the figures to reports/bench-edge-offload.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import continuum_mqtt
from continuum_mqtt import EdgeLSTM, Offloader
from continuum_mqtt.service import encode

from ._common import REPO, columns, deployment, format_table, log, machine, options, parser
from ._common import write_json as _write_json
from ._timing import summarize

DATASET = "node_3_utilisation.csv"
COLUMNS = columns(
    "case:case< | calls> | remote> | local> | p50_ms:p50 ms> | p99_ms:p99 ms> | "
    "max_ms:max ms> | reasons<"
)

# What an edge-only process runs to measure a local forecast (stdlib + continuum_mqtt).
_EDGE_SCRIPT = """
import resource, sys, time, json
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import continuum_mqtt
from continuum_mqtt import EdgeLSTM
from continuum_mqtt.service import decode
base = rss()
blob = open(sys.argv[1], 'rb').read()
m = EdgeLSTM(decode(blob))
del blob
loaded = rss()
window = json.loads(sys.argv[2])
n = int(sys.argv[3])
c0, t0 = time.process_time(), time.perf_counter()
for _ in range(n):
    m.predict(window)
cpu, wall = time.process_time() - c0, time.perf_counter() - t0
heavy = [x for x in ('torch', 'numpy') if x in sys.modules]
print(json.dumps({'rss_base_mb': base, 'rss_loaded_mb': loaded, 'rss_after_mb': rss(),
    'cpu_ms_per_forecast': 1000 * cpu / n, 'wall_ms_per_forecast': 1000 * wall / n,
    'heavy_modules': heavy}))
"""


class Relay:
    """bench/_wanrelay.py as a child: ``port``, ``set(delay_ms, loss)``, ``stop()``."""

    def __init__(self, target_port: int, delay_ms: float, loss: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._wanrelay", "--listen", "127.0.0.1:0",
             "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms),
             "--loss", str(loss), "--seed", "1"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def set(self, delay_ms: float, loss: float) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"set {delay_ms} {loss}\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _policy_row(
    case: str, off: Offloader, method: Any, window: Any, n: int, gap: float
) -> dict[str, Any]:
    """``n`` forecasts ``gap`` seconds apart through ``off``; counts and latencies."""
    before = off.stats()
    lat: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            off.call(method, window)
        except continuum_mqtt.ContinuumError as exc:
            log(f"{case}: {exc.code}")
        lat.append(1000 * (time.perf_counter() - t0))
        time.sleep(gap)
    after = off.stats()
    reasons = {
        k: v - before["reasons"].get(k, 0)
        for k, v in after["reasons"].items()
        if v - before["reasons"].get(k, 0)
    }
    s = summarize(lat)
    return {
        "case": case,
        "calls": n,
        "remote": after["remote"] - before["remote"],
        "local": after["local"] - before["local"],
        "p50_ms": round(s["p50_ms"], 2),
        "p99_ms": round(s["p99_ms"], 2),
        "max_ms": round(s["max_ms"], 1),
        "reasons": ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
        "rtt_estimate_ms": None if after["rtt_s"] is None else round(1000 * after["rtt_s"], 1),
    }


def run(args: Any) -> dict[str, Any]:
    n = 30 if args.quick else args.calls
    report: dict[str, Any] = {"machine": machine(args)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, deployment(tmp=Path(tmp)) as dep:
        dep.start_gateway()
        dep.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
        port = int(dep.url.rsplit(":", 1)[1])
        with dep.client(timeout=120) as client:
            f = client.stub("continuum_node.forecast.Forecaster").create(device="cpu")
            f.load_csv(DATASET)
            log(f"training ({args.epochs} epochs)")
            f.train(epochs=args.epochs)
            t0 = time.perf_counter()
            export = f.edge_export()
            fetch_ms = 1000 * (time.perf_counter() - t0)
            blob = encode(export)
            model = EdgeLSTM(export)
            window = f.tail(32)
            report["export"] = {"bytes": len(blob), "fetch_ms": round(fetch_ms, 1)}
            # remote vs local on loopback
            remote_ms, local_ms, diff = [], [], 0.0
            for _ in range(n):
                t0 = time.perf_counter()
                r = f.predict(window)
                remote_ms.append(1000 * (time.perf_counter() - t0))
                t0 = time.perf_counter()
                v = model.predict(window)
                local_ms.append(1000 * (time.perf_counter() - t0))
                diff = max(diff, *(abs(a - b) for a, b in zip(r, v, strict=True)))
            report["latency"] = {
                "remote": summarize(remote_ms),
                "local": summarize(local_ms),
                "max_abs_diff": diff,
            }
            log(f"remote p50 {report['latency']['remote']['p50_ms']:.2f} ms, "
                f"local p50 {report['latency']['local']['p50_ms']:.2f} ms")  # fmt: skip
            # RSS and CPU of a local forecast, in an edge-only process
            path = os.path.join(tmp, "export.cbor")
            Path(path).write_bytes(blob)
            out = subprocess.run(
                [sys.executable, "-c", _EDGE_SCRIPT, path, json.dumps(window), str(n * 10)],
                cwd=REPO, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            report["edge_process"] = json.loads(out.stdout) if out.returncode == 0 else out.stderr
            oid = f._id
        # the policy over the emulated WAN, then a dead link
        relay = Relay(port, args.delay_ms, args.loss)
        try:
            with continuum_mqtt.Client(
                f"mqtt://127.0.0.1:{relay.port}", root=dep.root, timeout=30
            ) as wan:
                g = wan.get(oid)
                g.predict(window)  # location cached, connection warm
                for deadline in (args.deadline, args.tight):
                    off = Offloader(model.predict, deadline=deadline, probe_interval=2.0)
                    case = (
                        f"WAN {args.delay_ms:g} ms, {args.loss:.0%} loss, deadline {deadline:g} s"
                    )
                    log(case)
                    rows.append(_policy_row(case, off, g.predict, window, n, args.gap))
                off = Offloader(model.predict, deadline=args.deadline, cooldown=2.0)
                off.call(g.predict, window)  # measured once while the link is fine
                relay.set(600_000, 0.0)  # a black hole: nothing comes back
                case = f"dead link (black hole), deadline {args.deadline:g} s"
                log(case)
                rows.append(_policy_row(case, off, g.predict, window, max(10, n // 3), args.gap))
                relay.stop()  # cut: the connection is reset
                time.sleep(0.5)
                case = "dead link (cut: connection lost)"
                log(case)
                rows.append(_policy_row(case, off, g.predict, window, n, args.gap))
        finally:
            relay.stop()
    report["policy"] = rows
    report["table"] = rows
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("edge_offload", __doc__ or "", quick="30 calls per case, 5 epochs")
    options(
        p,
        """
        calls     100    forecasts per case
        epochs    20     training epochs of the forecaster
        delay-ms  50.0   one-way delay of the emulated WAN
        loss      0.01   segment loss of the emulated WAN
        deadline  1.0    the generous deadline, seconds
        tight     0.12   the tight deadline (below the WAN's round trip times the margin)
        gap       0.05   seconds between forecasts
        """,
    )
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 5
    report = run(args)
    lat = report["latency"]
    print(
        f"export {report['export']['bytes']} bytes, fetched in {report['export']['fetch_ms']} ms\n"
        f"forecast latency on loopback: remote p50 {lat['remote']['p50_ms']:.2f} ms "
        f"(p99 {lat['remote']['p99_ms']:.2f}), local p50 {lat['local']['p50_ms']:.2f} ms "
        f"(p99 {lat['local']['p99_ms']:.2f}); max |remote - local| {lat['max_abs_diff']:.2g}\n"
        f"edge process: {report['edge_process']}\n"
    )
    print(format_table(report["table"], COLUMNS))
    _write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
