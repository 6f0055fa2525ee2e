"""Compute threads of a node (continuum_node._threads) and the long-call budget
of its scheduler: the intra-op setting holds for classes that import torch
inside their methods, whenever, in every worker; long calls never take the
workers and cores of light calls. Behaviour only, never timings."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from continuum_dev.testing import Deployment
from continuum_node._actors import Actor, Scheduler
from continuum_node._threads import (
    THREAD_ENV,
    PostImport,
    default_long_workers,
    hold_torch_threads,
    is_long,
    set_thread_env,
)

from continuum_mqtt.service import describe_class
from examples.model import Regressor

MODEL = "examples.model.Regressor"


# -- the environment and the import hook ---------------------------------------------


def test_thread_env_is_set_where_the_operator_left_it_unset() -> None:
    env = {"MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": ""}
    got = set_thread_env(2, env)
    assert got == env and env["MKL_NUM_THREADS"] == "3"  # the operator's stands
    assert all(env[k] == "2" for k in THREAD_ENV if k != "MKL_NUM_THREADS")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            set_thread_env(bad, {})


def test_the_long_budget_leaves_a_core() -> None:
    assert default_long_workers(1, cores=2) == 1
    assert default_long_workers(1, cores=16) == 15
    assert default_long_workers(4, cores=16) == 3
    assert default_long_workers(8, cores=4) == 1


def test_the_post_import_hook_runs_once_after_a_lazy_import_in_any_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "continuum_lazy_lib.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[tuple[int, str]] = []
    finder = PostImport(
        {"continuum_lazy_lib": lambda m: seen.append((m.VALUE, threading.current_thread().name))}
    )
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:

        def lazy() -> None:
            import continuum_lazy_lib

            assert continuum_lazy_lib.VALUE == 42

        t = threading.Thread(target=lazy, name="worker")
        t.start()
        t.join()
        assert seen == [(42, "worker")]  # after the module ran, on the importing thread
        module = sys.modules["continuum_lazy_lib"]
        assert type(module.__loader__).__name__ == "SourceFileLoader"  # as if plainly imported
        del sys.modules["continuum_lazy_lib"]
        importlib.import_module("continuum_lazy_lib")  # again: the hook does not run twice

        assert len(seen) == 1
    finally:
        sys.modules.pop("continuum_lazy_lib", None)


def test_torch_already_loaded_gets_the_setting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    fake = ModuleType("torch")
    fake.set_num_threads = lambda n: calls.append(("intra", n))  # type: ignore[attr-defined]
    fake.set_num_interop_threads = lambda n: calls.append(("inter", n))  # type: ignore[attr-defined]
    fake.get_num_threads = lambda: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert hold_torch_threads(3, 2) is None  # nothing left to hook
    assert calls == [("intra", 3), ("inter", 2)]


# -- long methods ----------------------------------------------------------------------


def test_long_is_declared_and_in_the_manifest() -> None:
    methods = describe_class(Regressor)["methods"]
    assert methods["train"]["long"] is True
    assert "long" not in methods["predict"] and "long" not in methods["ping"]
    obj = Regressor()
    assert is_long(
        SimpleNamespace(instance=obj), SimpleNamespace(req=SimpleNamespace(method="train"))
    )
    assert not is_long(
        SimpleNamespace(instance=obj), SimpleNamespace(req=SimpleNamespace(method="ping"))
    )
    pooled = SimpleNamespace(instance=obj, req=SimpleNamespace(method="train"))
    assert is_long(SimpleNamespace(), pooled)  # a pool's job carries its instance
    evicted = SimpleNamespace(instance=None, cls_path=MODEL)
    train = SimpleNamespace(req=SimpleNamespace(method="train"))
    assert is_long(evicted, train, {MODEL: Regressor})  # by its class path
    assert not is_long(evicted, train)
    assert not is_long(SimpleNamespace(instance=obj), SimpleNamespace())  # no request


class Named(Actor):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class Gates:
    """Jobs ``(caller, kind, gate)`` that wait for their gate while running."""

    def __init__(self) -> None:
        self.open: dict[str, threading.Event] = {}
        self.inside: set[str] = set()
        self.done: list[str] = []
        self.lock = threading.Lock()

    def run(self, actor: Named, job: tuple[str, str, str]) -> None:
        gate = job[2]
        with self.lock:
            self.inside.add(gate)
        self.open.setdefault(gate, threading.Event()).wait(30)
        with self.lock:
            self.inside.discard(gate)
            self.done.append(gate)

    def release(self, gate: str) -> None:
        self.open.setdefault(gate, threading.Event()).set()

    def release_all(self) -> None:
        for gate in list(self.open):
            self.release(gate)


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture
def gated() -> Iterator[tuple[Gates, ThreadPoolExecutor]]:
    g, pool = Gates(), ThreadPoolExecutor(4)
    try:
        yield g, pool
    finally:
        g.release_all()
        pool.shutdown(wait=True)


def _scheduler(g: Gates, pool: ThreadPoolExecutor, budget: int | None) -> Scheduler[Named, Any]:
    s: Scheduler[Named, Any] = Scheduler(
        pool.submit,
        g.run,
        max_queue=100,
        max_node_queue=1000,
        workers=4,
        caller=lambda job: job[0],
    )
    if budget is not None:
        s.limit_long(lambda actor, job: job[1] == "long", budget)
    return s


def test_long_jobs_beyond_the_budget_wait_while_light_ones_run(
    gated: tuple[Gates, ThreadPoolExecutor],
) -> None:
    g, pool = gated
    s = _scheduler(g, pool, budget=1)
    a, b, c, d = Named("a"), Named("b"), Named("c"), Named("d")
    s.enqueue(a, ("x", "long", "a1"))
    _wait(lambda: "a1" in g.inside)
    s.enqueue(b, ("x", "long", "b1"))  # the same caller's: its light calls pass it
    s.enqueue(c, ("x", "light", "c1"))
    s.enqueue(d, ("y", "light", "d1"))
    _wait(lambda: {"c1", "d1"} <= g.inside)
    assert "b1" not in g.inside and s.long_running == 1
    g.release("c1")
    g.release("d1")
    _wait(lambda: {"c1", "d1"} <= set(g.done))
    assert "b1" not in g.inside  # still waiting for the budget, workers free or not
    g.release("a1")
    _wait(lambda: "b1" in g.inside)  # the long one starts once the first ends
    assert s.long_running == 1
    g.release("b1")
    _wait(lambda: len(g.done) == 4 and s.long_running == 0 and s.queued == 0)
    assert g.done.index("a1") < g.done.index("b1")


def test_long_jobs_of_one_actor_and_of_others_run_one_at_a_time(
    gated: tuple[Gates, ThreadPoolExecutor],
) -> None:
    g, pool = gated
    s = _scheduler(g, pool, budget=1)
    a, b = Named("a"), Named("b")
    s.enqueue(a, ("x", "long", "a1"))
    s.enqueue(a, ("x", "long", "a2"))  # the same actor's: after a1, as always
    s.enqueue(b, ("y", "long", "b1"))
    for _ in range(3):
        _wait(lambda: len(g.inside) == 1)
        assert s.long_running == 1
        gate = next(iter(g.inside))
        g.release(gate)
        _wait(partial(g.done.__contains__, gate))
    _wait(lambda: len(g.done) == 3 and s.queued == 0 and s.long_running == 0)
    assert g.done.index("a1") < g.done.index("a2")
    assert not a.scheduled and not b.scheduled


def test_without_a_budget_long_jobs_run_side_by_side(
    gated: tuple[Gates, ThreadPoolExecutor],
) -> None:
    g, pool = gated
    s = _scheduler(g, pool, budget=None)
    for name in "abc":
        s.enqueue(Named(name), ("x", "long", name))
    _wait(lambda: g.inside == {"a", "b", "c"})
    assert s.long_running == 0  # nothing counted without a budget


# -- on a real node ------------------------------------------------------------------------


def _node(d: Deployment, *extra: str, env: dict[str, str] | None = None) -> None:
    for name in THREAD_ENV:
        d.env.pop(name, None)
    d.env.update(env or {})
    d.start_gateway()
    d.start_node("n1", *extra, modules=("examples.model",))


def test_the_setting_holds_in_every_worker_after_a_burst_of_lazy_calls(
    bare_cluster: Deployment,
) -> None:
    """The finding: a class importing torch in its methods got an OpenMP team
    per worker thread. 4 client threads call at once; then every worker that
    ran a call sees the node's setting in torch. The variables the operator
    set stand (OMP_NUM_THREADS here: torch still gets the node's setting)."""
    _node(
        bare_cluster,
        *("--intra-op-threads", "1", "--workers", "4", "--caller-workers", "4"),
        env={"OMP_NUM_THREADS": "3"},
    )
    with bare_cluster.client(timeout=120) as c:
        objs = [c.stub(MODEL).create(hidden=8) for _ in range(4)]

        def burst(obj: Any) -> list[dict[str, Any]]:
            seen = [obj.threads()]
            seen.append(obj.train(rows=64, epochs=2))
            seen += [obj.threads() for _ in range(3)]
            return seen

        with ThreadPoolExecutor(4) as pool:
            seen = [r for rs in pool.map(burst, objs) for r in rs]
        seen += [obj.threads() for obj in objs]
    assert {r["torch_threads"] for r in seen} == {1}
    assert {r["env"]["MKL_NUM_THREADS"] for r in seen} == {"1"}
    assert {r["env"]["OPENBLAS_NUM_THREADS"] for r in seen} == {"1"}
    assert {r["env"]["OMP_NUM_THREADS"] for r in seen} == {"3"}
    assert len({r["thread"] for r in seen}) > 1  # several workers touched torch


def test_a_light_call_completes_while_trainings_run(bare_cluster: Deployment) -> None:
    """Two trainings and light calls on other objects, one caller, budget 1:
    the light calls are answered while the first training runs, and the second
    training starts only once the first has ended."""
    _node(
        bare_cluster,
        *("--intra-op-threads", "1", "--workers", "3", "--caller-workers", "3"),
        *("--long-workers", "1"),
    )
    with bare_cluster.client(timeout=300) as c:
        m1, m2, m3 = (c.stub(MODEL).create(hidden=32) for _ in range(3))
        training = threading.Event()
        first: Future[Any] = m1.train.options(on_progress=lambda u: training.set()).future(
            rows=2000, epochs=40
        )
        assert training.wait(120)
        second: Future[Any] = m2.train.future(rows=200, epochs=1)
        for _ in range(3):
            m3.ping()
        assert not first.done()  # every light reply came while the training ran
        one, two = first.result(), second.result()
    assert two["started"] >= one["ended"]  # (the node's clock) the budget held it back
