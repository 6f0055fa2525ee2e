"""A request that reached no subscriber (MQTT 5 PUBACK 0x10: the service is not
started yet, or is reconnecting after a broker restart) is published again,
with the same id, until its deadline, against a real mosquitto."""

from __future__ import annotations

import time
import uuid
from typing import Any

from continuum_dev.testing import LocalBroker

from continuum_mqtt.service import Message, MqttTransport, Request, Requester, Topics, accept


def _responder(url: str, topics: Topics, topic: str, seen: list[str]) -> MqttTransport:
    """A minimal service: answers every request on ``topic`` with 42."""
    t = MqttTransport(url, f"svc-{uuid.uuid4().hex[:8]}")

    def on_message(msg: Message) -> None:
        req, chan = accept(msg, t, topics, 1 << 20, 1 << 20)
        if req is not None:
            seen.append(str(req.id))
            chan.result(42)

    t.bind(on_message)
    t.subscribe(topic)
    t.start()
    return t


def _requester(url: str, topics: Topics) -> tuple[MqttTransport, Requester]:
    """A client's transport and requester, connected."""
    client = MqttTransport(url, f"cli-{uuid.uuid4().hex[:8]}")
    requester = Requester.over(client, topics)
    client.bind(requester.on_reply)
    client.subscribe(requester.reply_topic)
    requester.start(client)
    client.start()
    return client, requester


def test_a_request_published_before_its_service_subscribed_is_published_again(
    broker: LocalBroker,
) -> None:
    topics = Topics(f"t-{uuid.uuid4().hex[:8]}/continuum/v1")
    topic = topics.gateway_call
    client, requester = _requester(broker.url, topics)
    seen: list[str] = []
    service: list[MqttTransport] = []
    try:
        fut = requester.send(topic, Request("nodes", [], {}), 10.0)
        time.sleep(0.8)  # nobody subscribed: PUBACK 0x10, published again with back-off
        assert not fut.done()
        started = time.monotonic()
        service.append(_responder(broker.url, topics, topic, seen))
        assert fut.result(5) == 42
        # answered by a republish within the back-off (at most 2 s), not at the deadline
        assert time.monotonic() - started < 3.0
        assert len(set(seen)) == 1  # every publish carried the same request id
    finally:
        requester.stop()
        client.stop()
        for s in service:
            s.stop()


def test_a_request_that_reaches_its_service_is_published_once(broker: LocalBroker) -> None:
    topics = Topics(f"t-{uuid.uuid4().hex[:8]}/continuum/v1")
    topic = topics.gateway_call
    seen: list[str] = []
    service = _responder(broker.url, topics, topic, seen)
    client, requester = _requester(broker.url, topics)
    try:
        results: list[Any] = [
            requester.send(topic, Request("nodes", [], {}), 5.0).result(5) for _ in range(50)
        ]
        assert results == [42] * 50
        time.sleep(0.3)
        assert len(seen) == 50  # no request published twice
    finally:
        requester.stop()
        client.stop()
        service.stop()
