"""A bridged edge-to-cloud topology in Linux network namespaces, built and torn
down by the tests (tests/test_topology.py) and the WAN benchmark (bench/wan.py).
The gateway, nodes and edge agents are spawned by continuum_dev.testing's
Deployment (behind ``ip netns exec``), as are the brokers and the relay.

::

    namespace EDGE (ctm-edge-XXXX)                   namespace CLOUD (ctm-cloud-XXXX)
    site mosquitto 127.0.0.1:1883                    cloud mosquitto 127.0.0.1:1883 (gateway, nodes)
      bridge (2 connections, TLS) --> WAN relay        10.77.0.2:8883 TLS (site bridges)
                                    127.0.0.1:18883 --> veth 10.77.0.1 <==tbf==> 10.77.0.2 veth
    edge client, metrics publisher                   gateway, nodes n1 n2

Both ends of the veth pair live in namespaces created here; nothing is
addressed in the root namespace and only the private test network
10.77.0.0/24 and loopback are used. The WAN relay (bench/_wanrelay.py) adds
delay and loss; ``tbf`` on both veth ends caps the bandwidth; cutting the link
is ``ip link set <veth> down`` in EDGE.

Processes run in a namespace with ``ip netns exec``; code of the test process
itself (an edge client, a publisher) runs in one by creating its sockets and
threads inside :meth:`Netns.entered` (``setns`` on the calling thread: threads
and sockets created meanwhile stay in that namespace).

The bridge configuration is the one the Ansible broker role ships
(deploy/ansible/roles/broker/templates/, the only copy; deploy/bridge/README.md),
rendered as Ansible renders it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from continuum_dev.testing import BROKER_SETTINGS, Agent, Deployment, find_mosquitto, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum_mqtt
from continuum_mqtt.service import Topics

REPO = Path(__file__).resolve().parent.parent
BRIDGE_TEMPLATES = REPO / "deploy" / "ansible" / "roles" / "broker" / "templates"
RENDER_TEMPLATE = REPO / "deploy" / "ansible" / "scripts" / "render-template"

EDGE_IP = "10.77.0.1"
CLOUD_IP = "10.77.0.2"
PREFIX = 24
LOCAL_PORT = 1883  # each namespace's broker, on its own loopback
BRIDGE_PORT = 8883  # the cloud broker's TLS listener for site bridges
RELAY_PORT = 18883  # the WAN relay, on EDGE's loopback

CLONE_NEWNET = 0x40000000

__all__ = [
    "CLOUD_IP",
    "EDGE_IP",
    "NO_WAN",
    "Netns",
    "SamplePublisher",
    "Topology",
    "Wan",
    "render_template",
    "unavailable_reason",
]


# -- host checks -------------------------------------------------------------------
def _run(cmd: list[str], timeout: float = 15.0, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unavailable_reason() -> str | None:
    """Why the namespace topology cannot be built here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); CI runs as root"
    for tool in ("ip", "tc", "openssl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if find_mosquitto() is None:
        return "mosquitto is not installed"
    probe = f"ctm-probe-{uuid.uuid4().hex[:8]}"
    try:
        _run(["ip", "netns", "add", probe])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` is not available here: {exc}"
    with contextlib.suppress(Exception):
        _run(["ip", "netns", "del", probe])
    return None


# -- namespaces ----------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Netns:
    """One network namespace created (and deleted) by us."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    def create(self) -> Netns:
        _run(["ip", "netns", "add", self.name])
        self.created = True
        self.ip("link", "set", "lo", "up")
        return self

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.name, *args])

    def run(self, *cmd: str, timeout: float = 15.0) -> str:
        return _run(self.exec_args(*cmd), timeout=timeout)

    def exec_args(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block (this thread) in the namespace; threads and sockets
        created in it stay there."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def pids(self) -> list[int]:
        out = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in out.split() if p.isdigit()]

    def delete(self) -> None:
        """Kill what is left running in it (all of it started by us), then delete it."""
        if not self.created:
            return
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        _run(["ip", "netns", "del", self.name], check=False)
        self.created = False


# -- configuration -------------------------------------------------------------------
def render_template(path: Path, values: dict[str, Any]) -> str:
    """Render one of the roles' templates with deploy/ansible/scripts/render-template
    (Jinja2 as Ansible runs it); an undefined variable is an error."""
    import runpy

    render = runpy.run_path(str(RENDER_TEMPLATE))["render"]
    return str(render(path, values))


def make_certs(d: Path, site: str) -> dict[str, str]:
    """A throw-away CA, a cloud broker certificate (SANs: the relay's and the
    cloud's test addresses) and a bridge client certificate (CN ``bridge-<site>``),
    EC P-256, made with the openssl CLI exactly as deploy/bridge/README.md shows."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [
            "openssl", "req", "-x509", *ec, "-days", "2",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
            "-subj", "/CN=continuum-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip

    def leaf(name: str, cn: str, ext: str) -> None:
        _run(
            [
                "openssl", "req", *ec, "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"), "-subj", f"/CN={cn}",
            ]
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext)
        _run(
            [
                "openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-days", "2",
                "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"),
            ]
        )  # fmt: skip

    # named as the templates read them from broker_cert_dir (deploy/bridge/README.md)
    leaf(
        "server",
        "cloud-broker",
        f"subjectAltName=IP:127.0.0.1,IP:{CLOUD_IP},DNS:cloud-broker\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    leaf(
        f"bridge-{site}",
        f"bridge-{site}",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    for f in d.iterdir():  # mosquitto may drop privileges before reading them
        f.chmod(0o644)
    d.chmod(0o755)
    return {
        "dir": str(d),
        "ca_name": "ca",
        "ca": str(d / "ca.crt"),
        "cloud_cert": str(d / "server.crt"),
        "cloud_key": str(d / "server.key"),
        "bridge_cert": str(d / f"bridge-{site}.crt"),
        "bridge_key": str(d / f"bridge-{site}.key"),
    }


# -- the WAN -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Wan:
    """Emulated conditions of the edge-cloud link."""

    delay_ms: float = 50.0  # each way, in the relay
    loss: float = 0.01  # per TCP segment, as a retransmission stall (see bench/_wanrelay.py)
    rate: str | None = "10mbit"  # tbf on both veth ends; None: no cap
    rto_ms: tuple[float, float] = (200.0, 300.0)
    seed: int = 7

    def describe(self) -> str:
        if not self.delay_ms and not self.loss and not self.rate:
            return "no WAN emulation"
        cap = f", {self.rate} each way" if self.rate else ""
        return f"{self.delay_ms:g} ms each way, {self.loss:.0%} segment loss{cap}"


NO_WAN = Wan(delay_ms=0.0, loss=0.0, rate=None)


class RelayControl:
    """The WAN relay process and its stdin/stdout control channel."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def _ask(self, line: str, timeout: float = 5.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read_line(timeout)

    def read_line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the WAN relay did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the WAN relay exited ({self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> dict[str, Any]:
        return self._ask("reset")

    def set(self, delay_ms: float, loss: float) -> dict[str, Any]:
        return self._ask(f"set {delay_ms} {loss}")


# -- processes ---------------------------------------------------------------------------
def _log_types() -> str:
    """Broker log levels; CONTINUUM_TOPOLOGY_DEBUG=1 logs every packet (and timestamps
    in ISO format) for post-mortems."""
    if os.environ.get("CONTINUUM_TOPOLOGY_DEBUG"):
        return "log_type all\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    return "log_type error\nlog_type warning\nlog_type notice\n"


class Topology:
    """The EDGE and CLOUD namespaces, the link, two brokers bridged by the shipped
    config, the WAN relay, a gateway and cloud nodes; everything stopped and
    deleted by :meth:`stop` (also after a failed :meth:`start`)."""

    def __init__(
        self,
        tmp: Path,
        wan: Wan = Wan(),
        *,
        site: str = "edge1",
        nodes: tuple[str, ...] = ("n1", "n2"),
        modules: tuple[str, ...] = ("examples.counter", "examples.sink", "examples.pool"),
        durable: tuple[str, ...] = ("n2",),
        keepalive: int = 5,
        restart_timeout: str = "1 2",  # base, cap (a single value is not honoured by 2.0.11)
        root: str | None = None,
        log_level: str = "INFO",
        site_extra: str = "",
        cloud_extra: str = "",
    ) -> None:
        self.tmp = Path(tmp)
        self.wan = wan
        self.site = site
        self.node_ids = nodes
        self.modules = modules
        self.durable = durable
        self.keepalive = keepalive
        self.restart_timeout = restart_timeout
        self.root = root or f"topo-{uuid.uuid4().hex[:8]}/continuum/v1"
        self.topics = Topics(self.root)
        self.log_level = log_level
        self.site_extra = site_extra  # appended to the brokers' configs (they override)
        self.cloud_extra = cloud_extra
        tag = uuid.uuid4().hex[:6]
        self.edge = Netns(f"ctm-edge-{tag}")
        self.cloud = Netns(f"ctm-cloud-{tag}")
        self.edge_if = f"ctme{tag}"  # interface names: at most 15 characters
        self.cloud_if = f"ctmc{tag}"
        self.bridge_name = f"bridge-{site}"
        # services run in CLOUD on its broker; edge processes pass prefix=EDGE's
        self.dep = Deployment(
            f"mqtt://127.0.0.1:{LOCAL_PORT}",
            self.tmp,
            root=self.root,
            cwd=REPO,
            pythonpath=[REPO],
            log_level=log_level,
            prefix=self.cloud.exec_args(),
        )
        self.procs = self.dep.procs
        self.relay: RelayControl | None = None
        self._clients: list[Any] = []
        self.link_up = False

    # -- building ----------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Topology:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.edge.create()
        self.cloud.create()
        # both ends are created directly inside our namespaces, never in the root one
        _run(
            ["ip", "link", "add", self.edge_if, "netns", self.edge.name, "type", "veth",
             "peer", "name", self.cloud_if, "netns", self.cloud.name]
        )  # fmt: skip
        self.edge.ip("addr", "add", f"{EDGE_IP}/{PREFIX}", "dev", self.edge_if)
        self.cloud.ip("addr", "add", f"{CLOUD_IP}/{PREFIX}", "dev", self.cloud_if)
        self.edge.ip("link", "set", self.edge_if, "up")
        self.cloud.ip("link", "set", self.cloud_if, "up")
        self.link_up = True
        self.set_rate(self.wan.rate)
        certs = make_certs(self.tmp / "tls", self.site)
        self._start_cloud_broker(certs)
        self._start_relay()
        self._start_site_broker(certs)
        self.wait_bridge(timeout=30)
        self.dep.start_gateway(wait=False)
        for nid in self.node_ids:
            state = self.tmp / f"{nid}-state" if nid in self.durable else None
            self.dep.start_node(nid, modules=self.modules, state_dir=state, wait=False)
        self._wait_nodes(self.node_ids, timeout)

    def set_rate(self, rate: str | None) -> None:
        """The bandwidth cap on both veth ends (tbf), or none."""
        for ns, dev in ((self.edge, self.edge_if), (self.cloud, self.cloud_if)):
            if self._has_tbf(ns, dev):
                ns.run("tc", "qdisc", "del", "dev", dev, "root")
            if rate:
                # burst: a few full frames; latency: at most 200 ms of queue, then drops
                ns.run(
                    "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", rate, "burst", "32kb", "latency", "200ms",
                )  # fmt: skip

    @staticmethod
    def _has_tbf(ns: Netns, dev: str) -> bool:
        return " tbf " in ns.run("tc", "qdisc", "show", "dev", dev)

    def _spawn(
        self, ns: Netns, name: str, cmd: list[str], *, pipes: bool = False
    ) -> subprocess.Popen[bytes]:
        pipe = subprocess.PIPE if pipes else None
        stdin = pipe or subprocess.DEVNULL
        return self.dep.spawn(name, cmd, prefix=ns.exec_args(), stdin=stdin, stdout=pipe, bufsize=0)

    def _broker_conf(self, name: str, text: str) -> Path:
        path = self.tmp / f"{name}.conf"
        path.write_text(text)
        path.chmod(0o644)
        return path

    def _wait_listening(self, ns: Netns, port: int, name: str, timeout: float = 10) -> None:
        def up() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start: {self.log(name)[-2000:]}")
            with ns.entered():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    return True
                except OSError:
                    return False

        wait_for(up, timeout, what=f"{name} did not listen on port {port}")

    def _start_broker(self, ns: Netns, name: str, extra: str) -> None:
        """mosquitto on ``ns``'s loopback with the settings continuum depends on."""
        conf = self._broker_conf(
            name,
            f"# {name} (namespace {ns.name})\n"
            f"listener {LOCAL_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"user root\n{_log_types()}connection_messages true\n{BROKER_SETTINGS}\n{extra}\n",
        )
        self._spawn(ns, name, [find_mosquitto() or "mosquitto", "-c", str(conf)])
        self._wait_listening(ns, LOCAL_PORT, name)

    def _start_cloud_broker(self, certs: dict[str, str]) -> None:
        listener = render_template(
            BRIDGE_TEMPLATES / "cloud-bridge-listener.conf.j2",
            {
                "broker_bridge_port": BRIDGE_PORT,
                "broker_bridge_bind": CLOUD_IP,
                "broker_cert_dir": certs["dir"],
                "broker_tls_ca_name": certs["ca_name"],
                "broker_bridge_session_expiry": "1h",
            },
        )
        self._start_broker(self.cloud, "cloud-broker", f"{listener}\n{self.cloud_extra}")

    def _start_relay(self) -> None:
        w = self.wan
        proc = self._spawn(
            self.edge,
            "relay",
            [
                sys.executable, "-m", "bench._wanrelay",
                "--listen", f"127.0.0.1:{RELAY_PORT}", "--target", f"{CLOUD_IP}:{BRIDGE_PORT}",
                "--delay-ms", str(w.delay_ms), "--loss", str(w.loss),
                "--rto-ms", f"{w.rto_ms[0]}:{w.rto_ms[1]}", "--seed", str(w.seed),
            ],
            pipes=True,
        )  # fmt: skip
        self.relay = RelayControl(proc)
        ready = self.relay.read_line(15)
        if not ready.get("ready"):
            raise RuntimeError(f"WAN relay did not start: {ready}")

    def bridge_values(self, certs: dict[str, str]) -> dict[str, Any]:
        return {
            "broker_bridge_name": self.bridge_name,
            "broker_bridge_cloud_address": f"127.0.0.1:{RELAY_PORT}",  # the relay, on EDGE's loopback
            "broker_bridge_keepalive": self.keepalive,
            "broker_bridge_restart": self.restart_timeout,
            "broker_cert_dir": certs["dir"],
            "broker_tls_ca_name": certs["ca_name"],
            "broker_root": self.root,
            "broker_bridge_reply_filters": [f"reply/{self.site}/#"],
        }

    def _start_site_broker(self, certs: dict[str, str]) -> None:
        bridge = render_template(
            BRIDGE_TEMPLATES / "site-bridge.conf.j2", self.bridge_values(certs)
        )
        self._start_broker(self.edge, "site-broker", f"{bridge}\n{self.site_extra}")

    # -- state -------------------------------------------------------------------------
    def bridge_states(self, timeout: float = 2.0) -> dict[str, str]:
        """The site broker's view of each bridge connection: '1' up, '0' down
        (its retained local notifications)."""
        states: dict[str, str] = {}
        done = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            states[msg.topic.rsplit("/", 2)[-2]] = msg.payload.decode(errors="replace")
            if len(states) >= 2:
                done.set()

        with self.edge.entered():
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            c.on_message = on_message
            c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("$SYS/broker/connection/+/state")
            c.connect("127.0.0.1", LOCAL_PORT)
            c.loop_start()
        try:
            done.wait(timeout)
        finally:
            c.disconnect()
            c.loop_stop()
        return states

    def wait_bridge(self, timeout: float = 30.0) -> None:
        want = {self.bridge_name, f"{self.bridge_name}-replies"}

        def up() -> bool:
            states = self.bridge_states(1.0)
            return all(states.get(n) == "1" for n in want)

        wait_for(
            up,
            timeout,
            0.2,
            f"the bridge did not connect (site broker log: {self.log('site-broker')[-1500:]})",
        )

    def _wait_nodes(self, node_ids: tuple[str, ...] | list[str], timeout: float) -> None:
        """Until the gateway lists every node online, asked from the edge (so the
        whole bridged path works)."""
        with self.client(timeout=2.0) as c:
            self.dep.wait_nodes(node_ids, timeout, client=c)

    def start_node(self, nid: str, *extra: str, timeout: float = 30.0) -> None:
        self.dep.start_node(nid, *extra, modules=self.modules, wait=False)
        self._wait_nodes([nid], timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.dep.stop(name, sig, timeout=5.0)

    def log(self, name: str) -> str:
        return self.dep.log(name)

    # -- clients ---------------------------------------------------------------------------
    @property
    def edge_url(self) -> str:
        """The site broker, as the site's clients see it (with the site's username,
        so that their replies come under reply/<site>/)."""
        return f"mqtt://{self.site}@127.0.0.1:{LOCAL_PORT}"

    def client(self, **kw: Any) -> continuum_mqtt.Client:
        """An edge client: connected to the site broker only, from inside EDGE.
        Connected on creation; close it (or use it with ``with``)."""
        kw.setdefault("timeout", 20.0)
        c = continuum_mqtt.Client(self.edge_url, root=self.root, **kw)
        with self.edge.entered():
            c.connect()
        self._settle(c)
        return c

    @staticmethod
    def _settle(c: continuum_mqtt.Client, timeout: float = 5.0) -> None:
        """Wait until the client has seen the gateway's retained status.

        Work-around: the client resends every request in flight to the gateway
        when it first sees the gateway's (retained) status, and the gateway does
        not deduplicate by request id, so a ``create`` sent before that status
        arrived runs twice (with an alias: AliasTaken). Over a WAN the request is
        always still in flight then. Remove once the client resends only on an
        offline -> online transition (or the gateway deduplicates)."""
        state = getattr(c, "_node_state", None)
        if not isinstance(state, dict):
            time.sleep(0.5)
            return
        end = time.monotonic() + timeout
        while "" not in state and time.monotonic() < end:
            time.sleep(0.01)

    def cloud_client(self, **kw: Any) -> continuum_mqtt.Client:
        """A client on the cloud broker, from inside CLOUD (no bridge, no WAN)."""
        kw.setdefault("timeout", 20.0)
        c = continuum_mqtt.Client(f"mqtt://127.0.0.1:{LOCAL_PORT}", root=self.root, **kw)
        with self.cloud.entered():
            c.connect()
        self._settle(c)
        return c

    def spy(self, topic: str) -> TopicSpy:
        """A subscriber on the cloud broker (inside CLOUD) recording what the bridge
        delivered on ``topic``."""
        with self.cloud.entered():
            return TopicSpy("127.0.0.1", LOCAL_PORT, topic)

    def publisher(self, device: str, **kw: Any) -> SamplePublisher:
        """A metrics publisher on the site broker, from inside EDGE."""
        with self.edge.entered():
            return SamplePublisher("127.0.0.1", LOCAL_PORT, self.topics, device, **kw)

    def agent(self, device: str, interval: float) -> Agent:
        """The real edge agent (``edgeagent run``) inside EDGE, on the site
        broker, metrics only (the test binds the device's feed itself)."""
        agent = self.dep.start_agent(
            device,
            interval=interval,
            # the site broker: the same address as the cloud's, inside EDGE
            settings={"status_interval": 0.2, "broker": {"backoff_min": 0.2, "backoff_max": 2.0}},
            prefix=self.edge.exec_args(),
        )
        wait_for(
            lambda: agent.status().get("connected") is True, 15, what=f"agent-{device} connected"
        )
        return agent

    # -- the link ------------------------------------------------------------------------
    def cut(self) -> None:
        """Take the WAN link down (EDGE's veth end): nothing crosses, no endpoint is told."""
        self.edge.ip("link", "set", self.edge_if, "down")
        self.link_up = False

    def restore(self) -> None:
        self.edge.ip("link", "set", self.edge_if, "up")
        self.link_up = True

    # -- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        self.dep.close()
        self.relay = None
        for ns in (self.edge, self.cloud):
            with contextlib.suppress(Exception):
                ns.delete()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- metrics publisher and spy ---------------------------------------------------------
class TopicSpy:
    """Records the samples (their ``seq``) and DUP flags of every message on one
    topic, QoS 1, in arrival order."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import cbor2

        self._loads = cbor2.loads
        self.arrivals: list[tuple[int, bool]] = []
        self.sampled_at: dict[int, float] = {}  # seq -> the sample's ts (board clock)
        ready = threading.Event()
        c = self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: ready.set()
        c.on_message = self._on_message
        c.connect(host, port, keepalive=10)
        c.loop_start()
        if not ready.wait(10):
            self.close()
            raise TimeoutError(f"spy on {topic}: no SUBACK within 10 s")

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        try:
            body = self._loads(msg.payload)
            seq = int(body["seq"])
            self.arrivals.append((seq, bool(msg.dup)))
            self.sampled_at.setdefault(seq, float(body.get("ts", 0.0)))
        except Exception:  # not a sample: not ours to judge here
            pass

    def summary(self, total: int) -> dict[str, Any]:
        """Loss, duplicates and reordering of seqs 1..total as delivered."""
        seqs = [s for s, _ in self.arrivals]
        first: list[int] = []
        seen: set[int] = set()
        for s in seqs:
            if s not in seen:
                seen.add(s)
                first.append(s)
        late = [b for a, b in itertools.pairwise(first) if b < a]
        high = 0
        overtaken = []  # arrived after a higher seq had already arrived
        for s in first:
            if s < high:
                overtaken.append(s)
            high = max(high, s)
        return {
            "delivered": len(seqs),
            "missing": sorted(set(range(1, total + 1)) - seen),
            "duplicates": len(seqs) - len(seen),
            "dup_flagged": sum(1 for _, d in self.arrivals if d),
            "out_of_order": sorted(set(overtaken)),
            "order_breaks": len(late),
        }

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SamplePublisher:
    """A stand-in for the edge agent: samples in the agent's wire format
    (continuum_mqtt/samples.py), QoS 1, on a persistent session (clean start off,
    session expiry one hour), TCP_NODELAY; seq from 1."""

    def __init__(
        self, host: str, port: int, topics: Topics, device: str, *, session_expiry: int = 3600
    ) -> None:
        from continuum_mqtt.samples import encode_sample

        self._encode = encode_sample
        self.device = device
        self.topic = topics.metrics(device)
        self.seq = 0
        self.acked = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        c = self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"agent-{device}", protocol=paho.MQTTv5
        )
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.on_socket_open = _nodelay
        c.on_connect = lambda cl, u, f, rc, p: self._connected.set()
        c.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        c.connect(host, port, keepalive=10, clean_start=False, properties=props)
        c.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise TimeoutError("metrics publisher: no CONNACK within 10 s")

    def _on_publish(self, c: Any, u: Any, mid: Any, rc: Any, p: Any) -> None:
        with self._lock:
            self.acked += 1

    def publish(self) -> int:
        """One sample; returns its seq."""
        self.seq += 1
        payload = self._encode(
            self.device, self.seq, time.time(), {"cpu": 12.5, "mem": 40.0, "load1": 0.3}
        )
        self.client.publish(self.topic, payload, qos=1)
        return self.seq

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
