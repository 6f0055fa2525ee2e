"""The edge export of a trained forecaster: what a board needs to run the
model's inference itself, in pure Python (``continuum_mqtt.EdgeLSTM``), as
one CBOR-encodable map (docs/protocol.md §24).

Every tensor of the model's state dict goes as ``{"shape": [...], "f32le":
bytes}`` (float32, little-endian: the model's own precision, 70 KiB for the
paper's network); the scaler, the look-back, the residual flag and the
snapping of predicted changes go beside them, and ``state_hash`` names the
training that produced the weights (equal to ``Forecaster.state_hash()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._trained import Trained

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "edge_export"]

EXPORT_FORMAT = "continuum.lstm"
EXPORT_VERSION = 1


def _tensor(t: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(t, dtype="<f4")
    return {"shape": [int(n) for n in a.shape], "f32le": a.tobytes()}


def edge_export(trained: Trained, trained_rows: int = 0) -> dict[str, Any]:
    """The export of ``trained`` (see the module docstring); plain values only."""
    weights = trained.weights
    prep = trained.prepared
    resolution = prep.resolution
    snap = bool(getattr(trained.params, "snap", False)) and resolution is not None
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "state_hash": weights.state_hash(),
        "lookback": int(prep.lookback),
        "input_size": 2,
        "hidden": int(weights.hidden),
        "num_layers": int(weights.num_layers),
        "residual": bool(weights.residual),
        "scaler": prep.scaler.to_dict(),
        "snap": snap,
        "resolution": [float(v) for v in resolution] if snap and resolution is not None else None,
        "trained_rows": int(trained_rows),
        "tensors": {name: _tensor(t) for name, t in weights.arrays().items()},
    }
