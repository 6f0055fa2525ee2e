"""The benchmarks' floor and rig: a bare MQTT responder and requester (the least
any request/response over this broker can cost from Python), fresh processes
timed from spawn to first call, and :class:`Services` (a broker, a gateway, one
node and the responder) for ``bench.calls``.

The bare responder runs as its own process::

    python -m bench._floor responder --broker mqtt://127.0.0.1:1883 --topic bench/raw/req

It echoes each request's payload to the request's MQTT 5 Response Topic with its
Correlation Data, at QoS 1, with TCP_NODELAY on its socket.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as paho
from continuum_dev.testing import Deployment, child_env
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from continuum_mqtt.service import DEFAULT_ROOT

from ._common import REPO, deployment, log

__all__ = ["CHILD_CONTINUUM", "CHILD_RAW", "RawRequester", "Services", "startup_once"]


class Services:
    """mosquitto, a gateway, one cloud node (``examples.counter``) and the bare
    responder, as real processes (continuum_dev.testing's Deployment: stopped on
    exit, on error and on Ctrl-C, and killed by the kernel if this process dies),
    under the default topic root."""

    def __init__(self, node_id: str = "n1", keep_logs: bool = False) -> None:
        self.node_id = node_id
        self.raw_topic = "bench/raw/req"
        self.dep: Deployment = deployment(root=DEFAULT_ROOT, log_level="WARNING", keep=keep_logs)

    @property
    def url(self) -> str:
        return self.dep.url

    def __enter__(self) -> Services:
        try:
            self._start()
        except BaseException as exc:
            self.dep.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _start(self) -> None:
        self.dep.open()
        log(f"mosquitto on {self.url}")
        self.dep.start_gateway(wait=False)
        self.dep.start_node(self.node_id, modules=["examples.counter"], wait=False)
        argv = ["-m", "bench._floor", "responder", "--broker", self.url, "--topic", self.raw_topic]
        self.dep.python("responder", *argv, stdout=subprocess.PIPE)
        self.dep.wait_line("responder", "ready")
        self.dep.wait_nodes([self.node_id], 20.0, classes=["examples.counter.Counter"])
        log(f"gateway and node {self.node_id} are up")

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        self.dep.__exit__(et, ev, tb)


# -- the bare MQTT floor ---------------------------------------------------------------
def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _bare_client(client_id: str) -> paho.Client:
    """paho, MQTT 5, TCP_NODELAY; in-flight window and queue as continuum's MqttTransport."""
    c = paho.Client(
        callback_api_version=paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_socket_open = _nodelay
    return c


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[-1].rpartition(":")
    return host, int(port)


def responder_main(broker: str, topic: str) -> None:
    """Echo every request to its Response Topic with its Correlation Data (QoS 1)."""
    c = _bare_client(f"bench-responder-{os.getpid()}")

    def on_connect(client: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        client.subscribe(topic, 1)

    def on_subscribe(client: paho.Client, u: Any, mid: Any, rcs: Any, p: Any) -> None:
        print("ready", flush=True)

    def on_message(client: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        req = msg.properties
        reply_to = getattr(req, "ResponseTopic", None)
        if not reply_to:
            return
        corr = getattr(req, "CorrelationData", None)
        props = None
        if corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
        client.publish(reply_to, msg.payload, qos=1, properties=props)

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *a: c.disconnect())
    c.connect(*_host_port(broker), keepalive=30)
    with contextlib.suppress(KeyboardInterrupt):
        c.loop_forever()


class RawRequester:
    """A bare paho requester, QoS 1, TCP_NODELAY, a future per request completed on
    paho's network thread (the same threading as continuum's client).

    ``lite=False`` (the floor): MQTT 5 request/response as the spec has it, a fresh
    Response Topic + Correlation Data per request, echoed back with the Correlation
    Data. ``lite=True``: the wire shape continuum uses, one cached Properties with
    the Response Topic only and the request id inside the payload (its first 8 bytes),
    so replies carry no properties at all."""

    def __init__(self, url: str, request_topic: str, *, lite: bool = False, qos: int = 1) -> None:
        self.request_topic = request_topic
        self.qos = qos
        self.lite = lite
        cid = f"bench-raw{'-lite' if lite else ''}-{os.getpid()}"
        self.reply_topic = f"bench/raw/reply/{cid}"
        self._pending: dict[bytes, Future[bytes]] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._props = Properties(PacketTypes.PUBLISH)
        self._props.ResponseTopic = self.reply_topic
        c = self.client = _bare_client(cid)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(self.reply_topic, 1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self._ready.set()
        c.on_message = self._on_message
        c.connect(*_host_port(url), keepalive=30)
        c.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise RuntimeError("bare requester: no SUBACK within 10 s")

    def _on_message(self, client: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        key = msg.payload[:8] if self.lite else props.CorrelationData  # type: ignore[union-attr]
        fut = self._pending.pop(bytes(key), None)
        if fut is not None:
            fut.set_result(bytes(msg.payload))

    def request(self, payload: bytes) -> Future[bytes]:
        corr = next(self._ids).to_bytes(8, "big")
        fut: Future[bytes] = Future()
        self._pending[corr] = fut
        if self.lite:
            if len(payload) < 8:
                raise ValueError("lite requests carry their 8-byte id in the payload")
            self.client.publish(
                self.request_topic, corr + payload[8:], qos=self.qos, properties=self._props
            )
            return fut
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        self.client.publish(self.request_topic, payload, qos=self.qos, properties=props)
        return fut

    def call(self, payload: bytes, timeout: float = 30.0) -> bytes:
        got = self.request(payload).result(timeout)
        if len(got) != len(payload):
            raise RuntimeError(f"echo returned {len(got)} bytes, sent {len(payload)}")
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- start to first call ---------------------------------------------------------------
# Each child records: wall time at the end (for spawn-to-first-call, measured against the
# parent's clock before the spawn), perf_counter phases from its first line of code, and
# the time since the kernel created the process (/proc starttime vs CLOCK_BOOTTIME; the
# start time has the kernel's clock-tick resolution, 10 ms at CLK_TCK=100).
_CHILD_PROLOGUE = """\
import time
_t0 = time.perf_counter()
import os, sys, json
def _since_exec_ms():
    with open('/proc/self/stat') as f:
        start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    return (time.clock_gettime(time.CLOCK_BOOTTIME)
            - start_ticks / os.sysconf('SC_CLK_TCK')) * 1000.0
"""

CHILD_CONTINUUM = (
    _CHILD_PROLOGUE
    + """\
url, alias = sys.argv[1], sys.argv[2]
import continuum_mqtt
_t1 = time.perf_counter()
client = continuum_mqtt.Client(url)
client.connect()
_t2 = time.perf_counter()
obj = client.get(alias)
_t3 = time.perf_counter()
obj.add(0)
_t4 = time.perf_counter()
_wall = time.time()
_proc = _since_exec_ms()
client.close()
print(json.dumps({"end_wall": _wall, "since_exec_ms": _proc,
    "code_ms": (_t4 - _t0) * 1e3, "import_ms": (_t1 - _t0) * 1e3,
    "connect_ms": (_t2 - _t1) * 1e3, "resolve_ms": (_t3 - _t2) * 1e3,
    "call_ms": (_t4 - _t3) * 1e3}))
"""
)

CHILD_RAW = (
    _CHILD_PROLOGUE
    + """\
url, topic = sys.argv[1], sys.argv[2]
import socket, threading
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
_t1 = time.perf_counter()
host, _, port = url.split('://', 1)[-1].rpartition(':')
reply = 'bench/raw/reply/start-%d' % os.getpid()
subscribed, got = threading.Event(), threading.Event()
c = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
c.on_socket_open = lambda cl, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(reply, 1)
c.on_subscribe = lambda cl, u, m, r, p: subscribed.set()
c.on_message = lambda cl, u, m: got.set()
c.connect(host, int(port))
c.loop_start()
subscribed.wait(10)
_t2 = time.perf_counter()
props = Properties(PacketTypes.PUBLISH)
props.ResponseTopic = reply
props.CorrelationData = b'1'
c.publish(topic, b'x' * 16, qos=1, properties=props)
got.wait(10)
_t4 = time.perf_counter()
_wall = time.time()
_proc = _since_exec_ms()
c.disconnect()
c.loop_stop()
print(json.dumps({"end_wall": _wall, "since_exec_ms": _proc,
    "code_ms": (_t4 - _t0) * 1e3, "import_ms": (_t1 - _t0) * 1e3,
    "connect_ms": (_t2 - _t1) * 1e3, "resolve_ms": 0.0, "call_ms": (_t4 - _t2) * 1e3}))
"""
)


def startup_once(code: str, args: list[str]) -> dict[str, float]:
    """Run ``python -c code *args`` once; its phases in ms, and ``spawn_ms``: from just
    before the spawn (this process's clock) to the end of the child's first call."""
    start_wall = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=child_env([REPO]),
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"start-up child failed: {proc.stderr.decode(errors='replace')}")
    rec: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    rec["spawn_ms"] = (rec.pop("end_wall") - start_wall) * 1000.0
    return rec


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._floor")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("responder", help="run the bare MQTT echo responder")
    r.add_argument("--broker", required=True)
    r.add_argument("--topic", required=True)
    args = p.parse_args(argv)
    if args.cmd == "responder":
        responder_main(args.broker, args.topic)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
