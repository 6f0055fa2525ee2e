"""The client: a connection to a deployment through an MQTT broker, its
lifecycle (connect, close, context managers) and its network thread; requests
to the gateway. The handles it gives out (stubs, proxies, methods) are in
``_proxy``; where calls go, and their re-routing, in ``_routing``.

Edge-safe: imports paho-mqtt and cbor2 only.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ._codec import encode
from ._datasets import Dataset, create_dataset, open_dataset
from ._errors import ContinuumError, PayloadTooLarge, UnknownMethod, error_from_envelope
from ._mqtt import BrokerURL, new_client_id
from ._protocol import DEFAULT_ROOT, Request, Topics
from ._proxy import ObjectProxy, _Directory
from ._routing import _Routing
from .service._liveness import Liveness
from .service._mqtt import MqttTransport
from .service._requester import Requester
from .service._transport import Message

__all__ = ["Client", "Requester"]

log = logging.getLogger("continuum.client")


class Client(_Directory, _Routing):
    """A connection to a continuum deployment through an MQTT broker.

    Use it as a context manager, sync (``with``) or async (``async with``); it
    can be entered again after it exits. On an exit by exception the broker is
    asked to publish the client's last will.

    ``timeout`` is the default deadline of a call in seconds (per call:
    ``obj.method.options(timeout=...)``); ``qos`` the MQTT QoS of requests;
    ``max_payload`` the largest request it will publish; ``offline_grace`` how
    long a call in flight waits for its node to come back when the node goes
    offline and the object has no replica, before failing with
    :class:`Unavailable` (a new call to an offline node fails at once);
    ``max_reply`` the largest message the broker may deliver to it (MQTT 5
    Maximum Packet Size; None: the broker's limit): a larger reply is dropped
    by the broker and its call ends with its deadline.
    """

    def __init__(
        self,
        broker: str | BrokerURL = "mqtt://127.0.0.1:1883",
        *,
        client_id: str | None = None,
        root: str = DEFAULT_ROOT,
        timeout: float = 30.0,
        qos: int = 1,
        max_payload: int = 8 << 20,
        ca_file: str | None = None,
        connect_timeout: float = 10.0,
        offline_grace: float = 3.0,
        max_reply: int | None = None,
    ) -> None:
        self.broker = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        self.client_id = client_id or new_client_id("client")
        self.topics = Topics(root)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.offline_grace = offline_grace
        self._ca_file = ca_file
        self._max_reply = max_reply
        self._requester = Requester(
            self.topics,
            self.client_id,
            qos=qos,
            max_payload=max_payload,
            owner=self.broker.username,
        )
        self._locations = {}  # the location cache (_routing)
        self._caller = self.broker.username or None
        self._node_topics = {}  # node -> call topic (_routing)
        # the nodes' (and, as GATEWAY, the gateway's) retained statuses and wills
        self._liveness = Liveness(self.topics, gateway=True)
        self._conn: MqttTransport | None = None

    @property
    def _node_state(self) -> dict[str, str]:
        """The state of each node seen (and of the gateway, as ""): online or
        offline; live (tests poll it)."""
        return self._liveness._states

    # -- lifecycle -------------------------------------------------------------
    def connect(self) -> Client:
        if self._conn is not None:
            return self
        conn = MqttTransport(
            self.broker,
            self.client_id,
            ca_file=self._ca_file,
            # the retain flag then means "from the broker's store" (_on_message)
            retain_as_published=False,
            max_packet_size=self._max_reply,
        )
        conn.bind(self._on_message, self._on_connected)
        for topic in (self._requester.reply_topic, *self._liveness.subscriptions):
            conn.subscribe(topic, 1)
        conn.set_will(
            f"{self.topics.root}/client/{self.client_id}/status",
            encode({"state": "offline", "client": self.client_id}),
        )
        self._requester.start(conn)
        try:
            conn.start(self.connect_timeout)
        except BaseException:
            self._requester.stop()
            raise
        self._conn = conn
        return self

    def close(self, *, with_will: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._requester.stop()
        conn.stop(with_will=with_will)

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(with_will=et is not None)

    async def __aenter__(self) -> Client:
        import asyncio

        await asyncio.to_thread(self.connect)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.close, with_will=et is not None)

    # -- network thread ------------------------------------------------------------
    def _on_connected(self) -> None:
        # What we knew of node liveness may be stale after a reconnect: the
        # retained statuses arrive again with our subscription.
        self._liveness.reset()
        self._requester.resend_all()

    def _on_message(self, msg: Message) -> None:
        if msg.topic == self._requester.reply_topic:
            self._requester.on_reply(msg)
            return
        change = self._liveness.on_message(msg)  # None: not a status, or malformed
        if change is None:
            return
        self._on_liveness(change)

    # -- directory -------------------------------------------------------------
    def _gateway(self, op: str, /, **kwargs: Any) -> Any:
        return self._gateway_future(op, self.timeout, **kwargs).result()

    def _gateway_future(self, op: str, timeout: float, /, **kwargs: Any) -> Future[Any]:
        req = Request(op, [], {k: v for k, v in kwargs.items() if v is not None})
        # node "" stands for the gateway: requests to it are resent when it returns
        return self._requester.send(
            self.topics.gateway_call_as(self._caller), req, timeout, node=""
        )

    def _proxy(self, info: dict[str, Any]) -> ObjectProxy:
        if info.get("node_state") == "offline":
            # Still usable once the node returns; calls fail fast meanwhile.
            log.debug("object %s is on offline node %s", info["id"], info.get("node"))
        self._locations[info["id"]] = info["node"]
        return ObjectProxy(self, info["id"], info["class"], info.get("aliases"), info.get("owner"))

    # -- datasets (_datasets) ------------------------------------------------------------
    def create_dataset(self, name: str, class_path: str, count: int, **options: Any) -> Dataset:
        """``count`` blocks of ``class_path`` placed across the live nodes, found
        again by ``name`` (:func:`continuum_mqtt.create_dataset`, its options)."""
        return create_dataset(self, name, class_path, count, **options)

    def dataset(self, name: str) -> Dataset:
        """The dataset ``name`` (:func:`continuum_mqtt.open_dataset`)."""
        return open_dataset(self, name)

    # -- fan-out (_fanout) -----------------------------------------------------------
    _RESOLVE_CHUNK = 250  # references per resolve_many request (its reply: < 1 MiB)

    def _node_of(self, proxy: ObjectProxy) -> str | None:
        return self._locations.get(proxy._id) if proxy._id is not None else None

    def _known(self, ref: str) -> ObjectProxy | None:
        return ObjectProxy(self, ref, "") if ref in self._locations else None

    def _placed(self, proxy: ObjectProxy) -> bool:
        return proxy._id in self._locations  # else _call would resolve it, blocking

    def lookup(self, refs: list[str]) -> list[dict[str, Any] | ContinuumError]:
        """The directory's entry of each of ``refs`` (ids or aliases), in
        order: its object info (``id``, ``node``, ``owner``, ``grants``...:
        gateway ``resolve_many``, protocol.md §16), or the error ``resolve``
        would give; what this client's account may see only."""
        n = self._RESOLVE_CHUNK
        futures = [
            self._gateway_future("resolve_many", self.timeout, refs=refs[i : i + n])
            for i in range(0, len(refs), n)
        ]
        infos = [info for fut in futures for info in fut.result()]
        return [error_from_envelope(i["error"]) if "error" in i else i for i in infos]

    def _resolve_many(
        self, refs: list[str], timeout: float
    ) -> dict[str, ObjectProxy | ContinuumError]:
        """Resolve ``refs`` with ``resolve_many`` (protocol.md §16), chunks in
        parallel; one ``resolve`` per reference from a gateway without it
        (or for a chunk whose answer would be too large)."""
        n = self._RESOLVE_CHUNK
        chunks = [refs[i : i + n] for i in range(0, len(refs), n)]
        futures = [self._gateway_future("resolve_many", timeout, refs=c) for c in chunks]
        out: dict[str, ObjectProxy | ContinuumError] = {}
        for chunk, fut in zip(chunks, futures, strict=True):
            try:
                infos = fut.result()
            except (UnknownMethod, PayloadTooLarge):  # no resolve_many; a reply over 1 MiB
                infos = None
            except ContinuumError as exc:
                out.update(dict.fromkeys(chunk, exc))
                continue
            if infos is None:  # one resolve each, all in flight
                singles = [self._gateway_future("resolve", timeout, ref=r) for r in chunk]
                infos = []
                for f in singles:
                    try:
                        infos.append(f.result())
                    except ContinuumError as exc:
                        infos.append({"error": exc.to_envelope()})
            for ref, info in zip(chunk, infos, strict=False):
                if isinstance(info, dict) and "error" in info:
                    out[ref] = error_from_envelope(info["error"])
                elif isinstance(info, dict) and "id" in info:
                    out[ref] = self._proxy(info)
        return out
