"""continuum_node._feeds: bindings and subscriptions, the reorder buffer, acks."""

from __future__ import annotations

from typing import Any

from continuum_node._feeds import Ack, Bindings, FeedJob, FeedOrder, FeedRouter
from continuum_node._resident import Resident

from continuum_mqtt.service import Message, encode

TOPIC = "continuum/v1/dev/d1/metrics"


def _bindings() -> tuple[Bindings, list[str]]:
    log: list[str] = []
    return Bindings(lambda t: log.append(f"+{t}"), lambda t: log.append(f"-{t}")), log


def _res(oid: str, method: str) -> Resident:
    return Resident(oid, "x.C", object(), feeds={TOPIC: method})


def test_a_topic_is_subscribed_while_any_object_is_fed_by_it() -> None:
    b, log = _bindings()
    r1, r2 = _res("o1", "ingest"), _res("o2", "ingest")
    b.add_all(r1)
    b.add(TOPIC, r2)
    assert b.fed(TOPIC) == [r1, r2]
    b.remove_all(r1)
    assert b.fed(TOPIC) == [r2] and log.count(f"-{TOPIC}") == 0
    b.drop(TOPIC, r2)
    assert b.fed(TOPIC) == [] and log[-1] == f"-{TOPIC}"


def test_refeed_touches_only_topics_that_change() -> None:
    b, log = _bindings()
    r = _res("o", "ingest")
    b.refeed(r, set(), {TOPIC})
    log.clear()
    b.refeed(r, {TOPIC}, {TOPIC})  # unchanged: no unsubscription (it drops queued samples)
    assert all(not e.startswith("-") for e in log)
    b.refeed(r, {TOPIC}, set())
    assert log[-1] == f"-{TOPIC}"


def test_ack_releases_once_every_object_is_done() -> None:
    released: list[int] = []
    ack = Ack(lambda: released.append(1), 2)
    ack.done()
    assert released == []
    ack.done()
    assert released == [1]


def test_feed_order_holds_a_sample_that_skips_ahead() -> None:
    order = FeedOrder()
    assert order.offer(1, "a") == ["a"]
    assert order.offer(4, "d") == [] and order.offer(3, "c") == []
    assert order.offer(2, "b") == ["b", "c", "d"]
    assert order.expire(0.0) == []  # nothing held


def _router(b: Bindings, **options: Any) -> tuple[FeedRouter, list[Any], list[Message]]:
    queued: list[Any] = []
    acked: list[Message] = []
    router = FeedRouter(
        b, lambda r, j: queued.append((r.id, j)), acked.append, max_payload=1000, **options
    )
    return router, queued, acked


def _msg(body: Any, qos: int = 1, topic: str = TOPIC) -> Message:
    return Message(topic, body if isinstance(body, bytes) else encode(body), qos, mid=7)


def test_a_sample_names_the_device_of_its_topic_not_its_own_claim() -> None:
    b, _ = _bindings()
    b.add_all(_res("o1", "ingest"))
    router, queued, _ = _router(b)
    router.route(_msg({"seq": 10**9, "dev": "someone-else", "cpu": 1.0}))
    assert queued[0][1].req.args == [{"seq": 10**9, "dev": "d1", "cpu": 1.0}]


def test_router_queues_one_job_per_bound_object_and_acks_after_all() -> None:
    b, _ = _bindings()
    r1, r2 = _res("o1", "ingest"), _res("o2", "take")
    b.add_all(r1)
    b.add_all(r2)
    router, queued, acked = _router(b)
    msg = _msg({"seq": 1, "cpu": 1.0})
    router.route(msg)
    assert [(oid, j.req.method, j.req.args) for oid, j in queued] == [
        ("o1", "ingest", [{"seq": 1, "cpu": 1.0, "dev": "d1"}]),  # the topic's device
        ("o2", "take", [{"seq": 1, "cpu": 1.0, "dev": "d1"}]),
    ]
    jobs: list[FeedJob] = [j for _, j in queued]
    jobs[0].done()
    assert acked == []
    jobs[1].done()
    assert acked == [msg]


def test_router_drops_what_it_cannot_use_with_an_ack() -> None:
    b, _ = _bindings()
    router, queued, acked = _router(b)
    b.add_all(_res("o", "ingest"))
    bad, big = _msg(b"\xff"), _msg(b"\xa0" * 2000)
    router.route(bad)
    router.route(big)
    router.route(_msg({"seq": 1}, qos=0))  # QoS 0: nothing to acknowledge
    assert acked == [bad, big] and len(queued) == 1
    unbound = _msg({"seq": 1}, topic="continuum/v1/dev/d2/metrics")
    router.feed(unbound, {"seq": 1})  # no object bound (any more): acknowledged
    assert acked[-1] is unbound


def test_router_reorders_and_releases_a_gap_after_the_hold() -> None:
    b, _ = _bindings()
    b.add_all(_res("o", "ingest"))
    router, queued, _ = _router(b, hold=0.0)
    for seq in (1, 3, 4):
        router.route(_msg({"seq": seq}))
    router.route(_msg({"no": "seq"}))  # passed on unordered
    assert [j.req.args[0].get("seq") for _, j in queued] == [1, None]
    router.flush()
    assert [j.req.args[0].get("seq") for _, j in queued] == [1, None, 3, 4]
