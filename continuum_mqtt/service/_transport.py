"""What a service needs from MQTT: the :class:`Transport` interface and the
:class:`Message` it delivers.

A service (the gateway, a node, your own) is handed a transport and talks to
the broker only through it, so its logic runs the same over the real
connection (:class:`~continuum_mqtt.service.MqttTransport`) and in-process over
:class:`~continuum_mqtt.service.FakeTransport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Unpack

if TYPE_CHECKING:
    from .._mqtt import PublishOptions

__all__ = ["Message", "MessageHandler", "Publication", "Transport"]


@dataclass(slots=True)
class Message:
    """One inbound MQTT message, with the MQTT 5 properties continuum uses.

    ``mid`` and ``qos`` identify it for :meth:`Transport.ack` (a transport made
    with manual acknowledgements acknowledges a QoS 1 message only then)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None
    content_type: str | None = None
    mid: int = 0


MessageHandler = Callable[[Message], None]


class Handlers:
    """What :meth:`Transport.bind` keeps: the transports' common part."""

    _on_message: MessageHandler | None = None
    _on_connected: Callable[[], None] | None = None

    def bind(
        self, on_message: MessageHandler, on_connected: Callable[[], None] | None = None
    ) -> None:
        self._on_message = on_message
        self._on_connected = on_connected


class Publication(Protocol):
    """What :meth:`Transport.publish` returns."""

    def wait(self, timeout: float) -> bool:
        """Wait until the broker has the message (PUBACK for QoS 1); False on
        timeout or when it could not be sent (not connected)."""
        ...


class Transport(Protocol):
    """A service's MQTT connection.

    Set up before :meth:`start`: :meth:`bind` the handlers, :meth:`subscribe`
    (subscriptions are restored after every reconnect), :meth:`set_will`.
    ``on_message`` runs in the transport's network thread and must not block;
    ``on_connected`` runs there after every (re)connect.
    """

    @property
    def client_id(self) -> str:
        """The MQTT client id (reply topics and broker ACLs use it)."""
        ...

    @property
    def username(self) -> str | None:
        """The username it authenticates with, if any (reply topics carry it)."""
        ...

    @property
    def broker(self) -> str:
        """Where it connects, for messages (never with a password)."""
        ...

    @property
    def connected(self) -> bool: ...

    def bind(
        self, on_message: MessageHandler, on_connected: Callable[[], None] | None = None
    ) -> None:
        """Set the handlers of inbound messages and of every (re)connect."""
        ...

    def set_will(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """The last will (QoS 1) the broker publishes if the connection is lost
        or closed with ``stop(with_will=True)``. Before :meth:`start`."""
        ...

    def subscribe(self, topic: str, qos: int = 1) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def publish(self, topic: str, payload: bytes, **options: Unpack[PublishOptions]) -> Publication:
        """Publish ``payload`` with ``options`` (:class:`PublishOptions`: QoS,
        default 1, retain, and MQTT 5 properties)."""
        ...

    def ack(self, msg: Message) -> None:
        """Acknowledge a QoS 1 message (with manual acknowledgements; a no-op
        otherwise, and for QoS 0)."""
        ...

    def start(self, timeout: float = 10.0) -> None:
        """Connect; raises :class:`~continuum_mqtt.NotConnected` when it cannot."""
        ...

    def stop(self, *, with_will: bool = False) -> None:
        """Disconnect; ``with_will`` asks the broker to publish the last will."""
        ...
