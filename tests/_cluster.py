"""Real processes for integration tests: gateway and cloud nodes on a real
mosquitto, each test under its own topic root."""

from __future__ import annotations

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

import continuum

REPO = Path(__file__).resolve().parent.parent


def wait_status(url: str, topic: str, want: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the retained/live status on ``topic`` has state ``want``."""
    host, port = url.removeprefix("mqtt://").split(":")
    got = threading.Event()
    box: dict[str, Any] = {}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        try:
            body = cbor2.loads(msg.payload)
        except Exception:
            return
        if isinstance(body, dict) and body.get("state") == want:
            box.update(body)
            got.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect(host, int(port))
    c.loop_start()
    try:
        if not got.wait(timeout):
            raise TimeoutError(f"{topic} did not become {want!r} within {timeout} s")
    finally:
        c.disconnect()
        c.loop_stop()
    return box


class Cluster:
    """A gateway and nodes as real processes, under a per-test root."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.root = f"test-{uuid.uuid4().hex[:8]}/continuum/v1"
        self.topics = continuum._protocol.Topics(self.root)
        self.db = str(tmp / "directory.db")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start_gateway(self) -> None:
        self._spawn(
            "gateway",
            ["-m", "gateway", "--broker", self.url, "--db", self.db, "--root", self.root],
        )
        wait_status(self.url, self.topics.gateway_status, "online")

    def start_node(
        self, node_id: str = "n1", *extra: str, modules: tuple[str, ...] = ("examples.counter",)
    ) -> None:
        args = ["-m", "cloudnode", "--broker", self.url, "--id", node_id, "--root", self.root]
        for m in modules:
            args += ["--module", m]
        self._spawn(node_id, [*args, *extra])
        wait_status(self.url, self.topics.node_status(node_id), "online")
        # the gateway has applied it once it lists the node online
        if "gateway" in self.procs:
            with self.client() as c:
                wait_for(
                    lambda: any(n["id"] == node_id and n["state"] == "online" for n in c.nodes())
                )

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def client(self, **kw: Any) -> continuum.Client:
        kw.setdefault("timeout", 10.0)
        return continuum.Client(self.url, root=self.root, **kw)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def wait_for(pred: Any, timeout: float = 15.0, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
