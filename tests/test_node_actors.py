"""continuum_node._actors: mailboxes drained by a pool, in order, bounded, never wedged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from continuum_node._actors import Actor, Scheduler


class Manual:
    """An executor whose tasks wait until the test runs them (FIFO)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.tasks.append((fn, args))

    def run_one(self) -> None:
        fn, args = self.tasks.pop(0)
        fn(*args)

    def run_all(self) -> None:
        while self.tasks:
            self.run_one()


class Named(Actor):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _scheduler(pool: Manual, ran: list[tuple[str, Any]], **options: Any) -> Scheduler[Named, Any]:
    options.setdefault("max_queue", 100)
    options.setdefault("max_node_queue", 1000)
    return Scheduler(pool.submit, lambda a, j: ran.append((a.name, j)), **options)


def test_jobs_of_an_actor_run_in_order_and_a_busy_actor_yields() -> None:
    pool, ran = Manual(), list[tuple[str, Any]]()
    s = _scheduler(pool, ran, batch=4)
    a, b = Named("a"), Named("b")
    for i in range(6):
        s.enqueue(a, i)
    s.enqueue(b, "x")
    assert len(pool.tasks) == 2 and s.queued == 7  # one drain task per actor
    pool.run_one()  # a's first batch
    assert ran == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    pool.run_one()  # b got in before a's rest
    assert ran[-1] == ("b", "x")
    pool.run_all()
    assert [j for n, j in ran if n == "a"] == list(range(6))
    assert s.queued == 0 and not a.scheduled and not b.scheduled


def test_full_counts_the_actor_and_the_node() -> None:
    pool, ran = Manual(), list[tuple[str, Any]]()
    s = _scheduler(pool, ran, max_queue=2, max_node_queue=3)
    a, b = Named("a"), Named("b")
    s.enqueue(a, 1)
    assert not s.full(a)
    s.enqueue(a, 2)
    assert s.full(a) and not s.full(b)
    s.enqueue(b, 1)
    assert s.full(b)  # the node's bound
    pool.run_all()
    assert not s.full(a) and not s.full(b)


def test_a_job_that_raises_does_not_wedge_its_actor() -> None:
    pool, crashed = Manual(), []

    def run(a: Named, job: int) -> None:
        if job == 2:
            raise RuntimeError("bug")

    s: Scheduler[Named, int] = Scheduler(
        pool.submit,
        run,
        max_queue=10,
        max_node_queue=10,
        crashed=lambda a, j: crashed.append(j),
    )
    a = Named("a")
    for i in range(1, 4):
        s.enqueue(a, i)
    pool.run_all()
    assert crashed == [2] and not a.scheduled and s.queued == 0
    s.enqueue(a, 4)  # still served
    assert len(pool.tasks) == 1


def test_requeue_first_puts_jobs_in_front_only_while_idle() -> None:
    pool, ran = Manual(), list[tuple[str, Any]]()
    s = _scheduler(pool, ran)
    a = Named("a")
    s.enqueue(a, "later")
    took: list[bool] = []

    def take() -> list[str]:
        took.append(True)
        return []

    assert not s.requeue_first(a, take)  # a drain is pending
    assert took == []
    pool.run_all()
    s.enqueue(a, "later")
    pool.tasks.clear()  # (as if its drain had not been submitted yet)
    a.scheduled = False
    assert s.requeue_first(a, lambda: ["held1", "held2"])
    pool.run_all()
    assert [j for _, j in ran] == ["later", "held1", "held2", "later"]


@pytest.mark.parametrize("jobs", [0, 1])
def test_requeue_first_of_nothing_leaves_the_actor_idle(jobs: int) -> None:
    pool, ran = Manual(), list[tuple[str, Any]]()
    s = _scheduler(pool, ran)
    a = Named("a")
    assert s.requeue_first(a, lambda: ["j"] * jobs)
    assert a.scheduled == bool(jobs) and len(pool.tasks) == jobs
