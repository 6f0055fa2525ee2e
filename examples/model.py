"""A generic torch model class, written as application code is: torch is
imported inside the methods (so resolving the class, on a client or an edge,
stays light), never at module load.

``Regressor`` fits a small multilayer perceptron to a synthetic regression
problem (``y = sin(3 x0) + x1 * x2 + noise``, drawn from ``seed``): ``train``
is marked ``@active(long=True)`` (a node runs at most its long-call budget of
such calls at once, docs/architecture.md "Threads and long calls"),
``predict`` and ``ping`` are light. The tests and ``bench/threads.py`` use it.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any

from continuum_mqtt import ActiveObject, active, check_cancelled, progress

__all__ = ["THREAD_ENV", "Regressor", "runtime"]

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def runtime() -> dict[str, Any]:
    """torch's thread counts as the calling thread sees them, the thread and
    process it runs in, and the thread variables of the process environment
    (imports torch)."""
    import torch

    return {
        "torch_threads": int(torch.get_num_threads()),
        "interop_threads": int(torch.get_num_interop_threads()),
        "thread": threading.current_thread().name,
        "pid": os.getpid(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV},
    }


def _data(rows: int, seed: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 3, generator=gen) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    return x, y + 0.05 * torch.randn(rows, 1, generator=gen)


class Regressor(ActiveObject):
    """A small MLP regression model; ``train`` fits it, ``predict`` uses it."""

    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        self.hidden = hidden
        self.seed = seed
        self.weights: bytes | None = None  # torch.save of the state dict
        self.trained_rows = 0

    def _net(self) -> Any:
        from torch import nn

        return nn.Sequential(
            nn.Linear(3, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, 1),
        )

    @active(long=True, snapshot=True)
    def train(self, rows: int = 2000, epochs: int = 20, batch: int = 32) -> dict[str, Any]:
        """Fit the model from scratch on ``rows`` synthetic rows (a progress
        update at each epoch's start); returns the final loss, the seconds taken (and when, on the node's clock) and the
        threads torch used."""
        import torch

        started = time.monotonic()
        torch.manual_seed(self.seed)
        x, y = _data(rows, self.seed)
        net = self._net()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(self.seed + 1)
        loss = torch.zeros(())
        for epoch in range(epochs):
            check_cancelled()  # nothing assigned to self yet: stopping leaves it as it was
            progress({"epoch": epoch, "of": epochs})
            perm = torch.randperm(rows, generator=gen)
            for i in range(0, rows, batch):
                idx = perm[i : i + batch]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        self.weights = buf.getvalue()
        self.trained_rows = rows
        ended = time.monotonic()
        return {
            "loss": float(loss.detach()),
            "seconds": ended - started,
            "started": started,
            "ended": ended,
            **runtime(),
        }

    @active(readonly=True)
    def predict(self, xs: list[list[float]]) -> list[float]:
        """The model's outputs for rows of 3 features (untrained: an error)."""
        if self.weights is None:
            raise ValueError("the model is not trained")
        import torch

        net = self._net()
        net.load_state_dict(torch.load(io.BytesIO(self.weights)))
        with torch.no_grad():
            out = net(torch.tensor(xs, dtype=torch.float32).reshape(-1, 3))
        return [float(v) for v in out.reshape(-1)]

    @active(readonly=True)
    def threads(self) -> dict[str, Any]:
        """torch's thread counts in the worker running this call, and the
        thread variables of the node's environment."""
        return runtime()

    @active(readonly=True)
    def ping(self) -> float:
        """A light call: the node's clock (``time.monotonic()``)."""
        return time.monotonic()
