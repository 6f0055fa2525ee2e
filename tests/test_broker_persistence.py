"""Broker persistence matches what the broker acknowledged: a SIGKILLed mosquitto
with the shipped settings gives a durable node every sample it acknowledged
while the node was away, and replays none it had already delivered."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_dev.testing import BROKER_SETTINGS, PERSISTENCE_SETTINGS, LocalBroker, free_port

from ._cluster import REPO, Cluster, wait_for
from ._deploy import ansible_env, tool

MODULES = ("examples.counter", "examples.sink")


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def publish_acknowledged(url: str, topic: str, seqs: range) -> None:
    """QoS 1, each sample only after the PUBACK of the one before."""
    host, port = url.removeprefix("mqtt://").split(":")
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=paho.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    try:
        for seq in seqs:
            body = cbor2.dumps({"dev": "dev-1", "seq": seq, "cpu": 1.0, "mem": 2.0})
            info = pub.publish(topic, body, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        pub.disconnect()
        pub.loop_stop()


def wait_for_save(db: Path) -> None:
    """Until mosquitto has saved since now. Each save writes a new file and renames
    it over the old one, so the inode changes; a save that ends after a PUBACK
    arrived began after the broker sent it (one thread), so it holds that message."""
    before = db.stat().st_ino if db.exists() else None
    wait_for(lambda: db.exists() and db.stat().st_ino != before, timeout=20, interval=0.01)


def test_broker_sigkill_loses_no_acknowledged_sample_and_replays_none(tmp_path: Path) -> None:
    port = free_port()
    persist = str(tmp_path / "broker-data")
    db = Path(persist) / "mosquitto.db"
    log = str(tmp_path / "mosquitto.log")
    broker = LocalBroker(port=port, persistence_dir=persist, log_path=log).start()
    c = Cluster(broker.url, tmp_path, cwd=REPO)
    state = str(tmp_path / "n1-state")
    topic = c.topics.metrics("dev-1")
    try:
        c.start_gateway()
        c.start_node("n1", "--state-dir", state, modules=MODULES)
        with c.client() as client:
            sink = client.stub("examples.sink.SampleSink").create(alias="sink")
            client.bind_metrics(sink, "dev-1", "ingest")
        # 1..20 wait in the node's session across a clean broker restart (saved at
        # shutdown), then are delivered: a stale file would replay them later
        c.stop("n1")
        publish_acknowledged(broker.url, topic, range(1, 21))
        broker.stop()
        broker = LocalBroker(port=port, persistence_dir=persist, log_path=log).start()
        c.wait_gateway()
        c.start_node("n1", "--state-dir", state, modules=MODULES)
        with c.client() as client:
            wait_for(lambda: len(client.get("sink").received()["seqs"]) >= 20, timeout=30)
        c.stop("n1")
        # 21..40 acknowledged by the broker while the node is away, then SIGKILL
        publish_acknowledged(broker.url, topic, range(21, 41))
        wait_for_save(db)  # the documented window: what was acked before the last save
        broker.kill()
        broker = LocalBroker(port=port, persistence_dir=persist, log_path=log).start()
        c.wait_gateway()
        c.start_node("n1", "--state-dir", state, modules=MODULES)
        with c.client() as client:
            sink = client.get("sink")
            with contextlib.suppress(TimeoutError):  # the asserts say what is missing
                wait_for(lambda: len(sink.received()["seqs"]) >= 40, timeout=30)
            got = sink.received()
        lost = sorted(set(range(1, 41)) - set(got["seqs"]))
        assert not lost, f"acknowledged samples lost: {lost}"
        assert got["seqs"] == list(range(1, 41))  # in order, once each
        replayed = got["duplicates"]
        assert replayed == 0, f"{replayed} samples already delivered came back"
    finally:
        c.close()
        broker.stop()


def test_dev_conf_and_local_broker_save_and_bound(tmp_path: Path) -> None:
    required = _settings(BROKER_SETTINGS) + _settings(PERSISTENCE_SETTINGS)
    assert "autosave_interval 1" in required and "autosave_on_changes false" in required
    assert any(x.startswith("max_queued_bytes ") for x in required)
    assert any(x.startswith("persistent_client_expiration ") for x in required)
    dev = (REPO / "deploy" / "mosquitto-dev.conf").read_text().splitlines()
    for line in [*required, "persistence true"]:
        assert line in dev, line
    with LocalBroker(persistence_dir=str(tmp_path / "p")) as b:
        conf = b.conf_path.read_text().splitlines()
    for line in [*required, "persistence true"]:
        assert line in conf, line
    with LocalBroker() as b:  # no folder: nothing to save, bounds still apply
        conf = b.conf_path.read_text().splitlines()
    assert "persistence false" in conf
    for line in _settings(BROKER_SETTINGS):
        assert line in conf, line


PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files: ["{role}/defaults/main.yml"]
  vars: {{broker_kind: cloud, ansible_python_interpreter: "{python}"}}
  tasks:
    - ansible.builtin.template: {{src: "{role}/templates/mosquitto.conf.j2", dest: "{out}/mosquitto.conf"}}
    - ansible.builtin.template: {{src: "{role}/templates/cloud-bridge-listener.conf.j2", dest: "{out}/bridges.conf"}}
"""


@pytest.mark.skipif(
    tool("ansible-playbook") is None, reason="ansible is not installed in this venv"
)
def test_ansible_role_renders_persistence_and_bounds(tmp_path: Path) -> None:
    role = REPO / "deploy" / "ansible" / "roles" / "broker"
    play = tmp_path / "render.yml"
    play.write_text(PLAY.format(role=role, out=tmp_path, python=sys.executable))
    proc = subprocess.run(
        [tool("ansible-playbook") or "", "-i", "localhost,", str(play)],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    conf = (tmp_path / "mosquitto.conf").read_text().splitlines()
    for line in (
        "persistence true",
        "autosave_interval 1",
        "autosave_on_changes false",
        "max_queued_messages 0",
        "max_queued_bytes 67108864",
        "persistent_client_expiration 7d",
        "set_tcp_nodelay true",
    ):
        assert line in conf, line
    assert "log_type information" not in conf  # a line per save otherwise
    # the cloud's bridge listener (included last) sets the same expiry by default
    assert "persistent_client_expiration 7d" in (tmp_path / "bridges.conf").read_text()
