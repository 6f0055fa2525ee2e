"""Chaos run: a fleet streams and clients call while the broker is restarted,
a node is SIGKILLed and the gateway is restarted.

    python -m bench.chaos [--devices 10] [--rate 200] [--clients 4]

Everything runs as real processes on this machine: mosquitto (with persistence,
so sessions survive its restart), a gateway, two durable cloud nodes, firmware-sim
streaming to per-device SampleSink objects bound to the devices' metrics, and
client threads incrementing a replicated Counter. Reports calls attempted /
succeeded / failed with a clear error / hung (must be 0), samples lost (must be
0), acknowledged mutations lost (must be 0) and the time to recover from each
fault. Prints a table and writes JSON (reports/bench-chaos.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import continuum
from continuum._devbroker import LocalBroker

REPO = Path(__file__).resolve().parent.parent
COUNTER = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = LocalBroker(persistence_dir=str(tmp / "mosquitto"))
        (tmp / "mosquitto").mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'firmware-sim'}"}

    @property
    def url(self) -> str:
        return self.broker.url

    def spawn(self, name: str, args: list[str]) -> None:
        with open(self.tmp / f"{name}.log", "ab") as fh:
            self.procs[name] = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )

    def gateway(self) -> None:
        self.spawn(
            "gateway", ["-m", "gateway", "--broker", self.url, "--db", str(self.tmp / "dir.db")]
        )

    def node(self, nid: str) -> None:
        self.spawn(
            nid,
            ["-m", "cloudnode", "--broker", self.url, "--id", nid, "--state-dir", str(self.tmp / nid),
             "--module", "examples.counter", "--module", "examples.sink"],
        )  # fmt: skip

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(15)

    def close(self) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.kill(name)
        self.broker.stop()


def wait_until(pred: Any, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except continuum.ContinuumError:
            pass
        time.sleep(step)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--devices", type=int, default=10, help="simulated boards (default: %(default)s)"
    )
    ap.add_argument(
        "--rate", type=int, default=200, help="samples/s, whole fleet (default: %(default)s)"
    )
    ap.add_argument(
        "--clients", type=int, default=4, help="client threads calling (default: %(default)s)"
    )
    ap.add_argument(
        "--timeout", type=float, default=20.0, help="call deadline, s (default: %(default)s)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the run's folder (logs) and say where"
    )
    ap.add_argument(
        "--json", default="reports/bench-chaos.json", help="JSON output (default: %(default)s)"
    )
    args = ap.parse_args(argv)

    tmpdir = tempfile.mkdtemp(prefix="continuum-chaos-")
    rig = Rig(Path(tmpdir))
    rig.broker.start()
    try:
        return run(rig, args)
    finally:
        rig.close()
        if args.keep:
            log(f"logs kept in {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)


def run(rig: Rig, args: argparse.Namespace) -> int:
    rig.gateway()
    rig.node("n1")
    rig.node("n2")
    admin = continuum.Client(rig.url, timeout=10).connect()
    wait_until(
        lambda: {n["id"] for n in admin.nodes() if n["state"] == "online"} == {"n1", "n2"}, 30
    )
    admin.stub(COUNTER).create(node="n1", replicas=1, alias="chaos-counter")
    devices = [f"sim-{i:04d}" for i in range(args.devices)]
    for dev in devices:
        sink = admin.stub(SINK).create(alias=f"sink-{dev}")
        admin.bind_metrics(sink, dev, "ingest")
    log(f"deployment up on {rig.url}: counter on n1 (replica n2), {len(devices)} sinks")

    duration = 40.0
    samples_per_device = int(args.rate * duration / args.devices)
    rig.spawn(
        "firmware-sim",
        ["-m", "firmware_sim", "run", "--broker", rig.url, "--devices", str(args.devices),
         "--rate", str(args.rate), "--samples", str(samples_per_device), "--quiet",
         "--json", str(rig.tmp / "sim.json")],
    )  # fmt: skip

    outcomes: Tally[str] = Tally()
    acked = [0]
    lock = threading.Lock()
    stop = threading.Event()
    last_ok = [time.monotonic()]

    def caller() -> None:
        with continuum.Client(rig.url, timeout=args.timeout) as c:
            o = c.get("chaos-counter")
            while not stop.is_set():
                fut = o.add.future(1)
                try:
                    fut.result(args.timeout + 10)  # past the deadline: hung
                    with lock:
                        outcomes["succeeded"] += 1
                        acked[0] += 1
                        last_ok[0] = time.monotonic()
                except continuum.ContinuumError as exc:
                    with lock:
                        outcomes[f"failed: {exc.code}"] += 1
                    time.sleep(0.05)
                except TimeoutError:
                    with lock:
                        outcomes["hung"] += 1

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()

    def recovery(label: str, t0: float) -> float:
        ok = wait_until(lambda: last_ok[0] > t0 + 0.001, 60, 0.01)
        seconds = last_ok[0] - t0 if ok else float("inf")
        log(f"{label}: calls succeed again after {seconds:.2f} s")
        return seconds

    faults: list[dict[str, Any]] = []
    time.sleep(5)
    log("fault 1: broker restart")
    t0 = time.monotonic()
    rig.broker.stop()
    time.sleep(1.0)
    rig.broker.start()
    faults.append({"fault": "broker restarted (1 s down)", "recovery_s": recovery("broker", t0)})
    time.sleep(5)
    log("fault 2: SIGKILL node n1 (the counter's primary); restart it 3 s later")
    t0 = time.monotonic()
    rig.kill("n1", signal.SIGKILL)
    faults.append({"fault": "primary node SIGKILLed", "recovery_s": recovery("node", t0)})
    time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
    rig.node("n1")
    time.sleep(5)
    log("fault 3: gateway restart")
    t0 = time.monotonic()
    rig.kill("gateway")
    rig.gateway()
    gw_ok = wait_until(lambda: admin.get("chaos-counter") is not None, 30, 0.05)
    faults.append(
        {
            "fault": "gateway restarted",
            "recovery_s": (time.monotonic() - t0) if gw_ok else float("inf"),
        }
    )
    log(f"gateway: directory answers again after {faults[-1]['recovery_s']:.2f} s")

    sim = rig.procs["firmware-sim"]
    sim.wait(duration + 120)
    stop.set()
    for t in threads:
        t.join(args.timeout + 15)

    expected = {dev: samples_per_device for dev in devices}

    def all_in() -> bool:
        return all(len(admin.get(f"sink-{d}").received()["seqs"]) >= n for d, n in expected.items())

    wait_until(all_in, 60, 0.5)
    lost = dups = disorder = 0
    for dev, n in expected.items():
        got = admin.get(f"sink-{dev}").received()
        seqs = got["seqs"]
        missing = sorted(set(range(1, n + 1)) - set(seqs))
        if missing:
            node = admin._gateway("resolve", ref=f"sink-{dev}")["node"]
            log(f"{dev} (on {node}) missed {len(missing)} samples: {missing[0]}..{missing[-1]}")
        lost += len(missing)
        dups += got["duplicates"]
        disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    final = admin.get("chaos-counter").get()
    mutations_lost = max(0, acked[0] - final)
    admin.close()

    attempted = sum(outcomes.values())
    report = {
        "calls": {"attempted": attempted, **dict(outcomes)},
        "samples": {
            "expected": sum(expected.values()),
            "lost": lost,
            "redelivered_and_dropped": dups,
            "out_of_order": disorder,
        },
        "mutations": {"acknowledged": acked[0], "final_value": final, "lost": mutations_lost},
        "faults": faults,
        "args": vars(args),
    }
    print("\nchaos run: calls")
    for k in [
        "attempted",
        "succeeded",
        *sorted(k for k in outcomes if k.startswith("failed")),
        "hung",
    ]:
        print(f"  {k:<32}{report['calls'].get(k, 0):>8}")
    print("samples")
    for k, v in report["samples"].items():
        print(f"  {k:<32}{v:>8}")
    print("acknowledged mutations")
    for k, v in report["mutations"].items():
        print(f"  {k:<32}{v:>8}")
    print("recovery")
    for f in faults:
        print(f"  {f['fault']:<32}{f['recovery_s']:>7.2f} s")
    verdict = outcomes.get("hung", 0) == 0 and lost == 0 and mutations_lost == 0
    print(
        f"\n{'PASS' if verdict else 'FAIL'}: hung 0, samples lost 0, acknowledged mutations lost 0"
    )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {out}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
