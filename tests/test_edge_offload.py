"""Dynamic offloading (docs/protocol.md §24): the policy with fakes (fast), the
agent's stored export and event queue, then real parts: a client offloading
a forecaster's ``predict`` on a real node, and an edge agent whose broker is
stopped and restarted (forecasts and alerts keep coming from the board,
flagged; none lost; remote again after the restore; RSS within budget)."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_dev.testing import LocalBroker, free_port, rss_mb
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from continuum_mqtt import Busy, DeadlineExpired, EdgeLSTM, Offloader, Unavailable, UnknownObject
from continuum_mqtt._codec import encode

from ._cluster import Cluster, wait_for
from .test_edge_footprint import BUDGET_MB
from .test_edgeagent import Agent, agent_config

# -- the policy, with fakes ------------------------------------------------------------


class FakeMethod:
    """A remote method: ``answer(args)`` gives the value or raises; ``hold``
    keeps the futures pending until the test completes them."""

    def __init__(self, answer: Any = None, *, connected: bool = True, hold: bool = False) -> None:
        self.conn = SimpleNamespace(connected=connected)
        self._proxy = SimpleNamespace(_backend=SimpleNamespace(_conn=self.conn, timeout=30.0))
        self.answer = answer
        self.hold = hold
        self.calls: list[tuple[Any, float]] = []
        self.held: list[Future[Any]] = []
        self._timeout = 0.0

    def options(self, *, timeout: float) -> FakeMethod:
        self._timeout = timeout
        return self

    def future(self, *args: Any) -> Future[Any]:
        self.calls.append((args, self._timeout))
        fut: Future[Any] = Future()
        if self.hold:
            self.held.append(fut)
            return fut
        try:
            if isinstance(self.answer, BaseException):
                raise self.answer
            fut.set_result(self.answer(*args) if callable(self.answer) else self.answer)
        except Exception as exc:
            fut.set_exception(exc)
        return fut


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def local(x: int) -> str:
    return f"local {x}"


def test_remote_when_up_local_when_the_link_is_down() -> None:
    m = FakeMethod(lambda x: f"remote {x}")
    off = Offloader(local, deadline=2.0)
    r = off.call(m, 1)
    assert (r.value, r.where, r.reason, r.local) == ("remote 1", "remote", "ok", False)
    assert m.calls == [((1,), 2.0)] and off.rtt is not None
    m.conn.connected = False
    r = off.call(m, 2)
    assert (r.value, r.where, r.reason) == ("local 2", "local", "link_down")
    assert len(m.calls) == 1  # nothing sent
    m.conn.connected = True
    assert off.call(m, 3).where == "remote"  # the link is back
    st = off.stats()
    assert (st["remote"], st["local"]) == (2, 1)
    assert st["reasons"] == {"remote:ok": 2, "local:link_down": 1}


def test_no_local_fallback_means_always_remote() -> None:
    m = FakeMethod(Busy("busy"), connected=False)
    off = Offloader(None)
    with pytest.raises(Busy):
        off.call(m, 1)
    assert off.stats()["local"] == 0


@pytest.mark.parametrize(
    "exc", [Busy("b"), Unavailable("u"), DeadlineExpired("d")], ids=lambda e: e.code
)
def test_busy_unavailable_or_late_falls_back_then_cools_down(exc: Exception) -> None:
    clock = Clock()
    m = FakeMethod(exc)
    off = Offloader(local, deadline=1.0, cooldown=5.0, clock=clock)
    r = off.call(m, 1)
    code = exc.code  # type: ignore[attr-defined]
    assert (r.value, r.where, r.reason) == ("local 1", "local", f"fallback:{code}")
    r = off.call(m, 2)  # cooling down: not sent
    assert (r.where, r.reason, len(m.calls)) == ("local", f"cooldown:{code}", 1)
    clock.now += 5.1
    m.answer = "back"
    if code == "deadline_expired":  # the round trip is now known to be too long
        r = off.call(m, 3)
        assert (r.where, r.reason) == ("local", "deadline")
        off.observe(0.0)  # until it is measured shorter (a probe: below)
        off.observe(0.0)
    assert off.call(m, 3).value == "back"
    assert off.stats()["fallback"] == 1


def test_other_errors_are_the_callers() -> None:
    m = FakeMethod(UnknownObject("gone"))
    off = Offloader(local)
    with pytest.raises(UnknownObject):
        off.call(m, 1)
    m.answer = ValueError("bad")  # not even a continuum error
    with pytest.raises(ValueError):
        off.call(m, 1)
    assert off.stats()["local"] == 0


def test_a_slow_link_goes_local_and_a_probe_wins_it_back() -> None:
    clock = Clock()
    m = FakeMethod(hold=True)
    off = Offloader(local, deadline=1.0, margin=1.5, alpha=1.0, probe_interval=10.0, clock=clock)
    off.observe(0.9)  # measured: 0.9 s * 1.5 > 1 s
    r = off.call(m, 7)
    assert (r.value, r.where, r.reason) == ("local 7", "local", "deadline")
    # the same call went to the node too, only to measure (never measured remotely yet)
    assert len(m.calls) == 1 and off.stats()["probes"] == 1
    assert m.calls[0][1] >= 1.0  # a probe may take longer than the deadline, to measure it
    assert off.call(m, 8).where == "local"
    assert len(m.calls) == 1  # one probe at a time
    m.held[0].set_result("dropped")  # the probe came back fast: the link got faster
    assert off.rtt is not None and off.rtt < 0.5
    m.hold = False
    m.answer = "remote"
    assert off.call(m, 9).where == "remote"
    # slow again: the next probe waits for probe_interval after the last remote call
    off.observe(5.0)
    m.hold = True
    off.call(m, 10)
    assert len(m.calls) == 2
    clock.now += 10.5
    off.call(m, 11)
    assert len(m.calls) == 3 and off.stats()["probes"] == 2


def test_first_slow_call_is_sent_and_measured() -> None:
    m = FakeMethod(hold=True)
    off = Offloader(local, deadline=1.0)
    fut = off.submit(m, 1)
    assert not fut.done() and len(m.calls) == 1
    m.held[0].set_result("late but fine")
    assert fut.result().where == "remote"


def test_a_call_waiting_when_the_link_drops_is_answered_by_the_board() -> None:
    m = FakeMethod(hold=True)
    off = Offloader(local, deadline=30.0, watch=0.02)
    fut = off.submit(m, 5)
    assert not fut.done()
    m.conn.connected = False  # the broker went away: the reply will not come
    r = fut.result(timeout=10)
    assert (r.value, r.where, r.reason) == ("local 5", "local", "fallback:link_down")
    m.held[0].set_result("too late")  # a reply after all: ignored
    st = off.stats()
    assert (st["remote"], st["local"], st["fallback"]) == (0, 1, 1)


# -- the agent's files ---------------------------------------------------------------------


def _small_export() -> dict[str, Any]:
    from continuum_node.forecast import Forecaster

    f = Forecaster(device="cpu")
    f.load_csv("orangepi_sample.csv")
    f.train(epochs=1, hidden=8)
    return f.edge_export()


def test_model_store_survives_reopening_and_ignores_a_damaged_file(tmp_path: Path) -> None:
    from continuum_edgeagent._edgemodel import MODEL_FILE, EdgeModelStore

    export = _small_export()
    store = EdgeModelStore(str(tmp_path))
    assert store.load() is None
    model = store.save(export)
    again = EdgeModelStore(str(tmp_path)).load()
    assert again is not None and again.state_hash == model.state_hash == export["state_hash"]
    assert again.predict([[10.0, 20.0]] * 6) == model.predict([[10.0, 20.0]] * 6)
    with pytest.raises(ValueError):
        store.save({"format": "other"})
    assert EdgeModelStore(str(tmp_path)).load() is not None  # a bad export replaced nothing
    (tmp_path / MODEL_FILE).write_bytes(b"\xff\x00garbage")
    assert EdgeModelStore(str(tmp_path)).load() is None


def test_event_queue_keeps_order_across_restarts_and_bounds(tmp_path: Path) -> None:
    from continuum_edgeagent._eventqueue import EventQueue

    q = EventQueue(str(tmp_path), limit=5)
    for i in range(7):
        q.add("forecast", {"n": i}, True)
    assert len(q) == 5 and q.dropped == 2
    q2 = EventQueue(str(tmp_path), limit=5)  # a restart
    sent: list[int] = []
    ok = iter([True, True, False])

    def publish(kind: str, body: dict[str, Any], retain: bool) -> bool:
        if not next(ok):
            return False
        sent.append(body["n"])
        return True

    assert q2.flush(publish) == 2
    assert sent == [2, 3] and len(q2) == 3
    assert [
        json.loads(x)["body"]["n"] for x in (tmp_path / "events.jsonl").read_text().splitlines()
    ] == [
        4,
        5,
        6,
    ]
    out: list[int] = []
    q2.send(lambda k, b, r: False, "alert", {"n": 7}, False)  # still offline: queued last
    assert len(q2) == 4

    def online(kind: str, body: dict[str, Any], retain: bool) -> bool:
        out.append(body["n"])
        return True

    q2.send(online, "forecast", {"n": 8}, True)  # back: the queue first, in order
    assert out == [4, 5, 6, 7, 8] and len(q2) == 0
    assert not (tmp_path / "events.jsonl").exists()


# -- real parts ----------------------------------------------------------------------------


def test_client_offloads_predict_on_a_real_node(bare_cluster: Cluster) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
    with c.client(timeout=60) as client:
        f = client.stub("continuum_node.forecast.Forecaster").create(device="cpu")
        f.load_csv("orangepi_sample.csv")
        f.train(epochs=2)
        model = EdgeLSTM(f.edge_export())
        off = Offloader(model.predict, deadline=10.0)
        window = f.tail(8)
        r = off.call(f.predict, window)
        assert r.where == "remote" and r.rtt is not None
        assert model.predict(window) == pytest.approx(r.value, abs=1e-4)
        off.observe(100.0)  # as if the link were very slow: the deadline cannot be met
        r2 = off.call(f.predict, window)
        assert (r2.where, r2.reason) == ("local", "deadline")
        assert r2.value == pytest.approx(r.value, abs=1e-4)
        c.stop("n1")  # the node goes away: its object is unavailable
        wait_for(lambda: client._node_state.get("n1") == "offline", timeout=20)
        off.rtt = None
        r3 = off.call(f.predict, window)
        assert (r3.where, r3.reason) == ("local", "fallback:unavailable")
        st = off.stats()
        assert st["remote"] == 1 and st["local"] == 2 and st["fallback"] == 1


class Subscriber:
    """forecast and alert messages of a device, with a persistent session (it
    misses nothing while the broker restarts with its persistence)."""

    def __init__(self, port: int, root: str, device: str) -> None:
        self.got: dict[str, list[dict[str, Any]]] = {"forecast": [], "alert": []}
        self.lock = threading.Lock()
        topics = [(f"{root}/dev/{device}/forecast", 1), (f"{root}/dev/{device}/alert", 1)]
        c = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=f"sub-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topics)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:  # the retained forecast again at a (re)subscription
            return
        with self.lock:
            self.got[msg.topic.rsplit("/", 1)[1]].append(cbor2.loads(msg.payload))

    def of(self, kind: str, where: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.got[kind] if where is None or m.get("where") == where]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_agent_forecasts_on_the_board_while_the_broker_is_down(tmp_path: Path) -> None:
    port = free_port()
    broker = LocalBroker(port=port, persistence_dir=str(tmp_path / "broker-data")).start()
    c = Cluster(broker.url, tmp_path / "cluster")
    agent: Agent | None = None
    ref: Agent | None = None
    sub: Subscriber | None = None
    try:
        c.start_gateway()
        c.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
        sub = Subscriber(port, c.root, "dev-o")
        state = tmp_path / "state"
        cfg = agent_config(
            tmp_path / "a.toml",
            broker.url,
            c.root,
            "dev-o",
            state_dir=state,
            forecaster='enabled = true\nargs = { device = "cpu" }\ntimeout = 30.0',
            jobs="train_after = 40\ntrain_epochs = 2\nforecast_every = 5\n"
            "alert_band = 0.001\nforecast_deadline = 10.0",
        )
        agent = Agent(cfg, tmp_path / "agent.log").start()
        # the same agent without the edge model: the RSS reference
        ref_cfg = agent_config(
            tmp_path / "ref.toml",
            broker.url,
            c.root,
            "dev-ref",
            forecaster='enabled = true\nargs = { device = "cpu" }\ntimeout = 30.0',
            jobs="train_after = 40\ntrain_epochs = 2\nforecast_every = 5\n"
            "alert_band = 0.001\nedge_fallback = false",
        )
        ref = Agent(ref_cfg, tmp_path / "ref.log").start()

        def jobs() -> dict[str, Any]:
            return agent.status().get("forecaster") or {}

        wait_for(lambda: len(sub.of("forecast", "remote")) >= 2, timeout=120)
        wait_for(lambda: jobs().get("edge_model") is not None, timeout=30)
        assert (state / "edge-model.cbor").is_file()
        wait_for(
            lambda: (ref.status().get("forecaster") or {}).get("forecasts", 0) >= 2, timeout=60
        )
        assert ref.status()["forecaster"]["edge_model"] is None

        def peak_rss() -> tuple[float, float]:  # (with the edge model, without), VmHWM
            return rss_mb(int(agent.status()["pid"]))[1], rss_mb(int(ref.status()["pid"]))[1]

        # the agent's 30 MB budget (tests/test_edge_footprint.py) holds with the
        # model: its peak RSS so far, the model fetched and forecasting remotely
        with_model, without = peak_rss()
        assert with_model < BUDGET_MB, (with_model, without)
        assert ref.stop() == 0

        broker.stop()  # the link is cut: sampling goes on, forecasts come from the board
        wait_for(lambda: jobs().get("offload", {}).get("local", 0) >= 4, timeout=60)
        wait_for(lambda: jobs().get("events_queued", 0) >= 4, timeout=30)
        during = jobs()
        assert during["last_forecast"]["where"] == "local" and during["last_forecast"]["offline"]
        wait_for(lambda: (jobs().get("last_alert") or {}).get("offline"), timeout=30)
        peak_local = rss_mb(int(agent.status()["pid"]))[1]  # and forecasting on the board
        assert peak_local < BUDGET_MB, (peak_local, without)
        broker.start()  # restored

        def remote_again() -> bool:
            last = max((m["after_seq"] for m in sub.of("forecast", "local")), default=0)
            return any(m["after_seq"] > last for m in sub.of("forecast", "remote"))

        wait_for(remote_again, timeout=60)
        wait_for(lambda: jobs().get("events_queued") == 0, timeout=30)
        assert agent.stop() == 0
        final = json.loads((state / "status.json").read_text().strip())["forecaster"]
        local_made = final["offload"]["local"]
        assert local_made >= 4
        assert final["offload"]["reasons"].get("local:link_down", 0) >= 3
        wait_for(lambda: len(sub.of("forecast", "local")) >= local_made, timeout=20)
        local = sub.of("forecast", "local")
        assert len({m["after_seq"] for m in local}) == local_made  # none lost
        assert all(m["offline"] and m["model"] == final["edge_model"]["state_hash"] for m in local)
        assert any(a["offline"] and a["where"] == "local" for a in sub.of("alert"))
        seqs = [m["after_seq"] for m in sub.of("forecast")]
        assert seqs == sorted(seqs)  # the queued ones went first, in order
    finally:
        for a in (agent, ref):
            if a is not None and a.proc is not None and a.proc.poll() is None:
                a.stop()
        if sub is not None:
            sub.close()
        c.close()
        broker.stop()


def test_export_is_cbor_and_small_enough_for_a_board() -> None:
    blob = encode(_small_export())
    assert len(blob) < 10_000  # hidden 8: a few KiB
