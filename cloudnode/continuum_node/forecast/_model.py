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

import copy
import functools
import hashlib
import io
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._data import Prepared, prepare
from ._evaluate import baseline_metrics, evaluate_model
from ._packed import Packed
from ._params import TrainParams
from ._trained import Trained

__all__ = [
    "LSTMNet",
    "TrainParams",  # re-exported from ._params
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
    """LSTM over the look-back window, a linear head on the last time step.

    ``residual``: the head predicts the change from the window's last value in
    units of ``step_scale`` (a buffer: the per-variable scale of one-step
    changes), and the output is that last value plus the change; the output is
    a level either way, so evaluation and prediction do not depend on it.
    """

    step_scale: torch.Tensor  # a buffer, residual models only

    def __init__(
        self,
        input_size: int = 2,
        hidden: int = 64,
        output_size: int = 2,
        num_layers: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.residual = residual
        lstm_in = 2 * input_size if residual else input_size
        self.lstm = nn.LSTM(lstm_in, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, output_size)
        if residual:
            self.register_buffer("step_scale", torch.ones(output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])
        steps = torch.diff(x, dim=1, prepend=x[:, :1, :]) / self.step_scale
        out, _ = self.lstm(torch.cat([x, steps], dim=2))
        return x[:, -1, :] + self.fc(out[:, -1, :]) * self.step_scale

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("residual", False)  # pickled before residual existed

    @torch.no_grad()
    def reset_parameters_(self, gen: torch.Generator) -> None:
        """PyTorch's default initialisation, drawn from ``gen`` instead of the global
        RNG: LSTM weights and biases ~ U(-1/sqrt(hidden), 1/sqrt(hidden)); the linear
        layer's weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what its default
        Kaiming-uniform with a=sqrt(5) amounts to). A residual model's head then
        starts at zero: the untrained model is persistence."""
        for name, p in self.named_parameters():
            if name.startswith("lstm."):
                bound = 1.0 / math.sqrt(self.hidden)
            else:
                bound = 1.0 / math.sqrt(self.fc.in_features)
            p.uniform_(-bound, bound, generator=gen)
        if self.residual:
            self.fc.weight.zero_()
            self.fc.bias.zero_()


# -- training ----------------------------------------------------------------


def step_scale(prepared: Prepared) -> np.ndarray:
    """Per-variable RMS of the one-step changes of the training windows' targets
    (scaled units; 1 where there is no change): the residual head's unit."""
    y = prepared.y_train.astype(np.float64)
    if len(y) == 0:
        return np.ones(2, np.float32)
    d = y - prepared.x_train[:, -1, :].astype(np.float64)
    rms = np.sqrt(np.mean(d * d, axis=0))
    return np.where(rms > 0, rms, 1.0).astype(np.float32)


def _new_model(prepared: Prepared, params: TrainParams, gen: torch.Generator) -> LSTMNet:
    model = LSTMNet(2, params.hidden, 2, params.num_layers, params.residual)
    model.reset_parameters_(gen)
    if params.residual:
        model.step_scale.copy_(torch.from_numpy(step_scale(prepared)))
    return model


def _loss(model: LSTMNet, params: TrainParams) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The paper's MSE on scaled levels; a residual model's errors are in units of
    its ``step_scale`` per variable (each variable weighs by how predictable its
    changes are, not by its range), with a Huber loss when ``params.huber``."""
    if not model.residual:
        return nn.MSELoss()
    base: nn.Module = nn.HuberLoss(delta=params.huber) if params.huber > 0 else nn.MSELoss()
    scale = model.step_scale

    def loss(pred: torch.Tensor, target: torch.Tensor) -> Any:
        return base(pred / scale, target / scale)

    return loss


def _check_warm(init: LSTMNet, params: TrainParams) -> None:
    shape = (init.hidden, init.lstm.num_layers, init.residual)
    if shape != (params.hidden, params.num_layers, params.residual):
        raise ValueError(
            "warm start needs the previous model's hidden, num_layers and residual "
            f"(hidden={init.hidden}, num_layers={init.lstm.num_layers}, "
            f"residual={init.residual})"
        )


def fit(
    prepared: Prepared,
    params: TrainParams,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
    init: LSTMNet | None = None,
) -> Trained:
    """Train a model on ``prepared``: the one training loop of the package;
    from scratch, or from a copy of ``init``'s weights (a warm start: ``init``
    itself is left untouched).

    A manual slice loop over tensors built once (measured faster than a
    ``DataLoader``, which collates 64 single samples per batch). Each epoch
    draws a permutation from the private generator, gathers the shuffled
    windows in one indexing op and walks them in contiguous batches of
    ``batch_size`` (the last one partial, as ``DataLoader(drop_last=False)``).
    The reported loss of an epoch is the sample-weighted mean of the batch MSEs
    (scaled units), synchronised once per epoch, not per batch. With
    ``params.val_frac`` the last windows validate after every epoch (and before
    the first); the best weights are kept and ``params.patience`` epochs
    without improvement end the training.
    """
    if prepared.lookback != params.lookback:
        raise ValueError("prepared data and parameters disagree on lookback")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(params.seed)
    if init is not None:
        _check_warm(init, params)
        model = copy.deepcopy(init).cpu()
    else:
        model = _new_model(prepared, params, gen)
    model.to(dev)
    x_all = torch.from_numpy(prepared.x_train).to(dev)
    y_all = torch.from_numpy(prepared.y_train).to(dev)
    n_val = int(len(x_all) * params.val_frac)
    if n_val < 1 or len(x_all) - n_val < 1:
        n_val = 0
    n = len(x_all) - n_val
    x, y = x_all[:n], y_all[:n]
    x_val, y_val = x_all[n:], y_all[n:]
    bs = params.batch_size
    starts = range(0, n, bs)
    optimizer = _adam(model, params.lr)
    loss_fn = _loss(model, params)

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss_fn(model(x_val), y_val))
        model.train()
        return value

    losses: list[float] = []
    best_val, best_epoch, best_state = math.inf, -1, None
    if n_val:
        best_val, best_epoch = validate(), 0
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
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
                if params.clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), params.clip)
                optimizer.step()
                total += loss.detach() * len(xb)
            epoch_loss = float(total) / n
            losses.append(epoch_loss)
            if on_epoch is not None:
                on_epoch(epoch, params.epochs, epoch_loss)
            if n_val:
                val = validate()
                if val < best_val:
                    best_val, best_epoch = val, epoch
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                elif params.patience and epoch - best_epoch >= params.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    packed = Packed.from_module(model)  # no module, no gradients: 70.5 KiB for the default
    return Trained(
        packed,
        prepared,
        params,
        str(dev),
        seconds,
        losses,
        best_epoch,
        best_val,
        init is not None,
        model_size_mb(packed),
    )


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


def state_hash(model: nn.Module | Packed) -> str:
    """SHA-256 (hex) of the state dict: for each entry in order, its name, dtype,
    shape and raw bytes (CPU, contiguous). Equal hashes mean bit-identical weights."""
    if isinstance(model, Packed):
        return model.state_hash()
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_size_mb(model: nn.Module | Packed) -> float:
    """Size in MB (10^6 bytes) of ``torch.save(model.state_dict())``, the paper's
    "model size" (0.0707 MB for the default model): a function of the
    architecture only, computed once per architecture for packed weights."""
    if isinstance(model, Packed):
        return _size_of(model.hidden, model.num_layers, model.residual)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


@functools.lru_cache(maxsize=32)
def _size_of(hidden: int, num_layers: int, residual: bool) -> float:
    return model_size_mb(LSTMNet(2, hidden, 2, num_layers, residual))


# -- one-process benchmark path ------------------------------------------------


def train_local(
    series: Sequence[Sequence[float]] | np.ndarray,
    *,
    device: str = "cpu",
    on_epoch: EpochCallback | None = None,
    paper: bool = False,
    **params: Any,
) -> tuple[LSTMNet, dict[str, Any]]:
    """Train and evaluate in this process with the same code as ``Forecaster.train``
    + ``Forecaster.evaluate``: for a seed, the weights (``state_hash``) are
    bit-identical to an offloaded run on CPU.

    ``series`` is a list of ``[cpu, mem]`` rows; ``params`` are :class:`TrainParams`
    fields (``paper=True``: starting from the paper's settings). Returns ``(model, metrics)`` with ``metrics`` holding
    ``train_seconds, final_loss, losses, n_train, n_test, state_hash, device,
    params, model_size_mb, evaluation`` (the dict of ``evaluate``) and
    ``baseline`` (persistence), all plain Python values.
    """
    p = TrainParams.from_kwargs(paper=paper, **params)
    prepared = prepare(np.asarray(series, dtype=np.float64), p.lookback, p.train_frac)
    trained = fit(prepared, p, resolve_device(device), on_epoch)
    metrics = train_summary(trained)
    metrics["model_size_mb"] = trained.size_mb()
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
        "epochs_run": len(trained.losses),
        "best_epoch": int(trained.best_epoch),
        "val_loss": None if math.isnan(trained.val_loss) else float(trained.val_loss),
        "warm_start": bool(trained.warm_start),
        "n_train": int(trained.prepared.n_train),
        "n_test": int(trained.prepared.n_test),
        "state_hash": state_hash(trained.weights),
        "device": trained.device,
        "threads": int(torch.get_num_threads()),
        "params": trained.params.to_dict(),
    }
