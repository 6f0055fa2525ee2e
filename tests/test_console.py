"""The operator console's logic, fast: accounts and hashing, sessions, CSRF and
roles through Starlette's TestClient, the fleet state, the MQTT feed's parsing
and the audited actions (fakes for the broker side; the browser tests run the
real thing: tests/test_console_browser.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cbor2
import pytest

with warnings.catch_warnings():  # starlette 1.x would rather have httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from continuum_console._actions import Actions, AuditLog
from continuum_console._app import COOKIE, Console, create_app
from continuum_console._auth import (
    AccountError,
    Accounts,
    LoginThrottle,
    Operator,
    Sessions,
    hash_password,
    verify_password,
)
from continuum_console._config import load_config
from continuum_console._mqtt import Feed
from continuum_console._state import FleetState

from continuum_mqtt import Forbidden, UnknownObject
from continuum_mqtt.service import BrokerURL, Message

FAST = {"n": 1 << 10}  # scrypt cost for tests only


def _accounts() -> Accounts:
    return Accounts.from_mapping(
        {
            "operators": {
                "alice": {"role": "admin", "password": hash_password("alice-pw-1", **FAST)},
                "bob": {"role": "readonly", "password": hash_password("bob-pw-12", **FAST)},
            }
        }
    )


# -- passwords and accounts ---------------------------------------------------------------
def test_password_hashes_verify_and_are_salted() -> None:
    h1, h2 = hash_password("correct horse", **FAST), hash_password("correct horse", **FAST)
    assert h1 != h2 and h1.startswith("scrypt$1024$8$1$")
    assert verify_password("correct horse", h1)
    assert not verify_password("correct hors", h1)
    default = hash_password("x" * 8)
    assert default.startswith("scrypt$32768$8$1$") and verify_password("x" * 8, default)


def test_accounts_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text(
        f'[operators.alice]\nrole = "admin"\npassword = "{hash_password("pw", **FAST)}"\n'
    )
    accts = Accounts.load(good)
    assert accts.authenticate("alice", "pw") == Operator(
        "alice", "admin", accts._ops["alice"].password_hash
    )
    assert accts.authenticate("alice", "nope") is None
    assert accts.authenticate("mallory", "pw") is None  # unknown: same cost, no answer
    for body, why in [
        ('[operators.a]\nrole = "root"\npassword = "x"\n', "role"),
        ('[operators.a]\npassword = "plaintext"\n', "password"),
        ('[operators.a]\npassword = "scrypt$3$8$1$AA==$AA=="\n', "password"),
        ('[operators.a]\nrole = "admin"\npassword = "x"\nshell = true\n', "only"),
        ("[others]\n", "unknown key"),
        ("not toml = = 1", ""),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(AccountError) as info:
            Accounts.load(bad)
        assert str(bad) in str(info.value) and why in str(info.value)


def test_hash_password_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "continuum_console", "hash-password", "--stdin"],
        input="s3cret-password\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert verify_password("s3cret-password", out)
    short = subprocess.run(
        [sys.executable, "-m", "continuum_console", "hash-password", "--stdin"],
        input="short\n",
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2 and "8 characters" in short.stderr


def test_config_options_and_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "console.toml"
    cfg_file.write_text('accounts = "/etc/a.toml"\nport = 9000\ncookie-secure = true\n')
    cfg = load_config(["--config", str(cfg_file), "--port", "9001"])
    assert (cfg.accounts, cfg.port, cfg.secure, cfg.history) == ("/etc/a.toml", 9001, True, 360)
    with pytest.raises(SystemExit):
        load_config(["--accounts", "a", "--tls-cert", "c.pem"])  # no key


# -- sessions and throttling ------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_sessions_expire_when_idle_and_after_their_ttl() -> None:
    clock = Clock()
    sessions = Sessions(idle=10, ttl=25, limit=3, clock=clock)
    op = Operator("alice", "admin", "")
    s = sessions.create(op)
    assert sessions.get(s.token) is s and s.is_admin
    clock.t += 9
    assert sessions.get(s.token) is s  # touched: idle restarts
    clock.t += 9
    assert sessions.alive(s)
    clock.t += 9  # 27 s old: past the ttl although not idle
    assert sessions.get(s.token) is None
    s2 = sessions.create(op)
    clock.t += 11
    assert sessions.get(s2.token) is None  # idle
    assert sessions.get(None) is None and sessions.get("forged") is None
    many = [sessions.create(op) for _ in range(5)]
    assert len(sessions) == 3 and sessions.get(many[0].token) is None
    sessions.drop(many[-1].token)
    assert sessions.get(many[-1].token) is None
    assert many[1].csrf_ok(many[1].csrf) and not many[1].csrf_ok(many[2].csrf)
    assert not many[1].csrf_ok(None) and not many[1].csrf_ok("")


def test_login_throttle() -> None:
    clock = Clock()
    t = LoginThrottle(attempts=3, window=60, clock=clock)
    for _ in range(3):
        assert not t.blocked("ip:1", "user:a")
        t.failed("ip:1", "user:a")
    assert t.blocked("ip:1") and t.blocked("user:a") and not t.blocked("ip:2")
    clock.t += 61
    assert not t.blocked("ip:1", "user:a")


# -- the web app ----------------------------------------------------------------------------
class FakeProxy:
    def __init__(self, client: FakeClient, ref: str) -> None:
        self.client, self.ref = client, ref
        self.train = self

    def options(self, **kw: Any) -> FakeProxy:
        return self

    def future(self, **kw: Any) -> Future[Any]:
        self.client.calls.append(("train", self.ref, kw))
        f: Future[Any] = Future()
        f.set_result({"final_loss": 0.01, "train_seconds": 1.5, "losses": [0.1]})
        return f


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get(self, ref: str) -> FakeProxy:
        if ref.startswith("ghost"):
            raise UnknownObject(f"no object {ref}")
        return FakeProxy(self, ref)

    def delete(self, ref: str) -> None:
        self.calls.append(("delete", ref, {}))

    def drain(self, node: str) -> dict[str, Any]:
        self.calls.append(("drain", node, {}))
        if node == "n9":
            raise Forbidden("only an admin may drain a node")
        return {"node": node, "draining": True, "moved": 2, "left": ["o3"], "reason": "offline"}

    def undrain(self, node: str) -> dict[str, Any]:
        self.calls.append(("undrain", node, {}))
        return {"node": node, "draining": False}


@pytest.fixture
def app(tmp_path: Path) -> tuple[TestClient, Console, FakeClient]:
    state = FleetState()
    for i in range(120):
        state.sample(
            f"dev-{i:03d}",
            {"dev": f"dev-{i:03d}", "seq": 1, "ts": 1.0, "cpu": i % 100, "mem": 50.0},
        )
    fake = FakeClient()
    audit = AuditLog(tmp_path / "audit.jsonl")
    console = Console(
        state=state,
        accounts=_accounts(),
        sessions=Sessions(),
        audit=audit,
        actions=Actions(fake, audit),
        push_interval=0.05,
    )
    return TestClient(create_app(console), follow_redirects=False), console, fake


def _login(tc: TestClient, user: str, pw: str) -> str:
    r = tc.post("/login", data={"username": user, "password": pw})
    assert r.status_code == 303, r.text
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    page = tc.get("/").text
    return page.split('name="csrf" content="')[1].split('"')[0]


PAGES = ["/", "/device/dev-001", "/nodes", "/objects", "/audit"]
APIS = [
    "/api/fleet",
    "/api/nodes",
    "/api/objects",
    "/api/audit",
    "/api/device/dev-001",
    "/api/stream?view=fleet",
    "/static/console.js",
    "/static/uPlot.iife.min.js",
]


def test_nothing_is_served_without_a_login(app: tuple[TestClient, Console, FakeClient]) -> None:
    tc, console, fake = app
    for path in PAGES:
        r = tc.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in APIS:
        assert tc.get(path).status_code == 401, path
    for path in ("/api/actions/retrain", "/api/actions/delete"):
        assert tc.post(path, json={"device": "dev-001", "ref": "x"}).status_code == 401
    tc.cookies.set(COOKIE, "forged-token")
    assert tc.get("/api/fleet").status_code == 401
    tc.cookies.clear()
    assert fake.calls == [] and console.audit.count == 0
    # what is public: the login page, its stylesheet, the health check
    login = tc.get("/login")
    assert login.status_code == 200 and "<form" in login.text
    assert "default-src 'self'" in login.headers["content-security-policy"]
    assert login.headers["x-frame-options"] == "DENY"
    assert tc.get("/static/console.css").status_code == 200
    assert tc.get("/healthz").json() == {"ok": True}


def test_login_logout_and_wrong_passwords(app: tuple[TestClient, Console, FakeClient]) -> None:
    tc, console, _ = app
    r = tc.post("/login", data={"username": "alice", "password": "wrong"})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert COOKIE not in r.cookies
    csrf = _login(tc, "alice", "alice-pw-1")
    assert tc.get("/api/fleet").status_code == 200
    assert tc.get("/login").status_code == 303  # logged in already
    assert tc.post("/logout", data={"csrf": "bad"}).status_code == 403  # CSRF on logout too
    assert tc.post("/logout", data={"csrf": csrf}).status_code == 303
    assert len(console.sessions) == 0
    assert tc.get("/api/fleet").status_code == 401
    for _ in range(5):
        tc.post("/login", data={"username": "bob", "password": "guess"})
    r = tc.post("/login", data={"username": "bob", "password": "bob-pw-12"})
    assert r.status_code == 429  # throttled, even with the right password


def test_fleet_api_searches_sorts_and_pages_on_the_server(
    app: tuple[TestClient, Console, FakeClient],
) -> None:
    tc, _, _ = app
    _login(tc, "bob", "bob-pw-12")
    d = tc.get("/api/fleet?limit=10&offset=20").json()
    assert (d["total"], d["matched"], len(d["rows"])) == (120, 120, 10)
    assert d["rows"][0]["id"] == "dev-020"
    d = tc.get("/api/fleet?q=dev-01&sort=cpu&desc=1&limit=500").json()
    assert d["matched"] == 10 and [r["id"] for r in d["rows"]][:2] == ["dev-019", "dev-018"]
    assert tc.get("/api/fleet?limit=100000").json()["limit"] == 500  # bounded
    assert tc.get("/api/device/nope").status_code == 404
    dev = tc.get("/api/device/dev-005").json()
    assert dev["device"]["cpu"] == 5 and dev["samples"] == [[1.0, 5, 50.0]]
    with tc.stream("GET", "/api/stream?view=fleet&limit=3") as s:
        lines = s.iter_lines()
        assert next(lines) == "retry: 2000"
        data = next(line for line in lines if line.startswith("data: "))
    assert len(json.loads(data[6:])["rows"]) == 3


def test_a_live_stream_ends_with_its_session(app: tuple[TestClient, Console, FakeClient]) -> None:
    tc, console, _ = app
    _login(tc, "bob", "bob-pw-12")
    with tc.stream("GET", "/api/stream?view=nodes") as s:
        lines = s.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        console.sessions.drop(tc.cookies[COOKIE])  # expired, or logged out elsewhere
        assert next(line for line in lines if line.startswith("event: ")) == "event: logout"


def test_actions_need_admin_and_csrf_and_are_audited(
    app: tuple[TestClient, Console, FakeClient], tmp_path: Path
) -> None:
    tc, _, fake = app
    csrf = _login(tc, "bob", "bob-pw-12")
    r = tc.post("/api/actions/retrain", json={"device": "dev-001"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and r.json()["error"] == "admins only"
    assert fake.calls == []
    tc.cookies.clear()
    csrf = _login(tc, "alice", "alice-pw-1")
    r = tc.post("/api/actions/retrain", json={"device": "dev-001"})  # no token
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = tc.post(
        "/api/actions/retrain", json={"device": "dev-001"}, headers={"x-csrf-token": "x" + csrf}
    )
    assert r.status_code == 403 and fake.calls == []
    r = tc.post(
        "/api/actions/retrain",
        json={"device": "dev-001", "epochs": 3},
        headers={"x-csrf-token": csrf},
    )
    assert r.status_code == 200 and r.json()["outcome"] == "started"
    assert fake.calls == [("train", "dev-001/forecaster", {"epochs": 3, "warm_start": True})]
    r = tc.post("/api/actions/retrain", json={"device": "a/b"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 400
    r = tc.post("/api/actions/delete", json={"ref": "obj1"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and fake.calls[-1] == ("delete", "obj1", {})
    r = tc.post("/api/actions/retrain", json={"device": "ghost"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 502 and r.json()["error"] == "unknown_object"
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    got = [(e["user"], e["action"], e["target"], e["outcome"]) for e in lines]
    assert got == [
        ("bob", "retrain", "dev-001", "refused"),
        ("alice", "retrain", "dev-001", "refused"),
        ("alice", "retrain", "dev-001", "refused"),
        ("alice", "retrain", "dev-001", "started"),
        ("alice", "retrain", "dev-001", "ok"),
        ("alice", "delete", "obj1", "ok"),
        ("alice", "retrain", "ghost", "error"),
    ]
    assert (
        lines[4]["final_loss"] == 0.01 and lines[1]["why"] == "csrf" and lines[0]["why"] == "role"
    )
    assert tc.get("/api/audit").json()["entries"][0]["target"] == "ghost"  # newest first
    assert len(AuditLog(tmp_path / "audit.jsonl").recent) == 7  # read back at start


def test_drain_is_an_audited_admin_action(
    app: tuple[TestClient, Console, FakeClient], tmp_path: Path
) -> None:
    tc, _, fake = app
    csrf = _login(tc, "bob", "bob-pw-12")
    r = tc.post("/api/actions/drain", json={"node": "n1"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and r.json()["error"] == "admins only" and fake.calls == []
    tc.cookies.clear()
    csrf = _login(tc, "alice", "alice-pw-1")
    assert tc.post("/api/actions/drain", json={"node": "n1"}).status_code == 403  # no CSRF
    assert fake.calls == []
    r = tc.post("/api/actions/drain", json={"node": "n1"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and fake.calls == [("drain", "n1", {})]
    assert r.json()["moved"] == 2 and r.json()["left"] == 1 and r.json()["left_ids"] == ["o3"]
    r = tc.post("/api/actions/undrain", json={"node": "n1"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and fake.calls[-1] == ("undrain", "n1", {})
    r = tc.post("/api/actions/drain", json={"node": "a/b"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 400
    r = tc.post("/api/actions/drain", json={"node": "n9"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 502 and r.json()["error"] == "forbidden"
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    got = [(e["user"], e["action"], e["target"], e["outcome"], e.get("why")) for e in lines]
    assert got == [
        ("bob", "drain", "n1", "refused", "role"),
        ("alice", "drain", "n1", "refused", "csrf"),
        ("alice", "drain", "n1", "ok", None),
        ("alice", "undrain", "n1", "ok", None),
        ("alice", "drain", "n9", "error", None),
    ]
    # the page: the admin sees the buttons' column, a read-only operator does not
    assert tc.get("/nodes").text.count("<th></th>") == 1
    tc.cookies.clear()
    _login(tc, "bob", "bob-pw-12")
    assert "<th></th>" not in tc.get("/nodes").text


def test_node_rows_carry_the_load_and_devices_their_outbox() -> None:
    clock = Clock()
    st = FleetState(clock=clock)
    st.node_status(
        "n1",
        {
            "state": "online",
            "node": "n1",
            "memory": 50 << 20,
            "queued": 3,
            "running": 2,
            "long_running": 1,
            "load": 0.75,
            "resident": 4,
            "evicted": 1,
        },
    )
    st.node_status("n2", {"state": "online", "node": "n2", "memory": "lots"})  # an odd node
    st.set_draining({"n2"})
    n1, n2 = st.nodes_view()["nodes"]
    assert (n1["memory"], n1["queued"], n1["running"], n1["long_running"], n1["load"]) == (
        50 << 20,
        3,
        2,
        1,
        0.75,
    )
    assert (n1["resident"], n1["evicted"], n1["draining"]) == (4, 1, False)
    assert n2["draining"] is True and n2["memory"] is None and n2["queued"] is None
    st.sample("d1", {"seq": 1, "ts": 1.0, "cpu": 1.0, "mem": 2.0})
    st.device_status("d1", {"state": "online", "outbox": 12, "oldest": clock.t - 30.0})
    row = st.fleet_page()["rows"][0]
    assert row["outbox"] == 12 and row["oldest"] == 30.0
    st.device_status("d1", {"state": "online", "outbox": 0, "oldest": None})
    row = st.fleet_page(sort="outbox")["rows"][0]
    assert row["outbox"] == 0 and row["oldest"] is None


def test_the_objects_listing_shows_residency_and_draining() -> None:
    from continuum_console._mqtt import GatewayPoller

    class Gateway:
        def objects(self, residency: bool = False) -> list[dict[str, Any]]:
            assert residency is True  # the page shows each object's residency
            return [
                {"id": f"{n}-o", "node": n, "resident": n == "n2", "used": 5.0}
                for n in ("n1", "n2")
            ]

        def nodes(self) -> list[dict[str, Any]]:
            return [{"id": "n1", "draining": True}, {"id": "n2", "draining": False}]

    st = FleetState()
    st.node_status("n1", {"state": "online", "node": "n1"})
    GatewayPoller(st, Gateway()).poll_once()
    assert [o["id"] for o in st.objects_view()["objects"]] == ["n1-o", "n2-o"]
    assert st.objects_view()["objects"][0]["resident"] is False
    assert st.objects_error is None
    assert st.draining == {"n1"} and st.nodes_view()["nodes"][0]["draining"] is True


# -- state and feed -----------------------------------------------------------------------
def test_fleet_state_is_bounded_and_drops_redeliveries() -> None:
    st = FleetState(history=4, max_devices=2)
    for seq in (1, 2, 2, 3, 1, 4, 5, 6):
        st.sample("a", {"seq": seq, "ts": float(seq), "cpu": 1.0, "mem": 2.0})
    d = st.devices["a"]
    assert d.seq == 6 and [s[0] for s in d.samples] == [3.0, 4.0, 5.0, 6.0]
    st.sample("b", {"seq": 1, "ts": 1.0, "cpu": 1.0, "mem": 2.0})
    st.sample("c", {"seq": 1, "ts": 1.0, "cpu": 1.0, "mem": 2.0})
    assert set(st.devices) == {"a", "b"}  # at most max_devices
    st.device_status("a", {"state": "offline", "dropped": 7, "failed": 0})
    st.forecast("a", {"dev": "a", "after_seq": 6, "ts": 7.0, "cpu": 3.0, "mem": 4.0, "band": 5.0})
    st.alert("a", {"dev": "a", "seq": 6, "metric": "cpu", "actual": 90.0, "ts": 6.0})
    row = st.fleet_page(q="state:offline")["rows"][0]
    assert row["state"] == "offline" and row["dropped"] == 7 and row["forecast"]["band"] == 5.0
    assert st.fleet_page(q="alert:yes")["matched"] == 1
    assert st.fleet_page(sort="forecast", desc=True)["rows"][0]["id"] == "a"  # missing last
    assert st.device_view("a")["forecasts"] == [(7.0, 3.0, 4.0, 5.0)]


def test_a_device_without_a_status_is_offline_once_its_samples_stop() -> None:
    clock = Clock()
    st = FleetState(offline_after=60, clock=clock)
    st.sample("sim", {"seq": 1, "ts": 1.0, "cpu": 1.0, "mem": 2.0})
    st.sample("agent", {"seq": 1, "ts": 1.0, "cpu": 1.0, "mem": 2.0})
    st.device_status("agent", {"state": "online"})
    states = lambda: {r["id"]: r["state"] for r in st.fleet_page()["rows"]}  # noqa: E731
    assert states() == {"agent": "online", "sim": "online"}
    clock.t += 61
    assert states() == {"agent": "online", "sim": "offline"}  # the agent's status rules
    assert st.fleet_page(q="state:offline")["matched"] == 1 and st.fleet_page()["online"] == 1
    st.device_status("agent", {"state": "offline"})  # its will
    assert states()["agent"] == "offline"


def test_feed_parses_every_topic_and_drops_malformed_messages() -> None:
    st = FleetState()
    feed = Feed(st, BrokerURL.parse("mqtt://127.0.0.1:1"), "r/continuum/v1")
    enc = cbor2.dumps

    def m(topic: str, body: Any) -> None:
        feed.on_message(
            Message("r/continuum/v1/" + topic, body if isinstance(body, bytes) else enc(body))
        )

    m("dev/d1/metrics", {"dev": "d1", "seq": 1, "ts": 1.0, "cpu": 10.0, "mem": 20.0})
    m("dev/d1/metrics", b'{"dev": "d1", "seq": 2, "ts": 2.0, "cpu": 11.0, "mem": 21.0}')  # JSON
    m("dev/d1/status", {"state": "online", "dev": "d1", "dropped": 3})
    m("dev/d1/forecast", {"dev": "d1", "cpu": 12.0, "mem": 22.0, "band": 4.0, "ts": 3.0})
    m("dev/d1/alert", {"dev": "d1", "metric": "mem", "actual": 80.0, "ts": 2.0})
    m("node/n1/status", {"state": "online", "node": "n1", "objects": 2, "classes": {"a.B": {}}})
    m("gateway/status", {"state": "online"})
    for topic, body in [
        ("dev/d2/metrics", b"\xff\x00"),
        ("dev/d2/metrics", {"seq": 1}),
        ("dev/d2/metrics", [1, 2]),
        ("dev/d2/status", b"x" * 300_000),
    ]:
        m(topic, body)
    assert st.ignored == 4 and set(st.devices) == {"d1"}
    d = st.devices["d1"]
    assert (d.seq, d.cpu, d.dropped, d.forecast["band"], d.alerts_total) == (2, 11.0, 3, 4.0, 1)
    assert st.nodes_view()["nodes"][0]["classes"] == ["a.B"] and st.gateway == "online"
    m("node/n1/status", {"state": "offline", "node": "n1"})
    assert st.nodes["n1"].state == "offline"
    feed.on_message(Message("r/continuum/v1/node/n1/status", b""))  # cleared
    assert st.nodes == {}


# -- the deploy role ----------------------------------------------------------------------
def test_the_deploy_role_renders_files_the_console_accepts(tmp_path: Path) -> None:
    from ._deploy import REPO, parse_unit, render_template

    templates = REPO / "deploy" / "ansible" / "roles" / "console" / "templates"
    conf = tmp_path / "etc"
    values: dict[str, Any] = {
        "ansible_managed": "managed",
        "console_broker_url": "mqtts://svc-console@broker.example.org:8883",
        "console_root": "continuum/v1",
        "console_log_level": "INFO",
        "console_conf_dir": str(conf),
        "console_state_dir": "/var/lib/continuum-console",
        "console_audit_log": str(tmp_path / "audit.jsonl"),
        "console_listen": "127.0.0.1",
        "console_port": 8080,
        "console_cookie_secure": True,
        "console_session_idle": 1800,
        "console_session_ttl": 43200,
        "console_history": 360,
        "console_objects_interval": 5.0,
        "console_forecaster_alias": "{device}/forecaster",
        "console_retrain_epochs": 20,
        "console_tls_cert_src": "files/console.crt",
        "console_options": {"max_devices": 20000},
        "console_operators": [
            {"name": "ops", "role": "admin", "password_hash": hash_password("pw-ops-1", **FAST)},
            {
                "name": "view er",
                "role": "readonly",
                "password_hash": hash_password("pw-v-12", **FAST),
            },
        ],
        "console_password": 'p"w\\x',
        "console_venv": "/opt/continuum/console",
        "console_environment": {},
        "console_user": "continuum-console",
        "console_group": "continuum-console",
    }
    conf.mkdir()
    import jinja2  # Ansible's template module, with the one filter these use beyond Jinja's

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["to_json"] = json.dumps
    for name in ("console.toml", "accounts.toml", "console.env"):
        (conf / name).write_text(env.get_template(f"{name}.j2").render(values))
    cfg = load_config(["--config", str(conf / "console.toml")])
    assert (cfg.accounts, cfg.secure, cfg.max_devices) == (str(conf / "accounts.toml"), True, 20000)
    assert (cfg.tls_cert, cfg.tls_key) == (str(conf / "console.crt"), str(conf / "console.key"))
    accounts = Accounts.load(cfg.accounts)
    assert accounts.authenticate("view er", "pw-v-12").role == "readonly"  # type: ignore[union-attr]
    assert 'CONTINUUM_PASSWORD="p\\"w\\\\x"' in (conf / "console.env").read_text()
    unit = tmp_path / "continuum-console.service"
    unit.write_text(render_template(templates / "continuum-console.service.j2", values))
    svc = parse_unit(unit)["Service"]
    assert svc["ExecStart"] == [
        f"/opt/continuum/console/bin/continuum-console --config {conf}/console.toml"
    ]
    assert svc["StateDirectory"] == ["continuum-console"] and svc["NoNewPrivileges"] == ["yes"]


# -- a real broker with TLS, accounts and the deploy's ACL -----------------------------------
def _pki(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=t-ca",
    )
    ssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl(
        "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext",
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_deployed_console_works_through_tls_and_the_acl_of_its_account(tmp_path: Path) -> None:
    """The playbook's console play applied for real (twice: the second changes
    nothing), then the console started as its unit says, on a mosquitto with
    TLS, password accounts and the ACL the broker role renders."""
    import httpx
    import paho.mqtt.client as paho
    from continuum_dev.testing import LocalBroker, free_port, wait_for

    from ._deploy import (
        REPO,
        changed_tasks,
        dump_inventory,
        recap,
        render_template,
        run_playbook,
        tool,
        unit_command,
    )
    from ._deploy import hash_password as mosquitto_hash

    if tool("ansible-playbook") is None:
        pytest.skip("ansible-core is not installed in this venv")
    root = "acl/continuum/v1"
    _pki(tmp_path)
    users = {"svc-console": 'console-"pw\\1', "dev-a": "dev-a-pw-1"}
    (tmp_path / "passwd").write_text(
        "".join(f"{u}:{mosquitto_hash(pw)}\n" for u, pw in users.items())
    )
    acl = REPO / "deploy" / "ansible" / "roles" / "broker" / "templates" / "acl.j2"
    acl_users = [{"name": "svc-console", "acl": "console"}, {"name": "dev-a", "acl": "device"}]
    (tmp_path / "acl").write_text(
        render_template(
            acl, {"broker_root": root, "broker_users": acl_users, "ansible_managed": ""}
        )
    )
    extra = (
        f"allow_anonymous false\npassword_file {tmp_path}/passwd\nacl_file {tmp_path}/acl\n"
        f"certfile {tmp_path}/srv.crt\nkeyfile {tmp_path}/srv.key\n"
    )
    with LocalBroker(extra_config=extra, log_path=str(tmp_path / "mosquitto.log")) as broker:
        port = free_port()
        host = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "continuum_root": root,
            "console_manage_user": False,
            "console_user": "root",
            "console_group": "root",
            "console_venv_create": False,
            "console_venv": sys.prefix,
            "console_conf_dir": str(tmp_path / "etc"),
            "console_state_dir": str(tmp_path / "var"),
            "console_unit_dir": str(tmp_path),
            "console_ca_src": str(tmp_path / "ca.crt"),
            "console_broker_host": "127.0.0.1",
            "console_broker_port": broker.port,
            "console_password": users["svc-console"],
            "console_port": port,
            "console_cookie_secure": False,  # plain HTTP in this test
            "console_objects_interval": 60.0,
            "console_operators": [
                {
                    "name": "bob",
                    "role": "readonly",
                    "password_hash": hash_password("bob-pw-12", **FAST),
                }
            ],
        }
        inv = dump_inventory(
            tmp_path / "hosts.yml",
            {"all": {"children": {"consoles": {"hosts": {"contest": host}}}}},
        )
        for _ in (1, 2):
            rc, out = run_playbook(tmp_path, inv, "--limit", "contest", timeout=300)
            assert rc == 0, out[-4000:]
        assert recap(out)["contest"]["changed"] == 0, changed_tasks(out)
        assert (tmp_path / "etc" / "console.env").stat().st_mode & 0o777 == 0o600
        argv, env, cwd = unit_command(tmp_path / "continuum-console.service")

        def console(password: str | None = None) -> subprocess.Popen[bytes]:
            e = {**env, **({"CONTINUUM_PASSWORD": password} if password else {})}
            log = open(tmp_path / "console.log", "ab")  # noqa: SIM115 - the child's
            return subprocess.Popen(argv, env=e, cwd=cwd, stdout=log, stderr=log)

        bad = console("wrong")
        assert bad.wait(30) == 1  # the broker refused the login: exit 1, the unit retries
        proc = console()
        try:
            base = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return httpx.get(base + "/healthz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 30, 0.1, "console up")
            dev = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            dev.username_pw_set("dev-a", users["dev-a"])
            dev.tls_set(ca_certs=str(tmp_path / "ca.crt"))
            dev.connect("127.0.0.1", broker.port)
            dev.loop_start()
            sample = {"dev": "dev-a", "seq": 1, "ts": 1.0, "cpu": 12.5, "mem": 3.0}
            dev.publish(f"{root}/dev/dev-a/metrics", cbor2.dumps(sample), qos=1).wait_for_publish(5)
            dev.loop_stop()
            dev.disconnect()
            with httpx.Client(base_url=base) as web:
                web.post("/login", data={"username": "bob", "password": "bob-pw-12"})

                def seen() -> bool:
                    rows = web.get("/api/fleet").json()["rows"]
                    return [(r["id"], r["cpu"]) for r in rows] == [("dev-a", 12.5)]

                wait_for(seen, 15, 0.1, "dev-a's sample through TLS and the ACL")
        finally:
            proc.terminate()
            assert proc.wait(15) == 0  # a graceful stop
