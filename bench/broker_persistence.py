"""What mosquitto's persistence settings cost, and what a broker crash loses with each.

    python -m bench.broker_persistence                 # 5 settings and the bound: about 5 minutes
    python -m bench.broker_persistence --settings all  # 7 settings
    python -m bench.broker_persistence --settings "every 1 s (ours),changes 1" --bound-samples 0

mosquitto 2.0 (Debian's 2.0.11 here) keeps its state in memory and writes all of
it to ``mosquitto.db`` (write, fsync, rename) at shutdown, on SIGUSR1 and by
``autosave_interval``: every N seconds, or with ``autosave_on_changes true``
after N changes (a message queued for a client, a delivered message removed, a
subscription), checked once per turn of its event loop, after the turn's
acknowledgements were sent. There is no per-message log, so whatever was
acknowledged after the last save is gone after a crash. For each setting, with
a real mosquitto (LocalBroker with the settings continuum requires) and
firmware-sim:

1. a durable node (paho, MQTT 5, persistent session, like ``cloudnode
   --state-dir``) subscribes to ``<root>/dev/+/metrics`` and receives 1,000
   "old" samples (delivered, acknowledged), then goes offline, so every later
   sample queues for it;
2. **capacity**: 1,000 devices over 8 connections publish QoS 1 as fast as the
   broker acknowledges (``--capacity-duration``, ``--capacity-samples``):
   samples/s, broker CPU per 1,000 samples, saves/s;
3. **fleet**: many devices over many connections at a fixed rate (default
   2,000 devices, 200 connections, 4,000 samples/s for 3 s): rate reached,
   broker CPU (% of one core), saves/s;
4. the broker is SIGKILLed as soon as the simulator has every PUBACK, and
   restarted on the same folder; the node drains its session: acknowledged
   samples **lost**, old samples **replayed**; the size of the database and
   the time one save of it takes (SIGUSR1 until the file is replaced); then how
   long until the broker has processed the node's acknowledgements and holds
   no sample any more (``$SYS/broker/store/messages/count``), or how many it
   still holds after ``--settle`` seconds;
5. **kill on ack**: a publisher sends 6 samples, one at a time, and SIGKILLs
   the broker from the PUBACK callback of the last one; restarted, how many of
   the 6 acknowledged samples never reach the node (``--trials`` times).

Then, once, with our settings: **bound**: the node offline, 1,000 devices
publish more than ``max_queued_bytes`` (``--bound-samples`` each): samples the
broker holds for the node, samples dropped, the database's size, one save's
time and the broker's memory with a full queue.

The table goes to stdout, everything to ``reports/bench-broker-persistence.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import psutil
from continuum_dev.testing import PERSISTENCE_SETTINGS, LocalBroker, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import _common as common

#: label -> mosquitto lines (None: persistence off)
SETTINGS: dict[str, str | None] = {
    "off": None,
    "shutdown only (old)": "autosave_interval 1800\nautosave_on_changes false\n",
    "every 1 s (ours)": PERSISTENCE_SETTINGS,
    "changes 1": "autosave_interval 1\nautosave_on_changes true\n",
    "changes 10": "autosave_interval 10\nautosave_on_changes true\n",
    "changes 100": "autosave_interval 100\nautosave_on_changes true\n",
    "changes 1000": "autosave_interval 1000\nautosave_on_changes true\n",
}
DEFAULT = ["off", "shutdown only (old)", "every 1 s (ours)", "changes 1", "changes 100"]


def _wait(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    with contextlib.suppress(TimeoutError):
        wait_for(pred, timeout, interval)
    return pred()


class DurableNode:
    """A subscriber with a persistent session, as a durable cloud node has:
    records every (device, seq) it receives, in order."""

    def __init__(self, port: int, root: str) -> None:
        self.port, self.root = port, root
        self.got: list[tuple[str, int]] = []
        self.payload_bytes = 0
        self.lock = threading.Lock()
        self.client: paho.Client | None = None

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        sample = cbor2.loads(msg.payload)
        with self.lock:
            self.got.append((str(sample["dev"]), int(sample["seq"])))
            self.payload_bytes += len(msg.payload)

    def connect(self, first: bool = False) -> None:
        """Resume the session (``first``: create it and wait for the SUBACK; later the
        SUBACK may queue behind the whole backlog)."""
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id="node-bench", protocol=paho.MQTTv5
        )
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        c.loop_start()
        c.subscribe(f"{self.root}/dev/+/metrics", 1)
        if first and not subscribed.wait(10):
            raise RuntimeError("the node's SUBSCRIBE was not acknowledged")
        self.client = c

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def count(self) -> int:
        with self.lock:
            return len(self.got)

    def drain(self, want: Callable[[], bool], idle: float = 5.0, timeout: float = 120.0) -> None:
        """Until ``want()`` or no sample came for ``idle`` seconds."""
        end = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < end and not want():
            n = self.count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > idle:
                return
            time.sleep(0.05)

    def seen(self, since: int = 0) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.got[since:])


class Broker(LocalBroker):
    """A LocalBroker (SIGKILLed and restarted on the same port and folder by the
    phases) and the figures read from it."""

    def __init__(self, tmp: Path, settings: str | None) -> None:
        persist: dict[str, Any] = {}
        if settings is not None:
            persist = {"persistence_dir": str(tmp / "mosquitto"), "persistence_settings": settings}
        super().__init__(
            log_path=str(tmp / "mosquitto.log"), extra_config="sys_interval 1", **persist
        )
        self.settings = settings
        self.db = tmp / "mosquitto" / "mosquitto.db"

    def running(self) -> int:
        """The broker's pid (it must be running)."""
        assert self.pid is not None, "the broker is not running"
        return self.pid

    def cpu_s(self) -> float:
        t = psutil.Process(self.running()).cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return float(psutil.Process(self.running()).memory_info().rss) / 2**20

    def log_text(self) -> str:
        path = Path(self.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def saves(self) -> int:
        return self.log_text().count("Saving in-memory database")

    def save_ms(self, tries: int = 3) -> float | None:
        """Time of one save at the present size: SIGUSR1, until the file is replaced."""
        if self.settings is None:
            return None

        def inode() -> int | None:
            return self.db.stat().st_ino if self.db.exists() else None

        times = []
        for _ in range(tries):
            before = inode()
            t0 = time.perf_counter()
            os.kill(self.running(), signal.SIGUSR1)
            if _wait(lambda: inode() not in (None, before), 30, 0.0005):  # noqa: B023
                times.append((time.perf_counter() - t0) * 1000.0)
        return round(sorted(times)[len(times) // 2], 1) if times else None

    def stored_messages(self) -> int | None:
        return self.sys_counter("store/messages/count")

    def sys_counter(self, name: str) -> int | None:
        """``$SYS/broker/<name>`` (published every second here): a fresh value."""
        box: list[int] = []
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_message = lambda cl, u, m: box.append(int(m.payload))
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        c.subscribe(f"$SYS/broker/{name}", 0)
        _wait(lambda: len(box) >= 2, 5)  # the retained value, then a fresh one
        c.disconnect()
        c.loop_stop()
        return box[-1] if box else None


def run_sim(url: str, root: str, out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "continuum_sim", "run", "--broker", url, "--root", root]
    cmd += ["--quiet", "--json", str(out), *args]
    proc = subprocess.run(cmd, cwd=common.REPO, env=common.env(), capture_output=True, timeout=600)
    if proc.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"firmware-sim failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _expected(sim: dict[str, Any]) -> set[tuple[str, int]]:
    start = int(sim.get("seq_start", 1))
    return {(d, s) for d, hi in sim["last_seq"].items() for s in range(start, hi + 1)}


def kill_on_ack(broker: Broker, node: DurableNode, root: str, trial: int, n: int = 6) -> int:
    """Publish ``n`` samples one by one; SIGKILL the broker from the last PUBACK's
    callback. Returns how many of the ``n`` acknowledged samples were lost."""
    dev = f"probe-{trial}"
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    acks = [0]

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        acks[0] += 1
        if acks[0] == n:  # one at a time: the n-th PUBACK is the last sample's
            os.kill(broker.running(), signal.SIGKILL)

    pub.on_publish = on_publish
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    topic = f"{root}/dev/{dev}/metrics"
    for seq in range(1, n + 1):
        body = cbor2.dumps({"dev": dev, "seq": seq, "cpu": 1.0, "mem": 2.0})
        pub.publish(topic, body, qos=1).wait_for_publish(10)
    assert broker.proc is not None
    broker.proc.wait(10)
    broker.proc = None
    pub.loop_stop()
    broker.start()
    before = node.count()
    probe = {(dev, seq) for seq in range(1, n + 1)}
    node.connect()
    node.drain(lambda: probe <= node.seen(before), idle=3.0, timeout=60)
    node.disconnect()
    return len(probe - node.seen(before))


def settle(broker: Broker, baseline: int | None, timeout: float) -> tuple[int | None, float | None]:
    """Once the node has every sample: how long until the broker has processed
    its acknowledgements and holds no sample any more (``$SYS`` store count back
    to ``baseline``), or how many it still holds after ``timeout``."""
    t0 = time.monotonic()
    held: int | None = None
    while time.monotonic() - t0 < timeout:
        stored = broker.stored_messages()
        if stored is None or baseline is None:
            return None, None
        held = stored - baseline
        if held <= 0:
            return 0, round(time.monotonic() - t0, 1)
    return held, None


def deliver_old(broker: Broker, node: DurableNode, root: str, tmp: Path) -> int:
    """The node online receives 1,000 samples, then leaves: returns how many it got."""
    node.connect(first=True)
    old = run_sim(broker.url, root, tmp / "old.json", "--prefix", "old-", "--devices", "200",
                  "--samples", "5", "--rate", "2000")  # fmt: skip
    old_acked = _expected(old)
    node.drain(lambda: old_acked <= node.seen(), timeout=30)
    node.disconnect()
    return node.count()


def load(
    broker: Broker, root: str, tmp: Path, args: argparse.Namespace
) -> tuple[set[tuple[str, int]], dict[str, Any]]:
    """Capacity, then the fleet rate, the node offline: every acknowledged (device,
    seq), and the figures."""
    cpu0, saves0 = broker.cpu_s(), broker.saves()
    cap = run_sim(broker.url, root, tmp / "cap.json", "--prefix", "cap-", "--devices", "1000",
                  "--connections", "8", "--duration", str(args.capacity_duration),
                  "--samples", str(args.capacity_samples), "--rate", "1000000")  # fmt: skip
    cpu1, saves1 = broker.cpu_s(), broker.saves()
    fleet = run_sim(broker.url, root, tmp / "fleet.json", "--prefix", "fleet-",
                    "--devices", str(args.fleet_devices), "--connections",
                    str(args.fleet_connections), "--rate", str(args.fleet_rate),
                    "--duration", str(args.fleet_duration))  # fmt: skip
    cpu2, saves2 = broker.cpu_s(), broker.saves()
    figures = {
        "cap_rate": round(cap["rate_achieved"]),
        "cap_sent": cap["sent"],
        "cap_cpu_ms_per_k": round(1e6 * (cpu1 - cpu0) / max(cap["acked"], 1), 1),
        "cap_saves_per_s": round((saves1 - saves0) / max(cap["elapsed_s"], 1e-9)),
        "fleet_target": args.fleet_rate,
        "fleet_rate": round(fleet["rate_achieved"]),
        "fleet_behind_max": fleet["behind_max"],
        "fleet_cpu_pct": round(100 * (cpu2 - cpu1) / max(fleet["elapsed_s"], 1e-9)),
        "fleet_saves_per_s": round((saves2 - saves1) / max(fleet["elapsed_s"], 1e-9), 1),
        "acked": cap["acked"] + fleet["acked"],
        "sent": cap["sent"] + fleet["sent"],
        "rss_loaded_mb": round(broker.rss_mb(), 1),
    }
    return _expected(cap) | _expected(fleet), figures


def recover(
    broker: Broker, node: DurableNode, acked: set[tuple[str, int]], old_seen: int
) -> dict[str, Any]:
    """SIGKILL at once (the simulator had every PUBACK), restart, drain the node."""
    broker.kill()
    broker.start()
    r: dict[str, Any] = {
        "db_mb": round(broker.db.stat().st_size / 2**20, 2) if broker.db.exists() else 0.0,
        "save_ms": broker.save_ms(),
    }
    node.connect()
    node.drain(lambda: acked <= node.seen(old_seen))
    with node.lock:
        after = node.got[old_seen:]
        payload = node.payload_bytes
    node.disconnect()
    seen = set(after)
    r.update(
        {
            "lost": len(acked - seen),
            "replayed_old": sum(1 for d, _ in after if d.startswith("old-")),
            "duplicates": len(after) - len(seen),
            "payload_bytes_avg": round(payload / max(old_seen + len(after), 1)),
        }
    )
    if r["db_mb"] and acked & seen:
        r["db_bytes_per_queued"] = round(r["db_mb"] * 2**20 / len(acked))
    return r


def run_setting(label: str, settings: str | None, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-broker-persistence-"))
    root = f"bench-{uuid.uuid4().hex[:6]}/continuum/v1"
    broker = Broker(tmp, settings)
    broker.start()
    r: dict[str, Any] = {"label": label, "settings": settings}
    node = DurableNode(broker.port, root)
    try:
        r["stored_at_start"] = broker.stored_messages()
        r["old_delivered"] = deliver_old(broker, node, root, tmp)
        acked, figures = load(broker, root, tmp, args)
        r.update(figures)
        r.update(recover(broker, node, acked, r["old_delivered"]))
        r["held_after_drain"], r["settle_s"] = settle(broker, r["stored_at_start"], args.settle)
        losses = [kill_on_ack(broker, node, root, t) for t in range(args.trials)]
        r["kill_on_ack_lost"] = losses
        r["kill_on_ack_lost_total"] = f"{sum(losses)}/{6 * len(losses)}"
    finally:
        node.disconnect()
        broker.stop()
    return r


def run_bound(args: argparse.Namespace) -> dict[str, Any]:
    """Our settings, the node offline, more samples than ``max_queued_bytes`` holds."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-broker-persistence-"))
    root = f"bench-{uuid.uuid4().hex[:6]}/continuum/v1"
    broker = Broker(tmp, PERSISTENCE_SETTINGS)
    broker.start()
    node = DurableNode(broker.port, root)
    try:
        node.connect(first=True)
        node.disconnect()
        sim = run_sim(broker.url, root, tmp / "bound.json", "--devices", "1000",
                      "--samples", str(args.bound_samples), "--rate", "1000000")  # fmt: skip
        held = broker.stored_messages()
        dropped = broker.sys_counter("publish/messages/dropped")
        r = {
            "acked": sim["acked"],
            "rate": round(sim["rate_achieved"]),
            "held": held,
            "dropped": dropped,
            "rss_mb": round(broker.rss_mb(), 1),
            "save_ms": broker.save_ms(),
            "db_mb": round(broker.db.stat().st_size / 2**20, 1),
            "logged": "Outgoing messages are being dropped for client node-bench"
            in broker.log_text(),
        }
    finally:
        broker.stop()
    return r


BOUND_COLUMNS = common.columns(
    "acked> | rate:samples/s> | held:held for the node> | dropped> | logged:drop logged> | "
    "db_mb:db MB> | save_ms:save ms> | rss_mb:broker RSS MB>"
)


COLUMNS = common.columns(
    "label:setting< | cap_rate:capacity/s> | cap_cpu_ms_per_k:CPU ms/1k> | "
    "cap_saves_per_s:saves/s> | fleet_rate:fleet/s> | fleet_cpu_pct:fleet CPU %> | "
    "fleet_saves_per_s:fleet saves/s> | acked> | lost:lost at kill> | "
    "replayed_old:old replayed> | db_mb:db MB> | save_ms:save ms> | "
    "held_after_drain:held after drain> | settle_s:settled in s> | "
    "kill_on_ack_lost_total:kill-on-ack lost>"
)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser("broker_persistence", __doc__.split("\n\n")[0])
    p.add_argument("--settings", help=f"'all' or comma-separated labels of {list(SETTINGS)} "
                   f"(default: {DEFAULT})")  # fmt: skip
    common.options(
        p,
        """
        capacity-duration  3.0   s at most of the capacity phase
        capacity-samples   50    samples per device at most in the capacity phase, 1,000 devices
        fleet-devices      2000  devices of the fleet phase
        fleet-connections  200   their connections
        fleet-rate         4000  their samples/s
        fleet-duration     3.0   s of the fleet phase
        trials             5     kill-on-ack trials
        settle             10.0  s to wait for the broker to free the drained samples
        bound-samples      700   samples per device (1,000 devices) in the bound phase; 0: skip it
        """,
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = DEFAULT
    if args.settings == "all":
        labels = list(SETTINGS)
    elif args.settings:
        labels = [s.strip() for s in args.settings.split(",")]
        unknown = [s for s in labels if s not in SETTINGS]
        if unknown:
            raise SystemExit(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    report: dict[str, Any] = {"bench": "broker_persistence", **common.machine(args), "runs": []}
    with common.terminate_as_interrupt():
        for label in labels:
            common.log(f"{label}: running")
            row = run_setting(label, SETTINGS[label], args)
            report["runs"].append(row)
            common.log(f"{label}: {json.dumps(row)}")
        if args.bound_samples:
            common.log("bound: running")
            report["bound"] = run_bound(args)
            common.log(f"bound: {json.dumps(report['bound'])}")
    print(common.format_table(report["runs"], COLUMNS))
    if "bound" in report:
        print("\nmax_queued_bytes, every 1 s (ours), node offline:")
        print(common.format_table([report["bound"]], BOUND_COLUMNS))
    common.write_json(args.json, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
