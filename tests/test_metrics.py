"""The Prometheus endpoints (docs/metrics.md): a real broker, gateway, durable
node and edge agent, scraped over HTTP during a run; every documented metric
is present, and calls, latency buckets, journal appends, feed samples and
the agent's outbox depth (after a broker outage) move. Plus fast in-process
checks of the fleet exporter and of the optional import."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from continuum_dev.testing import free_port

from ._cluster import REPO, Cluster, wait_for

pytest.importorskip("prometheus_client")

DOC = REPO / "docs" / "metrics.md"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
COUNTER = "examples.counter.Counter"


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value (labels as exposed, sorted by prometheus_client)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def names(samples: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0] for key in samples}


def documented(prefix: str) -> set[str]:
    """The metric names docs/metrics.md lists (first column of its tables)."""
    found = set(re.findall(r"^\| `(continuum_[a-z_]+)`", DOC.read_text(), re.M))
    return {n for n in found if n.startswith(prefix)}


def exposed(name: str, kind: str) -> set[str]:
    """What a documented name looks like in the exposition."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return {name}


def kinds() -> dict[str, str]:
    rows = re.findall(r"^\| `(continuum_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M)
    return dict(rows)


def missing(samples: dict[str, float], prefix: str, optional: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    have, types = names(samples), kinds()
    return {
        n for n in documented(prefix) - optional if not exposed(n, types.get(n, "gauge")) <= have
    }


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (summed when several)."""
    total, hit = 0.0, False
    for key, v in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total, hit = total + v, True
    if not hit:
        raise KeyError(f"{name}{labels} not in the scrape")
    return total


# -- the run -----------------------------------------------------------------------------
def test_endpoints_expose_the_documented_metrics_and_they_move(tmp_path: Path) -> None:
    gw_port, node_port = free_port(), free_port()
    with Cluster(tmp=tmp_path, cwd=REPO) as c:
        c.start_gateway("--metrics-port", str(gw_port), "--fleet-metrics", "10")
        c.start_node(
            "n1",
            "--metrics-port",
            str(node_port),
            "--state-dir",
            str(tmp_path / "n1-state"),
            modules=("examples.counter", "examples.sink"),
        )
        with c.client() as client:
            counter = client.stub(COUNTER).create(start=0)
            for _ in range(5):
                counter.add(1)
            with pytest.raises(Exception):  # noqa: B017 - any refusal: its code is counted
                counter.add("x")  # a TypeError in the method: counted under its code
        # every documented metric is there (labelled ones once they have a sample)
        node1, gw1 = scrape(node_port), scrape(gw_port)
        assert not missing(node1, "continuum_node_"), missing(node1, "continuum_node_")
        gw_missing = missing(gw1, "continuum_gateway_")
        assert not gw_missing, gw_missing
        assert value(node1, "continuum_node_info", node="n1") == 1
        assert value(node1, "continuum_node_calls_total", method="add", code="ok") == 5
        assert value(node1, "continuum_node_calls_total", **{"class": COUNTER}) == 6
        failed = [
            k for k in node1 if k.startswith("continuum_node_calls_total") and 'code="ok"' not in k
        ]
        assert failed and node1[failed[0]] == 1, failed
        assert value(node1, "continuum_node_call_duration_seconds_count", method="add") == 6
        assert value(node1, "continuum_node_call_duration_seconds_bucket", le="+Inf") == 6
        assert value(node1, "continuum_node_call_duration_seconds_bucket", le="5.0") == 6
        assert value(node1, "continuum_node_journal_append_seconds_count") >= 5
        assert value(node1, "continuum_node_objects", state="resident") == 1
        assert value(node1, "continuum_node_queued_calls") == 0
        assert value(gw1, "continuum_gateway_requests_total", method="create", code="ok") == 1
        assert value(gw1, "continuum_gateway_request_duration_seconds_count", method="create") == 1
        assert value(gw1, "continuum_gateway_nodes", state="online") == 1
        wait_for(
            lambda: (
                value(scrape(gw_port), "continuum_gateway_node_objects", node="n1", state="objects")
                == 1
            ),
            20,
            0.2,
            "the gateway to see n1's object",
        )

        # a device fed into an object: samples and their lag; its agent in the fleet
        with c.client() as client:
            sink = client.stub("examples.sink.SampleSink").create()
            client.bind_metrics(sink, "dev1", "ingest")
        agent = c.start_agent(
            "dev1",
            interval=0.1,
            settings={
                "status_interval": 0.5,
                "broker": {"backoff_min": 0.2, "backoff_max": 1.0},
                "outbox": {"drain_rate": 12.0},  # drains 2 samples/s net: seen backed up
            },
        )
        wait_for(
            lambda: value(scrape(node_port), "continuum_node_feed_samples_total") >= 3,
            30,
            0.3,
            "feed samples on n1",
        )
        assert value(scrape(node_port), "continuum_node_feed_lag_seconds_count") >= 3
        wait_for(
            lambda: value(scrape(gw_port), "continuum_device_up", device="dev1") == 1,
            30,
            0.3,
            "the fleet exporter to see dev1 online",
        )
        fleet0 = scrape(gw_port)
        fleet_missing = missing(
            fleet0,
            "continuum_",
            # present once a device reports them: forecasts (forecaster off here)
            {"continuum_device_forecast_age_seconds"},
        ) - documented("continuum_node_")
        assert not fleet_missing, fleet_missing
        assert value(fleet0, "continuum_fleet_devices", state="online") == 1

        # a broker outage: the agent's outbox backs up, and the exporter sees it
        assert c.broker is not None
        c.broker.stop()
        time.sleep(3.0)
        c.broker.start()
        seen: dict[str, float] = {}

        def backed_up() -> bool:
            try:
                s = scrape(gw_port)
                seen.update(s)
                return value(s, "continuum_device_outbox_samples", device="dev1") >= 5
            except KeyError:
                return False

        wait_for(backed_up, 40, 0.2, "the exporter to report dev1's outbox backed up")
        assert value(seen, "continuum_fleet_outbox_depth_max") >= 5
        assert value(seen, "continuum_fleet_oldest_sample_age_seconds") > 0
        wait_for(
            lambda: value(scrape(gw_port), "continuum_device_outbox_samples", device="dev1") < 5,
            60,
            0.3,
            "dev1's outbox to drain",
        )
        after = scrape(gw_port)
        assert value(after, "continuum_device_reconnects_total", device="dev1") >= 1
        assert value(after, "continuum_fleet_reconnects_total") >= 1
        wait_for(
            lambda: (
                value(scrape(node_port), "continuum_node_reconnects_total") >= 1
                and value(scrape(gw_port), "continuum_gateway_reconnects_total") >= 1
            ),
            30,
            0.3,
            "the services' reconnects",
        )
        agent.stop()


# -- optional ----------------------------------------------------------------------------
def test_services_without_a_metrics_port_never_import_prometheus_client() -> None:
    code = (
        "import sys\n"
        "import continuum_node.__main__ as n, continuum_gateway.__main__ as g\n"
        "import continuum_node._node, continuum_gateway._gateway\n"
        "import continuum_mqtt.service as s\n"
        "s.CallMeter; s.add_metrics_arguments\n"
        "a = n.build_parser().parse_args([]); b = g.build_parser().parse_args([])\n"
        "assert a.metrics_port is None and b.metrics_port is None and b.fleet_metrics is None\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_edge_agent_never_imports_prometheus_client() -> None:
    code = (
        "import sys, continuum_edgeagent.__main__, continuum_edgeagent._agent\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- the fleet exporter, in process ----------------------------------------------------
def test_fleet_exporter_aggregates_and_bounds_per_device_series() -> None:
    from continuum_gateway._fleetmetrics import FleetMetrics
    from prometheus_client import CollectorRegistry, generate_latest

    from continuum_mqtt.service import FakeTransport, Message, encode

    now = [1000.0]
    fleet = FleetMetrics("r/continuum/v1", per_device=2, clock=lambda: now[0])
    registry = CollectorRegistry()
    transport = FakeTransport("gw")
    fleet.install(transport, registry)
    assert set(fleet.subscriptions) <= set(transport.subscriptions)

    def status(dev: str, **body: object) -> Message:
        return Message(f"r/continuum/v1/dev/{dev}/status", encode({"state": "online", **body}))

    def read() -> dict[str, float]:
        out = {}
        for line in generate_latest(registry).decode().splitlines():
            m = SAMPLE.match(line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    assert fleet.on_message(status("a", outbox=0, oldest=None, connects=1, dropped=2))
    assert fleet.on_message(status("b", outbox=40, oldest=940.0, connects=3, dropped=1))
    assert fleet.on_message(status("c", outbox=7, oldest=990.0, connects=2))
    assert fleet.on_message(status("old", dropped=5))  # an older agent: no outbox fields
    assert fleet.on_message(
        Message("r/continuum/v1/dev/a/forecast", encode({"dev": "a", "ts": 970.0}))
    )
    assert fleet.on_message(Message("r/continuum/v1/dev/x/status", b"\xff\x00"))  # malformed
    assert not fleet.on_message(Message("r/continuum/v1/node/n1/status", b""))
    assert not fleet.on_message(Message("r/continuum/v1/dev/a/metrics", b""))
    s = read()
    assert s['continuum_fleet_devices{state="online"}'] == 4
    assert s["continuum_fleet_outbox_samples"] == 47
    assert s["continuum_fleet_outbox_depth_max"] == 40
    assert s["continuum_fleet_oldest_sample_age_seconds"] == 60
    assert s["continuum_fleet_forecast_age_seconds_max"] == 30
    assert s["continuum_fleet_dropped_samples_total"] == 8
    assert s["continuum_fleet_reconnects_total"] == 0 + 2 + 1
    assert s["continuum_fleet_ignored_messages_total"] == 1
    # the two deepest outboxes only
    devices = {k for k in s if k.startswith("continuum_device_up")}
    assert devices == {'continuum_device_up{device="b"}', 'continuum_device_up{device="c"}'}
    assert s['continuum_device_outbox_samples{device="b"}'] == 40
    assert s['continuum_device_oldest_sample_age_seconds{device="c"}'] == 10
    # the outbox drains, a device goes offline, another's status is cleared
    now[0] = 1010.0
    fleet.on_message(status("b", outbox=0, oldest=None, connects=3, dropped=1))
    fleet.on_message(Message("r/continuum/v1/dev/c/status", encode({"state": "offline"})))
    fleet.on_message(Message("r/continuum/v1/dev/old/status", b""))
    s = read()
    assert s['continuum_fleet_devices{state="online"}'] == 2
    assert s['continuum_fleet_devices{state="offline"}'] == 1
    assert s["continuum_fleet_outbox_samples"] == 7  # c's last report stands
    assert s['continuum_device_up{device="c"}'] == 0
    assert s['continuum_device_forecast_age_seconds{device="a"}'] == 40  # a: 0 waiting, by name


def test_fleet_exporter_without_per_device_series() -> None:
    from continuum_gateway._fleetmetrics import FleetMetrics
    from prometheus_client import CollectorRegistry, generate_latest

    from continuum_mqtt.service import FakeTransport, Message, encode

    fleet = FleetMetrics("t", per_device=0)
    registry = CollectorRegistry()
    fleet.install(FakeTransport("gw"), registry)
    for i in range(50):
        fleet.on_message(Message(f"t/dev/d{i}/status", encode({"state": "online", "outbox": i})))
    text = generate_latest(registry).decode()
    assert 'device="' not in text
    assert "continuum_fleet_outbox_depth_max 49.0" in text


# -- the dashboard -----------------------------------------------------------------------
def test_grafana_dashboard_uses_only_documented_metrics() -> None:
    import json

    dash = json.loads((REPO / "deploy" / "grafana" / "continuum-dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert {r["title"].split(" ")[0] for r in dash["panels"] if r["type"] == "row"} == {
        "Fleet",
        "Nodes",
        "Calls",
    }
    known = documented("continuum_")
    used: set[str] = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expr = re.sub(r"\{[^}]*\}", "", t["expr"])  # label matchers out
            for name in re.findall(r"\b(continuum_[a-z_]+|process_[a-z_]+)", expr):
                if name.startswith("process_"):
                    continue
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in known, (p["title"], name)
                used.add(base)
    # the fleet, the nodes and the calls are all on it
    for name in (
        "continuum_fleet_outbox_samples",
        "continuum_node_calls_total",
        "continuum_node_call_duration_seconds",
        "continuum_gateway_requests_total",
        "continuum_node_feed_lag_seconds",
    ):
        assert name in used, name
