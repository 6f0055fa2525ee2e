"""``Trained``: a forecaster's trained model, packed, and what it was trained
on. Free of torch, like the rest of a resident forecaster: a node whose
trainings run in worker processes (``--long-calls process``) loads, serves
and evicts forecasters without importing torch (about 180 MiB a process)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._data import Prepared
from ._packed import Packed
from ._params import TrainParams

if TYPE_CHECKING:
    from ._model import LSTMNet

__all__ = ["Trained"]


@dataclass
class Trained:
    """A model trained by :func:`~continuum_node.forecast._model.fit` and what
    it was trained on: its weights packed (:class:`Packed`; :attr:`model`
    builds the module again). A forecaster keeps ``losses`` trimmed to the
    last one (the call's result has them all)."""

    weights: Packed
    prepared: Prepared
    params: TrainParams
    device: str
    train_seconds: float
    losses: list[float]
    best_epoch: int = -1
    """The epoch whose weights were kept (0: the initial ones); -1: the last."""
    val_loss: float = math.nan
    """The kept weights' validation loss (scaled units); NaN without validation."""
    warm_start: bool = False
    model_mb: float | None = None
    """:func:`~continuum_node.forecast.model_size_mb`, measured where it was trained."""

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    @property
    def model(self) -> LSTMNet:
        """A new module with the weights, in eval mode, on :attr:`device`."""
        return self.weights.module(self.device)

    def size_mb(self) -> float:
        """The paper's "model size" (MB of ``torch.save`` of the state dict)."""
        if self.model_mb is None:  # trained before it was kept
            from ._model import model_size_mb

            self.model_mb = model_size_mb(self.weights)
        return self.model_mb

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if "model" in state:  # pickled before packing: with its module
            state["weights"] = Packed.from_module(state.pop("model"))
        state.setdefault("model_mb", None)
        self.__dict__.update(state)
