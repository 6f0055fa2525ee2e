"""The operator console in a real browser: headless Debian chromium driven by
Playwright, against a real mosquitto, gateway, node, firmware-sim fleet and
``continuum-console`` process.

Set ``CONTINUUM_CONSOLE_SCREENSHOTS=docs/img`` to also write the README's
screenshots (console-fleet.png, console-device.png) there.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_console._auth import hash_password
from continuum_dev.testing import CHROMIUM, free_port, launch_chromium, wait_for

from ._cluster import REPO, Cluster

DEV = "sim-0003"  # the device with a forecaster, forecasts and an alert
FAST = {"n": 1 << 10}

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium")


class Env:
    def __init__(self, dep: Cluster, base: str, audit: Path) -> None:
        self.dep, self.base, self.audit = dep, base, audit

    def audit_entries(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(x) for x in self.audit.read_text().splitlines()]


def _get(url: str) -> tuple[int, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("location") or ""
    except OSError:  # not listening yet
        return 0, ""


def _publish(url: str, items: list[tuple[str, dict[str, Any], bool]]) -> None:
    host, port = url.rsplit(":", 1)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect(host.split("//")[-1], int(port))
    c.loop_start()
    try:
        for topic, body, retain in items:
            c.publish(topic, cbor2.dumps(body), qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()


@pytest.fixture(scope="module")
def env(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("console")
    with Cluster(broker.url, tmp, cwd=REPO) as dep:
        dep.start(["n1"], modules=["examples.counter", "continuum_node.forecast"])
        dep.start_firmware_sim(
            "--devices", "60", "--period-ms", "500", "--duration", "600", "--fields", "full"
        )
        with dep.client() as c:
            f = c.stub("continuum_node.forecast.Forecaster").create(alias=f"{DEV}/forecaster")
            c.bind_metrics(f, DEV, "ingest")
            c.stub("examples.counter.Counter").create(alias="doomed-counter")
        accounts = tmp / "accounts.toml"
        accounts.write_text(
            f'[operators.alice]\nrole = "admin"\npassword = "{hash_password("alice-pw-1", **FAST)}"\n'
            f'[operators.bob]\nrole = "readonly"\npassword = "{hash_password("bob-pw-12", **FAST)}"\n'
        )
        port, audit = free_port(), tmp / "audit.jsonl"
        dep.python(
            "console",
            "-m",
            "continuum_console",
            "--broker", dep.url,
            "--root", dep.root,
            "--accounts", str(accounts),
            "--port", str(port),
            "--audit-log", str(audit),
            "--objects-interval", "1",
            "--retrain-epochs", "1",
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _get(base + "/healthz")[0] == 200, 30, 0.2, "console up")
        except TimeoutError:
            raise AssertionError(dep.log_tail("console", 40)) from None
        yield Env(dep, base, audit)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def _login(browser: Any, env: Env, user: str, pw: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(20_000)
    page.goto(env.base + "/")
    assert page.url.endswith("/login")  # redirected
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", pw)
    page.click("button[type=submit]")
    page.wait_for_url(env.base + "/")
    return page


def _until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Until a JavaScript expression is true in the page (polled from here: the
    console's CSP forbids the eval that wait_for_function needs)."""
    wait_for(lambda: page.evaluate(expression), timeout, 0.1, expression)


def _shot(page: Any, name: str) -> None:
    out = os.environ.get("CONTINUUM_CONSOLE_SCREENSHOTS")
    if out:
        Path(REPO / out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(REPO / out / name))


def test_unauthenticated_requests_are_refused(env: Env) -> None:
    for path in ("/", "/device/sim-0001", "/nodes", "/objects", "/audit"):
        assert _get(env.base + path) == (303, "/login"), path
    for path in ("/api/fleet", "/api/stream?view=fleet", "/api/device/sim-0001", "/api/audit"):
        assert _get(env.base + path)[0] == 401, path
    assert _get(env.base + "/static/console.js")[0] == 401
    req = urllib.request.Request(
        env.base + "/api/actions/retrain", data=b'{"device": "sim-0003"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401
    assert _get(env.base + "/login")[0] == 200


def test_fleet_page_shows_the_fleet_live(env: Env, browser: Any) -> None:
    page = _login(browser, env, "bob", "bob-pw-12")
    page.wait_for_selector("#fleet tbody tr[data-dev=sim-0000]")
    wait_for(lambda: "60 devices" in page.text_content("#summary"), 30, 0.2, "all devices seen")
    assert page.locator("#fleet tbody tr").count() == 50  # a page, not the whole fleet
    assert page.text_content("#live") == "live"
    first = page.text_content("tr[data-dev=sim-0000] td.cpu")
    wait_for(  # new samples reach the screen without a reload
        lambda: page.text_content("tr[data-dev=sim-0000] td.cpu") != first, 20, 0.2, "live"
    )
    page.fill("#q", "sim-005")
    wait_for(lambda: page.locator("#fleet tbody tr").count() == 10, 10, 0.2, "search")
    page.fill("#q", "")
    page.click("th[data-sort=id]")  # descending
    wait_for(
        lambda: page.locator("#fleet tbody tr").first.get_attribute("data-dev") == "sim-0059",
        10,
        0.2,
        "sorted",
    )
    page.close()


def test_device_page_charts_samples_and_the_forecast_band(env: Env, browser: Any) -> None:
    r = env.dep.root
    now = time.time()
    _publish(
        env.dep.url,
        [
            (f"{r}/dev/{DEV}/status", {"state": "online", "dev": DEV, "dropped": 2, "failed": 0}, True),
            (f"{r}/dev/{DEV}/alert", {"dev": DEV, "seq": 7, "ts": now, "metric": "cpu",
                                      "actual": 91.5, "forecast": 40.0, "band": 15.0}, False),
        ],
    )  # fmt: skip
    page = _login(browser, env, "bob", "bob-pw-12")
    page.goto(env.base + f"/device/{DEV}")
    _until(page, "window.consoleChart && window.consoleChart.data[0].length > 3")
    # the edge agent's forecasts (retained, protocol.md section 4), at the samples' times
    ts = page.evaluate("window.consoleChart.data[0].slice(-3)")
    _publish(
        env.dep.url,
        [
            (f"{r}/dev/{DEV}/forecast", {"dev": DEV, "after_seq": 1, "ts": t + 300,
                                         "cpu": 40.0 + i, "mem": 50.0, "band": 15.0}, True)
            for i, t in enumerate(ts)
        ],
    )  # fmt: skip
    _until(
        page,
        "window.consoleChart.data[4].filter(v => v !== null).length >= 3"
        " && window.consoleChart.data[5].filter(v => v !== null).length >= 3",
    )
    low = page.evaluate("window.consoleChart.data[4].filter(v => v !== null)")
    assert low[-1] == pytest.approx(42.0 - 15.0), low
    page.wait_for_selector("#dstats:has-text('forecast cpu 42.0 \u00b1 15.0')")
    page.wait_for_selector("#alerts td:text('91.5')")
    page.wait_for_selector(f"#dobjects td:text('{DEV}/forecaster')")
    assert page.locator("#retrain").count() == 0  # read-only: no action offered
    _shot(page, "console-device.png")
    page.goto(env.base + "/")  # the fleet shows its forecast and alert too
    page.wait_for_selector(f"tr[data-dev={DEV}] td.alert")
    _shot(page, "console-fleet.png")
    page.close()


def test_admin_retrains_a_forecaster_and_the_audit_log_shows_it(env: Env, browser: Any) -> None:
    page = _login(browser, env, "alice", "alice-pw-1")
    page.goto(env.base + f"/device/{DEV}")
    page.click("#retrain")
    page.wait_for_selector(f"#msg:text('retrain {DEV}: started')")
    mine = [
        (e["user"], e["action"], e["target"], e["outcome"])
        for e in env.audit_entries()
        if e["action"] == "retrain"
    ]
    assert mine[0] == ("alice", "retrain", DEV, "started")
    page.goto(env.base + "/audit")
    row = page.locator("#audit tbody tr", has_text="retrain").first
    row.wait_for()
    assert "alice" in row.text_content() and DEV in row.text_content()
    # then its outcome (trained, or an error such as a series too short), from the node
    wait_for(lambda: len(env.audit_entries()) >= 2, 60, 0.2, "retrain outcome")
    assert env.audit_entries()[1]["outcome"] in ("ok", "error")
    page.locator("#audit tbody tr", has_text="retrain").nth(1).wait_for()
    page.close()


def test_admin_deletes_an_object(env: Env, browser: Any) -> None:
    page = _login(browser, env, "alice", "alice-pw-1")
    page.goto(env.base + "/objects")
    row = page.locator("#objects tbody tr", has_text="doomed-counter")
    row.wait_for()
    page.on("dialog", lambda d: d.accept())
    row.locator("button").click()
    wait_for(lambda: page.locator("#objects tbody tr", has_text="doomed-counter").count() == 0,
             20, 0.2, "object gone")  # fmt: skip
    assert any(e["action"] == "delete" and e["outcome"] == "ok" for e in env.audit_entries())
    page.goto(env.base + "/nodes")
    page.wait_for_selector("#nodes tr[data-node=n1] .badge.online")
    # the node's load from its status; an admin gets a Drain button (not pressed here:
    # tests/test_drain.py drains nodes)
    assert "MiB" in page.text_content("#nodes tr[data-node=n1] td.memory")
    assert page.locator("#nodes tr[data-node=n1] button", has_text="Drain").count() == 1
    page.close()


def test_a_read_only_operator_cannot_act(env: Env, browser: Any) -> None:
    page = _login(browser, env, "bob", "bob-pw-12")
    page.goto(env.base + "/objects")
    page.locator("#objects tbody tr").first.wait_for()
    assert page.locator("#objects button").count() == 0
    status = page.evaluate(
        """async (dev) => {
            const csrf = document.querySelector("meta[name=csrf]").content;
            const r = await fetch("/api/actions/retrain", {method: "POST",
                headers: {"content-type": "application/json", "x-csrf-token": csrf},
                body: JSON.stringify({device: dev})});
            return r.status;
        }""",
        DEV,
    )
    assert status == 403
    last = env.audit_entries()[-1]
    assert (last["user"], last["outcome"], last["why"]) == ("bob", "refused", "role")
    page.close()
