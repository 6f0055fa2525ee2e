"""The metrics sample: the one wire format shared by the edge agent and
firmware-sim (docs/protocol.md, "Device topics").

A sample is a CBOR map published with QoS 1 on ``<root>/dev/<device>/metrics``:

========  =======  ==========================================================
field     type     meaning
========  =======  ==========================================================
dev       text     device id (same as the topic level)
seq       uint     per-device sequence number, from 1, never reused (it
                   survives agent restarts); consumers drop seq <= last seen
ts        float    sampling time, Unix seconds (the board's clock)
cpu       float    CPU utilisation, percent of all cores
mem       float    memory utilisation, percent
load1     float    1-minute load average (optional)
disk      float    root file system use, percent (optional)
net_rx    uint     bytes received since boot, all interfaces (optional)
net_tx    uint     bytes sent since boot, all interfaces (optional)
temp      float    hottest temperature sensor, degrees Celsius (optional;
                   absent when the board has none)
========  =======  ==========================================================
"""

from __future__ import annotations

from typing import Any

import cbor2

__all__ = ["OPTIONAL_FIELDS", "REQUIRED_FIELDS", "decode_sample", "encode_sample"]

REQUIRED_FIELDS = ("dev", "seq", "ts", "cpu", "mem")
OPTIONAL_FIELDS = ("load1", "disk", "net_rx", "net_tx", "temp")


def encode_sample(dev: str, seq: int, ts: float, metrics: dict[str, Any]) -> bytes:
    """CBOR bytes of one sample; ``metrics`` holds cpu, mem and optional fields."""
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
