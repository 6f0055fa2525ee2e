"""firmware-sim: the fleet simulator publishes the edge agent's exact wire format,
gap-free per device, replays datasets faithfully, is deterministic for a seed,
exports CSV, runs cloud jobs, and shuts down cleanly. Real broker, real processes;
the consumer here is paho (not the simulator's own MQTT code)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_dev.testing import LocalBroker

from continuum_mqtt._protocol import Topics
from continuum_mqtt.samples import OPTIONAL_FIELDS, REQUIRED_FIELDS, decode_sample, encode_sample

from ._cluster import REPO, Cluster, wait_for

SIM_PATH = REPO / "firmware-sim"
if str(SIM_PATH) not in sys.path:
    sys.path.insert(0, str(SIM_PATH))

from continuum_sim._series import load_series, parse_time  # noqa: E402
from continuum_sim._sources import Fleet, FleetSpec  # noqa: E402
from continuum_sim._wire import PacketReader  # noqa: E402

ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), str(SIM_PATH)]),
    "PYTHONUNBUFFERED": "1",
}
TYPES = {
    "dev": str,
    "seq": int,
    "ts": float,
    "cpu": float,
    "mem": float,
    "load1": float,
    "disk": float,
    "net_rx": int,
    "net_tx": int,
    "temp": float,
}


def sim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum_sim", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Collector:
    """A paho QoS 1 subscriber to ``<root>/dev/+/metrics`` keeping every message."""

    def __init__(self, url: str, root: str) -> None:
        self.messages: list[tuple[str, bytes]] = []  # paho gives bytes
        self._ready = threading.Event()
        host, port = url.removeprefix("mqtt://").split(":")
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_message = lambda cl, u, m: self.messages.append((m.topic, bytes(m.payload)))
        c.on_subscribe = lambda cl, u, mid, rc, p: self._ready.set()
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{root}/dev/+/metrics", 1)
        c.connect(host, int(port))
        c.loop_start()
        self.client = c
        assert self._ready.wait(10), "no SUBACK"

    def wait(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.messages) >= count, timeout=timeout)
        time.sleep(0.2)  # anything beyond the expected count would show up now

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_and_collect(
    url: str, tmp: Path, *args: str, expect: int
) -> tuple[dict[str, Any], list[tuple[str, bytes]], str]:
    root = f"fsim-{uuid.uuid4().hex[:8]}/continuum/v1"
    col = Collector(url, root)
    try:
        out = sim("run", "--broker", url, "--root", root, "--json", str(tmp / "s.json"), *args)
        assert out.returncode == 0, out.stderr + out.stdout
        col.wait(expect)
    finally:
        col.close()
    return json.loads((tmp / "s.json").read_text()), list(col.messages), root


# -- one synthetic fleet run, shared ------------------------------------------------------

DEVICES, SAMPLES, SEED = 40, 30, 7


@pytest.fixture(scope="module")
def fleet_run(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[tuple[str, bytes]], str]:
    tmp = tmp_path_factory.mktemp("fleet")
    return run_and_collect(
        broker.url,
        tmp,
        "--devices", str(DEVICES), "--samples", str(SAMPLES), "--rate", "3000",
        "--seed", str(SEED), "--connections", "3",
        expect=DEVICES * SAMPLES,
    )  # fmt: skip


def test_payloads_are_the_agents_wire_format(
    fleet_run: tuple[dict[str, Any], list[tuple[str, bytes]], str],
) -> None:
    summary, messages, root = fleet_run
    topics = Topics(root)
    seen_optional: set[str] = set()
    missing_optional = 0
    for topic, payload in messages:
        body = decode_sample(payload)
        assert topic == topics.metrics(body["dev"])
        assert set(REQUIRED_FIELDS) <= set(body) <= set(REQUIRED_FIELDS + OPTIONAL_FIELDS)
        for key, value in body.items():
            assert type(value) is TYPES[key], (key, value)
        # byte for byte what the agent's encoder makes of the same values
        metrics = {k: v for k, v in body.items() if k not in ("dev", "seq", "ts")}
        assert payload == encode_sample(body["dev"], body["seq"], body["ts"], metrics)
        assert 0.0 <= body["cpu"] <= 100.0 and 0.0 <= body["mem"] <= 100.0
        seen_optional |= set(body) & set(OPTIONAL_FIELDS)
        missing_optional += len(set(OPTIONAL_FIELDS) - set(body))
    assert seen_optional == set(OPTIONAL_FIELDS)
    assert missing_optional > 0  # boards without a temperature sensor, sensor dropouts
    assert summary["errors"] == 0 and summary["acked"] == summary["sent"] == DEVICES * SAMPLES


def test_seq_per_device_is_one_to_n_without_gaps_at_the_consumer(
    fleet_run: tuple[dict[str, Any], list[tuple[str, bytes]], str],
) -> None:
    summary, messages, _ = fleet_run
    assert len(messages) == DEVICES * SAMPLES  # exactly: no loss, no duplicates
    per_device: dict[str, list[int]] = {}
    for _, payload in messages:
        body = cbor2.loads(payload)
        per_device.setdefault(body["dev"], []).append(body["seq"])
    assert len(per_device) == DEVICES
    for seqs in per_device.values():
        assert seqs == list(range(1, SAMPLES + 1))  # in order, too
    assert summary["last_seq"] == dict.fromkeys(per_device, SAMPLES)


def test_export_writes_what_run_publishes(
    fleet_run: tuple[dict[str, Any], list[tuple[str, bytes]], str], tmp_path: Path
) -> None:
    _, messages, _ = fleet_run
    out = tmp_path / "fleet.csv"
    r = sim(
        "export", "--devices", str(DEVICES), "--samples", str(SAMPLES),
        "--seed", str(SEED), "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["timestamp", "device", "CPU", "MEM", *OPTIONAL_FIELDS]
    assert len(rows) == 1 + DEVICES * SAMPLES
    published = {}
    for _, payload in messages:
        b = cbor2.loads(payload)
        published[(b["dev"], b["seq"])] = b
    seq: dict[str, int] = {}
    for ts, dev, cpu, mem, *extra in rows[1:]:
        seq[dev] = seq.get(dev, 0) + 1
        b = published[(dev, seq[dev])]
        assert (float(cpu), float(mem)) == (b["cpu"], b["mem"])
        assert abs(parse_time(ts) - b["ts"]) <= 0.5
        for name, text in zip(OPTIONAL_FIELDS, extra, strict=True):
            assert (text == "") == (name not in b)
            if text:
                assert float(text) == b[name]
    assert set(seq.values()) == {SAMPLES}


def test_export_minimal_replay_columns(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    r = sim(
        "export", "--source", "replay", "--dataset", "orangepi", "--exact", "--fields",
        "minimal", "--devices", "2", "--samples", "5", "--prefix", "opi-", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["timestamp", "device", "CPU", "MEM"]
    assert [r["device"] for r in rows] == ["opi-0000"] * 5 + ["opi-0001"] * 5
    series = load_series("orangepi")
    assert [float(r["MEM"]) for r in rows[:5]] == list(series.mem[:5])
    assert rows[0]["timestamp"] == "2023-06-28 16:26:24"


# -- replay ---------------------------------------------------------------------------------


def test_replay_reproduces_the_dataset_in_order(broker: LocalBroker, tmp_path: Path) -> None:
    n = 120
    summary, messages, _ = run_and_collect(
        broker.url,
        tmp_path,
        "--source", "replay", "--dataset", "node_3", "--exact", "--fields", "minimal",
        "--devices", "2", "--samples", str(n), "--rate", "2000",
        expect=2 * n,
    )  # fmt: skip
    series = load_series("node_3")
    rows = {"sim-0000": [], "sim-0001": []}  # type: dict[str, list[tuple[float, float, float]]]
    for _, payload in messages:
        b = decode_sample(payload)
        assert set(b) == set(REQUIRED_FIELDS)
        rows[b["dev"]].append((b["ts"], b["cpu"], b["mem"]))
    want = list(zip(series.times[:n], series.cpu[:n], series.mem[:n], strict=True))
    assert rows["sim-0000"] == want and rows["sim-0001"] == want
    assert want[0][0] == parse_time("2024-09-02 13:55:00")
    assert summary["source"] == "node_3"


def test_replay_offsets_jitter_and_wrap_around() -> None:
    series = load_series("orangepi")
    exact = Fleet(FleetSpec(devices=1, source="orangepi", jitter=0, ts_jitter=0, offsets=False))
    got = [exact.sample(0) for _ in range(len(series) + 3)]
    assert [g[3]["cpu"] for g in got[: len(series)]] == list(series.cpu)
    # after the last row the series starts again, one lap later in board time
    assert got[len(series)][3]["cpu"] == series.cpu[0]
    assert got[len(series)][2] == pytest.approx(series.times[0] + series.span)
    assert [g[1] for g in got] == list(range(1, len(series) + 4))
    # offsets: devices start at different rows and phases, same board start time
    f = Fleet(FleetSpec(devices=20, source="node_3", seed=3, jitter=0.5, ts_jitter=1.0))
    firsts = [f.sample(i) for i in range(20)]
    assert len({round(s[3]["mem"], 6) for s in firsts}) == 20
    assert all(abs(s[2] - series_start("node_3")) < 300 + 5 for s in firsts)


def series_start(name: str) -> float:
    return load_series(name).times[0]


# -- synthetic generator ---------------------------------------------------------------------


def test_synthetic_generator_is_deterministic_for_a_seed() -> None:
    def payloads(seed: int, devices: int, rounds: int = 50) -> list[bytes]:
        f = Fleet(FleetSpec(devices=devices, seed=seed))
        return [f.payload(i) for _ in range(rounds) for i in range(devices)]

    a, b = payloads(11, 8), payloads(11, 8)
    assert a == b
    assert a != payloads(12, 8)
    # device i's series does not depend on the size of the fleet
    small = Fleet(FleetSpec(devices=4, seed=11))
    large = Fleet(FleetSpec(devices=400, seed=11))
    assert [small.payload(3) for _ in range(20)] == [large.payload(3) for _ in range(20)]


def test_synthetic_boards_behave_like_boards() -> None:
    f = Fleet(FleetSpec(devices=30, seed=1, ts_jitter=0))
    days = 288 * 4  # four simulated days
    series = {i: [f.sample(i) for _ in range(days)] for i in range(30)}
    assert f.reboots() > 0
    reset_seen = daily = False
    for samples in series.values():
        seqs = [s[1] for s in samples]
        assert seqs == list(range(1, days + 1))  # monotonic through reboots
        ts = [s[2] for s in samples]
        assert all(b - a == pytest.approx(300.0) for a, b in itertools.pairwise(ts))
        rx = [s[3].get("net_rx") for s in samples]
        known = [x for x in rx if x is not None]
        reset_seen |= any(b < a for a, b in itertools.pairwise(known))
        cpu = [s[3]["cpu"] for s in samples]
        hourly = [sum(cpu[h * 12 : h * 12 + 12]) / 12 for h in range(24)]
        daily |= max(hourly) - min(hourly) > 15  # a visible daily cycle
    assert reset_seen  # a reboot resets the network counters
    assert daily


# -- jobs -----------------------------------------------------------------------------------


def test_jobs_train_and_forecast_against_a_real_cluster(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", modules=("continuum_node.forecast",))
    out = c.tmp / "jobs.json"
    r = sim(
        "run", "--broker", c.url, "--root", c.root, "--devices", "6", "--rate", "45",
        "--samples", "60", "--jobs", "--jobs-devices", "3", "--train-after", "16",
        "--train-epochs", "2", "--forecast-every", "4", "--jobs-keep", "--json", str(out),
        timeout=90,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout
    s = json.loads(out.read_text())
    jobs = s["jobs"]
    assert jobs["created"] == jobs["bound"] == 3
    assert jobs["trains_ok"] == 3 and jobs["trains_err"] == 0
    assert jobs["forecasts_ok"] >= 3 and jobs["forecasts_err"] == 0
    assert jobs["errors"] == [] and s["errors"] == 0
    for forecast in jobs["last_forecasts"].values():
        assert len(forecast) == 2 and all(isinstance(v, float) for v in forecast)
    assert "jobs 3: train" in r.stderr  # the live line
    with c.client() as client:
        for alias in jobs["objects"].values():
            obj = client.get(alias)
            # the node was fed every sample of the device by the broker (bind_metrics)
            wait_for(lambda o=obj: o.info()["rows"] == 60, timeout=20)
            client.delete(obj)


# -- process behaviour ------------------------------------------------------------------------


def test_sigterm_stops_cleanly_with_everything_acknowledged(
    broker: LocalBroker, tmp_path: Path
) -> None:
    out = tmp_path / "s.json"
    p = subprocess.Popen(
        [
            sys.executable, "-m", "continuum_sim", "run", "--broker", broker.url,
            "--root", f"fsim-{uuid.uuid4().hex[:6]}/continuum/v1", "--devices", "500",
            "--rate", "2000", "--progress-interval", "0.3", "--json", str(out),
        ],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()  # the first live line: it is running
    assert "devices 500" in line and "msg/s" in line and "in flight" in line
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=20)
    assert p.returncode == 0, stderr
    s = json.loads(out.read_text())
    assert s["end"] == "SIGTERM"
    assert s["sent"] > 0 and s["acked"] == s["sent"] and s["in_flight_at_end"] == 0
    assert "SIGTERM after" in stdout


def test_reconnects_and_resends_when_the_broker_restarts(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    with LocalBroker() as b:
        port = b.port
        p = subprocess.Popen(
            [
                sys.executable, "-m", "continuum_sim", "run", "--broker", b.url, "--devices",
                "200", "--rate", "1000", "--duration", "4", "--connections", "2", "--json",
                str(out), "--progress-interval", "0.3",
            ],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert p.stderr is not None
            assert "conns 2/2" in p.stderr.readline()  # connected and publishing
            b.stop()  # every connection drops, with messages in flight
            time.sleep(0.3)
            with LocalBroker(port=port):
                _, stderr = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
    s = json.loads(out.read_text())
    assert s["reconnects"] >= 1, stderr
    assert s["in_flight_at_end"] == 0 and s["acked"] == s["sent"]  # nothing given up
    assert p.returncode == 1 and s["errors"] >= 1 and s["error_messages"]  # and reported


def test_help_and_bad_arguments() -> None:
    r = sim("run", "--help")
    assert r.returncode == 0
    for opt in ("--devices", "--rate", "--period-ms", "--speedup", "--connections", "--jobs"):
        assert opt in r.stdout
    r = sim("run", "--rate", "10", "--speedup", "3")
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_packet_reader_splits_packets_across_reads() -> None:
    stream = b"\x40\x02\x00\x01" + b"\x32\x81\x01" + bytes(129) + b"\xd0\x00"
    for cut in range(1, len(stream)):
        reader = PacketReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [(f, len(b)) for f, b in got] == [(0x40, 2), (0x32, 129), (0xD0, 0)]
