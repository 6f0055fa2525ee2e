"""Chaos run: a fleet streams and clients call while the broker is restarted,
a node is SIGKILLed, the gateway is restarted, a node's disk fills up, a node's
journals are torn by a crash and the gateway's directory is rolled back to an
older backup.

    python -m bench.chaos [--devices 10] [--rate 200] [--clients 4]

Everything runs as real processes on this machine: mosquitto (with persistence,
so sessions survive its restart), a gateway, two durable cloud nodes, firmware-sim
streaming to per-device SampleSink objects bound to the devices' metrics, and
client threads incrementing a replicated Counter. The nodes' state dirs are
small tmpfs mounts of their own (root only; otherwise the disk-full phase is
skipped and says so). Reports calls attempted / succeeded / failed with a clear
error / hung (must be 0), samples lost (must be 0), acknowledged mutations lost
(must be 0), objects gone that no caller deleted (must be 0) and the time to
recover from each fault. Prints a table and writes JSON (reports/bench-chaos.json).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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

from continuum_dev.testing import LocalBroker

import continuum_mqtt
from continuum_mqtt.service import DEFAULT_ROOT

from ._common import deployment, log, options, parser, write_json

COUNTER = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"
MODULES = ("examples.counter", "examples.sink")


class Rig:
    """The deployment (continuum_dev.testing: a persistent mosquitto of its own,
    the default topic root, logs in its folder) and the node state dirs' tmpfs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        persist = {"persistence_dir": str(tmp / "mosquitto")}
        self.dep = deployment(None, tmp, root=DEFAULT_ROOT, broker_options=persist)
        assert self.dep.broker is not None
        self.broker: LocalBroker = self.dep.broker
        self.db = tmp / "dir.db"
        self.mounts: list[Path] = []

    def state_dir(self, nid: str) -> Path:
        return self.tmp / nid

    def mount_state_dirs(self, nids: list[str], size_mb: int) -> bool:
        """A tmpfs of its own under each node's state dir, so that one can be filled."""
        for nid in nids:
            path = self.state_dir(nid)
            path.mkdir(exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                capture_output=True,
            )
            if done.returncode != 0:
                log(f"cannot mount a tmpfs ({done.stderr.decode().strip()}): no disk-full phase")
                return False
            self.mounts.append(path)
        return True

    def fill(self, nid: str) -> Path:
        """Fill the node's state dir up to the last byte."""
        filler = self.state_dir(nid) / "filler"
        chunk = b"\0" * (1 << 20)
        with open(filler, "wb", buffering=0) as fh:
            for size in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(chunk[:size])
        return filler

    @property
    def url(self) -> str:
        return self.dep.url

    def gateway(self) -> None:
        self.dep.start_gateway(db=self.db, wait=False)

    def gateway_cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "continuum_gateway", *args],
            cwd=self.dep.cwd, env=self.dep.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"gateway {args[0]}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    def node(self, nid: str) -> None:
        self.dep.start_node(nid, modules=MODULES, state_dir=self.state_dir(nid), wait=False)

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.dep.stop(name, sig)

    def close(self) -> None:
        self.dep.close()
        for path in self.mounts:
            subprocess.run(["umount", "-l", str(path)], check=False)


def wait_until(pred: Any, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except continuum_mqtt.ContinuumError:
            pass
        time.sleep(step)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = parser("chaos", __doc__.split("\n\n")[0])
    options(
        ap,
        """
        devices   10    simulated boards
        rate      200   samples/s, whole fleet
        clients   4     client threads calling
        timeout   20.0  call deadline, s
        disk-mb   256   size of each node's tmpfs state dir, MiB
        keep      -     keep the run's folder (logs) and say where
        """,
    )
    args = ap.parse_args(argv)

    rig = Rig(Path(tempfile.mkdtemp(prefix="continuum-chaos-")))
    rig.dep.open()
    try:
        return run(rig, args)
    finally:
        rig.close()
        if args.keep:
            log(f"logs kept in {rig.tmp}")
        else:
            shutil.rmtree(rig.tmp, ignore_errors=True)


def run(rig: Rig, args: argparse.Namespace) -> int:
    disk_phase = rig.mount_state_dirs(["n1", "n2"], args.disk_mb)
    rig.gateway()
    rig.node("n1")
    rig.node("n2")
    admin = continuum_mqtt.Client(rig.url, timeout=10).connect()
    wait_until(
        lambda: {n["id"] for n in admin.nodes() if n["state"] == "online"} == {"n1", "n2"}, 30
    )
    admin.stub(COUNTER).create(node="n1", replicas=1, alias="chaos-counter")
    devices = [f"sim-{i:04d}" for i in range(args.devices)]
    for dev in devices:
        sink = admin.stub(SINK).create(alias=f"sink-{dev}")
        admin.bind_metrics(sink, dev, "ingest")
    log(f"deployment up on {rig.url}: counter on n1 (replica n2), {len(devices)} sinks")
    backup = rig.tmp / "dir-backup.db"
    log(rig.gateway_cli("backup", "--db", str(rig.db), str(backup)))
    # created after the backup: the rolled-back directory does not know it
    late = admin.stub(COUNTER).create(node="n2", alias="chaos-late")
    late.add(5)

    duration = 80.0
    samples_per_device = int(args.rate * duration / args.devices)
    sim = rig.dep.start_firmware_sim(
        "--devices", str(args.devices), "--rate", str(args.rate),
        "--samples", str(samples_per_device), "--quiet", "--json", str(rig.tmp / "sim.json"),
    )  # fmt: skip

    outcomes: Tally[str] = Tally()
    acked = [0]
    lock = threading.Lock()
    stop = threading.Event()
    last_ok = [time.monotonic()]

    def caller() -> None:
        with continuum_mqtt.Client(rig.url, timeout=args.timeout) as c:
            o = c.get("chaos-counter")
            while not stop.is_set():
                fut = o.add.future(1)
                try:
                    fut.result(args.timeout + 10)  # past the deadline: hung
                    with lock:
                        outcomes["succeeded"] += 1
                        acked[0] += 1
                        last_ok[0] = time.monotonic()
                except continuum_mqtt.ContinuumError as exc:
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

    time.sleep(5)
    if disk_phase:
        holder = admin._gateway("resolve", ref="chaos-counter")["node"]
        log(f"fault 4: the disk under {holder} (the counter's primary) fills up for 3 s")
        filler = rig.fill(holder)
        time.sleep(3)
        t0 = time.monotonic()
        filler.unlink()
        faults.append({"fault": "disk full for 3 s", "recovery_s": recovery("disk", t0)})
        time.sleep(5)
    log("fault 5: SIGKILL node n1, tear the tail of every journal it has, restart it")
    t0 = time.monotonic()
    rig.kill("n1", signal.SIGKILL)
    torn = 0
    for journal in (rig.state_dir("n1") / "objects").glob("*.journal"):
        with open(journal, "ab") as fh:
            fh.write(b"\x00\x00\x01\x00\xde")  # an entry header cut short by the crash
        torn += 1
    rig.node("n1")
    faults.append({"fault": f"torn tails on {torn} journals", "recovery_s": recovery("torn", t0)})
    time.sleep(5)
    log("fault 6: the gateway's directory rolled back to a backup older than chaos-late")
    t0 = time.monotonic()
    rig.kill("gateway")
    for extra in (rig.db.with_name("dir.db-wal"), rig.db.with_name("dir.db-shm")):
        extra.unlink(missing_ok=True)
    shutil.copyfile(backup, rig.db)
    rig.gateway()
    rig.kill("n2")  # its return makes the gateway reconcile what it holds
    rig.node("n2")
    adopted = wait_until(lambda: admin.get("chaos-late").get() == 5, 60, 0.2)
    faults.append(
        {
            "fault": "directory rolled back",
            "recovery_s": (time.monotonic() - t0) if adopted else float("inf"),
        }
    )
    log(f"rollback: chaos-late found again after {faults[-1]['recovery_s']:.2f} s")

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
    objects_gone = 0
    for ref in ["chaos-counter", "chaos-late", *(f"sink-{d}" for d in devices)]:
        try:
            admin.get(ref)
        except continuum_mqtt.ContinuumError as exc:
            log(f"{ref} is gone: {exc}")
            objects_gone += 1
    if admin.get("chaos-late").get() != 5:
        mutations_lost += 1
    admin.close()

    attempted = sum(outcomes.values())
    report: dict[str, Any] = {
        "calls": {"attempted": attempted, **dict(outcomes)},
        "samples": {
            "expected": sum(expected.values()),
            "lost": lost,
            "redelivered_and_dropped": dups,
            "out_of_order": disorder,
        },
        "mutations": {"acknowledged": acked[0], "final_value": final, "lost": mutations_lost},
        "objects": {"expected": 2 + len(devices), "gone_not_deleted_by_a_caller": objects_gone},
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
    print("objects")
    for k, v in report["objects"].items():
        print(f"  {k:<32}{v:>8}")
    print("recovery")
    for f in faults:
        print(f"  {f['fault']:<32}{f['recovery_s']:>7.2f} s")
    verdict = (
        outcomes.get("hung", 0) == 0 and lost == 0 and mutations_lost == 0 and objects_gone == 0
    )
    print(
        f"\n{'PASS' if verdict else 'FAIL'}: hung 0, samples lost 0, acknowledged mutations lost 0,"
        " objects gone 0"
    )
    print(f"JSON: {write_json(args.json, report)}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
