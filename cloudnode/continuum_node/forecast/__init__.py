"""The node-side LSTM forecaster of the reference paper, as an active class.

``continuum_node.forecast.Forecaster`` holds one device's CPU/MEM utilisation series
and the model trained on it, so training runs next to the data (the paper's
offloaded workload). :func:`train_local` runs the very same training code in one
process, for a local baseline that is bit-identical for a seed on CPU.

Model and data (paper, Sections 4.1.1-4.1.2): ``LSTM(2 -> 64)`` + ``Linear(64 -> 2)``
on the last step; look-back 6, batch 64, Adam lr 1e-3, MSE, 100 epochs;
chronological 80/20 split, min-max scaling fitted on the training part, windows
built on each part separately (1,585 / 392 windows on ``node_3_utilisation.csv``).
``train(paper=True)`` (:data:`PAPER`) trains exactly that. The default
(``TrainParams()``) keeps the network's size and the optimiser but predicts
the change from the last value (the LSTM sees the levels and their one-step
changes), with a Huber loss in units of each variable's one-step changes,
early stopping on the last 10% of the training windows (at most 200 epochs),
gradient clipping and predicted changes rounded to the step the variable is
recorded in: it beats persistence on both bundled series, both variables, MSE
and MAE, where the paper's settings do not (orangepi). ``train(warm_start=True)``
continues from the previous weights (10 epochs by default).

Each object keeps a bounded series (``max_rows``, ``max_age``) in float64
arrays; memory per object and the accuracy table are in ``datasets/README.md``.

Node configuration (never a caller's argument): ``$CONTINUUM_FORECAST_DATA``,
the folders whose ``*.csv`` files ``Forecaster.load_csv`` reads besides the
bundled ``datasets/`` (:func:`data_dirs`), and ``TrainParams.limits``, the
upper limits of ``train``'s parameters.

Threads
-------
Importing this package imports no torch (the names that need it load it on
first use: a node whose trainings run in worker processes serves its
forecasters without it) and changes no global setting. A node calls
:func:`configure_torch_threads` once at start-up. Measured on the 2-core
development box (torch 2.13 CPU build, OpenMP backend, node_3, 100 epochs,
seed 0; the weights are bit-identical with 1 and 2 threads):

* idle box: 1 thread 3.1-3.5 s, 2 threads 2.6-2.8 s (about 15% faster);
* another process busy on one core: 1 thread 3.5 s, 2 threads 41-84 s
  (OpenMP's two threads meet at a barrier in every tiny 64x256 matrix product,
  and one of them is always waiting for the core);
* two Forecasters training at once in two server threads: 4.4 s wall with
  1 thread each, 5.6 s with 2 threads each.

So a node should call ``configure_torch_threads(1)``: at most 15% slower on an
idle box, never the 10-25x collapse under contention, and concurrent objects
then use the cores in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._data import BUNDLED_DIR, DATA_ENV, MinMaxScaler, Prepared, data_dirs, prepare
from ._errors import SeriesTooShort, UnknownDataset
from ._forecaster import Forecaster
from ._params import PAPER, TrainParams

if TYPE_CHECKING:
    from ._model import LSTMNet, configure_torch_threads, model_size_mb, state_hash, train_local

_TORCH = ("LSTMNet", "configure_torch_threads", "model_size_mb", "state_hash", "train_local")


def __getattr__(name: str) -> Any:
    """The torch parts, imported on first use: a node that only serves
    forecasters (its trainings in worker processes) never imports torch."""
    if name in _TORCH:
        from . import _model

        return getattr(_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The public class path is ``continuum_node.forecast.Forecaster`` (what a node loads
# with ``--module continuum_node.forecast`` and what an edge stub names).
Forecaster.__module__ = __name__

__all__ = [
    "BUNDLED_DIR",
    "DATA_ENV",
    "PAPER",
    "Forecaster",
    "LSTMNet",
    "MinMaxScaler",
    "Prepared",
    "SeriesTooShort",
    "TrainParams",
    "UnknownDataset",
    "configure_torch_threads",
    "data_dirs",
    "model_size_mb",
    "prepare",
    "state_hash",
    "train_local",
]
