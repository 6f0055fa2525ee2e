"""Issue #7: continuum on the real shape of a continuum, in network namespaces.

An EDGE host (site mosquitto, edge client, metrics publisher) and a CLOUD host
(cloud mosquitto, gateway, nodes n1 and n2), each a network namespace, joined by
a veth pair; the site broker bridges to the cloud broker with the configuration
the Ansible broker role ships (deploy/bridge/README.md; TLS, persistent
sessions). The link is a WAN: 50 ms each way and 1 % segment loss from a
userspace relay (bench/_wanrelay.py; this kernel has no netem), 10 Mbit/s each
way from tbf. See bench/_netns.py and
docs/topology.md.

The metrics come from the real edge agent (``edgeagent run``) on the site
broker, inside EDGE.

Needs root and ``ip netns`` (CI has both); skipped with the reason otherwise.
``CONTINUUM_CUT_S`` shortens the 30 s link cut for local runs (CI uses 30 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

import continuum_mqtt
from bench._netns import (
    BRIDGE_TEMPLATES,
    LOCAL_PORT,
    REPO,
    Topology,
    Wan,
    render_template,
    unavailable_reason,
)
from continuum_mqtt import DeadlineExpired, RemoteError, Unavailable

_REASON = unavailable_reason()
needs_netns = pytest.mark.skipif(_REASON is not None, reason=f"namespace topology: {_REASON}")

COUNTER = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"
HASHER = "examples.pool.Hasher"
CUT_S = float(os.environ.get("CONTINUUM_CUT_S", "30"))
REPORTS = Path(__file__).resolve().parent.parent / "reports"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    t = Topology(tmp_path_factory.mktemp("topology"), Wan())
    try:
        t.start()
        yield t
    finally:
        t.stop()


def _report(capsys: pytest.CaptureFixture[str], name: str, figures: dict[str, Any]) -> None:
    """Print the figures past pytest's capture and keep them under reports/."""
    with capsys.disabled():
        print(f"\n[topology] {name}: {json.dumps(figures)}")
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / "topology.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2) + "\n")


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


class _Timed:
    """A call's future and the moment it completed."""

    def __init__(self, fut: Future[Any]) -> None:
        self.fut = fut
        self.issued = time.monotonic()
        self.done_at: float | None = None
        fut.add_done_callback(self._done)

    def _done(self, f: Future[Any]) -> None:
        self.done_at = time.monotonic()

    def outcome(self, timeout: float) -> tuple[str, Any]:
        """('ok', value), ('error', exception) or ('hung', None), waiting at most
        ``timeout``. (DeadlineExpired is a TimeoutError, as is the one
        concurrent.futures raises on a wait: so wait first, then look.)"""
        wait([self.fut], timeout)
        if not self.fut.done():
            return "hung", None
        exc = self.fut.exception()
        return ("error", exc) if exc is not None else ("ok", self.fut.result())


def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_bridge_templates_render_and_match_the_documented_example() -> None:
    """Runs anywhere (no root): the bridge templates, kept once in the Ansible
    broker role, render outside Ansible with the command deploy/bridge/README.md
    shows, to exactly the configuration it shows; no other copy exists."""
    import shlex

    readme = (REPO / "deploy" / "bridge" / "README.md").read_text()
    command = readme.split("## A rendered example\n\n```sh\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "deploy/ansible/scripts/render-template"
    assert REPO / argv[1] == BRIDGE_TEMPLATES / "site-bridge.conf.j2"
    out = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = [x for x in out.splitlines() if x.strip() and not x.startswith("#")]
    example = readme.split("gives (comments left out):\n\n```\n", 1)[1].split("```", 1)[0]
    assert lines == [x for x in example.splitlines() if x.strip()]
    cloud = render_template(
        BRIDGE_TEMPLATES / "cloud-bridge-listener.conf.j2",
        {
            "broker_bridge_port": 8883,
            "broker_bridge_bind": "0.0.0.0",
            "broker_cert_dir": "/etc/mosquitto/certs",
            "broker_tls_ca_name": "continuum-ca",
            "broker_bridge_session_expiry": "7d",
        },
    )
    assert "listener 8883 0.0.0.0\ncafile /etc/mosquitto/certs/continuum-ca.crt\n" in cloud
    assert "{{" not in out + cloud and "{%" not in out + cloud
    with pytest.raises(Exception, match="undefined"):
        render_template(BRIDGE_TEMPLATES / "site-bridge.conf.j2", {})
    # one copy: the role's templates (deploy/bridge/ holds the README only)
    assert sorted(p.name for p in (REPO / "deploy" / "bridge").iterdir()) == ["README.md"]


@needs_netns
def test_calls_progress_errors_and_pools_cross_the_bridged_wan(
    topo: Topology, capsys: pytest.CaptureFixture[str]
) -> None:
    with topo.client() as c:
        # the site's clients log in as the site account (edge1): its namespace
        ctr = c.stub(COUNTER).create(start=0, node="n1", alias=f"{topo.site}/wan-counter")
        assert ctr.add(2) == 2
        assert c.get(f"{topo.site}/wan-counter").get() == 2  # the gateway, across the bridge
        steps: list[Any] = []
        assert ctr.count_to.options(timeout=20, on_progress=steps.append)(5) == 7
        assert steps == [{"step": i, "of": 5} for i in range(1, 6)]  # in order
        with pytest.raises(RemoteError, match="over the wan"):
            ctr.fail("over the wan")
        # a pool: the edge publishes on pool/<class>/call, the bridge carries it,
        # the cloud broker's shared subscription spreads it over n1 and n2
        pool = c.pool(HASHER)
        assert len({pool.whoami() for _ in range(20)}) == 2

        n = 60
        topo.relay.reset()  # type: ignore[union-attr]
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            ctr.add(1)
            lat.append((time.perf_counter() - t) * 1000.0)
        time.sleep(0.5)  # the last PUBACKs cross too
        wire = topo.relay.stats()  # type: ignore[union-attr]
        t = time.perf_counter()
        futures = [ctr.add.future(1) for _ in range(300)]
        for f in futures:
            f.result(30)
        rate = 300 / (time.perf_counter() - t)
        assert ctr.get() == 7 + n + 300
        figures = {
            "wan": topo.wan.describe(),
            "calls": n,
            "p50_ms": round(_pct(lat, 0.5), 1),
            "p90_ms": round(_pct(lat, 0.9), 1),
            "p99_ms": round(_pct(lat, 0.99), 1),
            "max_ms": round(max(lat), 1),
            "pipelined_calls_per_s": round(rate, 1),
            "bridge_bytes_per_call": round((wire["up"]["bytes"] + wire["down"]["bytes"]) / n, 1),
            "loss_stalls": wire["up"]["stalls"] + wire["down"]["stalls"],
        }
        _report(capsys, "calls over the WAN", figures)
        # the emulated round trip (2 x 50 ms) is in every call's path, and nothing more
        assert 100.0 <= figures["p50_ms"] < 400.0, figures
        c.delete(ctr)


@needs_netns
def test_liveness_crosses_the_bridge(topo: Topology) -> None:
    # the nodes' retained status reached the site broker through the bridge
    seen: dict[str, str] = {}
    got = threading.Event()

    def on_message(cl: Any, u: Any, msg: Any) -> None:
        node = topo.topics.node_of_status(msg.topic)
        if node and msg.retain:
            seen[node] = continuum_mqtt._codec.decode(msg.payload).get("state")
            if {"n1", "n2"} <= set(seen):
                got.set()

    with topo.edge.entered():
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sub.on_message = on_message
        sub.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topo.topics.node_status_all, 1)
        sub.connect("127.0.0.1", LOCAL_PORT)
        sub.loop_start()
    try:
        assert got.wait(10), f"retained node status at the site: {seen}"
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert seen["n1"] == seen["n2"] == "online"

    # a node dies with a call in flight: its last will crosses the bridge and the
    # edge client fails the call at once instead of waiting for its deadline
    topo.start_node("n3")
    with topo.client() as c:
        obj = c.stub(COUNTER).create(node="n3")
        assert obj.add(1) == 1
        call = _Timed(obj.slow.options(timeout=40).future(30.0))
        time.sleep(1.0)  # the call is running on n3
        killed = time.monotonic()
        topo.kill("n3", signal.SIGKILL)
        kind, err = call.outcome(20)
        assert kind == "error" and isinstance(err, Unavailable), (kind, err)
        assert call.done_at is not None
        took = call.done_at - killed
        assert took < 5.0, f"took {took:.1f} s to learn that n3 died"


@needs_netns
def test_link_cut_loses_no_sample_and_hangs_no_call(
    topo: Topology, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    long_deadline = CUT_S + 15.0  # a call issued during the cut can wait for the link
    short_deadline = 5.0
    rate_hz = 10.0
    with topo.client() as c:
        ctr = c.stub(COUNTER).create(start=0, node="n1")
        sink = c.stub(SINK).create(node="n2")  # n2 is durable: a persistent session
        with topo.cloud_client() as admin:  # binding a device's stream: the device or an admin
            admin.bind_metrics(sink._id, "edge-dev", "ingest")
        spy = topo.spy(topo.topics.metrics("edge-dev"))  # what the bridge delivers
        request.addfinalizer(spy.close)
        agent = topo.agent("edge-dev", interval=1 / rate_hz)
        request.addfinalizer(lambda: agent.proc.poll() is None and agent.stop())
        try:
            _wait_for(lambda: len(sink.received()["seqs"]) >= 5, 10, "samples before the cut")
            # a: reaches n1 before the cut; its reply is published during the cut
            # (the reply bridge's persistent session on the cloud broker keeps it)
            a = _Timed(ctr.slow.options(timeout=long_deadline).future(2.0))
            time.sleep(0.8)
            topo.cut()
            cut_at = time.monotonic()
            cut_wall = time.time()
            time.sleep(2.0)
            # b1, s1: issued before the bridge has noticed the cut (keepalive 5 s);
            # the site broker writes them into the dead connection
            b1 = _Timed(ctr.add.options(timeout=long_deadline).future(1))
            s1 = _Timed(ctr.add.options(timeout=short_deadline).future(1000))
            time.sleep(8.0)
            # b2, s2: the bridge knows it is down; they wait in the site broker's queue
            steps: list[Any] = []
            b2 = _Timed(
                ctr.count_to.options(timeout=long_deadline, on_progress=steps.append).future(3)
            )
            s2 = _Timed(ctr.add.options(timeout=short_deadline).future(100_000))
            for name, s in (("s1", s1), ("s2", s2)):
                kind, err = s.outcome(short_deadline + 5)
                assert kind == "error" and isinstance(err, DeadlineExpired), (name, kind, err)
                assert s.done_at is not None
                took = s.done_at - s.issued
                assert short_deadline - 0.1 <= took <= short_deadline + 1.0, (name, took)
            assert not any(t.fut.done() for t in (a, b1, b2)), "a call completed during the cut"
            time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
            topo.restore()
            restored_at = time.monotonic()
            restored_wall = time.time()
            outcomes = {
                name: t.outcome(max(1.0, t.issued + long_deadline + 2 - time.monotonic()))
                for name, t in (("a", a), ("b1", b1), ("b2", b2))
            }
            time.sleep(2.0)  # samples keep flowing after the restore
        finally:
            final = agent.stop()  # SIGTERM: it flushes its outbox to the site broker
            if not topo.link_up:
                topo.restore()
        # every call issued before or during the cut completed after the restore,
        # within its deadline; none hung
        for name, (kind, value) in outcomes.items():
            assert kind == "ok", f"call {name} after the restore: {kind} {value!r}"
        assert outcomes["a"][1] == 2.0
        assert outcomes["b2"][1] == outcomes["b1"][1] + 3
        assert steps == [{"step": i, "of": 3} for i in range(1, 4)]  # progress, in order
        # DeadlineExpired says no reply came in time, not that the call never ran:
        # a queued request whose Message Expiry (1 s granularity) had not quite
        # run out when the bridge came back is still delivered and run. Reported.
        value = ctr.get()
        late = {"s1": value // 1000 % 100 == 1, "s2": value >= 100_000}
        assert value % 1000 == 4, value  # a, b1, b2 ran exactly once

        total = final["outbox"]["next_seq"] - 1
        # the site broker took every sample the agent took
        assert final["outbox"]["depth"] == 0 and final["acked"] >= total, final
        _wait_for(lambda: len(spy.sampled_at) >= total, 30, f"all {total} samples at the cloud")
        during = sum(1 for t in spy.sampled_at.values() if cut_wall <= t < restored_wall)
        assert during >= int(CUT_S * rate_hz * 0.8), during
        try:
            _wait_for(lambda: len(sink.received()["seqs"]) >= total, 10, "all samples in the sink")
        except AssertionError:
            pass  # judged below
        got = sink.received()
        wire = spy.summary(total)
        figures = {
            "cut_s": CUT_S,
            "samples": total,
            "samples_during_cut": during,
            "bridge_delivered": wire,
            "sink_kept": len(got["seqs"]),
            "sink_dropped_as_duplicates": got["duplicates"],
            "restore_to_result_s": {
                name: round(t.done_at - restored_at, 2)
                for name, t in (("a", a), ("b1", b1), ("b2", b2))
                if t.done_at is not None
            },
            "expired_calls_failed_after_s": [
                round(t.done_at - t.issued, 2) for t in (s1, s2) if t.done_at is not None
            ],
            "expired_calls_run_later": [k for k, ran in late.items() if ran],
        }
        _report(capsys, f"{CUT_S:g} s link cut", figures)
        c.unbind_metrics(sink, "edge-dev")
        # the bridge lost nothing: every sample sampled during the cut reached the cloud
        assert wire["missing"] == [], wire
        # and the object fed by them saw each one once, in order
        if got["seqs"] != list(range(1, total + 1)):
            kept = set(got["seqs"])
            lost = sorted(set(range(1, total + 1)) - kept)
            if wire["out_of_order"] and set(lost) <= set(wire["out_of_order"]):
                pytest.xfail(
                    f"samples {lost} reached the cloud out of order (mosquitto 2.0 bridges can"
                    " reorder a QoS 1 message across a reconnect) and the feed's consumer drops"
                    " a seq below the last one seen as a duplicate; needs the node to put each"
                    " device's feed back in seq order (docs/topology.md, 'Ordering')"
                )
            raise AssertionError(f"sink lost samples {lost[:20]}: {figures}")
