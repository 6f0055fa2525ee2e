"""In-process node tests: a node over a FakeTransport, classes to host, and
an executor that runs submitted work at once (deterministic tests)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from continuum_node import Node

from continuum_mqtt import ActiveObject, active
from continuum_mqtt.service import (
    FakeBus,
    FakeTransport,
    Message,
    Topics,
    class_path,
    decode,
    encode,
)

ROOT = "continuum/v1"
REPLY = f"{ROOT}/reply/tester"


class Inline(Executor):
    """Runs every task in the submitting thread, before submit returns."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


class Tally(ActiveObject):
    """A counter that records the order of its calls."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.seen: list[Any] = []

    @active
    def add(self, n: int = 1) -> int:
        self.value += n
        self.seen.append(n)
        return self.value

    @active(readonly=True)
    def get(self) -> int:
        return self.value

    @active
    def wait(self, gate: str) -> int:
        """Blocks until the test opens ``GATES[gate]``."""
        GATES[gate][0].set()  # entered
        GATES[gate][1].wait(5)
        self.value += 100
        return self.value

    @active
    def ingest(self, sample: dict[str, Any]) -> None:
        self.seen.append(sample.get("seq"))

    @active
    def fail(self) -> None:
        raise ValueError("boom")


class Locked(ActiveObject):
    """Holds something that cannot be pickled: a durable node cannot checkpoint it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @active(readonly=True)
    def ping(self) -> str:
        return "pong"


class Shared(ActiveObject):
    """A model others may query (``predict`` is open) but only its owner may change."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @active(readonly=True, open=True)
    def predict(self, x: float) -> float:
        return self.weight * x

    @active
    def update(self, weight: float) -> float:
        self.weight = weight
        return weight


class Keeper(Tally):
    """A counter for eviction tests in a node process: while the file
    ``$CONTINUUM_TEST_SLOW_PICKLE/<name>`` exists, pickling it (a checkpoint)
    first writes ``<that file>.in`` and then hangs, so that a test can
    SIGKILL the node in the middle of an eviction's checkpoint."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.fed: list[Any] = []  # the seqs of the samples it was fed

    @active
    def ingest(self, sample: dict[str, Any]) -> None:
        self.fed.append(sample.get("seq"))

    @active(readonly=True)
    def samples(self) -> list[Any]:
        return self.fed

    def __getstate__(self) -> dict[str, Any]:
        gate = os.environ.get("CONTINUUM_TEST_SLOW_PICKLE")
        if gate and self.name and os.path.exists(os.path.join(gate, self.name)):
            with open(os.path.join(gate, self.name + ".in"), "w") as f:
                f.write("pickling")
            time.sleep(120)
        return dict(self.__dict__)


class Echo(ActiveObject, stateless=True):
    @active
    def echo(self, x: Any) -> Any:
        return x


GATES: dict[str, tuple[threading.Event, threading.Event]] = {}


def gate(name: str) -> tuple[threading.Event, threading.Event]:
    """(entered, open) events for Tally.wait(name)."""
    GATES[name] = (threading.Event(), threading.Event())
    return GATES[name]


TALLY = class_path(Tally)
CLASSES = {TALLY: Tally, class_path(Locked): Locked, class_path(Echo): Echo}


def wait_until(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.0005)


class NodeUnderTest:
    """A started :class:`Node` over a :class:`FakeTransport`; requests are
    injected, replies read back from what the node published."""

    def __init__(
        self,
        node_id: str = "n1",
        *,
        bus: FakeBus | None = None,
        inline: bool = True,
        **options: Any,
    ) -> None:
        self.id = node_id
        self.topics = Topics(ROOT)
        self.transport = FakeTransport(f"node-{node_id}", bus=bus)
        if inline:
            options.setdefault("pool", Inline())
            options.setdefault("sync_pool", Inline())
        options.setdefault("tick", 0)
        self.node = Node(node_id, self.transport, dict(CLASSES), root=ROOT, **options)
        self.node.start()
        self._n = 0

    def close(self) -> None:
        self.node.stop()

    # -- requests ------------------------------------------------------------------
    def _send(self, topic: str, body: dict[str, Any], qos: int = 1) -> str:
        if "id" not in body:
            self._n += 1
            body["id"] = f"t:{self._n}"
        self.transport.inject(
            topic, encode(body), qos=qos, response_topic=REPLY, correlation=body["id"].encode()
        )
        return str(body["id"])

    def call(self, obj: str, method: str, /, *args: Any, rid: str | None = None, **kw: Any) -> str:
        body: dict[str, Any] = {"method": method, "obj": obj, "args": list(args), "kwargs": kw}
        if rid is not None:
            body["id"] = rid
        return self._send(self.topics.node_call(self.id), body)

    def ctl(self, method: str, /, **kwargs: Any) -> str:
        return self._send(self.topics.node_ctl(self.id), {"method": method, "kwargs": kwargs})

    def sync(self, **kwargs: Any) -> str:
        return self._send(self.topics.node_sync(self.id), {"method": "sync", "kwargs": kwargs})

    def call_as(
        self, user: str, obj: str, method: str, /, *args: Any, rid: str | None = None, **kw: Any
    ) -> str:
        """A call from the broker account ``user`` (its call topic's caller
        level), replied to in that account's reply tree (see :meth:`reply_as`)."""
        self._n += 1
        rid = rid or f"t:{self._n}"
        body = {"method": method, "obj": obj, "args": list(args), "kwargs": kw, "id": rid}
        self.transport.inject(
            self.topics.node_call(self.id, user),
            encode(body),
            qos=1,
            response_topic=f"{ROOT}/reply/{user}/tester",
            correlation=rid.encode(),
        )
        return rid

    def reply_as(self, user: str, rid: str, timeout: float = 5.0) -> dict[str, Any]:
        """The final reply (result or error) to ``user``'s call ``rid``."""

        def final() -> list[dict[str, Any]]:
            bodies = [
                decode(m.payload) for m in self.transport.published_on(f"{ROOT}/reply/{user}/#")
            ]
            return [b for b in bodies if b.get("id") == rid and b["kind"] != "progress"]

        found = wait_until(final, timeout)
        assert len(found) == 1, found
        return found[0]

    def sample(self, device: str, body: Any, qos: int = 1) -> Message:
        payload = body if isinstance(body, bytes) else encode(body)
        return self.transport.inject(self.topics.metrics(device), payload, qos=qos)

    def sample_acks(self) -> list[Message]:
        """The metrics messages acknowledged to the broker, in order."""
        return [m for m in self.transport.acks if self.topics.is_metrics(m.topic)]

    # -- replies -------------------------------------------------------------------
    def replies(self, rid: str) -> list[dict[str, Any]]:
        out = []
        for m in self.transport.published_on(REPLY):
            body = decode(m.payload)
            if body.get("id") == rid:
                out.append(body)
        return out

    def reply(self, rid: str, timeout: float = 5.0) -> dict[str, Any]:
        """The final reply (result or error) to ``rid``."""
        final = wait_until(
            lambda: [r for r in self.replies(rid) if r["kind"] != "progress"], timeout
        )
        assert len(final) == 1, final
        return final[0]

    def result(self, rid: str) -> Any:
        r = self.reply(rid)
        assert r["kind"] == "result", r
        return r["value"]

    def error(self, rid: str) -> dict[str, Any]:
        r = self.reply(rid)
        assert r["kind"] == "error", r
        return r["error"]

    def create(self, obj: str = "o1", cls: str = TALLY, /, **kwargs: Any) -> Any:
        return self.result(self.ctl("create", obj=obj, cls=cls, **kwargs))

    def statuses(self) -> list[dict[str, Any]]:
        topic = self.topics.node_status(self.id)
        return [decode(m.payload) for m in self.transport.published_on(topic)]
