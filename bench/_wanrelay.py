"""A userspace WAN emulator: a TCP relay that delays and "loses" traffic.

This kernel has no ``tc netem`` (only rate-limiting qdiscs such as ``tbf``), so
the namespace topology tests (tests/test_topology.py) and the WAN benchmark
(bench/wan.py) put this relay on the bridge link: the site broker's bridge
connects to the relay, the relay connects to the cloud broker across the veth
pair (whose ``tbf`` qdiscs cap the bandwidth). Stdlib only, no continuum import.

    python -m bench._wanrelay --listen 127.0.0.1:18830 --target 10.77.0.2:8883 \\
        --delay-ms 50 --loss 0.01 --rto-ms 200:300 --seed 1

The model, per direction (edge -> cloud is "up", cloud -> edge is "down"):

* **delay**: every chunk read from one side is written to the other side
  ``delay`` after it was read (a FIFO: order and byte stream are preserved).
* **loss**: "1 % packet loss" is emulated at the TCP level, where a lost segment
  shows up not as missing bytes but as a stall: TCP retransmits it after the
  retransmission timeout (Linux: 200 ms minimum RTO, or a tail-loss probe at
  about 2 RTT) and the receiver holds everything behind it (head-of-line
  blocking). A chunk of ``n`` bytes is ``ceil(n / 1448)`` segments; with
  probability ``1 - (1 - loss) ** segments`` it is held for an extra time drawn
  uniformly from ``--rto-ms`` (default 200-300 ms), and the chunks behind it
  wait for it. Nothing is dropped, nothing reordered.
* **connection set-up**: the upstream connect starts one round trip late
  (the TCP handshake's RTT), then TLS and MQTT CONNECT pay the delay as data.
* **link down**: when the upstream connect fails (``ip link set ... down``
  removed the route), the relay closes that connection and stops listening
  until a probe connect to the target succeeds again (every 0.25 s): clients
  then get "connection refused" at once, as a direct connect over the cut link
  fails at once with "no route to host", rather than a connection that is
  accepted here and reset a round trip later.
* **bandwidth**: not here; ``tbf`` on the veth ends does it (real kernel
  queueing and drops under the cap, with real TCP retransmissions).
* **buffering**: at most ``--max-buffer`` bytes wait in each direction; beyond
  that the relay stops reading (TCP flow control pushes back to the sender), as
  a real path with a bounded bandwidth-delay product would.

The relay counts the bytes it carries each way (these are the bytes that cross
the WAN: MQTT, TLS records and all; not TCP/IP headers).

Control, one line each on stdin; each answer is one JSON line on stdout:
``stats`` (counters), ``reset`` (zero them, answer the old ones),
``set DELAY_MS LOSS`` (new conditions from now on), ``quit``.
At start it prints ``{"ready": true, "port": N}``. EOF on stdin stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MSS = 1448  # an Ethernet TCP segment's payload with timestamps

__all__ = ["Link", "Relay", "main"]


@dataclass
class Link:
    """The emulated WAN conditions of one relay."""

    delay_s: float = 0.050
    loss: float = 0.01
    rto_s: tuple[float, float] = (0.200, 0.300)
    max_buffer: int = 1 << 20
    seed: int | None = None


@dataclass
class _Counters:
    bytes: int = 0
    chunks: int = 0
    stalls: int = 0
    stall_s: float = 0.0
    max_queued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stall_s": round(self.stall_s, 3)}


@dataclass
class _Stats:
    up: _Counters = field(default_factory=_Counters)
    down: _Counters = field(default_factory=_Counters)
    connections: int = 0
    open: int = 0
    failed_connects: int = 0
    outages: int = 0
    since: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "up": self.up.as_dict(), "down": self.down.as_dict()}
        out["seconds"] = round(time.monotonic() - out.pop("since"), 3)
        return out


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    """Accepts on ``listen``, connects each accepted connection to ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], link: Link) -> None:
        self.listen = listen
        self.target = target
        self.link = link
        self.rng = random.Random(link.seed)
        self.stats = _Stats()
        self._server: asyncio.Server | None = None
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        port = int(self._server.sockets[0].getsockname()[1])
        self.listen = (self.listen[0], port)  # the same port when listening again
        return port

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    def set(self, args: str) -> dict[str, Any]:
        """``DELAY_MS LOSS``: new conditions, for chunks read from now on."""
        try:
            delay_ms, loss = (float(x) for x in args.split())
        except ValueError:
            return {"error": f"set wants DELAY_MS LOSS, got {args!r}"}
        self.link.delay_s = delay_ms / 1000.0
        self.link.loss = loss
        return {"delay_ms": delay_ms, "loss": loss}

    def reset(self) -> dict[str, Any]:
        old = self.stats.as_dict()
        opened = self.stats.open
        self.stats = _Stats()
        self.stats.open = opened
        return old

    # -- one connection ------------------------------------------------------------
    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # cancelled: the relay stops
            await self._relay(down_r, down_w)

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(down_w)
        _nodelay(down_w)
        up_w: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(2 * self.link.delay_s)  # the handshake's round trip
            try:
                up_r, writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), timeout=10
                )
            except (TimeoutError, OSError):
                self.stats.failed_connects += 1
                self._target_down()
                return
            up_w = writer
            self._writers.add(up_w)
            _nodelay(up_w)
            self.stats.connections += 1
            self.stats.open += 1
            try:
                pumps = [
                    asyncio.ensure_future(self._pump(down_r, up_w, "up")),
                    asyncio.ensure_future(self._pump(up_r, down_w, "down")),
                ]
                done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
                for t in pending:  # one side failed: the connection is gone
                    t.cancel()
                for t in done:
                    t.exception()  # retrieved, so asyncio does not log it
            finally:
                self.stats.open -= 1
        finally:
            for w in (down_w, up_w):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self._tasks.discard(task)

    def _target_down(self) -> None:
        """The target cannot be reached (the link is cut): stop listening until it
        can, so that a client's connect fails at once (connection refused), as a
        direct connect over the cut link would (no route to host), instead of
        succeeding here and being reset after a round trip."""
        if self._server is not None and self._probe is None:
            self._server.close()
            self._server = None
            self.stats.outages += 1
            self._probe = asyncio.ensure_future(self._await_target())

    async def _await_target(self) -> None:
        try:
            while True:  # until the target accepts a TCP connection again
                await asyncio.sleep(0.25)
                try:
                    _, w = await asyncio.wait_for(asyncio.open_connection(*self.target), 2)
                except (TimeoutError, OSError):
                    continue
                w.close()
                break
            self._server = await asyncio.start_server(self._accept, *self.listen)
        finally:
            self._probe = None

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Copy ``reader`` to ``writer`` through the delay line of ``direction``."""
        link = self.link
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        queued = 0
        ready = asyncio.Event()  # the queue is non-empty
        room = asyncio.Event()  # the queue is under max_buffer
        room.set()
        last_release = 0.0

        async def read() -> None:
            nonlocal queued, last_release
            while True:
                await room.wait()
                data = await reader.read(65536)
                now = loop.time()
                c = getattr(self.stats, direction)
                release = now + link.delay_s
                if data:
                    c.bytes += len(data)
                    c.chunks += 1
                    segments = math.ceil(len(data) / MSS)
                    if link.loss > 0 and self.rng.random() < 1 - (1 - link.loss) ** segments:
                        extra = self.rng.uniform(*link.rto_s)
                        c.stalls += 1
                        c.stall_s += extra
                        release += extra
                release = max(release, last_release)
                last_release = release
                queue.append((release, data))
                queued += len(data)
                c.max_queued = max(c.max_queued, queued)
                if queued >= link.max_buffer:
                    room.clear()
                ready.set()
                if not data:
                    return

        async def write() -> None:
            nonlocal queued
            while True:
                await ready.wait()
                release, data = queue[0]
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                queued -= len(data)
                if queued < link.max_buffer:
                    room.set()
                if not queue:
                    ready.clear()
                if not data:  # EOF from the reader's side: half-close the other
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        rt = asyncio.ensure_future(read())
        wt = asyncio.ensure_future(write())
        try:
            await asyncio.gather(rt, wt)
        finally:
            rt.cancel()
            wt.cancel()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _range_ms(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    a = float(lo) / 1000.0
    b = float(hi) / 1000.0 if hi else a
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected LO[:HI] milliseconds, got {text!r}")
    return a, b


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench._wanrelay",
        description="TCP relay emulating WAN delay and loss (see the module docstring).",
    )
    p.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT (port 0: any)")
    p.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to connect to")
    p.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay (default 50)")
    p.add_argument(
        "--loss", type=float, default=0.01, help="per-segment loss probability (default 0.01)"
    )
    p.add_argument(
        "--rto-ms",
        type=_range_ms,
        default=(0.200, 0.300),
        help="stall of a lost segment, LO[:HI] ms (default 200:300)",
    )
    p.add_argument(
        "--max-buffer", type=int, default=1 << 20, help="bytes queued per direction (default 1 MiB)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the loss draws")
    return p


async def _serve(args: argparse.Namespace) -> None:
    link = Link(args.delay_ms / 1000.0, args.loss, args.rto_ms, args.max_buffer, args.seed)
    relay = Relay(args.listen, args.target, link)
    port = await relay.start()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "port": port}) + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            cmd = line.decode(errors="replace").strip()
            if not line or cmd == "quit":
                break
            if cmd == "stats":
                answer = relay.stats.as_dict()
            elif cmd == "reset":
                answer = relay.reset()
            elif cmd.startswith("set "):
                answer = relay.set(cmd[4:])
            else:
                answer = {"error": f"unknown command {cmd!r}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        await relay.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
