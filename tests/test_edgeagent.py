"""The edge agent daemon as a real process against a real mosquitto: store and
forward across a broker restart and an agent SIGKILL (exact counts, in
order), config errors, SIGHUP reload, and the forecast / train / alert jobs
against a real gateway and node."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
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
from continuum_dev.testing import LocalBroker, free_port
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ._cluster import REPO, Cluster, wait_for, wait_status


def agent_config(
    path: Path,
    url: str,
    root: str,
    device: str,
    *,
    forecaster: str = "enabled = false",
    state_dir: Path | None = None,
    **extra: str,
) -> Path:
    sections = {
        "sampling": "interval = 0.05",
        "outbox": "drain_rate = 500.0",
        "broker": "backoff_min = 0.1\nbackoff_max = 0.5\nkeepalive = 5",
        **extra,
    }
    body = [
        f'device = "{device}"',
        f'state_dir = "{state_dir or path.parent / ("state-" + device)}"',
        "status_interval = 0.2",
        "[broker]",
        f'url = "{url}"',
        f'root = "{root}"',
        sections.pop("broker"),
        "[forecaster]",
        forecaster,
    ]
    for name, text in sections.items():
        body += [f"[{name}]", text]
    path.write_text("\n".join(body) + "\n")
    return path


def forecasting_agent(c: Cluster, tmp_path: Path, device: str, jobs: str) -> Agent:
    """An agent of ``device`` on the cluster, its forecaster enabled (on the
    nodes' CPU) with the ``[jobs]`` settings ``jobs``; started."""
    cfg = agent_config(
        tmp_path / "a.toml",
        c.url,
        c.root,
        device,
        forecaster='enabled = true\nargs = { device = "cpu" }',
        jobs=jobs,
    )
    return Agent(cfg, tmp_path / "agent.log").start()


def run_agent(cfg: Path) -> subprocess.CompletedProcess[str]:
    """``edgeagent run -c cfg`` in the foreground, to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "continuum_edgeagent", "run", "-c", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


class Agent:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "continuum_edgeagent", "run", "-c", str(self.config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        return self

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "continuum_edgeagent",
                "status",
                "--json",
                "-c",
                str(self.config),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return json.loads(out.stdout) if out.stdout else {}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Collector:
    """A subscriber with a persistent session (it misses nothing while it or
    the broker restarts): every message of ``topic`` in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.messages: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((cbor2.loads(msg.payload)["seq"], bytes(msg.payload)))

    def seqs(self) -> list[int]:
        with self.lock:
            return [s for s, _ in self.messages]

    def check_exactly_once_in_order(self, last: int) -> int:
        """Every seq 1..last arrived, in order; a QoS 1 redelivery of a seq
        already seen is the same bytes (the consumer drops it by seq, as the
        wire format says). Returns the number of redeliveries."""
        first: dict[int, bytes] = {}
        order: list[int] = []
        with self.lock:
            for seq, payload in self.messages:
                if seq in first:
                    assert first[seq] == payload, f"seq {seq} reused for a different sample"
                    continue
                first[seq] = payload
                order.append(seq)
        assert order == list(range(1, last + 1)), _gaps(order, last)
        return len(self.messages) - len(order)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _gaps(order: list[int], last: int) -> str:
    missing = sorted(set(range(1, last + 1)) - set(order))
    swapped = [(a, b) for a, b in itertools.pairwise(order) if b < a]
    return f"{len(order)} distinct of {last}; missing {missing[:20]}; out of order {swapped[:10]}"


def outbox_depth(state: Path) -> int:
    db = sqlite3.connect(f"file:{state / 'outbox.sqlite'}?mode=ro", uri=True)
    try:
        made = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'"
        if db.execute(made).fetchone() is None:  # the agent has not created it yet
            return 0
        return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    finally:
        db.close()


def final_seq(agent: Agent) -> int:
    st = agent.status()
    assert st["outbox"]["depth"] == 0, st
    return int(st["outbox"]["next_seq"]) - 1


def test_broker_restart_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    port = free_port()
    persist = str(tmp_path / "broker-data")
    broker = LocalBroker(port=port, persistence_dir=persist).start()
    url = f"mqtt://127.0.0.1:{port}"
    cfg = agent_config(tmp_path / "a.toml", url, "t1", "dev-a")
    col = Collector(port, "t1/dev/dev-a/metrics")
    agent = Agent(cfg, tmp_path / "agent.log").start()
    try:
        wait_for(lambda: len(col.seqs()) >= 40, timeout=20)
        broker.stop()  # for a while: the agent keeps sampling into its outbox
        wait_for(lambda: outbox_depth(tmp_path / "state-dev-a") >= 40, timeout=20)
        assert agent.proc is not None and agent.proc.poll() is None
        broker = LocalBroker(port=port, persistence_dir=persist).start()
        wait_for(lambda: agent.status().get("connected") is True, timeout=20)
        time.sleep(1.0)
        assert agent.stop() == 0  # SIGTERM flushes the outbox
        last = final_seq(agent)
        wait_for(lambda: len(set(col.seqs())) >= last, timeout=20)
        redelivered = col.check_exactly_once_in_order(last)
        assert last >= 80
        print(f"{last} samples, {redelivered} QoS 1 redeliveries")
        st = agent.status()
        assert st["outbox"]["dropped_full"] == st["outbox"]["dropped_age"] == 0
        assert "lost the connection" in agent.text()
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)
        col.close()
        broker.stop()


def test_sigkilled_agent_outbox_survives_and_drains(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    cfg = agent_config(tmp_path / "a.toml", url, "t2", "dev-k")
    state = tmp_path / "state-dev-k"
    # no broker yet: the board is offline from boot, samples accumulate
    agent = Agent(cfg, tmp_path / "agent.log").start()
    broker = None
    col = None
    try:
        wait_for(lambda: (state / "outbox.sqlite").exists() and outbox_depth(state) >= 30)
        agent.stop(signal.SIGKILL)
        kept = outbox_depth(state)
        assert kept >= 30
        broker = LocalBroker(port=port).start()
        col = Collector(port, "t2/dev/dev-k/metrics")
        agent.start()
        wait_for(lambda: len(set(col.seqs())) >= kept + 20, timeout=20)
        # killed again while connected and sending
        agent.stop(signal.SIGKILL)
        agent.start()
        wait_for(lambda: agent.status().get("connected") is True, timeout=20)
        time.sleep(0.5)
        assert agent.stop() == 0
        last = final_seq(agent)
        wait_for(lambda: len(set(col.seqs())) >= last, timeout=20)
        col.check_exactly_once_in_order(last)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)
        if col is not None:
            col.close()
        if broker is not None:
            broker.stop()


def test_full_outbox_drops_oldest_and_counts(tmp_path: Path) -> None:
    port = free_port()
    cfg = agent_config(
        tmp_path / "a.toml",
        f"mqtt://127.0.0.1:{port}",
        "t3",
        "dev-f",
        outbox="max_samples = 20\ndrain_rate = 500.0",
    )
    agent = Agent(cfg, tmp_path / "agent.log").start()  # broker down all along
    try:
        wait_for(lambda: agent.status().get("outbox", {}).get("dropped_full", 0) >= 10)
        assert agent.status()["outbox"]["depth"] <= 20
    finally:
        agent.stop()
    st = agent.status()
    assert st["outbox"]["depth"] <= 20 and st["state"] == "stopped"
    # the newest samples are the ones kept
    db = sqlite3.connect(tmp_path / "state-dev-f" / "outbox.sqlite")
    seqs = [r[0] for r in db.execute("SELECT seq FROM samples ORDER BY seq")]
    assert seqs == list(range(st["outbox"]["next_seq"] - len(seqs), st["outbox"]["next_seq"]))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('devise = "x"', "devise"),
        ('[outbox]\npolicy = "keep_everything"', "[outbox] policy"),
        ('[sampling]\ninterval = "fast"', "[sampling] interval"),
        ('[broker]\nurl = "http://broker"', "[broker] url"),
        ('[broker]\npassword_file = "/nonexistent/pw"', "[broker] password_file"),
        ("[jobs]\nforecast_every = -1", "[jobs] forecast_every"),
        ("[jobs\n", "not valid TOML"),
        # numbers that are not finite (TOML has inf and nan)
        ("[outbox]\ndrain_rate = inf", "[outbox] drain_rate"),
        ("[forecaster]\ntimeout = inf", "[forecaster] timeout"),
        ("[outbox]\nmax_age = nan", "[outbox] max_age"),
        ("status_interval = -inf", "status_interval"),
    ],
)
def test_bad_config_names_the_key_and_starts_nothing(tmp_path: Path, text: str, key: str) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'state_dir = "{state}"\n{text}\n')
    out = run_agent(cfg)
    assert out.returncode == 2, out.stderr
    assert key in out.stderr and str(cfg) in out.stderr, out.stderr
    assert not state.exists()  # nothing was started


def test_sighup_reloads_and_a_bad_reload_keeps_running(tmp_path: Path, broker: LocalBroker) -> None:
    cfg = agent_config(tmp_path / "a.toml", broker.url, "t4", "dev-h")
    agent = Agent(cfg, tmp_path / "agent.log").start()
    assert agent.proc is not None
    try:
        wait_for(lambda: agent.status().get("connected") is True)
        good = cfg.read_text().replace("interval = 0.05", "interval = 0.5")
        cfg.write_text(good)
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in agent.text())
        for bad, says in (
            (good + "\nbogus = 1\n", "bogus"),
            # loads, but the state directory cannot be made: refused before
            # anything stops (it used to kill the agent)
            (good.replace(f'state_dir = "{tmp_path}', 'state_dir = "/proc/nope'), "state_dir"),
        ):
            cfg.write_text(bad)
            agent.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda s=says: any(  # type: ignore[misc]
                    "reload refused" in line and s in line for line in agent.text().splitlines()
                )
            )
            time.sleep(0.3)
            assert agent.proc.poll() is None
        # a new root reconnects; the old root's retained status says offline
        cfg.write_text(good.replace('root = "t4"', 'root = "t4b"'))
        agent.proc.send_signal(signal.SIGHUP)
        wait_status(broker.url, "t4b/dev/dev-h/status", "online")
        wait_status(broker.url, "t4/dev/dev-h/status", "offline")
        assert agent.status()["connected"]
    finally:
        assert agent.stop() == 0


def test_a_broker_refusing_samples_loses_none_of_them(tmp_path: Path) -> None:
    """PUBACK 0x87 (an ACL that does not let the device publish its metrics):
    the samples stay in the outbox, sending pauses, and once the ACL is fixed
    they all arrive, in order."""
    acl = tmp_path / "acl"
    # the collector is anonymous; the agent logs in as dev-r: its will and
    # status are allowed, its metrics not yet
    acl.write_text("topic read t7/#\npattern write t7/dev/%u/status\n")
    port = free_port()
    broker = LocalBroker(port=port, extra_config=f"acl_file {acl}\n").start()
    col = Collector(port, "t7/dev/dev-r/metrics")
    cfg = agent_config(tmp_path / "a.toml", broker.url, "t7", "dev-r")
    agent = Agent(cfg, tmp_path / "agent.log").start()
    try:
        wait_for(lambda: agent.status().get("refused", 0) >= 1)
        wait_for(lambda: agent.status()["outbox"]["depth"] >= 40)
        st = agent.status()
        assert st["acked"] == 0 and st["outbox"]["dropped_full"] == 0 and st["refusal"]
        assert col.seqs() == []
        acl.write_text("topic read t7/#\npattern write t7/dev/%u/#\n")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto re-reads its ACL
        wait_for(lambda: agent.status().get("acked", 0) >= 40, timeout=30)
        assert agent.stop() == 0
        last = final_seq(agent)
        wait_for(lambda: len(set(col.seqs())) >= last)
        col.check_exactly_once_in_order(last)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)
        col.close()
        broker.stop()


def test_forecast_job_trains_remotely_and_publishes(bare_cluster: Cluster, tmp_path: Path) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
    port = int(c.url.rsplit(":", 1)[1])
    got: dict[str, list[dict[str, Any]]] = {"forecast": [], "alert": []}
    sub = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got[msg.topic.rsplit("/", 1)[1]].append(cbor2.loads(msg.payload))

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe([(f"{c.root}/dev/dev-j/forecast", 1), (f"{c.root}/dev/dev-j/alert", 1)])
    sub.loop_start()
    jobs = "train_after = 40\ntrain_epochs = 2\nforecast_every = 5\nalert_band = 0.001"
    agent = forecasting_agent(c, tmp_path, "dev-j", jobs)
    try:
        wait_for(lambda: got["forecast"] and got["alert"], timeout=120)
        fc = got["forecast"][-1]
        assert fc["dev"] == "dev-j" and isinstance(fc["cpu"], float)
        assert isinstance(fc["mem"], float) and fc["after_seq"] >= 40
        alert = got["alert"][0]
        assert (
            alert["metric"] in ("cpu", "mem") and abs(alert["actual"] - alert["forecast"]) > 0.001
        )
        with c.client(timeout=30) as client:
            info = client.get("dev-j/forecaster").info()
        assert info["trained"] and info["rows"] >= 40  # fed through the node, not the agent

        def reported() -> bool:  # status.json is rewritten every 0.2 s
            st = agent.status()["forecaster"]
            return bool(st["state"] == "ready" and st["trains"] >= 1 and st["forecasts"] >= 1)

        wait_for(reported, timeout=5)
    finally:
        sub.loop_stop()
        assert agent.stop() == 0
    human = subprocess.run(
        [sys.executable, "-m", "continuum_edgeagent", "status", "-c", str(agent.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "dev-j/forecaster" in human.stdout and "NOT running (stopped)" in human.stdout


def test_systemd_sample_unit_is_the_rendered_role_template() -> None:
    """One source for the unit: deploy/systemd/edgeagent.service is the Ansible
    role's template rendered with the role's defaults (deploy/systemd/render)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "systemd" / "render"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr + " (run deploy/systemd/render)"
    unit = (REPO / "deploy" / "systemd" / "edgeagent.service").read_text()
    assert "RestartPreventExitStatus=2\n" in unit and "ExecReload=" in unit


def test_systemd_unit_verifies_and_its_command_line_notifies(
    tmp_path: Path, broker: LocalBroker
) -> None:
    """The shipped unit (the role's template with its defaults, checked above):
    `systemd-analyze verify` (where installed), then its own ExecStart= run
    under a stand-in notify socket: READY=1, WATCHDOG=1, STOPPING=1."""
    import shlex
    import shutil
    import socket

    unit = (REPO / "deploy" / "systemd" / "edgeagent.service").read_text()
    exe = str(Path(sys.executable).parent / "edgeagent")
    local = unit.replace("/opt/continuum/edgeagent/bin/edgeagent", exe)
    assert exe in local
    if shutil.which("systemd-analyze"):
        (tmp_path / "edgeagent.service").write_text(local)
        out = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / "edgeagent.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    exec_start = next(x for x in local.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    cfg = agent_config(tmp_path / "a.toml", broker.url, "t6", "dev-s")
    argv[argv.index("/etc/edgeagent/edgeagent.toml")] = str(cfg)
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(10)
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    for line in local.splitlines():
        if line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value
    with open(tmp_path / "agent.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stderr=log)
    try:
        got = [sock.recv(256).decode() for _ in range(3)]
        assert got[0] == "READY=1" and got[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        proc.send_signal(signal.SIGTERM)
        while (msg := sock.recv(256).decode()) == "WATCHDOG=1":
            pass
        assert msg == "STOPPING=1"
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_agent_feed_reaches_its_forecaster_across_a_node_sigkill(
    bare_cluster: Cluster, tmp_path: Path
) -> None:
    """Samples go broker -> node (the binding), not through the gateway; the
    node's persistent session keeps them while it is down: rows == samples."""
    c = bare_cluster
    state = str(tmp_path / "n1-state")
    node_args = ("n1", "--torch-threads", "1", "--state-dir", state)
    c.start_gateway()
    c.start_node(*node_args, modules=("continuum_node.forecast",))
    agent = forecasting_agent(c, tmp_path, "dev-n", "train_after = 0\nforecast_every = 0")
    try:
        wait_for(lambda: (agent.status().get("forecaster") or {}).get("state") == "ready")
        wait_for(lambda: agent.status()["acked"] >= 30)
        c.stop("n1", signal.SIGKILL)
        wait_for(lambda: agent.status()["acked"] >= 60)  # the broker keeps them for n1
        c.start_node(*node_args, modules=("continuum_node.forecast",))
        time.sleep(1.0)
    finally:
        assert agent.stop() == 0
    last = final_seq(agent)
    with c.client(timeout=30) as client:
        fc = client.get("dev-n/forecaster")
        wait_for(lambda: fc.info()["rows"] >= last, timeout=90)
        assert fc.info()["rows"] == last
        assert len(fc.tail(last)) == last


def test_backoff_is_exponential_with_full_jitter() -> None:
    import random

    from continuum_edgeagent._link import backoff_delay

    rng = random.Random(1)
    for attempt, cap in ((0, 0.5), (1, 1.0), (3, 4.0), (7, 60.0), (40, 60.0)):
        delays = [backoff_delay(attempt, 0.5, 60.0, rng) for _ in range(500)]
        assert all(0.5 <= d <= cap for d in delays), (attempt, min(delays), max(delays))
        if attempt >= 3:  # spread over the whole range, not clustered
            assert max(delays) - min(delays) > 0.5 * (cap - 0.5)


def test_outbox_bounds_counters_and_seq_survive_reopening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import continuum_edgeagent._outbox as outbox_mod
    from continuum_edgeagent._outbox import Outbox

    uptime = [0.0]
    monkeypatch.setattr(outbox_mod, "_uptime", lambda: uptime[0])
    path = str(tmp_path / "o.sqlite")
    ob = Outbox(path)
    now = time.time()
    for seq in range(1, 11):
        uptime[0] = 0.0 if seq <= 3 else 1000.0  # 1-3 sampled 1000 s (of uptime) ago
        ob.add(seq, now, b"x%d" % seq)
    with pytest.raises(ValueError):
        ob.add(5, now, b"dup")  # a seq is never reused
    assert ob.enforce(max_samples=5, max_age=500, drop_oldest=True) == 5  # 3 aged, 2 over
    assert [s for s, _ in ob.after(0, 100)] == [6, 7, 8, 9, 10]
    ob.remove([6, 7])
    ob.skip()
    ob.close()
    again = Outbox(path)
    assert again.next_seq == 11 and len(again) == 3
    assert (again.dropped_age, again.dropped_full, again.not_sampled) == (3, 2, 1)
    again.remove([8, 9, 10])
    again.close()
    assert Outbox(path).next_seq == 11  # even with the outbox empty


def test_acks_whose_deletion_failed_are_counted_out_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full-disk agent crashed on ``len(outbox) < 0``: acknowledgements whose
    deletion failed (disk full) were counted out again for samples already gone
    (dropped by the bounds, or resent and acknowledged a second time)."""
    from continuum_edgeagent._outbox import Outbox

    ob = Outbox(str(tmp_path / "o.sqlite"))
    for seq in range(1, 11):
        ob.add(seq, time.time(), b"x")
    real_commit = ob._commit
    monkeypatch.setattr(ob, "_commit", lambda work: False)  # the disk is full
    ob.remove([1, 2, 3, 4, 5, 6, 7])  # acknowledged, not deleted
    assert len(ob) == 3
    monkeypatch.setattr(ob, "_commit", real_commit)  # space again, bounds first
    assert ob.enforce(max_samples=2, max_age=None, drop_oldest=True) > 0
    assert len(ob) == len(ob.after(0, 100)) >= 0
    ob.remove([])  # the retry of the failed deletions
    assert len(ob) == len(ob.after(0, 100)) == 2
    # resent after a reconnect and acknowledged again while the disk is full
    ob.remove([8, 9])
    monkeypatch.setattr(ob, "_commit", lambda work: False)
    ob.remove([8, 9])
    assert len(ob) == len(ob.after(0, 100)) == 1
    ob.close()


def test_outbox_ages_by_uptime_so_a_wall_clock_jump_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board without a battery-backed clock samples with a wrong wall clock
    until it syncs: those samples are as old as the uptime says, not the wall
    clock. Samples from an earlier boot can only be aged by the wall clock."""
    import continuum_edgeagent._outbox as outbox_mod
    from continuum_edgeagent._outbox import Outbox
    from continuum_edgeagent._outboxfile import _boot_id

    monkeypatch.setattr(outbox_mod, "_uptime", lambda: 100.0)
    ob = Outbox(str(tmp_path / "o.sqlite"))
    ob.add(1, 86400.0, b"sampled at 1970-01-02 by the board's clock, 0 s ago")
    ob._boot = "an earlier boot"
    ob.add(2, time.time() - 3 * 86400, b"an earlier boot, three days ago")
    ob.add(3, time.time() - 60, b"an earlier boot, a minute ago")
    ob._boot = _boot_id()
    assert ob.enforce(max_samples=100, max_age=86400, drop_oldest=True) == 1
    assert [s for s, _ in ob.after(0, 10)] == [1, 3]


def test_agent_credentials_file_over_environment_url_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BrokerURL.parse falls back to $CONTINUUM_USERNAME/$CONTINUUM_PASSWORD;
    for the agent, [broker] password_file and the device id come first."""
    from continuum_edgeagent._config import parse

    monkeypatch.setenv("CONTINUUM_USERNAME", "env-user")
    monkeypatch.setenv("CONTINUUM_PASSWORD", "env-pw")
    pw = tmp_path / "pw"
    pw.write_text("file-pw\n")
    cfg = parse(
        {"device": "dev-c", "broker": {"url": "mqtt://b:1883", "password_file": str(pw)}}, "t"
    )
    url = cfg.broker_url()
    assert (url.username, url.password) == ("dev-c", "file-pw")
    pw.write_text("rotated\n")
    assert cfg.broker_url().password == "rotated"  # read for every connection
    cfg = parse({"device": "dev-c", "broker": {"url": "mqtt://u:p@b:1883"}}, "t")
    assert (cfg.broker_url().username, cfg.broker_url().password) == ("u", "p")
    monkeypatch.delenv("CONTINUUM_PASSWORD")
    monkeypatch.setenv("EDGEAGENT_PASSWORD", "agent-pw")
    cfg = parse({"device": "dev-c", "broker": {"url": "mqtt://b"}}, "t")
    assert cfg.broker_url().password == "agent-pw"
