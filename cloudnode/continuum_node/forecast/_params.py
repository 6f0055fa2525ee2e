"""``TrainParams``: the hyper-parameters of one training run, their presets
(the paper's, and the default one that beats persistence) and their limits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from continuum_mqtt import BadArguments

__all__ = ["PAPER", "TrainParams"]


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of one training run.

    The defaults are the paper's network and optimiser (LSTM 64, look-back 6,
    batch 64, Adam 1e-3, MSE) with four general changes that make the model beat
    persistence (``x(t) = x(t-1)``) on every bundled variable and metric:

    * ``residual``: the network predicts the change from the last value of the
      window, divided by the per-variable scale of the one-step changes of the
      training part, instead of the level; with its head initialised to zero it
      starts as persistence and learns what improves on it;
    * ``val_frac`` and ``patience``: the last ``val_frac`` of the training
      windows (chronological) validate; training stops after ``patience``
      epochs without a better validation loss and keeps the best weights (those
      before the first epoch included, so a warm start never gets worse);
    * ``clip``: gradient norm clipping (0: none);
    * ``huber``: a Huber loss (in units of the one-step changes, so this is
      the change beyond which an error counts linearly: robust to spikes, and
      closer to the median than the mean, which MAE rewards; 0: MSE);
    * ``snap``: a predicted change is rounded to the step the variable is
      recorded in, when the training rows have one (memory in 0.1 % steps:
      a change below 0.05 cannot be observed);
    * ``epochs`` is then an upper limit (200).

    :meth:`paper` (``train(paper=True)``) gives the paper's exact settings:
    level prediction, no validation split, no clipping, 100 epochs.

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

    epochs: int = 200
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    lookback: int = 6
    hidden: int = 64
    num_layers: int = 1
    train_frac: float = 0.8
    shuffle: bool = True
    """The reference code's DataLoader shuffles the training windows every epoch."""
    residual: bool = True
    val_frac: float = 0.1
    patience: int = 20
    clip: float = 1.0
    huber: float = 0.1
    snap: bool = True

    @classmethod
    def paper(cls, **kwargs: Any) -> TrainParams:
        """The paper's settings (``kwargs`` override them), checked."""
        return cls.from_kwargs(paper=True, **kwargs)

    @classmethod
    def from_kwargs(cls, paper: bool = False, **kwargs: Any) -> TrainParams:
        """Checked construction from remote keyword arguments; ``paper=True``
        starts from the paper's settings instead of the defaults."""
        if not isinstance(paper, bool):
            raise TypeError("paper must be a bool")
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
        params = replace(PAPER if paper else cls(), **values)
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
        if not 0.0 <= self.val_frac < 0.5:
            raise ValueError("val_frac must be in [0, 0.5)")
        if self.patience < 0:
            raise ValueError("patience must be >= 0")
        if not (math.isfinite(self.huber) and self.huber >= 0):
            raise ValueError("huber must be >= 0 (0: squared error)")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise ValueError("clip must be >= 0 (0: no clipping)")
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
        for name in ("lr", "train_frac", "val_frac", "clip", "huber"):
            d[name] = float(d[name])
        return d


PAPER = TrainParams(
    epochs=100, residual=False, val_frac=0.0, patience=0, clip=0.0, huber=0.0, snap=False
)
"""The paper's settings (Section 4.1.2): 100 epochs, level prediction, every
training window trains, no clipping, MSE, no snapping."""
