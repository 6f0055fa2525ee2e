"""``Packed``: a trained forecaster's weights as one float32 array, and its
inference in NumPy.

A resident forecaster keeps its model packed: the state dict's tensors end
to end in one array (70.5 KiB for the default model) and the architecture,
instead of an ``nn.Module`` (91 KiB resident: its parameters plus the
modules' dictionaries and each tensor's own allocation). A fleet node holds
thousands of idle models, so the difference is a node's worth of memory;
the module is built again only where torch needs one (training from these
weights, :func:`Packed.module`).

Inference (``predict``, the test predictions) runs in NumPy on the packed
weights, in float32 as torch computes it (the results agree to about 1e-6;
tests/test_forecast_packed.py; BLAS may sum in another order with other
thread settings, so two processes agree to about 1e-9): for one window it
costs half the module's forward (63 against 127 µs here), and, holding the
interpreter lock for its few microseconds rather than releasing and taking
it again around every torch operation, it does not make a node's worker
threads queue for the lock when many forecasts run at once (a fleet-wide
round). Nothing here imports torch but :meth:`Packed.module` and
:meth:`Packed.state_dict`: a node serves trained forecasters without torch.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from ._model import LSTMNet

__all__ = ["Packed"]


@functools.lru_cache(maxsize=32)
def _layout(
    hidden: int, num_layers: int, residual: bool
) -> tuple[tuple[str, tuple[int, ...], int, int], ...]:
    """``(name, shape, start, end)`` of every entry of an ``LSTMNet``'s state
    dict, in its order (tests/test_forecast_packed.py checks it against the
    module's): the residual scale buffer, each LSTM layer's input and hidden
    weights and biases (gates i, f, g, o), then the linear head."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    if residual:
        shapes.append(("step_scale", (2,)))
    for k in range(num_layers):
        width = (4 if residual else 2) if k == 0 else hidden
        shapes += [
            (f"lstm.weight_ih_l{k}", (4 * hidden, width)),
            (f"lstm.weight_hh_l{k}", (4 * hidden, hidden)),
            (f"lstm.bias_ih_l{k}", (4 * hidden,)),
            (f"lstm.bias_hh_l{k}", (4 * hidden,)),
        ]
    shapes += [("fc.weight", (2, hidden)), ("fc.bias", (2,))]
    out, at = [], 0
    for name, shape in shapes:
        n = math.prod(shape)
        out.append((name, shape, at, at + n))
        at += n
    return tuple(out)


def _sigmoid(neg: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(neg)) in place: the sigmoid of ``-neg`` (an overflow to
    inf gives 0, as it should: the caller ignores the overflow warning, once
    for a whole layer rather than at every step)."""
    np.exp(neg, out=neg)
    neg += 1.0
    return np.reciprocal(neg, out=neg)


@dataclass(eq=False)
class Packed:
    """Weights of an :class:`~continuum_node.forecast.LSTMNet` (2 inputs, 2
    outputs): ``flat`` holds its state dict's tensors end to end, in order."""

    hidden: int
    num_layers: int
    residual: bool
    flat: np.ndarray

    @classmethod
    def from_module(cls, model: LSTMNet) -> Packed:
        arch = (int(model.hidden), int(model.lstm.num_layers), bool(model.residual))
        state = model.state_dict()
        layout = [(name, shape) for name, shape, _, _ in _layout(*arch)]
        if layout != [(k, tuple(v.shape)) for k, v in state.items()]:
            raise ValueError("not an LSTMNet of 2 inputs and 2 outputs")
        parts = [t.detach().cpu().reshape(-1).numpy() for t in state.values()]
        return cls(*arch, np.concatenate(parts).astype(np.float32, copy=False))

    def arrays(self) -> dict[str, np.ndarray]:
        """The state dict as NumPy views of :attr:`flat`."""
        layout = _layout(self.hidden, self.num_layers, self.residual)
        return {name: self.flat[a:b].reshape(shape) for name, shape, a, b in layout}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict as torch tensors sharing :attr:`flat`'s memory (read them only)."""
        import torch

        return {k: torch.from_numpy(v) for k, v in self.arrays().items()}

    def module(self, device: Any = "cpu") -> LSTMNet:
        """A new module with these weights, in eval mode, on ``device``."""
        import torch

        from ._model import LSTMNet

        model = LSTMNet(2, self.hidden, 2, self.num_layers, self.residual)
        with torch.no_grad():
            model.load_state_dict(self.state_dict())
        model.eval()
        return model.to(device)

    def state_hash(self) -> str:
        """:func:`~continuum_node.forecast.state_hash` of the module, without torch."""
        h = hashlib.sha256()
        for name, a in self.arrays().items():
            h.update(name.encode())
            h.update(b"torch.float32")  # str(tensor.dtype)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Scaled predictions, shape ``(n, 2)`` float64, for the windows ``x``
        of shape ``(n, lookback, 2)``: what the module's forward gives."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        if n == 0:
            return np.empty((0, 2))
        w = self.arrays()
        seq = x
        if self.residual:
            scale = w["step_scale"]
            steps = np.diff(x, axis=1, prepend=x[:, :1, :]) / scale
            seq = np.concatenate([x, steps], axis=2)
        h = np.zeros((n, self.hidden), np.float32)
        for layer in range(self.num_layers):
            h, seq = self._layer(w, layer, seq)
        out = h @ w["fc.weight"].T + w["fc.bias"]
        if self.residual:
            out = x[:, -1, :] + out * w["step_scale"]
        return out.astype(np.float64)

    def _layer(
        self, w: dict[str, np.ndarray], layer: int, seq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One LSTM layer over ``seq`` ``(n, steps, in)``: ``(last h, every h)``."""
        hd = self.hidden
        n, steps, _ = seq.shape
        w_hh_t = w[f"lstm.weight_hh_l{layer}"].T
        gates_x = seq @ w[f"lstm.weight_ih_l{layer}"].T
        gates_x += w[f"lstm.bias_ih_l{layer}"] + w[f"lstm.bias_hh_l{layer}"]
        h = np.zeros((n, hd), np.float32)
        c = np.zeros((n, hd), np.float32)
        every = np.empty((n, steps, hd), np.float32) if layer + 1 < self.num_layers else seq
        with np.errstate(over="ignore"):  # (exp overflows to inf in _sigmoid: that is 0)
            for t in range(steps):
                g = h @ w_hh_t
                g += gates_x[:, t, :]
                s = _sigmoid(-g)  # i, f, o (and the g gate's slot, unused)
                c *= s[:, hd : 2 * hd]
                c += s[:, :hd] * np.tanh(g[:, 2 * hd : 3 * hd])
                h = s[:, 3 * hd :] * np.tanh(c)
                if every is not seq:
                    every[:, t, :] = h
        return h, every
