"""The board's copy of its forecaster's edge export (docs/protocol.md §24),
kept in the state directory so that it survives restarts: with it the agent
forecasts by itself while the cloud is away (``continuum_mqtt.EdgeLSTM``, pure
Python).

One file, ``edge-model.cbor``: the export as the node sent it, checked by
building the model before it replaces the previous file (written to a
temporary file, flushed to disk, then renamed: a crash leaves the old one or
the new one, never half of one).
"""

from __future__ import annotations

import logging
import os

from continuum_mqtt import EdgeLSTM, ExportError
from continuum_mqtt.service import decode, encode

__all__ = ["MODEL_FILE", "EdgeModelStore"]

MODEL_FILE = "edge-model.cbor"
MAX_BYTES = 16 << 20  # far above any export the forecaster's limits allow

log = logging.getLogger("edgeagent")


class EdgeModelStore:
    """``edge-model.cbor`` in ``state_dir``: :meth:`load` it, :meth:`save` a new export."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, MODEL_FILE)

    def load(self) -> EdgeLSTM | None:
        """The stored model; None when there is none or it cannot be used (logged)."""
        try:
            with open(self.path, "rb") as fh:
                blob = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s; forecasting remotely only", self.path, exc)
            return None
        try:
            if len(blob) > MAX_BYTES:
                raise ExportError("file too large")
            model = EdgeLSTM(decode(blob))
        except Exception as exc:  # a damaged or foreign file: never fatal
            log.warning("ignoring %s: %s", self.path, exc)
            return None
        log.info("edge model %s loaded from %s", model.state_hash[:12], self.path)
        return model

    def save(self, export: dict[str, object]) -> EdgeLSTM:
        """Check ``export`` (raises :class:`ExportError`), store it, return its model."""
        model = EdgeLSTM(export)
        blob = encode(export)
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        return model
