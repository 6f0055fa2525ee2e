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

import json
import os
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

import pytest
from continuum_dev.testing import find_mosquitto

import continuum_mqtt
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
FORECASTER = "continuum_node.forecast.Forecaster"
COUNTER = "examples.counter.Counter"
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

    def mqtt(self, user: str | None, password: str | None = None) -> Mqtt:
        if user is not None and password is None:
            password = self.passwords[user]
        return Mqtt(self.port, self.ca_file, user, password)

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
                "password_hash": hash_password(pw["svc-gateway"]),
            },
            {
                "name": f"svc-{NODE}",
                "acl": "node",
                "node_id": NODE,
                "password_hash": hash_password(pw[f"svc-{NODE}"]),
            },
            {"name": "observer", "acl": "admin", "password_hash": hash_password(pw["observer"])},
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
        "cloudnode_manage_user": False,
        "cloudnode_user": "root",
        "cloudnode_group": "root",
        "cloudnode_id": NODE,
        "cloudnode_modules": ["examples.counter", "continuum_node.forecast"],
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
    users = ("svc-gateway", f"svc-{NODE}", "observer", DEV_A, DEV_B, DEV_C, DEV_S)
    # a quote and a backslash: the env file and the password file must keep them
    pw = {u: f'{uuid.uuid4().hex[:12]}"\\{u}' for u in users}
    ports = {"tls": stable_port(), "bridge": stable_port(), "site": stable_port()}
    assert len(set(ports.values())) == 3
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
    assert node["modules"] == ["examples.counter", "continuum_node.forecast"]
    assert node["state_dir"] == str(d.path("cloudnode_state_dir"))
    env = d.path("gateway_conf_dir") / "gateway.env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"


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
        fc = client.stub(FORECASTER).create(alias=f"forecaster-{DEV_A}")
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
    alias = f"forecaster-{DEV_A}"
    with continuum_mqtt.Client(d.url(DEV_B), root=ROOT, ca_file=d.ca_file, timeout=10) as client:

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
