"""Start a local mosquitto for the demo, benchmarks and tests.

The configuration carries the settings our latency and zero-loss figures
depend on (docs/protocol.md section 2): TCP_NODELAY on, no per-client message
cap but a bound on queued bytes, an expiry for abandoned sessions, and, with a
persistence folder, a save of the broker's state every 1-2 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ._process import preexec

__all__ = [
    "BROKER_SETTINGS",
    "PERSISTENCE_SETTINGS",
    "LocalBroker",
    "find_mosquitto",
    "free_port",
]

BROKER_SETTINGS = """\
# Settings continuum depends on; keep them in every broker config.
set_tcp_nodelay true
# 0 = no cap: mosquitto's default of 1000 silently drops QoS 1 messages to slow subscribers.
max_queued_messages 0
max_inflight_messages 0
max_packet_size 16777216
# Bound bytes instead: payload bytes of the QoS 1/2 messages held for one client
# (queued and in flight). Beyond it mosquitto drops that client's new messages
# and logs "Outgoing messages are being dropped for client ..." (docs/protocol.md section 2).
max_queued_bytes 67108864
# Sessions that asked never to expire (MQTT 3.1.1 clean session 0) end after 7 days
# offline; an MQTT 5 session ends at min(its Session Expiry Interval, this).
persistent_client_expiration 7d
"""

PERSISTENCE_SETTINGS = """\
# Save the whole in-memory database (write, fsync, rename) every 1-2 s:
# mosquitto 2.0 writes nothing else, so a crash (SIGKILL, OOM) loses what was
# acknowledged since the last save. Measured in bench/broker_persistence.py.
autosave_interval 1
autosave_on_changes false
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


class LocalBroker:
    """A mosquitto on 127.0.0.1 and a free port, for as long as the context lasts."""

    def __init__(
        self,
        port: int | None = None,
        extra_config: str = "",
        log_path: str | None = None,
        persistence_dir: str | None = None,
        persistence_settings: str = PERSISTENCE_SETTINGS,
    ) -> None:
        """``persistence_dir``: keep sessions, queued messages and retained
        messages across a restart of this broker, and across a crash up to the
        last save (``persistence_settings``: when to save; every 1-2 s by default)."""
        self.port = port or free_port()
        self.extra_config = extra_config
        self.persistence_settings = persistence_settings
        self._dir = tempfile.mkdtemp(prefix="continuum-broker-")
        self.conf_path = Path(self._dir) / "mosquitto.conf"
        self.log_path = log_path or os.path.join(self._dir, "mosquitto.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.persistence_dir = persistence_dir

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError(
                "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto mosquitto-clients)"
            )
        conf = self.conf_path
        # Started as root, mosquitto drops to the 'mosquitto' user, which cannot
        # write into our private temporary folders: this broker is ours, keep it.
        as_root = "user root\n" if os.geteuid() == 0 else ""
        if self.persistence_dir:
            os.makedirs(self.persistence_dir, exist_ok=True)
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{as_root}"
            + (
                f"persistence true\npersistence_location {self.persistence_dir.rstrip('/')}/\n"
                f"{self.persistence_settings}"
                if self.persistence_dir
                else "persistence false\n"
            )
            + f"{BROKER_SETTINGS}{self.extra_config}\n"
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec(),
        )
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash. What it had not saved is lost; :meth:`start` again
        (same port, same persistence folder) to restart it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
