"""The node's own client: how an active method running on a node calls other
objects (a driver fanning out to blocks, fetching their data), so that
intermediate results go node to node through the broker, never through the
edge client that asked.

Configured explicitly, never guessed: the node's ``__main__`` calls
:func:`configure` once at start with its ``--broker`` and ``--root`` (the
account's password from the URL, or ``$CONTINUUM_PASSWORD``, read then; the
TLS CA file from ``$CONTINUUM_CA_FILE``); a long-call worker process
(``--long-calls process``, :mod:`continuum_node._longproc`) receives the same
:class:`PeerSettings` from the node and installs them with :func:`use`. The
client is made on first use (:func:`peer`), one per process, under a lock.

It calls as the **node's** broker account, not as the caller of the method
using it: a method acting for its caller checks the caller's rights first
(:func:`continuum_mqtt.current_call`; ``continuum_node.ml.Driver`` does).
Under the ACL of docs/protocol.md section 21 the node's account must be
allowed to call the objects concerned (an admin of the gateway and nodes).
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from typing import Any

from continuum_mqtt import DEFAULT_ROOT, Client
from continuum_mqtt.service import BrokerURL

__all__ = ["NotOnANode", "PeerSettings", "configure", "peer", "settings", "use"]

_lock = threading.Lock()
_settings: PeerSettings | None = None
_client: Client | None = None


class NotOnANode(RuntimeError):
    """:func:`peer` was called in a process whose node did not configure it
    (not a node, or a node of another version)."""


@dataclass(frozen=True)
class PeerSettings:
    """Where the node's client connects: the node's broker (with its account's
    credentials, resolved), topic root and TLS CA file."""

    broker: BrokerURL
    root: str = DEFAULT_ROOT
    ca_file: str | None = None

    @classmethod
    def of(cls, broker: str | BrokerURL, root: str = DEFAULT_ROOT) -> PeerSettings:
        """From the node's options: the password (URL, else
        ``$CONTINUUM_PASSWORD``) and the CA file (``$CONTINUUM_CA_FILE``) are
        read now, so a process without that environment can use them."""
        url = broker if isinstance(broker, BrokerURL) else BrokerURL.parse(broker)
        return cls(url, root, os.environ.get("CONTINUUM_CA_FILE") or None)

    def wire(self) -> dict[str, Any]:
        """A plain map (for a worker process's setup)."""
        b = self.broker
        return {
            "host": b.host,
            "port": b.port,
            "tls": b.tls,
            "username": b.username,
            "password": b.password,
            "root": self.root,
            "ca_file": self.ca_file,
        }

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> PeerSettings:
        url = BrokerURL(
            host=value["host"],
            port=int(value["port"]),
            tls=bool(value["tls"]),
            username=value.get("username"),
            password=value.get("password"),
        )
        return cls(url, str(value["root"]), value.get("ca_file"))


def use(new: PeerSettings | None) -> None:
    """Install ``new`` (None: none); a client made with other settings is closed."""
    global _settings, _client
    with _lock:
        old, _client = _client, None
        _settings = new
    if old is not None:
        old.close()


def configure(broker: str | BrokerURL, root: str = DEFAULT_ROOT) -> PeerSettings:
    """The node's start: its client will connect to ``broker`` under ``root``
    (:meth:`PeerSettings.of`). Returns the settings installed."""
    s = PeerSettings.of(broker, root)
    use(s)
    return s


def settings() -> PeerSettings | None:
    """The settings installed in this process, if any."""
    return _settings


def peer(timeout: float = 60.0) -> Client:
    """The node's client, connected (made on first use); :class:`NotOnANode`
    where no node configured it."""
    global _client
    with _lock:
        if _client is None:
            if _settings is None:
                raise NotOnANode(
                    "no node configured its client in this process "
                    "(continuum_node.peer.configure: a node does at start)"
                )
            s = _settings
            client = Client(s.broker, root=s.root, timeout=timeout, ca_file=s.ca_file)
            client.connect()
            atexit.register(client.close)
            _client = client
        return _client
