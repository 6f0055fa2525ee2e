"""Issue 6: deploy/ansible applied for real on this machine.

One host (connection local) plays broker, gateway, cloud node and edge board,
with every path under a temporary directory: nothing under /etc is touched.
The playbook runs twice (the second run must change nothing), then the test
starts mosquitto, the gateway and a node exactly as their rendered config and
units say (no systemd here), and talks to them over TLS as a device: a
forecaster fed with the device's metrics, a remote call, and the ACL refusing
what a device must not do. The edge venv is built for real (light install
from a wheel of this checkout); the gateway and node run from this venv.

The cloud node's own venv is built for real too (torch CPU wheel first, then
continuum-mqtt[node]; about 35 s and 1.1 GB); ``CONTINUUM_DEPLOY_FULL=0`` runs
the node from this venv instead, for a quicker local run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest
from continuum_dev.testing import find_mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import continuum_mqtt
from continuum_mqtt import Forbidden, UnknownObject
from continuum_mqtt.samples import encode_sample

from ._deploy import (
    HASH_PASSWORD,
    REPO,
    Mqtt,
    build_wheel,
    changed_tasks,
    dump_inventory,
    hash_password,
    parse_unit,
    recap,
    render_template,
    run_ansible,
    run_playbook,
    stable_port,
    tool,
    unit_command,
    wait_port,
)

pytestmark = pytest.mark.skipif(
    tool("ansible-playbook") is None,
    reason="ansible-core is not installed in this venv (pip install -e '.[dev]')",
)

HOST = "deploytest"
SITE = "sitetest"
DEV_S = "dev-s"
ROOT = "fleet/v1"
NODE = "n1"
DEV_A, DEV_B, DEV_C = "dev-a", "dev-b", "dev-c"
ADMIN = "observer"  # an admin account of the broker (acl: admin) and of the services
FORECASTER = "continuum_node.forecast.Forecaster"
COUNTER = "examples.counter.Counter"
POOL = "examples.pool.Hasher"  # a stateless class: its pool is served by the node
# bytes of the files of continuum-mqtt and its dependencies, and its top-level packages
EDGE_SIZE = """
import json
from importlib import metadata
from pathlib import Path
total = 0
for name in ("continuum-mqtt", "paho-mqtt", "cbor2", "psutil"):
    dist = metadata.distribution(name)
    files = [Path(str(dist.locate_file(f))) for f in dist.files or []]
    total += sum(f.stat().st_size for f in files if f.is_file())
top = metadata.distribution("continuum-mqtt").read_text("top_level.txt") or ""
print(json.dumps({"bytes": total, "top_level": sorted(top.split())}))
"""
FULL = os.environ.get("CONTINUUM_DEPLOY_FULL", "1") != "0"


@dataclass
class Deployment:
    tmp: Path
    inventory: Path
    inv: dict[str, Any]
    port: int
    passwords: dict[str, str]
    runs: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def hostvars(self) -> dict[str, Any]:
        return self.inv["all"]["hosts"][HOST]

    def path(self, var: str) -> Path:
        return Path(self.hostvars[var])

    @property
    def ca_file(self) -> str:
        return str(self.path("edgeagent_conf_dir") / "continuum-ca.crt")

    def mqtt(self, user: str | None, password: str | None = None, client_id: str = "") -> Mqtt:
        if user is not None and password is None:
            password = self.passwords[user]
        return Mqtt(self.port, self.ca_file, user, password, client_id)

    def client(self, user: str, timeout: float = 30.0) -> continuum_mqtt.Client:
        """The Python client with ``user``'s account, over TLS (use it with ``with``)."""
        return continuum_mqtt.Client(
            self.url(user), root=ROOT, ca_file=self.ca_file, timeout=timeout
        )

    def url(self, user: str) -> str:
        return f"mqtts://{user}:{self.passwords[user]}@127.0.0.1:{self.port}"

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _application_folder(tmp: Path) -> str:
    """A folder holding a copy of examples/, as an operator ships application classes."""
    apps = tmp / "apps"
    shutil.copytree(
        REPO / "examples", apps / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    return str(apps)


def _inventory(tmp: Path, ports: dict[str, int], wheel: Path, pw: dict[str, str]) -> dict[str, Any]:
    port = ports["tls"]
    d = {k: str(tmp / k) for k in ("etc", "var", "opt", "units", "pki", "run")}
    base_python = shutil.which("python3", path="/usr/bin") or getattr(
        sys, "_base_executable", "python3"
    )
    hostvars: dict[str, Any] = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "continuum_root": ROOT,
        "continuum_pki_dir": d["pki"],
        # the services' admins (--admin): the observer account
        "continuum_admins": [ADMIN],
        # broker
        "broker_install_package": False,
        "broker_run_user": "root",
        "broker_group": "root",
        "broker_conf_dir": f"{d['etc']}/mosquitto",
        "broker_persistence_dir": f"{d['var']}/lib/mosquitto",
        "broker_pid_file": f"{d['run']}/mosquitto.pid",
        "broker_tls_port": port,
        "broker_tls_bind": "127.0.0.1",
        "broker_tls_san": ["DNS:localhost", "IP:127.0.0.1"],
        # the cloud broker: a second TLS listener for the site broker's bridge
        "broker_kind": "cloud",
        "broker_bridge_port": ports["bridge"],
        "broker_bridge_bind": "127.0.0.1",
        "broker_users": [
            {"name": f"bridge-{SITE}", "acl": "bridge", "reply_users": [DEV_S]},
            {
                "name": "svc-gateway",
                "acl": "gateway",
                "fleet_metrics": True,  # reads dev/+/status, dev/+/forecast (docs/metrics.md)
                "password_hash": hash_password(pw["svc-gateway"]),
            },
            {
                "name": f"svc-{NODE}",
                "acl": "node",
                "node_id": NODE,
                "password_hash": hash_password(pw[f"svc-{NODE}"]),
            },
            {"name": ADMIN, "acl": "admin", "password_hash": hash_password(pw[ADMIN])},
            {"name": DEV_A, "acl": "device", "password_hash": hash_password(pw[DEV_A])},
            {"name": DEV_B, "acl": "device", "password_hash": hash_password(pw[DEV_B])},
        ],
        # the cloud services run from this venv (the node venv's real path,
        # torch first, unless CONTINUUM_DEPLOY_FULL=0)
        "gateway_manage_user": False,
        "gateway_user": "root",
        "gateway_group": "root",
        "gateway_venv_create": False,
        "gateway_venv": sys.prefix,
        "gateway_conf_dir": f"{d['etc']}/continuum",
        "gateway_state_dir": f"{d['var']}/lib/continuum-gateway",
        "gateway_unit_dir": d["units"],
        "gateway_broker_host": "127.0.0.1",
        "gateway_broker_port": port,
        "gateway_password": pw["svc-gateway"],
        # Prometheus endpoints (docs/metrics.md) and the scrape files, here on this host
        "gateway_metrics_port": ports["gw_metrics"],
        "gateway_metrics_host": "127.0.0.1",
        "gateway_prometheus_dir": f"{d['etc']}/prometheus",
        "cloudnode_metrics_port": ports["node_metrics"],
        "cloudnode_metrics_host": "127.0.0.1",
        "cloudnode_prometheus_dir": f"{d['etc']}/prometheus",
        "cloudnode_manage_user": False,
        "cloudnode_user": "root",
        "cloudnode_group": "root",
        "cloudnode_id": NODE,
        "cloudnode_modules": ["examples.counter", "examples.pool", "continuum_node.forecast"],
        # examples/ is not in the wheel: shipped beside it as an application folder (--path)
        "cloudnode_paths": [_application_folder(tmp)],
        "cloudnode_torch_threads": 1,
        "cloudnode_venv_create": FULL,
        "cloudnode_venv": f"{d['opt']}/node" if FULL else sys.prefix,
        "cloudnode_python": base_python,
        "cloudnode_wheel_src": str(wheel),
        "cloudnode_wheel_dir": f"{d['opt']}/wheels",
        "cloudnode_conf_dir": f"{d['etc']}/continuum",
        "cloudnode_state_dir": f"{d['var']}/lib/continuum-node",
        "cloudnode_unit_dir": d["units"],
        "cloudnode_broker_host": "127.0.0.1",
        "cloudnode_broker_port": port,
        "cloudnode_password": pw[f"svc-{NODE}"],
        # the edge board: its venv is built for real
        "edgeagent_manage_user": False,
        "edgeagent_user": "root",
        "edgeagent_group": "root",
        "edgeagent_device": DEV_A,
        "edgeagent_venv": f"{d['opt']}/edgeagent",
        "edgeagent_python": base_python,
        "edgeagent_wheel_src": str(wheel),
        "edgeagent_wheel_dir": f"{d['opt']}/wheels",
        "edgeagent_conf_dir": f"{d['etc']}/edgeagent",
        "edgeagent_state_dir": f"{d['var']}/lib/edgeagent",
        "edgeagent_unit_dir": d["units"],
        "edgeagent_broker_host": "127.0.0.1",
        "edgeagent_broker_port": port,
        "edgeagent_password": pw[DEV_A],
        "edgeagent_sampling_interval": 0.2,
        "edgeagent_jobs": {
            "forecast_every": 0,
            "train_after": 0,
            "train_every": 0,
            "train_interval": 0,
            "train_epochs": 1,
            "alert_band": 15.0,
        },
    }
    # an edge site's broker, bridged to the cloud broker above
    site: dict[str, Any] = {
        k: v
        for k, v in hostvars.items()
        if k.startswith("ansible_")
        or k.startswith("continuum_")
        or k
        in (
            "broker_install_package",
            "broker_run_user",
            "broker_group",
            "broker_tls_bind",
            "broker_tls_san",
        )
    }
    site.update(
        {
            "broker_kind": "site",
            "broker_conf_dir": f"{d['etc']}/site/mosquitto",
            "broker_persistence_dir": f"{d['var']}/lib/site-mosquitto",
            "broker_pid_file": f"{d['run']}/site-mosquitto.pid",
            "broker_tls_port": ports["site"],
            "broker_bridge_name": f"bridge-{SITE}",
            "broker_bridge_cloud_address": f"127.0.0.1:{ports['bridge']}",
            "broker_bridge_keepalive": 5,
            "broker_bridge_restart": "1 2",
            "broker_users": [
                {"name": DEV_S, "acl": "device", "password_hash": hash_password(pw[DEV_S])},
            ],
        }
    )
    groups = ("brokers", "gateways", "cloudnodes", "edge")
    children: dict[str, Any] = {g: {"hosts": {HOST: {}}} for g in groups}
    children["brokers"]["hosts"][SITE] = {}
    return {"all": {"hosts": {HOST: hostvars, SITE: site}, "children": children}}


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is required (scripts/setup installs it)")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required")
    tmp = tmp_path_factory.mktemp("deploy")
    wheel = build_wheel(tmp / "build")
    users = ("svc-gateway", f"svc-{NODE}", ADMIN, DEV_A, DEV_B, DEV_C, DEV_S)
    # a quote and a backslash: the env file and the password file must keep them
    pw = {u: f'{uuid.uuid4().hex[:12]}"\\{u}' for u in users}
    names = ("tls", "bridge", "site", "gw_metrics", "node_metrics")
    ports = {name: stable_port() for name in names}
    assert len(set(ports.values())) == len(names)
    port = ports["tls"]
    # what the OS provides: the unit directory, mosquitto's run directory
    (tmp / "units").mkdir()
    (tmp / "run").mkdir()
    inv = _inventory(tmp, ports, wheel, pw)
    d = Deployment(tmp, dump_inventory(tmp / "hosts.yml", inv), inv, port, pw)
    for _ in range(2):
        rc, out = run_playbook(tmp, d.inventory)
        (tmp / f"apply{len(d.runs) + 1}.log").write_text(out)
        d.runs.append(out)
        assert rc == 0, out[-6000:]
    try:
        yield d
    finally:
        d.stop_all()


@pytest.fixture(scope="module")
def services(deploy: Deployment) -> Iterator[Deployment]:
    """mosquitto with the rendered config; gateway and node as their units say."""
    d = deploy
    conf = d.path("broker_conf_dir") / "mosquitto.conf"
    d.start("mosquitto", [find_mosquitto() or "mosquitto", "-c", str(conf)], dict(os.environ), "/")
    wait_port(d.port)
    units = d.path("gateway_unit_dir")
    for name, unit in (("gateway", "continuum-gateway"), ("node", "continuum-node")):
        argv, env, cwd = unit_command(units / f"{unit}.service")
        d.start(name, argv, env, cwd)
    obs = d.mqtt("observer")
    assert obs.connect() == 0
    try:
        obs.subscribe(f"{ROOT}/+/+/status")
        obs.subscribe(f"{ROOT}/gateway/status")
        _wait(
            lambda: (
                _online(obs, f"{ROOT}/node/{NODE}/status")
                and _online(obs, f"{ROOT}/gateway/status")
            ),
            60,
            lambda: d.log("node")[-3000:] + d.log("gateway")[-3000:] + d.log("mosquitto")[-3000:],
            d.procs,
        )
    finally:
        obs.close()
    yield d


def _online(m: Mqtt, topic: str) -> bool:
    import cbor2

    msgs = [x for x in m.received(topic) if x.topic == topic]
    return bool(msgs) and cbor2.loads(msgs[-1].payload).get("state") == "online"


def _wait(
    pred: Any, timeout: float, why: Any = lambda: "", procs: dict[str, Any] | None = None
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
        if procs and any(p.poll() is not None for p in procs.values()):
            dead = [n for n, p in procs.items() if p.poll() is not None]
            raise RuntimeError(f"{dead} exited\n{why()}")
    raise TimeoutError(f"condition not met in {timeout} s\n{why()}")


# -- static checks -------------------------------------------------------------


def test_syntax_check_and_lint(tmp_path: Path) -> None:
    syntax = [tool("ansible-playbook") or "", "--syntax-check", "site.yml"]
    code, output = run_ansible(tmp_path, syntax, timeout=120)
    assert code == 0, output
    lint = tool("ansible-lint")
    if lint is None:
        pytest.skip("ansible-lint is not installed in this venv")
    code, output = run_ansible(
        tmp_path, [lint, "--offline", "--profile", "production", "--nocolor"], timeout=300
    )
    assert code == 0, output


def test_hash_password_is_what_mosquitto_writes(tmp_path: Path) -> None:
    line = hash_password("s3cret")
    algo, rounds, _salt, digest = line.split("$")[1:]
    assert (algo, rounds) == ("7", "101") and len(digest) == 88
    # the password never goes on the command line: a stray argument is an error
    out = subprocess.run(
        [sys.executable, str(HASH_PASSWORD), "s3cret"], input="x", capture_output=True, text=True
    )
    assert out.returncode != 0


def test_protocol_md_lists_the_acl_the_broker_role_renders() -> None:
    """docs/protocol.md section 21 shows, rule for rule, what acl.j2 renders."""
    users = [
        {"name": "svc-gateway", "acl": "gateway"},
        {"name": "svc-n1", "acl": "node", "node_id": "n1"},
        {"name": "bridge-site1", "acl": "bridge", "reply_users": ["opi-01"]},
        {"name": "ops", "acl": "admin"},
    ]
    template = REPO / "deploy" / "ansible" / "roles" / "broker" / "templates" / "acl.j2"
    rendered = render_template(template, {"broker_root": "continuum/v1", "broker_users": users})
    doc = (REPO / "docs" / "protocol.md").read_text()
    listing = doc.split("\n### The ACL\n", 1)[1].split("```\n", 2)[1]

    def rules(text: str) -> list[str]:
        return [x for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]

    assert rules(listing) == rules(rendered)


# -- the apply -------------------------------------------------------------------


def test_apply_twice_second_changes_nothing(deploy: Deployment) -> None:
    for host in (HOST, SITE):
        first, second = (recap(out)[host] for out in deploy.runs)
        assert first["failed"] == 0 and first["changed"] > 0
        assert second["failed"] == 0 and second["unreachable"] == 0
        assert second["changed"] == 0, changed_tasks(deploy.runs[1])


def test_edge_venv_is_light(deploy: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    venv = deploy.path("edgeagent_venv")
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("==")[0].lower() for line in out.split()}
    assert {"continuum-mqtt", "paho-mqtt", "cbor2", "psutil"} <= names
    assert not names & {"torch", "numpy", "pandas", "cloudpickle", "sqlite-utils"}, names
    assert (venv / "bin" / "edgeagent").exists()
    # what the edge install holds: continuum-mqtt and its three dependencies, under
    # 5 MiB; the wheel carries no examples, tests, benchmarks or dev tools
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", EDGE_SIZE], capture_output=True, text=True, check=True
    )
    installed = json.loads(probe.stdout)
    assert installed["bytes"] < 5 * 2**20, installed
    assert not {"examples", "tests", "bench", "continuum_dev"} & set(installed["top_level"])
    size = [line for line in deploy.runs[0].splitlines() if '"msg": "edge venv ' in line]
    assert size, "the role reports the edge venv size"
    with capsys.disabled():
        msg = size[0].split('"msg": ')[1].strip(' "')
        print(f"\n[deploy] {msg}")


@pytest.mark.skipif(not FULL, reason="CONTINUUM_DEPLOY_FULL=0: the node runs from this venv")
def test_node_venv_has_the_cpu_build_of_torch(deploy: Deployment) -> None:
    venv = deploy.path("cloudnode_venv")
    py = str(venv / "bin" / "python")
    out = subprocess.run(
        [py, "-c", "import torch, continuum_node.forecast; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.endswith("+cpu"), out
    listed = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    assert "nvidia" not in listed and "continuum-mqtt==" in listed


def test_rendered_files(deploy: Deployment) -> None:
    d = deploy
    etc = d.path("broker_conf_dir")
    conf = (etc / "mosquitto.conf").read_text()
    for line in (
        "allow_anonymous false",
        "per_listener_settings false",
        f"listener {d.port} 127.0.0.1",
        "set_tcp_nodelay true",
        "max_queued_messages 0",
    ):
        assert line in conf
    passwd = (etc / "continuum.passwd").read_text().splitlines()
    # the bridge logs in with its certificate: no password entry
    assert [p.split(":")[0] for p in passwd] == [
        "svc-gateway",
        f"svc-{NODE}",
        "observer",
        DEV_A,
        DEV_B,
    ]
    assert "require_certificate true" in (etc / "conf.d" / "continuum-bridges.conf").read_text()
    assert all(p.split(":", 1)[1].startswith("$7$101$") for p in passwd)
    assert oct((etc / "continuum.passwd").stat().st_mode & 0o777) == "0o640"
    assert oct((etc / "certs" / "server.key").stat().st_mode & 0o777) == "0o640"
    edge = d.path("edgeagent_conf_dir")
    secret = edge / "password"
    assert secret.read_text() == d.passwords[DEV_A]
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    cfg = tomllib.loads((edge / "edgeagent.toml").read_text())
    assert cfg["device"] == DEV_A and cfg["broker"]["root"] == ROOT
    assert cfg["broker"]["url"] == f"mqtts://127.0.0.1:{d.port}"
    assert cfg["broker"]["password_file"] == str(secret)
    node = tomllib.loads((d.path("cloudnode_conf_dir") / "cloudnode.toml").read_text())
    assert node["modules"] == ["examples.counter", "examples.pool", "continuum_node.forecast"]
    assert node["state_dir"] == str(d.path("cloudnode_state_dir"))
    env = d.path("gateway_conf_dir") / "gateway.env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    # tenancy (issue 13): admins, no anonymous callers, a secret pool group made
    # once on the controller (the second apply changed nothing: the same one)
    gateway = tomllib.loads((d.path("gateway_conf_dir") / "gateway.toml").read_text())
    for cfg in (node, gateway):
        assert cfg["admins"] == [ADMIN] and cfg["allow_anonymous"] is False
    secret = Path(d.hostvars["continuum_pki_dir"]) / "pool-group"
    assert node["pool_group"] == secret.read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", node["pool_group"])
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    acl = (etc / "continuum.acl").read_text()
    for line in (
        f"pattern write {ROOT}/node/+/call/%u",
        f"pattern write {ROOT}/pool/+/call/%u",
        f"pattern write {ROOT}/gateway/call/%u",
        f"topic read {ROOT}/pool/+/call/+",
        f"topic write {ROOT}/gateway/call/{DEV_S}",
    ):
        assert line + "\n" in acl, line
    # no account may publish on a bare call topic but the services and admins
    assert not re.search(r"^pattern write \S+/call$", acl, re.M)
    assert node["pool_group"] not in acl


def test_prometheus_scrape_files_name_the_ports_the_services_get(deploy: Deployment) -> None:
    d = deploy
    prom = Path(d.hostvars["gateway_prometheus_dir"])
    gateway = tomllib.loads((d.path("gateway_conf_dir") / "gateway.toml").read_text())
    node = tomllib.loads((d.path("cloudnode_conf_dir") / "cloudnode.toml").read_text())
    assert gateway["metrics_port"] == d.hostvars["gateway_metrics_port"]
    assert gateway["fleet_metrics"] == 100
    assert node["metrics_port"] == d.hostvars["cloudnode_metrics_port"]
    for svc, cfg in (("gateway", gateway), ("node", node)):
        scrape = (prom / f"continuum-{svc}.yml").read_text()
        assert f"job_name: continuum-{svc}" in scrape
        assert f'"{prom}/targets/continuum-{svc}-*.json"' in scrape
        (target,) = json.loads((prom / "targets" / f"continuum-{svc}-{HOST}.json").read_text())
        assert target["targets"] == [f"{HOST}:{cfg['metrics_port']}"]
        assert target["labels"]["continuum_root"] == ROOT
    acl = (d.path("broker_conf_dir") / "continuum.acl").read_text()
    assert f"topic read {ROOT}/dev/+/status\n" in acl


def test_metrics_endpoints_of_the_deployed_services(services: Deployment) -> None:
    import urllib.request

    def scrape(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    gw_port = services.hostvars["gateway_metrics_port"]
    _wait(lambda: 'continuum_gateway_nodes{state="online"} 1.0' in scrape(gw_port), 30)
    assert "continuum_fleet_devices" in scrape(gw_port)
    node = scrape(services.hostvars["cloudnode_metrics_port"])
    assert f'continuum_node_info{{node="{NODE}"}} 1.0' in node


def test_units(deploy: Deployment) -> None:
    units = deploy.path("gateway_unit_dir")
    files = [
        units / f
        for f in ("continuum-gateway.service", "continuum-node.service", "edgeagent.service")
    ]
    for f in files:
        svc = parse_unit(f)["Service"]
        assert svc["Type"] == ["notify"] and svc["Restart"] == ["on-failure"]
        assert int(svc["WatchdogSec"][0]) > 0 and svc["User"]
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
            assert svc[key] == ["yes"], (f.name, key)
        assert svc["ProtectSystem"] == ["strict"]
        assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
        argv = svc["ExecStart"][0].split()
        assert os.access(argv[0], os.X_OK), argv
        assert "--config" in argv
        # paths outside /var/lib and /etc (as here) become ReadWritePaths=
        assert svc.get("StateDirectory") or svc.get("ReadWritePaths")
    assert parse_unit(files[2])["Service"]["ExecStart"][0].split()[1:3] == ["run", "--config"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze: unit syntax not verified")
    out = subprocess.run(
        [analyze, "verify", *map(str, files)], capture_output=True, text=True, timeout=60
    )
    # only complaints about our files count (not the host's other units)
    ours = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if any(f.name in line for f in files)
    ]
    assert not ours, out.stdout + out.stderr


# -- the deployed services -----------------------------------------------------


def test_device_end_to_end(services: Deployment) -> None:
    d = services
    with continuum_mqtt.Client(d.url(DEV_A), root=ROOT, ca_file=d.ca_file, timeout=30) as client:
        counter = client.stub(COUNTER).create(start=1)
        assert counter.add(2) == 3
        fc = client.stub(FORECASTER).create(alias=f"{DEV_A}/forecaster")
        client.bind_metrics(fc, DEV_A, "ingest")
        dev = d.mqtt(DEV_A)
        assert dev.connect() == 0
        try:
            for seq in range(1, 11):
                rc = dev.publish(
                    f"{ROOT}/dev/{DEV_A}/metrics",
                    encode_sample(DEV_A, seq, time.time(), {"cpu": 10.0 + seq, "mem": 50.0}),
                )
                assert rc is not None and not rc.is_failure, rc
        finally:
            dev.close()
        _wait(lambda: fc.info()["rows"] >= 10, 20, lambda: d.log("node")[-3000:])
        assert fc.tail(2) == [[19.0, 50.0], [20.0, 50.0]]


def test_broker_refuses_anonymous_and_bad_passwords(services: Deployment) -> None:
    d = services
    for user, password in ((None, None), (DEV_A, "wrong"), ("nobody", "x")):
        m = d.mqtt(user, password)
        try:
            reason = m.connect()
            assert reason is None or reason.is_failure, (user, reason)
        finally:
            m.close()


def test_device_acl(services: Deployment) -> None:
    d = services
    obs, a = d.mqtt("observer"), d.mqtt(DEV_A)
    assert obs.connect() == 0 and a.connect() == 0
    try:
        for topic in (f"{ROOT}/dev/#", f"{ROOT}/node/{NODE}/ctl", f"{ROOT}/reply/{DEV_B}/#"):
            assert not obs.subscribe(topic)[0].is_failure
        # A device may read neither another device's replies nor all replies.
        # mosquitto 2.0.11 grants such a SUBSCRIBE and then delivers nothing the
        # ACL does not allow to read; either is a refusal.
        for topic in (f"{ROOT}/reply/{DEV_B}/#", f"{ROOT}/reply/#"):
            a.subscribe(topic)
        obs.publish(f"{ROOT}/reply/{DEV_B}/x", b"secret reply")
        obs.publish(f"{ROOT}/reply/svc-gateway/gw-gateway", b"secret reply")
        # its own metrics pass; B's metrics, node status and node ctl do not
        sample = encode_sample(DEV_B, 1, time.time(), {"cpu": 1.0, "mem": 1.0})
        assert not a.publish(f"{ROOT}/dev/{DEV_A}/metrics", sample).is_failure
        for topic in (
            f"{ROOT}/dev/{DEV_B}/metrics",
            f"{ROOT}/node/{NODE}/status",
            f"{ROOT}/node/{NODE}/ctl",
            f"{ROOT}/gateway/status",
            f"{ROOT}/reply/{DEV_B}/x",
        ):
            rc = a.publish(topic, b"forged")
            assert rc is not None and rc.is_failure, (topic, rc)
        _wait(lambda: obs.received(f"{ROOT}/dev/{DEV_A}/metrics"), 5)
        time.sleep(0.5)
        assert not obs.received(f"{ROOT}/dev/{DEV_B}/")
        assert not obs.received(f"{ROOT}/node/{NODE}/ctl")
        assert not a.received(f"{ROOT}/reply/")
        assert [m.payload for m in obs.received(f"{ROOT}/reply/{DEV_B}/")] == [b"secret reply"]
        assert not a.received(f"{ROOT}/reply/")
    finally:
        a.close()
        obs.close()
    # the node's retained status is still the node's own
    with continuum_mqtt.Client(d.url(DEV_B), root=ROOT, ca_file=d.ca_file, timeout=10) as client:
        assert any(n["id"] == NODE and n["state"] == "online" for n in client.nodes())


def test_new_account_applies_by_reload(services: Deployment) -> None:
    """Adding a device changes only the password file: mosquitto is sent SIGHUP
    (it keeps running, with its connections) and the device can log in."""
    d = services
    inv = d.inv
    inv["all"]["hosts"][HOST]["broker_users"].append(
        {"name": DEV_C, "acl": "device", "password_hash": hash_password(d.passwords[DEV_C])}
    )
    dump_inventory(d.inventory, inv)
    before = d.mqtt(DEV_C)
    assert before.connect().is_failure
    before.close()
    rc, out = run_playbook(d.tmp, d.inventory)
    (d.tmp / "apply3.log").write_text(out)
    assert rc == 0, out[-4000:]
    # the password and ACL files, then a reload: no restart
    assert changed_tasks(out) == [
        "broker : Write the password file (hashes from the inventory)",
        "broker : Write the ACL file",
        "broker : Reload mosquitto by its pid file",
    ], changed_tasks(out)
    assert "RUNNING HANDLER [broker : Report the restart mosquitto needs]" not in out
    assert d.procs["mosquitto"].poll() is None
    after = d.mqtt(DEV_C)
    try:
        _wait(lambda: after.connect() == 0, 5)
    finally:
        after.close()


def test_edge_agent_daemon_from_its_unit(services: Deployment) -> None:
    """The deployed agent (edge venv, rendered unit and config, password file,
    CA) samples the board, creates its forecaster and feeds it over TLS."""
    d = services
    unit = d.path("edgeagent_unit_dir") / "edgeagent.service"
    argv, env, cwd = unit_command(unit)
    probe = subprocess.run([argv[0], "run", "--help"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("this edgeagent has no 'run' daemon yet")
    d.start("edgeagent", argv, env, cwd)
    alias = f"{DEV_A}/forecaster"
    with continuum_mqtt.Client(d.url(DEV_A), root=ROOT, ca_file=d.ca_file, timeout=10) as client:

        def fed() -> bool:
            try:
                return bool(client.get(alias).info()["rows"] >= 5)
            except (continuum_mqtt.UnknownObject, continuum_mqtt.RemoteError):  # not created yet
                return False

        _wait(
            fed,
            60,
            lambda: d.log("edgeagent")[-3000:] + d.log("node")[-2000:],
            {"edgeagent": d.procs["edgeagent"]},
        )
        assert client.get(alias)._owner == DEV_A
    # the device's forecaster is its own: another device does not even see it
    with d.client(DEV_B) as other, pytest.raises(UnknownObject):
        other.get(alias)
    status = d.path("edgeagent_state_dir") / "status.json"
    _wait(status.exists, 10)
    d.procs["edgeagent"].send_signal(signal.SIGTERM)
    assert d.procs.pop("edgeagent").wait(20) == 0, d.log("edgeagent")[-3000:]


def test_site_broker_bridges_to_the_cloud(services: Deployment) -> None:
    """The site broker (its own host in the inventory) bridges to the cloud
    broker over TLS with the client certificate the playbook made; a device of
    the site calls an object on the cloud node and gets its replies back."""
    d = services
    site = d.inv["all"]["hosts"][SITE]
    conf = Path(site["broker_conf_dir"]) / "mosquitto.conf"
    d.start(
        "site-mosquitto", [find_mosquitto() or "mosquitto", "-c", str(conf)], dict(os.environ), "/"
    )
    port = int(site["broker_tls_port"])
    wait_port(port)
    dev = Mqtt(port, d.ca_file, DEV_S, d.passwords[DEV_S])
    assert dev.connect() == 0
    try:
        dev.subscribe(f"{ROOT}/gateway/status")
        _wait(
            lambda: _online(dev, f"{ROOT}/gateway/status"),
            30,
            lambda: d.log("site-mosquitto")[-3000:] + d.log("mosquitto")[-3000:],
        )
    finally:
        dev.close()
    url = f"mqtts://{DEV_S}:{d.passwords[DEV_S]}@127.0.0.1:{port}"
    with continuum_mqtt.Client(url, root=ROOT, ca_file=d.ca_file, timeout=20) as client:
        counter = client.stub(COUNTER).create(start=40)
        assert counter.add(2) == 42
    assert f"bridge-{SITE}" in d.log("mosquitto")


# -- tenancy: dev-b attacking dev-a on the secured deployment (issue 13) -------

NOT_AUTHORIZED = 0x87  # MQTT 5 PUBACK reason code: the broker's ACL refused the publish


def _request(reply: str, method: str, **fields: Any) -> tuple[bytes, Properties]:
    """A request by hand: its CBOR body and a Response Topic of our choice."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply
    return cbor2.dumps({"method": method, "id": uuid.uuid4().hex, **fields}), props


def _replies(m: Mqtt, topic: str) -> list[dict[str, Any]]:
    return [cbor2.loads(x.payload) for x in m.received(topic) if x.topic == topic]


def _code(reply: dict[str, Any]) -> str:
    assert reply["kind"] == "error", reply
    return str(reply["error"]["code"])


def test_broker_pins_the_caller_level_to_the_account(services: Deployment) -> None:
    """dev-b cannot publish a request as dev-a (``call/dev-a``) nor as the
    anonymous caller (the bare call topic): the broker refuses it (PUBACK 0x87)
    and drops it. On its own level the request reaches the node, which refuses
    dev-b dev-a's object on its own; dev-a's object is untouched."""
    d = services
    with d.client(DEV_A) as a:
        counter = a.stub(COUNTER).create(start=0)
        b = d.mqtt(DEV_B)
        assert b.connect() == 0
        try:
            reply = f"{ROOT}/reply/{DEV_B}/forger-{uuid.uuid4().hex[:8]}"
            b.subscribe(reply)
            body, props = _request(reply, "add", obj=counter._id, args=[1000])
            for topic in (
                f"{ROOT}/node/{NODE}/call/{DEV_A}",
                f"{ROOT}/node/{NODE}/call",
                f"{ROOT}/pool/{POOL}/call/{DEV_A}",
                f"{ROOT}/pool/{POOL}/call",
                f"{ROOT}/gateway/call/{DEV_A}",
                f"{ROOT}/gateway/call",
            ):
                rc = b.publish(topic, body, properties=props)
                assert rc is not None and rc.value == NOT_AUTHORIZED, (topic, rc)
            rc = b.publish(f"{ROOT}/node/{NODE}/call/{DEV_B}", body, properties=props)
            assert rc is not None and not rc.is_failure, rc
            _wait(lambda: _replies(b, reply), 30, lambda: d.log("node")[-3000:])
            assert [_code(r) for r in _replies(b, reply)] == ["forbidden"]
        finally:
            b.close()
        assert counter.add(1) == 1


def test_a_device_sees_and_touches_only_its_own_objects(services: Deployment) -> None:
    """With its own account and the Python client, dev-b lists, resolves,
    calls, manages and names nothing of dev-a's; it may use its own objects."""
    d = services
    tag = uuid.uuid4().hex[:8]
    alias = f"{DEV_A}/counter-{tag}"
    with d.client(DEV_A) as a, d.client(DEV_B) as b:
        mine = a.stub(COUNTER).create(start=5, alias=alias)
        assert mine._owner == DEV_A and mine.add(1) == 6
        oid = str(mine._id)
        listed = b.objects()
        assert oid not in {o["id"] for o in listed}
        assert {o["owner"] for o in listed} <= {DEV_B}, listed
        for ref in (alias, oid):
            with pytest.raises(UnknownObject):
                b.get(ref)
        # straight to the node with the id alone: the node checks on its own
        b._locations[oid] = NODE
        stolen = continuum_mqtt.ObjectProxy(b, oid, COUNTER)
        for attempt in (lambda: stolen.add(1000), lambda: stolen.get()):
            with pytest.raises(Forbidden):
                attempt()
        # the directory: an object it may not see is unknown to it
        for attempt in (
            lambda: b.delete(oid),
            lambda: b.alias(oid, f"{DEV_B}/stolen-{tag}"),
            lambda: b.bind_metrics(oid, DEV_B, "add"),
            lambda: b.unbind_metrics(oid, DEV_A),
            lambda: b.grant(oid, DEV_B),
        ):
            with pytest.raises(UnknownObject):
                attempt()
        b.unalias(alias)  # as for a missing alias: neither done nor confirmed
        assert a.get(alias)._id == oid
        # names: only its own namespace
        for name in (f"{DEV_A}/forecaster", f"forecaster-{DEV_A}", f"{DEV_A}/x-{tag}"):
            with pytest.raises(Forbidden):
                b.stub(COUNTER).create(alias=name)
        own = b.stub(COUNTER).create(start=1, alias=f"{DEV_B}/counter-{tag}")
        assert own._owner == DEV_B and own.add(1) == 2
        assert own._id in {o["id"] for o in b.objects()}
        with pytest.raises(Forbidden):
            b.alias(own, f"{DEV_A}/counter-{tag}-2")
        with pytest.raises(Forbidden):  # the confused deputy: reading dev-a's metrics
            b.bind_metrics(own, DEV_A, "add")
        # granted: dev-b may call it, never manage it; revoked: nothing again
        a.grant(mine, DEV_B)
        assert b.get(alias).add(1) == 7
        for attempt in (
            lambda: b.delete(oid),
            lambda: b.alias(oid, f"{DEV_B}/granted-{tag}"),
            lambda: b.grant(oid, DEV_C),
            lambda: b.bind_metrics(oid, DEV_B, "add"),
        ):
            with pytest.raises(Forbidden):
                attempt()
        a.revoke(mine, DEV_B)
        with pytest.raises(Forbidden):
            stolen.add(1000)
        # where nodes run is for admins only
        assert all("host" not in n and "pid" not in n for n in b.nodes())
        # the victim: its object, alias and value as it left them
        assert a.get(alias)._id == oid and mine.get() == 7
        assert {o["id"] for o in a.objects()} >= {oid}
        assert own._id not in {o["id"] for o in a.objects()}


def test_admins_manage_everything_and_anonymous_requests_are_refused(
    services: Deployment,
) -> None:
    """The services run with the inventory's admins (``continuum_admins``) and
    ``--no-anonymous``: an admin sees, calls and gives away any object; a request
    on a bare call topic (only services and admins may publish one) is refused."""
    d = services
    tag = uuid.uuid4().hex[:8]
    with d.client(DEV_A) as a, d.client(ADMIN) as admin:
        mine = a.stub(COUNTER).create(start=1, alias=f"{DEV_A}/given-{tag}")
        oid = str(mine._id)
        assert oid in {o["id"] for o in admin.objects()}
        assert admin.get(oid).add(1) == 2
        assert any("host" in n and "pid" in n for n in admin.nodes())
        with pytest.raises(Forbidden):
            a.set_owner(mine, DEV_B)
        admin.set_owner(mine, DEV_B)
        with d.client(DEV_B) as b:
            assert b.get(oid).add(1) == 3
        with pytest.raises(Forbidden):  # the node knows the new owner too
            mine.add(1)
        obs = d.mqtt(ADMIN)
        assert obs.connect() == 0
        try:
            reply = f"{ROOT}/reply/{ADMIN}/anon-{tag}"
            obs.subscribe(f"{reply}/#")
            for where, topic, method, fields in (
                ("gateway", f"{ROOT}/gateway/call", "nodes", {}),
                ("node", f"{ROOT}/node/{NODE}/call", "get", {"obj": oid}),
            ):
                body, props = _request(f"{reply}/{where}", method, **fields)
                rc = obs.publish(topic, body, properties=props)
                assert rc is not None and not rc.is_failure, (topic, rc)
            for where in ("gateway", "node"):
                _wait(lambda w=where: _replies(obs, f"{reply}/{w}"), 30)
                assert [_code(r) for r in _replies(obs, f"{reply}/{where}")] == ["forbidden"]
        finally:
            obs.close()


def test_a_device_cannot_take_a_service_client_id(services: Deployment) -> None:
    """The services (and the agent) connect with private client ids: a device
    that connects as ``node-n1``, ``gw-gateway`` or ``edgeagent-dev-a`` (the
    old, predictable ones) is let in, and disconnects nobody."""
    d = services
    mosquitto_log = d.log("mosquitto")
    # e.g. "New client connected from 127.0.0.1:50412 as node-n1-3f2a... (p5, c0, k30, u'svc-n1')."
    for service in (f"node-{NODE}", "gw-gateway"):
        assert re.search(rf" as {service}-[0-9a-f]{{16}} \(", mosquitto_log), service
        assert f" as {service} (" not in mosquitto_log
    obs = d.mqtt(ADMIN)
    assert obs.connect() == 0
    thieves: list[Mqtt] = []
    try:
        obs.subscribe(f"{ROOT}/node/{NODE}/status")
        obs.subscribe(f"{ROOT}/gateway/status")
        _wait(lambda: _online(obs, f"{ROOT}/node/{NODE}/status"), 30)
        _wait(lambda: _online(obs, f"{ROOT}/gateway/status"), 30)
        seen = len(obs.messages)
        logs = {name: len(d.log(name)) for name in ("node", "gateway", "mosquitto")}
        with d.client(DEV_A) as a:
            counter = a.stub(COUNTER).create(start=0)
            for cid in (f"node-{NODE}", "gw-gateway", f"edgeagent-{DEV_A}"):
                m = d.mqtt(DEV_B, client_id=cid)
                thieves.append(m)
                assert m.connect() == 0, cid  # mosquitto's ACL file cannot refuse an id
            # the node and the gateway still serve dev-a, right after
            assert counter.add(1) == 1
            assert a.get(str(counter._id)) == counter
            assert a.stub(COUNTER).create(start=2).add(1) == 3
        assert all(m.c.is_connected() for m in thieves)
        for name in ("node", "gateway"):
            assert "lost the broker connection" not in d.log(name)[logs[name] :], name
        broker_log = d.log("mosquitto")[logs["mosquitto"] :]
        assert "already connected" not in broker_log
        # no new connection of a service (a reconnect after being thrown out)
        assert not re.search(rf" as (node-{NODE}|gw-gateway)-[0-9a-f]{{16}} \(", broker_log)
        statuses = [cbor2.loads(m.payload) for m in obs.messages[seen:] if m.payload]
        assert all(s.get("state") == "online" for s in statuses), statuses
    finally:
        for m in thieves:
            m.close()
        obs.close()


def test_replies_go_only_to_the_callers_own_tree(services: Deployment) -> None:
    """dev-b names dev-a's reply topic in its requests (Response Topic, or the
    ``reply_to`` field): neither the node nor the gateway publishes there."""
    d = services
    tag = uuid.uuid4().hex[:8]
    victim = f"{ROOT}/reply/{DEV_A}/client-{tag}"
    probe = f"{ROOT}/reply/{DEV_B}/probe-{tag}"
    with d.client(DEV_B) as b:
        own = b.stub(COUNTER).create(start=0)
    obs, attacker = d.mqtt(ADMIN), d.mqtt(DEV_B)
    assert obs.connect() == 0 and attacker.connect() == 0
    try:
        obs.subscribe(f"{ROOT}/reply/{DEV_A}/#")
        obs.subscribe(f"{probe}/#")
        node_call = f"{ROOT}/node/{NODE}/call/{DEV_B}"
        gateway_call = f"{ROOT}/gateway/call/{DEV_B}"
        for topic, method, fields in (
            (node_call, "add", {"obj": own._id, "args": [1]}),
            (gateway_call, "nodes", {}),
        ):
            body, props = _request(victim, method, **fields)
            assert not attacker.publish(topic, body, properties=props).is_failure
            # an MQTT 3.1.1 request names its reply topic in the body
            body = cbor2.dumps({**cbor2.loads(body), "reply_to": victim})
            assert not attacker.publish(topic, body).is_failure
        # then the same requests with dev-b's own reply topic: once answered,
        # the ones before them have been handled
        for where, topic, method, fields in (
            ("node", node_call, "add", {"obj": own._id, "args": [1]}),
            ("gateway", gateway_call, "nodes", {}),
        ):
            body, props = _request(f"{probe}/{where}", method, **fields)
            assert not attacker.publish(topic, body, properties=props).is_failure
        for where in ("node", "gateway"):
            _wait(lambda w=where: _replies(obs, f"{probe}/{w}"), 30)
            assert _replies(obs, f"{probe}/{where}")[0]["kind"] == "result"
        time.sleep(1.0)  # the gateway's workers: a late publish would show by now
        assert obs.received(f"{ROOT}/reply/{DEV_A}/") == []
    finally:
        attacker.close()
        obs.close()


def test_a_device_cannot_steal_pool_calls(services: Deployment) -> None:
    """dev-b joins the pools' shared subscriptions under the default group name
    (mosquitto's ACL file grants the SUBSCRIBE, then drops the deliveries: with
    the node in that group, dev-a's pool calls ran out their deadlines): the
    nodes serve the pools under the deployment's secret group, so every pool
    call of dev-a is still served, by the node."""
    d = services
    thieves = [d.mqtt(DEV_B) for _ in range(3)]
    try:
        for m in thieves:
            assert m.connect() == 0
            # a share is its group and its filter: the filters the nodes use
            # (protocol.md section 14), and wider ones
            for topic in (
                f"{ROOT}/pool/{POOL}/call/+",
                f"{ROOT}/pool/{POOL}/call",
                f"{ROOT}/pool/+/call/+",
                f"{ROOT}/pool/+/call/#",
            ):
                m.subscribe(f"$share/continuum/{topic}")  # granted or refused: either will do
        with d.client(DEV_A, timeout=60) as a:
            pool = a.pool(POOL)
            calls = [pool.whoami.future() for _ in range(24)]
            served = [f.result(90) for f in calls]
            assert pool.digest(b"x", rounds=1) == hashlib.sha256(b"x").hexdigest()
        assert set(served) == {d.procs["node"].pid}
        assert all(not m.received(ROOT) for m in thieves)
    finally:
        for m in thieves:
            m.close()
