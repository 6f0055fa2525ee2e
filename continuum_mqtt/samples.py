"""The device metrics sample: the one wire format that boards publish (the edge
agent, firmware-sim) and that device-fed objects on the nodes consume.

The fields and their meaning are documented once, in docs/protocol.md §19
("Device metrics and feeds"): a CBOR map, QoS 1, on ``<root>/dev/<device>/metrics``
(:meth:`continuum_mqtt._protocol.Topics.metrics`), with :data:`REQUIRED_FIELDS` and
any of :data:`OPTIONAL_FIELDS`.

:data:`SERIES_TOO_SHORT` is the application error code a device-fed forecaster
answers to ``train`` while it holds too few samples; the jobs on the board
compare an error's ``code`` with it (they never import the forecaster).
"""

from __future__ import annotations

from typing import Any

import cbor2

__all__ = [
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "SERIES_TOO_SHORT",
    "decode_sample",
    "encode_sample",
]

REQUIRED_FIELDS = ("dev", "seq", "ts", "cpu", "mem")
OPTIONAL_FIELDS = ("load1", "disk", "net_rx", "net_tx", "temp")

SERIES_TOO_SHORT = "forecast.series_too_short"


def encode_sample(dev: str, seq: int, ts: float, metrics: dict[str, Any]) -> bytes:
    """CBOR bytes of one sample; ``metrics`` holds cpu, mem and optional fields
    (those that are None or absent are left out; other keys are ignored)."""
    body: dict[str, Any] = {"dev": dev, "seq": seq, "ts": ts}
    body["cpu"] = float(metrics["cpu"])
    body["mem"] = float(metrics["mem"])
    for key in OPTIONAL_FIELDS:
        value = metrics.get(key)
        if value is not None:
            body[key] = value
    return cbor2.dumps(body)


def decode_sample(payload: bytes) -> dict[str, Any]:
    """Decode and check one sample; raises ValueError when it is not one."""
    body = cbor2.loads(payload)
    if not isinstance(body, dict) or any(k not in body for k in REQUIRED_FIELDS):
        raise ValueError("not a metrics sample")
    return body
