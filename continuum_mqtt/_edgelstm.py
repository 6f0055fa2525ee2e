"""Pure-Python inference of an exported LSTM forecaster (docs/protocol.md §24):
what a board runs when the cloud is away. Standard library only (no torch, no
numpy): the edge rules hold.

:class:`EdgeLSTM` is built from the map ``Forecaster.edge_export()`` returns
and computes what the node's ``predict`` does: min-max scaling, the LSTM
(PyTorch's gate order i, f, g, o) over the look-back window, the linear head on
the last step, the residual form, de-scaling and the snapping of the predicted
change to the series' recorded step. It computes in float64 from the float32
weights; the result matches the node's (float32) within 1e-4 on the bundled
series.

Speed and memory: the weight rows are kept as float32 ``array("f")`` (4
bytes a weight: 70 KiB for the paper's network, an eighth of what tuples of
floats take; no Python float is made while loading) with the input and
recurrent rows joined, so a gate is one
``sum(map(mul, row, z))``; the paper's network (64 hidden units, look-back 6)
takes about 2 ms a forecast on the development box.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from operator import mul
from typing import Any

__all__ = ["EXPORT_FORMAT", "EdgeLSTM", "ExportError"]

EXPORT_FORMAT = "continuum.lstm"
_VERSIONS = (1,)


class ExportError(ValueError):
    """An export this code cannot run (another format or version, or malformed)."""


def _floats(entry: Any, shape: tuple[int, ...], name: str) -> array[float]:
    """The tensor as a float32 ``array`` (no Python float objects: a board's
    memory holds 4 bytes a weight)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("f32le"), bytes | bytearray):
        raise ExportError(f"tensor {name}: expected {{'shape', 'f32le'}}")
    if tuple(entry.get("shape", ())) != shape:
        raise ExportError(f"tensor {name}: shape {entry.get('shape')}, expected {list(shape)}")
    raw = entry["f32le"]
    if len(raw) != 4 * math.prod(shape):
        raise ExportError(f"tensor {name}: {len(raw)} bytes for shape {list(shape)}")
    a = array("f")
    a.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover - little-endian boards only here
        a.byteswap()
    if not all(map(math.isfinite, a)):
        raise ExportError(f"tensor {name}: not finite")
    return a


def _rows(flat: array[float], n: int, m: int) -> list[array[float]]:
    return [flat[i * m : (i + 1) * m] for i in range(n)]


def _f32(values: list[float]) -> list[float]:
    """``values`` rounded to float32, as the node casts its input."""
    return array("f", values).tolist()


class _Layer:
    """One LSTM layer: per gate row, the joined input+recurrent weights and one bias."""

    __slots__ = ("hidden", "rows")

    def __init__(self, w_ih: list[array[float]], w_hh: list[array[float]], bias: list[float]):
        self.hidden = len(w_hh[0])
        self.rows = [(b, a + h) for a, h, b in zip(w_ih, w_hh, bias, strict=True)]

    def run(self, xs: list[list[float]]) -> list[list[float]]:
        n = self.hidden
        h = [0.0] * n
        c = [0.0] * n
        out: list[list[float]] = []
        rows = self.rows
        exp, tanh = math.exp, math.tanh
        for x in xs:
            z = x + h
            g = [b + sum(map(mul, w, z)) for b, w in rows]
            h = []
            for k in range(n):
                gi, gf, gg, go = g[k], g[n + k], g[2 * n + k], g[3 * n + k]
                i = 1.0 / (1.0 + exp(-gi)) if gi > -700 else 0.0
                f = 1.0 / (1.0 + exp(-gf)) if gf > -700 else 0.0
                o = 1.0 / (1.0 + exp(-go)) if go > -700 else 0.0
                ck = f * c[k] + i * tanh(gg)
                c[k] = ck
                h.append(o * tanh(ck))
            out.append(h)
        return out


class EdgeLSTM:
    """The exported forecaster, ready to predict (see the module docstring)."""

    def __init__(self, export: dict[str, Any]) -> None:
        if not isinstance(export, dict) or export.get("format") != EXPORT_FORMAT:
            raise ExportError(f"not a {EXPORT_FORMAT} export")
        if export.get("version") not in _VERSIONS:
            raise ExportError(f"unsupported export version {export.get('version')!r}")
        try:
            self.state_hash: str = str(export["state_hash"])
            self.lookback = int(export["lookback"])
            size = int(export["input_size"])
            hidden = int(export["hidden"])
            layers = int(export["num_layers"])
            self.residual = bool(export["residual"])
            scaler = export["scaler"]
            self.data_min = [float(v) for v in scaler["min"]]
            data_max = [float(v) for v in scaler["max"]]
            tensors = export["tensors"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"malformed export: {exc!r}") from None
        if not (self.lookback >= 1 and size >= 1 and hidden >= 1 and layers >= 1):
            raise ExportError("lookback, input_size, hidden and num_layers must be positive")
        if len(self.data_min) != size or len(data_max) != size:
            raise ExportError("the scaler has the wrong size")
        self.size = size
        self.scale = [
            1.0 / (hi - lo) if hi != lo else 1.0
            for lo, hi in zip(self.data_min, data_max, strict=True)
        ]
        self.trained_rows = int(export.get("trained_rows") or 0)
        res = export.get("resolution")
        self.resolution = [float(v) for v in res] if export.get("snap") and res else None
        if self.resolution is not None and len(self.resolution) != size:
            raise ExportError("the resolution has the wrong size")
        lstm_in = 2 * size if self.residual else size
        self.layers: list[_Layer] = []
        for k in range(layers):
            inp = lstm_in if k == 0 else hidden
            w_ih = _floats(tensors.get(f"lstm.weight_ih_l{k}"), (4 * hidden, inp), "w_ih")
            w_hh = _floats(tensors.get(f"lstm.weight_hh_l{k}"), (4 * hidden, hidden), "w_hh")
            b_ih = _floats(tensors.get(f"lstm.bias_ih_l{k}"), (4 * hidden,), "b_ih")
            b_hh = _floats(tensors.get(f"lstm.bias_hh_l{k}"), (4 * hidden,), "b_hh")
            bias = [a + b for a, b in zip(b_ih, b_hh, strict=True)]
            self.layers.append(
                _Layer(_rows(w_ih, 4 * hidden, inp), _rows(w_hh, 4 * hidden, hidden), bias)
            )
        fc_w = _floats(tensors.get("fc.weight"), (size, hidden), "fc.weight")
        self.fc_w = _rows(fc_w, size, hidden)
        self.fc_b = _floats(tensors.get("fc.bias"), (size,), "fc.bias").tolist()
        self.step_scale = (
            _floats(tensors.get("step_scale"), (size,), "step_scale").tolist()
            if self.residual
            else None
        )

    def predict(self, window: Sequence[Sequence[float]]) -> list[float]:
        """The next step after the last ``lookback`` rows of ``window`` (unscaled
        rows of ``input_size`` numbers), unscaled: the node's ``predict(window)``."""
        if len(window) < self.lookback:
            raise ValueError(f"need at least {self.lookback} rows to predict, have {len(window)}")
        rows = [[float(v) for v in r] for r in window[-self.lookback :]]
        if any(len(r) != self.size for r in rows):
            raise ValueError(f"every row needs {self.size} values")
        lo, sc = self.data_min, self.scale
        xs = [_f32([(v - m) * s for v, m, s in zip(r, lo, sc, strict=True)]) for r in rows]
        step = self.step_scale
        if step is not None:
            prev = xs[0]
            seq = []
            for x in xs:
                seq.append(x + [(a - b) / s for a, b, s in zip(x, prev, step, strict=True)])
                prev = x
        else:
            seq = xs
        for layer in self.layers:
            seq = layer.run(seq)
        h = seq[-1]
        out = [b + sum(map(mul, w, h)) for w, b in zip(self.fc_w, self.fc_b, strict=True)]
        if step is not None:
            out = [x + o * s for x, o, s in zip(xs[-1], out, step, strict=True)]
        pred = [o / s + m for o, s, m in zip(out, sc, lo, strict=True)]
        if self.resolution is not None:
            last = rows[-1]
            pred = [
                la + round((p - la) / q) * q if q > 0 else p
                for p, la, q in zip(pred, last, self.resolution, strict=True)
            ]
        return pred
