"""Shared pieces of the benchmarks: real processes (broker, gateway, node, a bare
MQTT responder), a bare paho requester for the floor, timing drivers, statistics
and the report table.

The bare responder runs as its own process::

    python -m bench._common responder --broker mqtt://127.0.0.1:1883 --topic bench/raw/req

It echoes each request's payload to the request's MQTT 5 Response Topic with its
Correlation Data, at QoS 1, with TCP_NODELAY on its socket: the least any
request/response over this broker can cost from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "REPO",
    "RawRequester",
    "Services",
    "format_table",
    "interleaved_pipelined",
    "interleaved_sequential",
    "log",
    "pipelined",
    "sequential",
    "startup_once",
    "summarize",
]


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
        "PYTHONUNBUFFERED": "1",
    }


# -- statistics ------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    s = sorted(samples_ms)
    return {
        "n": len(s),
        "p50_ms": percentile(s, 0.50),
        "p90_ms": percentile(s, 0.90),
        "p99_ms": percentile(s, 0.99),
        "min_ms": s[0] if s else float("nan"),
        "max_ms": s[-1] if s else float("nan"),
        "mean_ms": sum(s) / len(s) if s else float("nan"),
    }


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 0.5)


# -- timing drivers --------------------------------------------------------------------
def sequential(call: Callable[[], Any], n: int, warmup: int = 0) -> list[float]:
    """``n`` calls one after another; the latency of each in ms."""
    for _ in range(warmup):
        call()
    out = [0.0] * n
    clock = time.perf_counter
    for i in range(n):
        t = clock()
        call()
        out[i] = (clock() - t) * 1000.0
    return out


def pipelined(issue: Callable[[], Future[Any]], total: int, window: int) -> dict[str, Any]:
    """``total`` calls with ``window`` outstanding: the caller's thread issues a new
    call as soon as one completes (a semaphore of ``window`` permits released by each
    future's completion), so between ``window - 1`` and ``window`` calls are in flight
    at any time. Returns calls/s and the most seen in flight."""
    sem = threading.Semaphore(window)
    lock = threading.Lock()
    state = {"inflight": 0, "max": 0, "errors": 0, "first_error": None}

    def done(f: Future[Any]) -> None:
        with lock:
            state["inflight"] -= 1
            if f.exception() is not None:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or repr(f.exception())
        sem.release()

    t0 = time.perf_counter()
    for _ in range(total):
        sem.acquire()
        with lock:
            state["inflight"] += 1
            if state["inflight"] > state["max"]:
                state["max"] = state["inflight"]
        issue().add_done_callback(done)
    for _ in range(window):  # wait for the tail
        sem.acquire()
    elapsed = time.perf_counter() - t0
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} of {total} calls failed: {state['first_error']}")
    return {
        "calls": total,
        "window": window,
        "seconds": elapsed,
        "calls_per_s": total / elapsed,
        "max_in_flight": state["max"],
    }


def interleaved_sequential(
    calls: dict[str, Callable[[], Any]], n: int, warmup: int, block: int = 250
) -> dict[str, list[float]]:
    """``n`` sequential calls of each kind, in alternating blocks of ``block`` (the
    order flips every round), so that slow drift of the machine hits every kind alike."""
    for call in calls.values():
        sequential(call, 0, warmup)
    out: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    done = 0
    while done < n:
        k = min(block, n - done)
        for name in names:
            out[name] += sequential(calls[name], k)
        names.reverse()
        done += k
    return out


def interleaved_pipelined(
    issuers: dict[str, Callable[[], Future[Any]]], total: int, window: int, trials: int
) -> dict[str, dict[str, Any]]:
    """``trials`` pipelined runs of ``total // trials`` calls for each kind, alternating
    kinds; the median trial is the figure (pipelined throughput on a small machine swings
    by 2x between runs of a few seconds: scheduling of 3-4 busy processes on few cores)."""
    per = max(1, total // trials)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in issuers}
    names = list(issuers)
    for _ in range(trials):
        for name in names:
            runs[name].append(pipelined(issuers[name], per, window))
        names.reverse()
    out = {}
    for name, rs in runs.items():
        rates = [r["calls_per_s"] for r in rs]
        out[name] = {
            "calls_per_s": median(rates),
            "trials_calls_per_s": [round(x, 1) for x in rates],
            "min_calls_per_s": min(rates),
            "max_calls_per_s": max(rates),
            "calls_per_trial": per,
            "trials": trials,
            "window": window,
            "max_in_flight": max(r["max_in_flight"] for r in rs),
        }
    return out


# -- processes -------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM if the bench process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Services:
    """mosquitto (LocalBroker), a gateway, one cloud node and the bare responder,
    as real processes, for as long as the context lasts. Every process is stopped
    on exit, on error and on Ctrl-C; they also get SIGTERM if this process dies."""

    def __init__(self, node_id: str = "n1", keep_logs: bool = False) -> None:
        self.node_id = node_id
        self.keep_logs = keep_logs
        self.tmp = Path(tempfile.mkdtemp(prefix="continuum-bench-"))
        self.broker: Any = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.raw_topic = "bench/raw/req"

    @property
    def url(self) -> str:
        return str(self.broker.url)

    def _spawn(
        self, name: str, args: list[str], stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        logf = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=child_env(),
                stdout=stdout if stdout is not None else logf,
                stderr=logf,
                preexec_fn=_die_with_parent,
            )
        finally:
            logf.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Services:
        from continuum._devbroker import LocalBroker

        self.broker = LocalBroker(log_path=str(self.tmp / "mosquitto.log")).start()
        log(f"mosquitto on {self.url}")
        # Every child is spawned before this process starts any thread (preexec_fn).
        self._spawn(
            "gateway",
            [
                "-m",
                "gateway",
                "--broker",
                self.url,
                "--db",
                str(self.tmp / "directory.db"),
                "--log-level",
                "WARNING",
            ],
        )
        self._spawn(
            "node",
            [
                "-m",
                "cloudnode",
                "--broker",
                self.url,
                "--id",
                self.node_id,
                "--module",
                "examples.counter",
                "--log-level",
                "WARNING",
            ],
        )
        responder = self._spawn(
            "responder",
            ["-m", "bench._common", "responder", "--broker", self.url, "--topic", self.raw_topic],
            stdout=subprocess.PIPE,
        )
        self._wait_line(responder, "ready", 15.0, "responder")
        self._wait_cluster(20.0)
        return self

    def _wait_line(
        self, proc: subprocess.Popen[bytes], want: str, timeout: float, name: str
    ) -> None:
        assert proc.stdout is not None
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not box or box[0].decode().strip() != want:
            raise RuntimeError(f"{name} did not start: {self.log_tail(name)}")

    def _wait_cluster(self, timeout: float) -> None:
        import continuum

        end = time.monotonic() + timeout
        last: Exception | None = None
        with continuum.Client(self.url, timeout=1.0) as c:
            while time.monotonic() < end:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited with {proc.returncode}: {self.log_tail(name)}"
                        )
                try:
                    nodes = c.nodes()
                    if any(
                        n["id"] == self.node_id
                        and n["state"] == "online"
                        and "examples.counter.Counter" in n["classes"]
                        for n in nodes
                    ):
                        log(f"gateway and node {self.node_id} are up")
                        return
                except Exception as exc:  # the gateway may not be subscribed yet
                    last = exc
                time.sleep(0.05)
        raise RuntimeError(
            f"gateway/node not ready within {timeout} s ({last!r})\n"
            f"gateway: {self.log_tail('gateway')}\nnode: {self.log_tail('node')}"
        )

    def stop(self) -> None:
        for name in ("responder", "node", "gateway"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                try:
                    stop_process(proc)
                finally:
                    if proc.stdout is not None:
                        proc.stdout.close()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if not self.keep_logs:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Services:
        try:
            return self.start()
        except BaseException:
            self.keep_logs = True
            self.stop()
            log(f"logs kept in {self.tmp}")
            raise

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is not None and et is not KeyboardInterrupt:
            self.keep_logs = True
            log(f"logs kept in {self.tmp}")
        self.stop()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every ``finally`` runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the bare MQTT floor ---------------------------------------------------------------
def _nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _bare_client(client_id: str) -> paho.Client:
    """paho, MQTT 5, TCP_NODELAY; in-flight window and queue as continuum's Connection."""
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
        fut = self._pending.pop(key, None)
        if fut is not None:
            fut.set_result(msg.payload)

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
import continuum
_t1 = time.perf_counter()
client = continuum.Client(url)
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
        env=child_env(),
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"start-up child failed: {proc.stderr.decode(errors='replace')}")
    rec: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    rec["spawn_ms"] = (rec.pop("end_wall") - start_wall) * 1000.0
    return rec


# -- the report ----------------------------------------------------------------------------
def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """``rows`` of dicts as text; ``columns`` are (key, heading, "<" or ">")."""
    body = [[str(r.get(key, "")) for key, _, _ in columns] for r in rows]
    head = [h for _, h, _ in columns]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if align == "<" else c.rjust(w)
            for c, w, (_, _, align) in zip(cells, widths, columns, strict=True)
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)])


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._common")
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
