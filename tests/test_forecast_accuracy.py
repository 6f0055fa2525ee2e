"""The forecaster against persistence, and warm-start retraining (issue 14).

The default training (``TrainParams()``: residual prediction, Huber loss in
units of the one-step changes, early stopping on a validation split, changes
snapped to the recorded step) beats persistence ``x(t) = x(t-1)`` on both
bundled series, both variables, MSE and MAE; ``paper=True`` keeps the paper's
settings. A warm start continues from the previous weights with few epochs.

``python tests/test_forecast_accuracy.py`` prints the accuracy table (series x
variable x MSE/MAE: paper, default from scratch, warm start after appending the
last quarter, persistence; seconds).
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from continuum_node.forecast import (  # noqa: E402
    BUNDLED_DIR,
    Forecaster,
    configure_torch_threads,
    train_local,
)
from continuum_node.forecast._data import read_series_csv  # noqa: E402

SERIES = ("node_3_utilisation.csv", "orangepi_sample.csv")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    configure_torch_threads(1)
    yield
    configure_torch_threads(before)


def values(name: str) -> list[list[float]]:
    return read_series_csv(BUNDLED_DIR / name)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", SERIES)
def test_default_training_beats_persistence(name: str) -> None:
    """About 2-5 s per series on one idle core."""
    _, m = train_local(values(name), seed=0)
    ev, base = m["evaluation"], m["baseline"]
    for var in ("cpu", "mem"):
        for metric in ("mse", "mae"):
            assert ev[var][metric] < base[var][metric], (var, metric, ev[var], base[var])
    assert 0 < m["epochs_run"] <= m["epochs"] and m["best_epoch"] >= 1


def test_default_training_is_deterministic_and_local_equals_offloaded() -> None:
    rows = values("orangepi_sample.csv")
    f = Forecaster(device="cpu", rows=rows)
    first = f.train(epochs=5, seed=3)
    _, local = train_local(rows, epochs=5, seed=3)
    assert first["state_hash"] == local["state_hash"]
    assert f.train(epochs=5, seed=3)["state_hash"] == first["state_hash"]
    assert f.evaluate()["mem"] == local["evaluation"]["mem"]


def _trained_on_three_quarters(name: str) -> tuple[Forecaster, list[list[float]]]:
    rows = values(name)
    cut = len(rows) * 3 // 4
    f = Forecaster(device="cpu", rows=rows[:cut])
    f.train(seed=0)
    f.append(rows[cut:])
    return f, rows


def test_warm_start_keeps_or_improves_the_validation_loss_with_few_epochs() -> None:
    f, _ = _trained_on_three_quarters("orangepi_sample.csv")
    scratch_epochs = f._trained.params.epochs if f._trained else 0
    # the previous weights' validation loss on the grown series: a 0-epoch warm start
    probe = pickle.loads(pickle.dumps(f))
    before = probe.train(warm_start=True, epochs=0)
    assert before["best_epoch"] == 0 and before["state_hash"] == f.state_hash()
    scaler = f.info()["scaler"]
    warm = f.train(warm_start=True)
    assert warm["warm_start"] is True and warm["epochs"] == 10 < scratch_epochs
    assert warm["val_loss"] <= before["val_loss"]
    assert f.info()["scaler"] == scaler  # the first training's scaler is kept
    assert f.info()["stale"] is False and f.info()["warm_start"] is True
    # deterministic: the same previous weights and seed give the same weights
    assert probe.train(warm_start=True, epochs=10)["state_hash"] == warm["state_hash"]


def test_warm_start_without_a_model_trains_from_scratch_and_checks_the_shape() -> None:
    rows = values("orangepi_sample.csv")
    f = Forecaster(device="cpu", rows=rows)
    result = f.train(warm_start=True, epochs=2)
    assert result["warm_start"] is False and result["epochs"] == 2
    with pytest.raises(ValueError, match="warm start"):
        f.train(warm_start=True, epochs=1, hidden=32)
    with pytest.raises(TypeError):
        f.train(warm_start=1)  # type: ignore[arg-type]


def _metrics(f: Forecaster) -> tuple[dict[str, Any], dict[str, Any]]:
    return f.evaluate(), f.baseline()


def accuracy_table() -> list[dict[str, Any]]:
    """One row per series x variable x metric x way of training."""
    out: list[dict[str, Any]] = []
    for name in SERIES:
        rows = values(name)
        runs: dict[str, tuple[float, Forecaster]] = {}
        for label, kwargs in (("paper", {"paper": True}), ("default", {})):
            f = Forecaster(device="cpu", rows=rows)
            t0 = time.perf_counter()
            f.train(seed=0, **kwargs)
            runs[label] = (time.perf_counter() - t0, f)
        f, _ = _trained_on_three_quarters(name)
        t0 = time.perf_counter()
        f.train(warm_start=True)
        runs["warm start (10 epochs)"] = (time.perf_counter() - t0, f)
        for label, (seconds, g) in runs.items():
            ev, base = _metrics(g)
            for var in ("cpu", "mem"):
                for metric in ("mse", "mae"):
                    out.append(
                        {
                            "series": name,
                            "training": label,
                            "variable": var,
                            "metric": metric,
                            "model": ev[var][metric],
                            "persistence": base[var][metric],
                            "seconds": seconds,
                        }
                    )
    return out


if __name__ == "__main__":
    configure_torch_threads(1)
    print("| series | training | seconds | cpu MSE | cpu MAE | mem MSE | mem MAE |")
    print("|---|---|---|---|---|---|---|")
    table = accuracy_table()
    for i in range(0, len(table), 4):
        group = table[i : i + 4]
        cells = [
            f"{r['model']:.4f} / {r['persistence']:.4f}{' ✓' if r['model'] < r['persistence'] else ''}"
            for r in group
        ]
        r0 = group[0]
        print(
            f"| {r0['series']} | {r0['training']} | {r0['seconds']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
