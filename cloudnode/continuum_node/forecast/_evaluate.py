"""Using a trained model: its test predictions and metrics, the persistence
baseline on the same targets, and the next step after a window: in NumPy on
the packed weights (:mod:`continuum_node.forecast._packed`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._data import Prepared, metrics_per_variable, persistence_predictions, snap

if TYPE_CHECKING:
    from ._trained import Trained

__all__ = ["baseline_metrics", "evaluate_model", "predict_next", "test_predictions"]


def test_predictions(trained: Trained) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, targets)`` of the test windows, de-normalised, shape ``(n, 2)``."""
    prep = trained.prepared
    pred = prep.scaler.inverse_transform(trained.weights.forward(prep.test_windows()))
    pred = _snapped(trained, pred.reshape(-1, 2), prep.test_raw[prep.lookback - 1 : -1])
    true = prep.test_raw[prep.lookback :]
    return pred, true.reshape(-1, 2)


def _snapped(trained: Trained, pred: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Predicted changes rounded to the series' recorded step (``params.snap``)."""
    if not getattr(trained.params, "snap", False) or len(pred) == 0:
        return pred
    return snap(pred, last, trained.prepared.resolution)


def evaluate_model(trained: Trained) -> dict[str, Any]:
    """Per-variable MSE, MAE, SMAPE, RMSE of the de-normalised test predictions
    (one forward pass over all test windows, as the reference code), plus
    ``eval_seconds`` and ``n_test``."""
    t0 = time.perf_counter()
    pred, true = test_predictions(trained)
    result: dict[str, Any] = dict(metrics_per_variable(pred, true))
    result["eval_seconds"] = time.perf_counter() - t0
    result["n_test"] = len(true)
    return result


def baseline_metrics(prepared: Prepared) -> dict[str, Any]:
    """The persistence baseline ``x(t) = x(t-1)`` on the model's test targets."""
    t0 = time.perf_counter()
    pred, true = persistence_predictions(prepared.test_raw, prepared.lookback)
    result: dict[str, Any] = dict(metrics_per_variable(pred, true))
    result["eval_seconds"] = time.perf_counter() - t0
    result["n_test"] = len(true)
    return result


def predict_next(trained: Trained, window: np.ndarray) -> list[float]:
    """The next step ``[cpu, mem]`` (unscaled) after the last ``lookback`` rows of
    ``window`` (unscaled), with the scaler fitted at training time."""
    lookback = trained.prepared.lookback
    window = np.asarray(window, dtype=np.float64).reshape(-1, 2)
    if len(window) < lookback:
        raise ValueError(f"need at least {lookback} rows to predict, have {len(window)}")
    scaled = trained.prepared.scaler.transform(window[-lookback:])
    out = trained.weights.forward(scaled[None, :, :])
    pred = _snapped(trained, trained.prepared.scaler.inverse_transform(out), window[-1:])[0]
    return [float(pred[0]), float(pred[1])]
