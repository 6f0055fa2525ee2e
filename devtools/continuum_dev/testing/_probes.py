"""Probes: wait for a condition, for a retained status, for a line from a child;
read a process's memory."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

import cbor2
import paho.mqtt.client as paho

from continuum_mqtt.service import BrokerURL

__all__ = ["import_guard", "rss_mb", "wait_for", "wait_line", "wait_status"]


def wait_for(
    pred: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition not met",
) -> None:
    """Until ``pred()`` is true; :class:`TimeoutError` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout} s")


def wait_status(
    url: str,
    topic: str,
    want: str,
    timeout: float = 20.0,
    proc: subprocess.Popen[Any] | None = None,
    pred: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Until the retained or live status on ``topic`` has state ``want`` (and,
    with ``pred``, satisfies it); returns it. With ``proc``, fails at once
    (RuntimeError) if that process exits."""
    broker = BrokerURL.parse(url)
    got = threading.Event()
    box: dict[str, Any] = {}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        try:
            body = cbor2.loads(msg.payload)
        except Exception:
            return
        if isinstance(body, dict) and body.get("state") == want and (pred is None or pred(body)):
            box.update(body)
            got.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if broker.username:
        c.username_pw_set(broker.username, broker.password)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        end = time.monotonic() + timeout
        while not got.wait(0.1):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before {topic} became {want!r}")
            if time.monotonic() > end:
                raise TimeoutError(f"{topic} did not become {want!r} within {timeout} s")
    finally:
        c.disconnect()
        c.loop_stop()
    return box


def wait_line(stream: IO[Any], want: str, timeout: float = 15.0) -> bool:
    """Whether the next line read from ``stream`` (a child's stdout) is ``want``,
    read within ``timeout`` seconds."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        return False
    line = box[0]
    return bool((line.decode() if isinstance(line, bytes) else line).strip() == want)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MB (Linux: /proc)."""
    cur = peak = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def import_guard(modules: Iterable[str], message: str = "imported") -> str:
    """Python source to put before a script run with ``python -c``: importing any
    of ``modules`` (or a submodule) raises ImportError(``"<message> <name>"``)."""
    return textwrap.dedent(
        f"""
        import sys
        class Forbid:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(modules)!r}:
                    raise ImportError({message!r} + " " + name)
                return None
        sys.meta_path.insert(0, Forbid())
        """
    )
