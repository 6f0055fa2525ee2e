"""Helpers for tests/test_deploy.py: run deploy/ansible against this machine
(connection local, every path under a temporary directory), read what it
rendered (systemd units, environment files) and start the services the way
their units would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent
HASH_PASSWORD = ANSIBLE_DIR / "scripts" / "hash-password"
RENDER_TEMPLATE = ANSIBLE_DIR / "scripts" / "render-template"

# What the wheel needs from the source tree (pyproject's packages and readme).
_WHEEL_SOURCES = (
    "pyproject.toml",
    "README.md",
    "continuum_mqtt",
    "gateway",
    "cloudnode",
    "edgeagent",
    "firmware-sim",
)


def tool(name: str) -> str | None:
    """An executable of this venv (ansible-playbook, ansible-lint), if installed."""
    exe = BIN / name
    return str(exe) if exe.exists() else None


def ansible_env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
    }


def hash_password(password: str) -> str:
    out = subprocess.run(
        [sys.executable, str(HASH_PASSWORD)],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def render_template(path: Path, values: dict[str, Any]) -> str:
    """One of the roles' templates rendered as Ansible would (scripts/render-template)."""
    import runpy

    render = runpy.run_path(str(RENDER_TEMPLATE))["render"]
    return str(render(path, values))


def build_wheel(dest: Path) -> Path:
    """A continuum wheel from a copy of the source tree (the build leaves the
    checkout untouched)."""
    src = dest / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".mypy_cache")
    for name in _WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, src / name)
    wheels = dest / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("continuum_mqtt-*.whl")
    return wheel


def run_ansible(tmp: Path, argv: list[str], timeout: float) -> tuple[int, str]:
    """An ansible command run in deploy/ansible with :func:`ansible_env`: its
    exit status and output."""
    proc = subprocess.run(
        argv, cwd=ANSIBLE_DIR, env=ansible_env(tmp), capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_playbook(tmp: Path, inventory: Path, *extra: str, timeout: float = 600) -> tuple[int, str]:
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", *extra]
    return run_ansible(tmp, argv, timeout)


_RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    tail = output[output.rindex("PLAY RECAP") :]
    return {
        m.group(1): {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
        for m in _RECAP.finditer(tail)
    }


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported 'changed' (default callback output)."""
    names, current = [], ""
    for line in output.splitlines():
        m = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        if m:
            current = m.group(1)
        elif line.startswith("changed:"):
            names.append(current)
    return names


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit file -> {section: {key: [values in order]}} (no line continuations)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, {}).setdefault(key.strip(), []).append(value.strip())
    return out


def parse_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads the lines we write: KEY="value" with
    backslash escapes, or KEY=value."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        env[key.strip()] = value
    return env


def unit_command(unit: Path) -> tuple[list[str], dict[str, str], str]:
    """What systemd would run for ``unit``: argv, environment and working directory."""
    svc = parse_unit(unit)["Service"]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "TMPDIR")}
    for value in svc.get("EnvironmentFile", []):
        env.update(parse_env_file(Path(value.lstrip("-"))))
    for value in svc.get("Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    (exec_start,) = svc["ExecStart"]
    return shlex.split(exec_start), env, svc.get("WorkingDirectory", ["/"])[0]


def stable_port() -> int:
    """A free port below the ephemeral range: the config names it minutes before
    mosquitto binds it, and an outgoing connection could take an ephemeral one."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


class Mqtt:
    """A paho MQTT 5 client over TLS that records what happens to it."""

    def __init__(
        self,
        port: int,
        ca_file: str,
        username: str | None,
        password: str | None,
        client_id: str = "",
    ) -> None:
        self.port = port
        self.c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.c.tls_set_context(ssl.create_default_context(cafile=ca_file))
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack = threading.Event()
        self.reason: Any = None
        self.messages: list[paho.MQTTMessage] = []
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.connects = 0
        # subscribed again after a reconnect (mosquitto 2.0.11 closes the
        # connection of a client whose PUBLISH it refused, and paho's session
        # ends with the connection)
        self._filters: list[str] = []
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        if not reason.is_failure:
            self.connects += 1
            if self.connects > 1 and self._filters:
                c.subscribe([(f, 1) for f in self._filters])
        self.connack.set()

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: list[Any], props: Any) -> None:
        self.subacks[mid] = reasons

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        self.pubacks[mid] = reason

    def connect(self, timeout: float = 10.0) -> Any:
        """Connect; returns the CONNACK reason code (None if the broker just closed)."""
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=10)
        except OSError:
            return None
        self.c.loop_start()
        self.connack.wait(timeout)
        return self.reason

    def subscribe(self, topic: str, timeout: float = 5.0) -> list[Any]:
        self._filters.append(topic)
        _, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None
        end = time.monotonic() + timeout
        while mid not in self.subacks and time.monotonic() < end:
            time.sleep(0.02)
        return self.subacks[mid]

    def publish(
        self, topic: str, payload: bytes, timeout: float = 5.0, properties: Any = None
    ) -> Any:
        """Publish at QoS 1; returns the PUBACK's reason code (None if none came)."""
        info = self.c.publish(topic, payload, qos=1, properties=properties)
        end = time.monotonic() + timeout
        while info.mid not in self.pubacks and time.monotonic() < end:
            time.sleep(0.02)
        return self.pubacks.get(info.mid)

    def received(self, topic_prefix: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def dump_inventory(path: Path, inventory: dict[str, Any]) -> Path:
    """YAML is a superset of JSON: the inventory is written as JSON."""
    path.write_text(json.dumps(inventory, indent=2))
    return path
