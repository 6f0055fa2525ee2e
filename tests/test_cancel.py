"""Cancellation (issue 13): ``continuum_mqtt.cancelled()`` /
``check_cancelled()`` inside a call whose deadline passed or whose node is
stopping; a cancelled mutating call is checkpointed, never journaled; a node
stops within ``--stop-timeout`` even with methods that never check; the
forecaster's training stops at the end of an epoch.

In-process nodes over a FakeTransport first (fast), then a real node over
mosquitto that gets SIGTERM in the middle of a huge training."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt import ActiveObject, Cancelled, CancelScope, active, check_cancelled
from continuum_mqtt.service import class_path

from . import _nodekit
from ._cluster import Cluster, wait_for
from ._nodekit import NodeUnderTest, wait_until

ENTERED: dict[str, threading.Event] = {}
RELEASE = threading.Event()  # ends Stubborn.hold (a method that never checks)


class Spinner(ActiveObject):
    """A long mutating method that checks for cancellation and changes the
    object only at its end."""

    def __init__(self) -> None:
        self.value = 0

    @active
    def add(self, n: int) -> int:
        self.value += n
        return self.value

    @active
    def spin(self, tag: str = "", rounds: int = 2000) -> int:
        ENTERED.setdefault(tag, threading.Event()).set()
        for _ in range(rounds):  # bounded: a replay without a scope ends, wrongly
            check_cancelled()
            time.sleep(0.005)
        self.value += 1000
        return self.value

    @active(readonly=True)
    def peek(self, tag: str = "") -> bool:
        ENTERED.setdefault(tag, threading.Event()).set()
        while not continuum_mqtt.cancelled():
            time.sleep(0.005)
        return True

    @active(readonly=True)
    def get(self) -> int:
        return self.value

    @active
    def ingest(self, sample: dict[str, Any]) -> None:
        self.seen = continuum_mqtt.cancelled()


class Stubborn(ActiveObject):
    """Never checks: only the stop timeout gets a node past it."""

    @active
    def hold(self) -> str:
        ENTERED.setdefault("hold", threading.Event()).set()
        RELEASE.wait(60)
        return "released"


class Pooled(ActiveObject, stateless=True):
    @active
    def spin(self) -> str:
        while True:
            check_cancelled()
            time.sleep(0.005)


SPINNER, STUBBORN = class_path(Spinner), class_path(Stubborn)


@pytest.fixture(autouse=True)
def classes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for cls in (Spinner, Stubborn, Pooled):
        monkeypatch.setitem(_nodekit.CLASSES, class_path(cls), cls)
    ENTERED.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


def _node(**options: Any) -> NodeUnderTest:
    options.setdefault("workers", 4)
    return NodeUnderTest(inline=False, **options)


def _call(
    node: NodeUnderTest,
    obj: str,
    method: str,
    /,
    timeout_ms: int | None = None,
    rid: str | None = None,
    **kw: Any,
) -> str:
    body: dict[str, Any] = {"method": method, "obj": obj, "args": [], "kwargs": kw}
    if rid is not None:
        body["id"] = rid
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    return node._send(node.topics.node_call(node.id), body)


def _entered(tag: str) -> bool:
    return wait_until(lambda: tag in ENTERED and ENTERED[tag].is_set(), 10)


# -- the API --------------------------------------------------------------------------


def test_outside_a_call_nothing_is_cancelled() -> None:
    assert continuum_mqtt.cancelled() is False
    assert continuum_mqtt.check_cancelled() is None
    assert Spinner().spin(rounds=3) == 1000  # a plain local call runs to its end


def test_a_scope_says_why_and_is_left_as_entered() -> None:
    shutdown = threading.Event()
    with CancelScope(time.monotonic() + 60, shutdown):
        assert not continuum_mqtt.cancelled()
        with CancelScope(time.monotonic() - 1):  # an inner call, already late
            with pytest.raises(Cancelled) as info:
                check_cancelled()
            assert info.value.data == {"reason": "deadline"}
        assert not continuum_mqtt.cancelled()  # the outer scope again
        shutdown.set()
        with pytest.raises(Cancelled) as info:
            check_cancelled()
        env = info.value.to_envelope()
        assert (env["code"], env["type"], env["reason"]) == ("cancelled", "Cancelled", "shutdown")
    assert not continuum_mqtt.cancelled()
    assert continuum_mqtt.error_class("cancelled") is Cancelled


# -- a node ---------------------------------------------------------------------------


def test_a_call_past_its_deadline_stops_and_changes_nothing() -> None:
    n = _node()
    try:
        n.create("s", SPINNER)
        err = n.error(_call(n, "s", "spin", timeout_ms=300, tag="d"))
        assert (err["code"], err["reason"]) == ("cancelled", "deadline")
        assert n.result(_call(n, "s", "get")) == 0
        assert n.result(_call(n, "s", "peek", timeout_ms=200)) is True  # readonly: asks, returns
        assert n.result(_call(n, "s", "spin", timeout_ms=60_000, rounds=3)) == 1000
    finally:
        n.close()


def test_a_cancelled_call_is_checkpointed_not_journaled(tmp_path: Path) -> None:
    """A journaled cancelled call would run again at a replay, without a
    deadline, to its end: the restarted object would differ from the live one."""
    n = _node(state_dir=str(tmp_path))
    n.create("s", SPINNER)
    assert n.result(_call(n, "s", "add", n=5, rid="r-add")) == 5
    res = n.node.residents.get("s")
    assert res is not None and res.journaled == 1
    err = n.error(_call(n, "s", "spin", timeout_ms=200, rid="r-spin", tag="c"))
    assert err["code"] == "cancelled"
    assert res.journaled == 0  # a checkpoint, no journal entry
    n.close()
    again = _node(state_dir=str(tmp_path))
    try:
        assert again.result(_call(again, "s", "get")) == 5  # a replayed spin would add 1000
        _call(again, "s", "spin", rid="r-spin", tag="again")  # exactly-once: the first outcome
        assert again.error("r-spin")["code"] == "cancelled"
        assert "again" not in ENTERED
    finally:
        again.close()


def test_stop_cancels_running_calls_and_pool_calls() -> None:
    n = _node()
    n.create("s", SPINNER)
    rid = _call(n, "s", "spin", tag="stop")  # no deadline
    pooled = n._send(
        n.topics.pool_call(class_path(Pooled)), {"method": "spin", "args": [], "kwargs": {}}
    )
    _entered("stop")
    time.sleep(0.1)
    t0 = time.monotonic()
    n.close()
    assert time.monotonic() - t0 < 30 and n.node.drained  # generous: not a benchmark
    err = n.error(rid)
    assert (err["code"], err["reason"]) == ("cancelled", "shutdown")
    assert n.error(pooled)["code"] == "cancelled"


def test_stop_leaves_methods_that_never_check_after_its_timeout() -> None:
    n = _node(stop_timeout=0.5)
    n.create("h", STUBBORN)
    rid = _call(n, "h", "hold")
    _entered("hold")
    t0 = time.monotonic()
    n.close()
    assert time.monotonic() - t0 < 30  # generous: not a benchmark
    assert n.node.drained is False
    RELEASE.set()
    assert n.result(rid) == "released"  # it went on by itself; the process would exit


def test_feed_samples_are_never_cancelled() -> None:
    """At a shutdown a sample is left unacknowledged, to come again, not cut short."""
    n = NodeUnderTest()  # inline: everything runs in the injecting thread
    try:
        n.create("s", SPINNER)
        topic = n.topics.metrics("d1")
        n.result(n.ctl("bind", obj="s", topic=topic, method="ingest"))
        assert n.node.calls.shutdown is not None
        n.node.calls.shutdown.set()
        n.sample("d1", {"seq": 1})
        res = n.node.residents.get("s")
        assert res is not None and res.instance.seen is False
        assert n.result(_call(n, "s", "peek")) is True  # a call, though, is cancelled
    finally:
        n.close()


# -- local mode -----------------------------------------------------------------------


def test_local_mode_honours_the_deadline_and_close() -> None:
    with continuum_mqtt.connect("local:") as c:
        s = c.stub(SPINNER).create()
        with pytest.raises(Cancelled) as info:
            s.spin.options(timeout=0.3)(tag="local")
        assert info.value.data["reason"] == "deadline"
        assert s.get() == 0
        fut = s.spin.future(tag="closing")
        _entered("closing")
    with pytest.raises(Cancelled) as info:
        fut.result(10)
    assert info.value.data["reason"] == "shutdown"


# -- the forecaster -------------------------------------------------------------------


def test_training_stops_after_an_epoch_and_keeps_the_old_model() -> None:
    pytest.importorskip("torch")
    from continuum_node.forecast import Forecaster, configure_torch_threads

    from continuum_mqtt._invoke import invoke

    before_threads = configure_torch_threads(None)
    configure_torch_threads(1)
    try:
        f = Forecaster(device="cpu", rows=[[float(i % 7), float(i % 5)] for i in range(60)])
        first = f.train(epochs=2)
        stop = threading.Event()
        epochs: list[int] = []

        def on_progress(update: dict[str, Any]) -> None:
            epochs.append(update["epoch"])
            if update["epoch"] == 3:
                stop.set()

        with CancelScope(None, stop), pytest.raises(Cancelled):
            invoke(f, "train", [], {"epochs": 10_000, "seed": 5}, on_progress)
        assert epochs == [1, 2, 3]  # stopped at the end of the epoch it was asked in
        assert f.state_hash() == first["state_hash"]
        assert f.info()["params"]["epochs"] == 2
    finally:
        configure_torch_threads(before_threads)


# -- a real node ----------------------------------------------------------------------


def test_sigterm_stops_a_node_in_the_middle_of_a_huge_training(bare_cluster: Cluster) -> None:
    pytest.importorskip("torch")
    c = bare_cluster
    c.start_gateway()
    c.start_node(
        "n1", "--torch-threads", "1", "--stop-timeout", "5", modules=("continuum_node.forecast",)
    )
    with c.client(timeout=30) as client:
        fc = client.stub("continuum_node.forecast.Forecaster").create(device="cpu")
        fc.load_csv("node_3_utilisation.csv")
        # past its deadline, the training stops: the object serves the next call
        with pytest.raises(continuum_mqtt.DeadlineExpired):
            fc.train.options(timeout=2)(epochs=10_000, paper=True)  # no early stopping
        assert fc.info.options(timeout=60)()["trained"] is False
        # SIGTERM in the middle of another one: the node exits, well within the bound
        epochs: list[int] = []
        fut = fc.train.options(timeout=600, on_progress=lambda u: epochs.append(u["epoch"])).future(
            epochs=10_000, paper=True
        )
        wait_for(lambda: len(epochs) >= 2, 60)
        proc = c.procs["n1"]
        t0 = time.monotonic()
        proc.terminate()
        code = proc.wait(30)
        assert code == 0, c.log_tail("n1")
        assert time.monotonic() - t0 < 30
        assert "stopping" in c.log("n1")
        fut.cancel()
