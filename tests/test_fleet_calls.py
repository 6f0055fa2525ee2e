"""Fan-out (issue 14, "fleet-wide calls"): one method on many objects where
each lives, per-object results and errors, a deadline. Real processes for the
end-to-end cases; the engine's own logic against a fake client; the gateway's
``resolve_many`` in-process."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt import (
    BadRequest,
    ContinuumError,
    DeadlineExpired,
    FanOutResult,
    ObjectProxy,
    RemoteError,
    Unavailable,
    UnknownObject,
)
from continuum_mqtt._fanout import FanOutTarget, run_fan_out
from continuum_mqtt.service import Request

from ._cluster import Cluster, wait_for
from ._gatewaykit import directory_api

COUNTER = "examples.counter.Counter"


# -- end to end ----------------------------------------------------------------------
def _two_nodes(cluster: Cluster) -> None:
    cluster.start_node("n2")
    with cluster.client() as c:
        cluster.wait_nodes(["n1", "n2"], 30, classes=[COUNTER], client=c)


def test_fan_out_over_two_nodes_returns_every_result(cluster: Cluster) -> None:
    _two_nodes(cluster)
    with cluster.client() as c:
        stub = c.stub(COUNTER)
        objs = [stub.create(start=i, node="n1" if i % 2 else "n2") for i in range(40)]
        progress: list[tuple[int, int]] = []
        r = c.fan_out(objs, "add", 1, window=4, on_progress=lambda d, t: progress.append((d, t)))
        assert isinstance(r, FanOutResult) and r.ok and len(r) == 40
        assert r.results == {o._id: i + 1 for i, o in enumerate(objs)}
        assert r.nodes == {"n1": 20, "n2": 20}
        assert progress[-1] == (40, 40)
        assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(progress))
        # keyword arguments reach the method; an object twice is called once
        r = c.fan_out([*objs, objs[0]], "add", n=10)
        assert r.ok and r[objs[0]._id] == 11 and len(r) == 40
        # the listing comes a page at a time (a fleet's is larger than a reply)
        c.OBJECTS_PAGE = 7  # type: ignore[misc]
        assert [o["id"] for o in c.objects(cls=COUNTER)] == [o._id for o in objs]


def test_one_failure_is_one_error_and_the_others_succeed(cluster: Cluster) -> None:
    with cluster.client() as c:
        stub = c.stub(COUNTER)
        objs = [stub.create(start=i) for i in range(6)]
        with cluster.client() as other:
            other.delete(objs[2]._id)
        r = c.fan_out(objs, "get")
        assert set(r.errors) == {objs[2]._id}
        assert isinstance(r.errors[objs[2]._id], UnknownObject)
        assert r.results == {o._id: i for i, o in enumerate(objs) if i != 2}
        assert r.error_counts() == {"unknown_object": 1}
        with pytest.raises(UnknownObject):
            r[objs[2]._id]
        with pytest.raises(UnknownObject):
            r.raise_first()
        # a method that raises for every object: an error each, no exception
        r = c.fan_out(objs[:2], "fail", "no")
        assert not r.results and all(isinstance(e, RemoteError) for e in r.errors.values())


def test_aliases_ids_and_proxies_mixed(cluster: Cluster) -> None:
    with cluster.client() as c:
        stub = c.stub(COUNTER)
        a = stub.create(start=1, alias="fleet-a")
        b = stub.create(start=2, alias="fleet-b")
        d = stub.create(start=4)
    with cluster.client() as fresh:  # knows none of them: resolved in bulk
        r = fresh.fan_out(["fleet-a", b._id, d, "fleet-none"], "get")
        assert r.results == {"fleet-a": 1, b._id: 2, d._id: 4}
        assert r.ids["fleet-a"] == a._id
        assert [k for k, _ in r.items()] == ["fleet-a", b._id, d._id, "fleet-none"]
        assert isinstance(r.errors["fleet-none"], UnknownObject)
        # the directory's answer fills the location cache: a second round needs no resolve
        assert fresh._locations[a._id] == "n1"
        # an object named by alias and by id is called once; both names get the value
        r = fresh.fan_out(["fleet-b", b._id], "add", 1)
        assert r.results == {"fleet-b": 3, b._id: 3} and r.nodes == {"n1": 1}


def test_the_deadline_is_kept(cluster: Cluster) -> None:
    with cluster.client() as c:
        stub = c.stub(COUNTER)
        fast, slow = stub.create(start=7), stub.create()
        t0 = time.monotonic()
        r = c.fan_out([fast, slow], "slow", 0.0, timeout=1.5)
        assert r.ok  # slow(0) is quick
        r = c.fan_out([slow], "slow", 30.0, timeout=1.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 20  # returns, without waiting for the 30 s call
        assert isinstance(r.errors[str(slow._id)], DeadlineExpired)
        assert fast.get() == 7


def test_a_node_killed_mid_round(cluster: Cluster) -> None:
    _two_nodes(cluster)
    with cluster.client(offline_grace=0.5) as c:
        stub = c.stub(COUNTER)
        on1 = [stub.create(start=i, node="n1") for i in range(4)]
        on2 = [stub.create(start=i, node="n2") for i in range(4)]
        out: dict[str, Any] = {}

        def round_() -> None:
            out["r"] = c.fan_out([*on1, *on2], "slow", 3.0, window=8, timeout=60)

        t = threading.Thread(target=round_)
        t.start()
        wait_for(lambda: cluster.alive("n2"), 5, 0.05, "n2 up")
        time.sleep(1.0)  # the calls are running on both nodes
        cluster.stop("n2", signal.SIGKILL)
        t.join(60)
        assert not t.is_alive()
        r = out["r"]
        assert set(r.results) == {o._id for o in on1}
        assert set(r.errors) == {o._id for o in on2}
        assert all(isinstance(e, Unavailable) for e in r.errors.values()), r.errors


def test_local_mode_fans_out_too() -> None:
    with continuum_mqtt.connect("local:") as c:
        stub = c.stub(COUNTER)
        objs = [stub.create(start=i, alias=f"loc-{i}") for i in range(5)]
        c.delete(objs[4])
        r = c.fan_out([*objs[:4], "loc-1", objs[4]], "add", 1)
        # loc-1 is objs[1]: called once, both names get its value
        assert r.results == {**{o._id: i + 1 for i, o in enumerate(objs[:4])}, "loc-1": 2}
        assert isinstance(r.errors[str(objs[4]._id)], UnknownObject)


def test_async_fan_out(cluster: Cluster) -> None:
    import asyncio

    async def main() -> FanOutResult:
        async with cluster.client() as c:
            objs = [c.stub(COUNTER).create(start=i) for i in range(3)]
            seen: list[int] = []
            r = await c.afan_out(objs, "get", on_progress=lambda d, t: seen.append(d))
            await asyncio.sleep(0.05)  # the last progress callback, scheduled in the loop
            assert seen[-1] == 3
            return r

    assert asyncio.run(main()).ok


# -- the engine, against a fake client -----------------------------------------------
class _Fake(FanOutTarget):
    """Objects ``o0..`` on nodes by ``node_of``; calls complete when the test
    says (``complete``), at once with an error (``fail_now``), or never."""

    def __init__(self, nodes: dict[str, str], *, never: bool = False, fail_now: bool = False):
        self.nodes = nodes
        self.never = never
        self.fail_now = fail_now
        self.inflight: dict[str | None, int] = {}
        self.most: dict[str | None, int] = {}
        self.lock = threading.Lock()
        self.resolved: list[list[str]] = []

    def _node_of(self, proxy: ObjectProxy) -> str | None:
        return self.nodes.get(proxy._id or "")

    def _known(self, ref: str) -> ObjectProxy | None:
        return ObjectProxy(self, ref, "C") if ref in self.nodes else None

    def _resolve_many(self, refs: list[str], timeout: float) -> dict[str, Any]:
        self.resolved.append(refs)
        return {r: UnknownObject(f"no {r}", ref=r) for r in refs}

    def _call(self, proxy: ObjectProxy, method: str, args: list[Any], kwargs: dict[str, Any],
              timeout: float | None, on_progress: Any) -> Future[Any]:  # fmt: skip
        fut: Future[Any] = Future()
        if self.fail_now:
            fut.set_exception(Unavailable("offline"))
            return fut
        node = self._node_of(proxy)
        with self.lock:
            self.inflight[node] = self.inflight.get(node, 0) + 1
            self.most[node] = max(self.most.get(node, 0), self.inflight[node])
        if not self.never:
            threading.Timer(0.001, self._complete, (fut, node, proxy._id)).start()
        return fut

    def _complete(self, fut: Future[Any], node: str | None, oid: str) -> None:
        with self.lock:
            self.inflight[node] -= 1
        fut.set_result(oid.upper())


def test_the_window_bounds_calls_in_flight_per_node() -> None:
    nodes = {f"o{i}": f"n{i % 3}" for i in range(300)}
    fake = _Fake(nodes)
    r = run_fan_out(fake, list(nodes), "m", [], {}, window=5, timeout=30)
    assert r.ok and r.results == {k: k.upper() for k in nodes}
    assert r.nodes == {"n0": 100, "n1": 100, "n2": 100}
    assert set(fake.most.values()) <= {1, 2, 3, 4, 5} and max(fake.most.values()) <= 5


def test_calls_that_fail_at_once_do_not_recurse() -> None:
    nodes = {f"o{i}": "n1" for i in range(5000)}
    r = run_fan_out(_Fake(nodes, fail_now=True), list(nodes), "m", [], {}, window=2, timeout=30)
    assert len(r.errors) == 5000 and r.error_counts() == {"unavailable": 5000}


def test_calls_never_answered_end_at_the_deadline() -> None:
    nodes = {f"o{i}": "n1" for i in range(10)}
    t0 = time.monotonic()
    r = run_fan_out(_Fake(nodes, never=True), list(nodes), "m", [], {}, window=3, timeout=0.3)
    assert time.monotonic() - t0 < 10
    assert r.error_counts() == {"deadline_expired": 10} and not r.results


def test_unknown_references_are_resolved_together_and_fail_alone() -> None:
    fake = _Fake({"o1": "n1"})
    r = run_fan_out(fake, ["o1", "x", "y", "x"], "m", [], {}, window=1, timeout=5)
    assert fake.resolved == [["x", "y"]]
    assert r.results == {"o1": "O1"} and set(r.errors) == {"x", "y"}


def test_bad_arguments() -> None:
    fake = _Fake({})
    with pytest.raises(ValueError):
        run_fan_out(fake, [], "m", [], {}, window=0, timeout=1)
    with pytest.raises(BadRequest):
        run_fan_out(fake, [ObjectProxy(fake, None, "C")], "m", [], {}, window=1, timeout=1)
    with pytest.raises(TypeError):
        run_fan_out(fake, [3], "m", [], {}, window=1, timeout=1)  # type: ignore[list-item]
    assert run_fan_out(fake, [], "m", [], {}, window=1, timeout=1).total == 0


# -- the gateway's resolve_many, in-process --------------------------------------------
def test_resolve_many_keeps_resolve_s_visibility(tmp_path: Path) -> None:
    _, d = directory_api(tmp_path / "dir.db", [COUNTER], ["ops"])

    def run(caller: str, method: str, **kw: Any) -> Any:
        return d.dispatch(Request(method, [], kw), caller=caller, rid=None)

    mine = run("dev-a", "create", cls=COUNTER, alias="dev-a/x")
    theirs = run("dev-b", "create", cls=COUNTER)
    got = run("dev-a", "resolve_many", refs=["dev-a/x", theirs["id"], "nope", 5])
    assert got[0]["id"] == mine["id"]
    assert [g["error"]["code"] for g in got[1:]] == [
        "unknown_object",
        "unknown_object",
        "bad_request",
    ]
    for ref in (theirs["id"], "nope"):  # exactly what resolve says
        with pytest.raises(UnknownObject):
            run("dev-a", "resolve", ref=ref)
    assert run("ops", "resolve_many", refs=[theirs["id"]])[0]["id"] == theirs["id"]
    with pytest.raises(BadRequest):
        run("dev-a", "resolve_many", refs=["x"] * 1001)
    with pytest.raises(ContinuumError):
        run("dev-a", "resolve_many", refs="dev-a/x")


def test_an_older_gateway_gets_one_resolve_per_reference() -> None:
    """A gateway without resolve_many answers unknown_method: the client then
    sends one resolve each (the client's side only, with the gateway faked)."""
    client = continuum_mqtt.Client("mqtt://127.0.0.1:1")
    sent: list[str] = []

    def gateway_future(op: str, timeout: float, /, **kw: Any) -> Future[Any]:
        sent.append(op)
        fut: Future[Any] = Future()
        if op == "resolve_many":
            fut.set_exception(continuum_mqtt.UnknownMethod("no such gateway method"))
        elif kw["ref"] == "gone":
            fut.set_exception(UnknownObject("no gone", ref="gone"))
        else:
            fut.set_result({"id": f"id-{kw['ref']}", "class": COUNTER, "node": "n1"})
        return fut

    client._gateway_future = gateway_future  # type: ignore[method-assign]
    got = client._resolve_many(["a", "gone", "b"], 5)
    assert sent == ["resolve_many", "resolve", "resolve", "resolve"]
    assert isinstance(got["gone"], UnknownObject)
    assert [got[r]._id for r in ("a", "b")] == ["id-a", "id-b"]  # type: ignore[union-attr]
    assert client._locations == {"id-a": "n1", "id-b": "n1"}
