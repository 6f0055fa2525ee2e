"""The paper's LSTM forecaster (Section 4.1.2) and its one training code path.

``nn.LSTM(2 -> 64, 1 layer, batch_first)`` then ``nn.Linear(64 -> 2)`` on the last
time step; Adam (lr 1e-3), MSE loss, batch 64, 100 epochs, look-back 6.

:func:`fit` is the only training loop: :class:`~continuum_node.forecast.Forecaster`
(offloaded) and :func:`train_local` (a benchmark in one process) both call it, so
for a seed they give bit-identical weights on CPU.

Determinism does not rely on the process-global RNGs: the initial weights and
the per-epoch shuffles are drawn from one private ``torch.Generator`` seeded
with ``seed`` (the model has no dropout, so nothing else is random). A call on
another object, or any other code in the server, cannot change the result, and
concurrent trainings on different objects do not disturb each other.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from continuum_mqtt import BadArguments

from ._data import Prepared, prepare
from ._evaluate import baseline_metrics, evaluate_model

__all__ = [
    "LSTMNet",
    "TrainParams",
    "Trained",
    "configure_torch_threads",
    "fit",
    "model_size_mb",
    "resolve_device",
    "state_hash",
    "train_local",
    "train_summary",
]

EpochCallback = Callable[[int, int, float], None]


# -- threads and device --------------------------------------------------------


def configure_torch_threads(n: int | None) -> int:
    """Set PyTorch's intra-op thread count for this process (``None``: leave it);
    returns the count in force. Call once at start-up, before any training.

    Recommended: 1 on a small box that also serves MQTT and other objects. On
    the 2-core development box 2 threads train about 15% faster when the box is
    idle, but 10-25x slower as soon as another process keeps a core busy; the
    figures are in the package docstring (``continuum_node.forecast``).
    """
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("thread count must be a positive integer or None")
        torch.set_num_threads(n)
    return int(torch.get_num_threads())


def resolve_device(device: str = "auto") -> torch.device:
    """``"cuda"`` or ``"auto"``: CUDA when available, else CPU; ``"cpu"``: CPU."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# -- model -------------------------------------------------------------------


class LSTMNet(nn.Module):
    """LSTM over the look-back window, a linear head on the last time step."""

    def __init__(
        self, input_size: int = 2, hidden: int = 64, output_size: int = 2, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(input_size, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])

    @torch.no_grad()
    def reset_parameters_(self, gen: torch.Generator) -> None:
        """PyTorch's default initialisation, drawn from ``gen`` instead of the global
        RNG: LSTM weights and biases ~ U(-1/sqrt(hidden), 1/sqrt(hidden)); the linear
        layer's weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what its default
        Kaiming-uniform with a=sqrt(5) amounts to)."""
        for name, p in self.named_parameters():
            if name.startswith("lstm."):
                bound = 1.0 / math.sqrt(self.hidden)
            else:
                bound = 1.0 / math.sqrt(self.fc.in_features)
            p.uniform_(-bound, bound, generator=gen)


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of one training run (the paper's values by default).

    :attr:`limits` bounds what a caller may ask for (memory, checkpoint size
    and time grow with them): node configuration, which an operator may change
    from a module of their own loaded with ``--module`` (``TrainParams.limits
    ["epochs"] = 50_000``).
    """

    limits: ClassVar[dict[str, int]] = {
        "epochs": 10_000,
        "batch_size": 1024,
        "lookback": 288,  # a day of 5-minute samples
        "hidden": 256,
        "num_layers": 4,
        # batch_size * lookback * hidden * num_layers: what one batch's
        # activations scale with (at 2**22, training took 190-300 MB more
        # memory on CPU, measured; the other limits alone would allow GBs)
        "batch_work": 2**22,
    }
    """The upper limits (inclusive); beyond one, ``bad_arguments`` naming it.
    The paper's settings (100, 64, 6, 64, 1: a batch work of 24,576) are far
    below."""

    epochs: int = 100
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    lookback: int = 6
    hidden: int = 64
    num_layers: int = 1
    train_frac: float = 0.8
    shuffle: bool = True
    """The reference code's DataLoader shuffles the training windows every epoch."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainParams:
        """Checked construction from remote keyword arguments."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"unknown training parameter(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in kwargs.items():
            kind = known[name].type  # a string: annotations are postponed
            if kind == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"{name} must be a bool")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number")
            elif kind == "int":
                if not isinstance(value, int):
                    raise TypeError(f"{name} must be an int")
            else:
                value = float(value)
            values[name] = value
        params = cls(**values)
        params._check()
        return params

    def _check(self) -> None:
        if self.epochs < 0:
            raise ValueError("epochs must be >= 0")
        if not 0 <= self.seed < 2**63:
            raise ValueError("seed must be in [0, 2**63)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError("lr must be a positive number")
        for name in ("batch_size", "lookback", "hidden", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError("train_frac must be in (0, 1)")
        limits = self.limits
        for name in ("epochs", "batch_size", "lookback", "hidden", "num_layers"):
            value, limit = getattr(self, name), limits[name]
            if value > limit:
                raise BadArguments(
                    f"{name} is above this node's limit of {limit}",
                    param=name,
                    limit=limit,
                )
        work = self.batch_size * self.lookback * self.hidden * self.num_layers
        if work > limits["batch_work"]:
            raise BadArguments(
                f"batch_size * lookback * hidden * num_layers = {work} is above this "
                f"node's limit of {limits['batch_work']} (batch_work)",
                param="batch_work",
                limit=limits["batch_work"],
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr"] = float(d["lr"])
        d["train_frac"] = float(d["train_frac"])
        return d


@dataclass
class Trained:
    """A model trained by :func:`fit` and what it was trained on."""

    model: LSTMNet
    prepared: Prepared
    params: TrainParams
    device: str
    train_seconds: float
    losses: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


# -- training ----------------------------------------------------------------


def fit(
    prepared: Prepared,
    params: TrainParams,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
) -> Trained:
    """Train a fresh model on ``prepared``: the one training loop of the package.

    A manual slice loop over tensors built once (measured faster than a
    ``DataLoader``, which collates 64 single samples per batch). Each epoch
    draws a permutation from the private generator, gathers the shuffled
    windows in one indexing op and walks them in contiguous batches of
    ``batch_size`` (the last one partial, as ``DataLoader(drop_last=False)``).
    The reported loss of an epoch is the sample-weighted mean of the batch MSEs
    (scaled units), synchronised once per epoch, not per batch.
    """
    if prepared.lookback != params.lookback:
        raise ValueError("prepared data and parameters disagree on lookback")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(params.seed)
    model = LSTMNet(2, params.hidden, 2, params.num_layers)
    model.reset_parameters_(gen)
    model.to(dev)
    x = torch.from_numpy(prepared.x_train).to(dev)
    y = torch.from_numpy(prepared.y_train).to(dev)
    n, bs = len(x), params.batch_size
    starts = range(0, n, bs)
    optimizer = _adam(model, params.lr)
    loss_fn = nn.MSELoss()
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    with torch.enable_grad():
        for epoch in range(1, params.epochs + 1):
            if params.shuffle:
                perm = torch.randperm(n, generator=gen).to(dev)
                xs, ys = x[perm], y[perm]
            else:
                xs, ys = x, y
            total = torch.zeros((), device=dev)
            for s in starts:
                xb, yb = xs[s : s + bs], ys[s : s + bs]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(xb)
            epoch_loss = float(total) / n
            losses.append(epoch_loss)
            if on_epoch is not None:
                on_epoch(epoch, params.epochs, epoch_loss)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    model.eval()
    return Trained(model, prepared, params, str(dev), seconds, losses)


def warm_up_torch() -> None:
    """Pay torch's one-time costs (the first optimizer pulls in lazy modules)."""
    model = LSTMNet(2, 8, 2, 1)
    optimizer = _adam(model, 1e-3)
    loss = model(torch.zeros(2, 3, 2)).pow(2).mean()
    loss.backward()
    optimizer.step()


def _adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel for all parameters: about 10% off
    the whole CPU training time, and deterministic); the plain one where the
    installed torch has no fused Adam for the device."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


# -- fingerprints --------------------------------------------------------------


def state_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of the state dict: for each entry in order, its name, dtype,
    shape and raw bytes (CPU, contiguous). Equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_size_mb(model: nn.Module) -> float:
    """Size in MB (10^6 bytes) of ``torch.save(model.state_dict())``, the paper's
    "model size" (0.0707 MB for the default model)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


# -- one-process benchmark path ------------------------------------------------


def train_local(
    series: Sequence[Sequence[float]] | np.ndarray,
    *,
    device: str = "cpu",
    on_epoch: EpochCallback | None = None,
    **params: Any,
) -> tuple[LSTMNet, dict[str, Any]]:
    """Train and evaluate in this process with the same code as ``Forecaster.train``
    + ``Forecaster.evaluate``: for a seed, the weights (``state_hash``) are
    bit-identical to an offloaded run on CPU.

    ``series`` is a list of ``[cpu, mem]`` rows; ``params`` are :class:`TrainParams`
    fields. Returns ``(model, metrics)`` with ``metrics`` holding
    ``train_seconds, final_loss, losses, n_train, n_test, state_hash, device,
    params, model_size_mb, evaluation`` (the dict of ``evaluate``) and
    ``baseline`` (persistence), all plain Python values.
    """
    p = TrainParams.from_kwargs(**params)
    prepared = prepare(np.asarray(series, dtype=np.float64), p.lookback, p.train_frac)
    trained = fit(prepared, p, resolve_device(device), on_epoch)
    metrics = train_summary(trained)
    metrics["model_size_mb"] = model_size_mb(trained.model)
    metrics["evaluation"] = evaluate_model(trained)
    metrics["baseline"] = baseline_metrics(prepared)
    return trained.model, metrics


def train_summary(trained: Trained) -> dict[str, Any]:
    """What ``Forecaster.train`` returns."""
    return {
        "train_seconds": float(trained.train_seconds),
        "final_loss": float(trained.final_loss),
        "losses": [float(v) for v in trained.losses],
        "epochs": int(trained.params.epochs),
        "n_train": int(trained.prepared.n_train),
        "n_test": int(trained.prepared.n_test),
        "state_hash": state_hash(trained.model),
        "device": trained.device,
        "threads": int(torch.get_num_threads()),
        "params": trained.params.to_dict(),
    }
