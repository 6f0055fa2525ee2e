"""The publishing loop: one thread paces the whole fleet.

Devices are visited round-robin (device 0, 1, ..., N-1, then 0 again), so
every device publishes once per ``N / rate`` seconds and sample ``k`` of every
device goes out before sample ``k + 1`` of any. Device ``i`` always uses
connection ``i * K // N``: its samples stay in order on one connection, as on a
real board. A connection with ``window`` unacknowledged messages blocks the
loop until PUBACKs arrive (nothing is dropped; the loop falls behind and
catches up, which the live line shows as ``behind``).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from continuum_mqtt.service import BrokerURL, Topics

from ._jobs import Jobs
from ._paho import PahoPublisher
from ._sources import Fleet
from ._wire import MQTTError, Publisher, publish_prefix

__all__ = ["RunConfig", "Stop", "run"]

_BATCH = 4096  # most samples built per loop turn before reading PUBACKs again
_MAX_OUT = 4 << 20  # bytes waiting for a socket before its devices wait (QoS 0 has no window)


@dataclass
class RunConfig:
    broker: str = "mqtt://127.0.0.1:1883"
    root: str = "continuum/v1"
    qos: int = 1
    connections: int = 8
    window: int = 1000
    rate: float = 1000.0  # aggregate samples per second
    duration: float | None = None  # wall seconds
    samples: int | None = None  # per device
    engine: str = "wire"  # "wire" (pre-built packets) or "paho"
    client_prefix: str = ""
    progress: bool = True
    progress_interval: float = 1.0
    drain_timeout: float = 30.0
    keepalive: int = 60
    tick: float = 0.005  # seconds between loop turns: a tick's samples go out together
    extra: dict[str, Any] = field(default_factory=dict)  # echoed in the summary


class Stop:
    """Set by SIGINT/SIGTERM; a second signal abandons the drain."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.hard = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.reason is not None:
            self.hard = True
        self.reason = signal.Signals(signum).name

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


class _Stats:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.error_count = 0
        self.behind_max = 0
        self.blocked_s = 0.0

    def error(self, msg: str) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(msg)


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def run(
    cfg: RunConfig,
    fleet: Fleet,
    jobs: Jobs | None = None,
    stop: Stop | None = None,
    out: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Publish the fleet's samples as configured; returns the final summary."""
    out = out if out is not None else sys.stderr
    stop = stop or Stop()
    url = BrokerURL.parse(cfg.broker)
    topics = Topics(cfg.root)
    n_dev = len(fleet)
    k = max(1, min(cfg.connections, n_dev))
    prefix = cfg.client_prefix or f"firmware-sim-{os.getpid()}"
    stats = _Stats()
    wire = cfg.engine == "wire"
    if wire and url.tls:
        raise ValueError("the wire engine has no TLS; use --engine paho for mqtts:// brokers")
    conns: list[Any] = []
    for c in range(k):
        cid = f"{prefix}-{c}"
        if wire:
            conns.append(
                Publisher(
                    url.host,
                    url.port,
                    cid,
                    qos=cfg.qos,
                    window=cfg.window,
                    keepalive=cfg.keepalive,
                    username=url.username,
                    password=url.password,
                )
            )
        else:
            conns.append(PahoPublisher(url, cid, cfg.qos, cfg.window, cfg.keepalive))
    names = [topics.metrics(d) for d in fleet.ids]
    topic_of: list[Any] = [publish_prefix(t) for t in names] if wire else names
    conn_of = [conns[i * k // n_dev] for i in range(n_dev)]
    is_job = bytearray(n_dev)
    if jobs is not None:
        for i in jobs.indices:
            is_job[i] = 1

    try:
        for conn in conns:
            conn.connect()
    except BaseException:
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        raise
    sel = selectors.DefaultSelector()
    registered: dict[int, socket.socket] = {}  # the socket of each connection in ``sel``

    def watch(conn: Any) -> None:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        registered[id(conn)] = conn.sock

    if wire:
        for conn in conns:
            watch(conn)
    retry_at: dict[int, float] = {}

    def lost(conn: Any, exc: BaseException) -> None:
        stats.error(str(exc))
        sock = registered.pop(id(conn), None)
        if sock is not None:
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        conn.lost()
        retry_at[id(conn)] = time.monotonic() + 0.5

    def reconnect(now: float) -> None:
        for conn in conns:
            if conn.up or retry_at.get(id(conn), 0.0) > now:
                continue
            try:
                conn.connect(timeout=2.0)
            except (OSError, MQTTError) as exc:
                stats.error(f"{conn.client_id}: reconnect failed: {exc}")
                retry_at[id(conn)] = now + 2.0
                continue
            watch(conn)
            retry_at.pop(id(conn), None)

    def pump() -> None:
        """Handle the PUBACKs that arrived, then write the send buffers: one
        poll, and one recv and one send per busy connection, per tick."""
        if not wire:
            return
        for key, _ in sel.select(0):
            conn = key.data
            try:
                conn.on_readable()
            except MQTTError as exc:
                lost(conn, exc)
        flush()

    def flush() -> None:
        """Write what each socket takes of its connection's send buffer."""
        for conn in conns:
            if conn.out:
                try:
                    conn.flush()
                except MQTTError as exc:
                    lost(conn, exc)

    total_target = n_dev * cfg.samples if cfg.samples else None
    rate = cfg.rate
    idx = 0  # next device
    sent_total = 0
    t0 = time.monotonic()
    next_report = t0 + cfg.progress_interval
    last_report = (t0, 0)
    tty = hasattr(out, "isatty") and out.isatty()
    seq_of = fleet.seq
    payload = fleet.payload
    qos = cfg.qos
    cpu0 = time.process_time()
    tick = cfg.tick
    end_reason = "duration"

    t_active_end = 0.0
    behind = 0  # samples due but not sent at the end of the last loop turn

    def snapshot(now: float) -> dict[str, Any]:
        acked = sum(c.acked for c in conns)
        failed = sum(c.failed for c in conns)
        inflight = sum(c.inflight for c in conns)
        return {
            "elapsed_s": now - t0,
            "sent": sent_total,
            "acked": acked,
            "failed": failed,
            "in_flight": inflight,
            "behind": behind,
            "errors": stats.error_count + failed + (jobs.error_count if jobs else 0),
            "connected": sum(1 for c in conns if c.up),
        }

    def report(now: float, final: bool = False) -> None:
        nonlocal last_report
        snap = snapshot(now)
        t_prev, n_prev = last_report
        if final:  # the whole run's average
            rate_now = sent_total / max(min(now, t_active_end or now) - t0, 1e-9)
        else:
            rate_now = (sent_total - n_prev) / max(now - t_prev, 1e-9)
        last_report = (now, sent_total)
        stats.behind_max = max(stats.behind_max, snap["behind"])
        snap["rate"] = rate_now
        if on_progress is not None:
            on_progress(snap)
        if not cfg.progress:
            return
        acked = f"acked {_fmt(snap['acked'])}  in flight {_fmt(snap['in_flight'])}  " if qos else ""
        line = (
            f"[firmware-sim {snap['elapsed_s']:6.1f}s] devices {n_dev}  conns "
            f"{snap['connected']}/{k}  sent {_fmt(sent_total)} ({_fmt(rate_now)} msg/s)  "
            f"{acked}behind {_fmt(snap['behind'])}  errors {snap['errors']}"
        )
        if jobs is not None:
            line += f"  | {jobs.line()}"
        if tty:
            out.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            out.write(line + "\n")
        out.flush()

    try:
        while True:
            now = time.monotonic()
            if stop.reason is not None:
                end_reason = stop.reason
                break
            el = now - t0
            if cfg.duration is not None and el >= cfg.duration:
                end_reason = "duration"
                break
            if total_target is not None and sent_total >= total_target:
                end_reason = "samples"
                break
            due = int(el * rate) + 1
            if total_target is not None and due > total_target:
                due = total_target
            n = due - sent_total
            if n > _BATCH:
                n = _BATCH
            blocked = False
            while n > 0:
                conn = conn_of[idx]
                if (qos and conn.inflight >= conn.limit) or not conn.up or len(conn.out) > _MAX_OUT:
                    blocked = True
                    break
                seq = seq_of[idx]
                conn.publish(topic_of[idx], payload(idx))
                if is_job[idx]:
                    jobs.on_sample(idx, seq)  # type: ignore[union-attr]
                idx += 1
                if idx == n_dev:
                    idx = 0
                sent_total += 1
                n -= 1
            behind = due - sent_total
            if behind > stats.behind_max:
                stats.behind_max = behind
            if now >= next_report:
                report(now)
                if wire:
                    for conn in conns:
                        conn.ping_if_idle(now)
                next_report += cfg.progress_interval
                if next_report < now:
                    next_report = now + cfg.progress_interval
            if wire:
                flush()
            if blocked and wire and not all(c.up for c in conns):
                reconnect(now)
            if blocked or due <= sent_total:
                # sleep to the next tick: samples and PUBACKs then go in bulk
                wait = tick - (time.monotonic() - now)
                if wait > 0:
                    time.sleep(wait)
                if blocked:  # a window full (or a connection down): waiting on the broker
                    stats.blocked_s += time.monotonic() - now
            pump()
        t_active_end = time.monotonic()
        active_s = t_active_end - t0
        active_cpu = time.process_time() - cpu0
        # drain: wait for every PUBACK (QoS 1) or for the send buffers to empty (QoS 0)
        drain_end = time.monotonic() + cfg.drain_timeout
        while not stop.hard and time.monotonic() < drain_end:
            if wire and not any(c.out for c in conns) and not any(c.inflight for c in conns):
                break
            if not wire and not any(c.inflight for c in conns):
                break
            if wire and not all(c.up for c in conns):
                reconnect(time.monotonic())
            time.sleep(0.005)
            pump()
            if time.monotonic() >= next_report:
                report(time.monotonic())
                next_report = time.monotonic() + cfg.progress_interval
        if jobs is not None and not stop.hard:
            jobs.drain(max(1.0, drain_end - time.monotonic()))
        report(time.monotonic(), final=True)
    finally:
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        sel.close()
    elapsed = time.monotonic() - t0
    snap = snapshot(time.monotonic())
    failures: dict[str, int] = {}
    for c in conns:
        for code, cnt in c.failures.items():
            failures[f"0x{code:02x}"] = failures.get(f"0x{code:02x}", 0) + cnt
    spec = fleet.spec
    summary: dict[str, Any] = {
        "devices": n_dev,
        "connections": k,
        "engine": cfg.engine,
        "qos": qos,
        "window": cfg.window,
        "broker": str(url),
        "root": cfg.root,
        "source": spec.source,
        "seed": spec.seed,
        "fields": spec.fields,
        "rate_target": rate,
        "period_ms": n_dev / rate * 1000.0,
        "speedup": spec.period * rate / n_dev,
        "end": end_reason,
        "active_s": round(active_s, 3),
        "elapsed_s": round(elapsed, 3),
        "sent": sent_total,
        "acked": snap["acked"] if qos else None,
        "failed": snap["failed"],
        "failures": failures,
        "in_flight_at_end": snap["in_flight"] if qos else 0,
        "rate_achieved": round(sent_total / active_s, 1) if active_s > 0 else 0.0,
        "behind_max": stats.behind_max,
        "blocked_s": round(stats.blocked_s, 3),
        "reconnects": sum(c.reconnects for c in conns),
        "resent": sum(c.resent for c in conns),
        "errors": stats.error_count + snap["failed"] + (jobs.error_count if jobs else 0),
        "error_messages": stats.errors,
        "cpu_s": round(active_cpu, 3),
        "cpu_us_per_sample": round(active_cpu / sent_total * 1e6, 2) if sent_total else None,
        "reboots": fleet.reboots(),
        "seq_start": spec.seq_start,
        **cfg.extra,
    }
    if jobs is not None:
        summary["jobs"] = jobs.summary()
    if n_dev <= 100_000:
        # what every device published: seq_start .. last_seq, no gaps
        summary["last_seq"] = {d: s - 1 for d, s in zip(fleet.ids, fleet.seq, strict=True)}
    return summary
