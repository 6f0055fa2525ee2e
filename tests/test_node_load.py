"""Issue 15: the node's load in its status manifest (protocol.md §15):
measured every ``load_every`` seconds, republished only when it changed."""

from __future__ import annotations

from typing import Any

import cbor2
from continuum_node._actors import Actor, Scheduler
from continuum_node._resident import Residents
from continuum_node._status import Status, node_load


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def status_with(load: dict[str, Any], every: float = 10.0) -> tuple[Status, list[Any], Clock]:
    sent: list[Any] = []
    clock = Clock()
    status = Status(
        "n1",
        {},
        Residents("n1"),
        lambda payload: sent.append(cbor2.loads(payload)),
        1024,
        load=lambda: dict(load),
        load_every=every,
        clock=clock,
    )
    return status, sent, clock


def test_the_load_is_measured_periodically_and_sent_only_when_it_changed() -> None:
    load = {"memory": 100 << 20, "queued": 0, "running": 0, "long_running": 0, "load": 0.5}
    status, sent, clock = status_with(load)
    status.announce()
    assert len(sent) == 1 and sent[0]["memory"] == 100 << 20 and sent[0]["queued"] == 0
    load["queued"] = 7
    clock.now = 5.0
    status.refresh()
    assert len(sent) == 1  # not measured before load_every passed
    clock.now = 10.0
    status.refresh()
    assert len(sent) == 2 and sent[1]["queued"] == 7
    clock.now = 20.0
    load["memory"] += 1000  # noise: not worth a directory write at the gateway
    load["load"] = 0.52
    status.refresh()
    assert len(sent) == 2
    clock.now = 30.0
    load["memory"] += 64 << 20
    status.refresh()
    assert len(sent) == 3 and sent[2]["memory"] == load["memory"]
    assert status.published == 3


def test_no_period_measures_only_at_a_connect() -> None:
    load = {"memory": 1, "queued": 0, "running": 0, "long_running": 0, "load": None}
    status, sent, clock = status_with(load, every=0)
    status.announce()
    load["running"] = 3
    clock.now = 1000.0
    status.refresh()
    assert len(sent) == 1
    status.announce()
    assert sent[-1]["running"] == 3


def test_node_load_reads_this_process_and_the_host() -> None:
    got = node_load(queued=2, running=1, long_running=0)
    assert got["queued"] == 2 and got["running"] == 1 and got["long_running"] == 0
    assert got["memory"] > 1 << 20  # this process's RSS
    assert isinstance(got["load"], float) and got["load"] >= 0


def test_the_scheduler_counts_running_jobs() -> None:
    seen: list[int] = []
    sched: Scheduler[Any, int] = Scheduler(
        lambda fn: fn(), lambda actor, job: seen.append(sched.busy), max_queue=10, max_node_queue=10
    )
    sched.enqueue(Actor(), 1)
    assert seen == [1] and sched.busy == 0 and sched.queued == 0
