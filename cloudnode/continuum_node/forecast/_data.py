"""Data preparation of the reference paper (Section 4.1.1), without scikit-learn or pandas.

* chronological split: the first ``int(0.8 * n)`` rows train, the rest test;
* min-max scaling to [0, 1] fitted on the training rows only;
* supervised windows of ``lookback`` lags built on each part separately, oldest
  step first, target the next step: ``X_t = x(t-L) .. x(t-1)``, ``Y_t = x(t)``.

On ``node_3_utilisation.csv`` (1,989 rows) this gives 1,585 training and 392
test windows with a look-back of 6.

Also here: finding and reading a series CSV that lives on the node (what
``Forecaster.load_csv`` reads: a bare file name in the node's data folders,
:func:`data_dirs`) and the paper's error metrics.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import SeriesTooShort, UnknownDataset

__all__ = [
    "BUNDLED_DIR",
    "DATA_ENV",
    "METRIC_NAMES",
    "VARIABLES",
    "MinMaxScaler",
    "Prepared",
    "chrono_split",
    "data_dirs",
    "find_dataset",
    "make_windows",
    "metrics_per_variable",
    "parse_rows",
    "persistence_predictions",
    "prepare",
    "read_dataset",
    "read_series_csv",
    "resolution",
    "smape",
    "snap",
]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "datasets"
"""``cloudnode/continuum_node/datasets/``: the series shipped with the package."""

DATA_ENV = "CONTINUUM_FORECAST_DATA"
"""The environment variable naming the node's own data folders (separated by
``os.pathsep``, ``:`` on Linux), searched in order before the bundled ones:
node configuration, never a caller's argument."""

VARIABLES = ("cpu", "mem")
METRIC_NAMES = ("mse", "mae", "smape", "rmse")

# Column names accepted for the two variables, lower-cased, in order of preference.
_CPU_COLUMNS = ("cpu", "input_1")
_MEM_COLUMNS = ("mem", "input_2")
_TIME_COLUMNS = ("timestamp", "time", "ts", "date")


# -- scaling -----------------------------------------------------------------


@dataclass(frozen=True)
class MinMaxScaler:
    """Per-column min-max scaling to [0, 1] (same arithmetic as scikit-learn's
    ``MinMaxScaler``: a constant column gets scale 1, i.e. it maps to 0)."""

    data_min: np.ndarray
    data_max: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> MinMaxScaler:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError("MinMaxScaler.fit needs a non-empty 2-D array")
        return cls(values.min(axis=0), values.max(axis=0))

    @property
    def scale(self) -> np.ndarray:
        rng = self.data_max - self.data_min
        rng = np.where(rng == 0.0, 1.0, rng)
        return 1.0 / rng

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.data_min) * self.scale

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) / self.scale + self.data_min

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "min": [float(v) for v in self.data_min],
            "max": [float(v) for v in self.data_max],
        }


# -- windows -----------------------------------------------------------------


def chrono_split(values: np.ndarray, train_frac: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """First ``int(n * train_frac)`` rows, then the rest (no shuffling)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be in (0, 1)")
    size = int(len(values) * train_frac)
    return values[:size], values[size:]


def make_windows(scaled: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` with ``X[i] = scaled[i : i+L]`` (oldest first) and ``y[i] = scaled[i+L]``.

    Shapes ``(n-L, L, k)`` and ``(n-L, k)``, float32; empty when ``n <= L``.
    """
    if lookback < 1:
        raise ValueError("lookback must be >= 1")
    scaled = np.asarray(scaled, dtype=np.float64)
    n, k = scaled.shape
    count = max(n - lookback, 0)
    if count == 0:
        return np.empty((0, lookback, k), np.float32), np.empty((0, k), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(scaled[:-1], lookback, axis=0)
    # sliding_window_view puts the window axis last: (count, k, L) -> (count, L, k)
    x = np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)
    y = np.ascontiguousarray(scaled[lookback:], dtype=np.float32)
    return x, y


@dataclass(frozen=True)
class Prepared:
    """Everything training and evaluation need, built once per ``train`` call."""

    scaler: MinMaxScaler
    lookback: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_raw: np.ndarray
    """The unscaled test rows (for the persistence baseline and de-normalised targets)."""
    n_train: int
    n_test: int
    resolution: np.ndarray | None = None
    """Per variable, the step the training rows are recorded in (0: none found),
    see :func:`resolution`."""

    @property
    def has_windows(self) -> bool:
        """Whether it holds training or test windows (a compact copy holds none)."""
        return bool(len(self.x_train) or len(self.y_train) or len(self.x_test) or len(self.y_test))

    def without_training_windows(self) -> Prepared:
        """A copy without the windows (``n_train``, ``n_test`` and the test rows
        kept): all that evaluation and prediction need (:meth:`test_windows`
        builds the test windows again), and what a trained object keeps, so it
        stays small in memory and in snapshots."""
        k = self.x_train.shape[2] if self.x_train.ndim == 3 else 2
        empty_x, empty_y = np.empty((0, self.lookback, k), np.float32), np.empty((0, k), np.float32)
        return replace(
            self,
            x_train=empty_x,
            y_train=empty_y,
            x_test=empty_x,
            y_test=empty_y,
            test_raw=np.array(self.test_raw),  # a copy: not a view keeping the whole series
        )

    def test_windows(self) -> np.ndarray:
        """``x_test``, built again from the test rows when it was dropped."""
        if len(self.x_test) or self.n_test == 0:
            return self.x_test
        return make_windows(self.scaler.transform(self.test_raw), self.lookback)[0]


def prepare(
    values: np.ndarray,
    lookback: int = 6,
    train_frac: float = 0.8,
    scaler: MinMaxScaler | None = None,
) -> Prepared:
    """The paper's pipeline: chronological split, scaler fitted on the training part
    (or ``scaler``, e.g. a warm start's), windows built on each part separately."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError("the series must be a list of [cpu, mem] rows")
    train_raw, test_raw = chrono_split(values, train_frac)
    if len(train_raw) <= lookback:
        raise SeriesTooShort(
            f"series too short: {len(values)} rows give {len(train_raw)} training rows, "
            f"need more than lookback={lookback}",
            rows=len(values),
            training_rows=len(train_raw),
            lookback=int(lookback),
        )
    if scaler is None:
        scaler = MinMaxScaler.fit(train_raw)
    x_train, y_train = make_windows(scaler.transform(train_raw), lookback)
    if len(test_raw):
        x_test, y_test = make_windows(scaler.transform(test_raw), lookback)
    else:
        x_test, y_test = make_windows(np.empty((0, 2)), lookback)
    return Prepared(
        scaler,
        lookback,
        x_train,
        y_train,
        x_test,
        y_test,
        test_raw,
        len(x_train),
        len(x_test),
        resolution(train_raw),
    )


def resolution(values: np.ndarray, max_decimals: int = 4) -> np.ndarray:
    """Per column, the largest ``10**-k`` (``k <= max_decimals``) that every value is
    a whole multiple of (0.0 when none): the step a sensor or an agent records
    the variable in (memory in 0.1 % steps, say). A predicted change smaller
    than half of it would be recorded as no change at all."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        col = values[:, j]
        for k in range(max_decimals + 1):
            q = 10.0**-k
            steps = col / q
            if len(col) and np.all(np.abs(steps - np.round(steps)) < 1e-6):
                out[j] = q
                break
    return out


def snap(pred: np.ndarray, last: np.ndarray, step: np.ndarray | None) -> np.ndarray:
    """``pred`` with its change from ``last`` rounded to a whole number of
    ``step`` per variable (variables whose step is 0 unchanged)."""
    pred = np.asarray(pred, dtype=np.float64)
    if step is None or not np.any(step > 0):
        return pred
    last = np.asarray(last, dtype=np.float64).reshape(pred.shape)
    q = np.where(step > 0, step, 1.0)
    snapped = last + np.round((pred - last) / q) * q
    return np.where(step > 0, snapped, pred)


def persistence_predictions(test_raw: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Persistence baseline ``x(t) = x(t-1)`` on the same targets as the model's test
    windows: ``(predictions, targets)``, both unscaled, shape ``(n-L, 2)``."""
    test_raw = np.asarray(test_raw, dtype=np.float64)
    if len(test_raw) <= lookback:
        return np.empty((0, 2)), np.empty((0, 2))
    return test_raw[lookback - 1 : -1], test_raw[lookback:]


# -- metrics -----------------------------------------------------------------


def smape(pred: np.ndarray, true: np.ndarray) -> float:
    """``200 * mean(|p - t| / (|p| + |t|))``; terms with ``p == t == 0`` count as 0."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    num = np.abs(pred - true)
    den = np.abs(pred) + np.abs(true)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den != 0)
    return float(200.0 * ratio.mean())


def _metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    if len(true) == 0:
        return {name: math.nan for name in METRIC_NAMES}
    err = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    mse = float(np.mean(err * err))
    return {
        "mse": mse,
        "mae": float(np.mean(np.abs(err))),
        "smape": smape(pred, true),
        "rmse": math.sqrt(mse),
    }


def metrics_per_variable(pred: np.ndarray, true: np.ndarray) -> dict[str, dict[str, float]]:
    """``{"cpu": {"mse", "mae", "smape", "rmse"}, "mem": {...}}`` of unscaled arrays
    of shape ``(n, 2)``; NaN when ``n == 0``."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    return {var: _metrics(pred[:, j], true[:, j]) for j, var in enumerate(VARIABLES)}


# -- input -------------------------------------------------------------------


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return f


def _timestamp(value: Any) -> str | float | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise TypeError(f"timestamp must be a string or a number, not {type(value).__name__}")


def parse_rows(rows: Any) -> tuple[list[list[float]], list[str | float | None]]:
    """Rows as streamed by devices: ``[cpu, mem]``, ``[cpu, mem, ts]`` or
    ``{"cpu": .., "mem": ..[, "ts": ..]}`` (keys case-insensitive; ``input_1`` and
    ``input_2`` accepted too). Returns ``(values, timestamps)``; raises on any bad
    row, before anything is stored."""
    if isinstance(rows, dict | str | bytes) or not isinstance(rows, list | tuple):
        raise TypeError("rows must be a list of [cpu, mem] pairs or {'cpu', 'mem'} maps")
    values: list[list[float]] = []
    stamps: list[str | float | None] = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            low = {str(k).lower(): v for k, v in row.items()}
            cpu = next((low[c] for c in _CPU_COLUMNS if c in low), None)
            mem = next((low[c] for c in _MEM_COLUMNS if c in low), None)
            if cpu is None or mem is None:
                raise ValueError(f"row {i}: a map row needs 'cpu' and 'mem'")
            ts = next((low[c] for c in _TIME_COLUMNS if c in low), None)
        elif isinstance(row, list | tuple) and len(row) in (2, 3):
            cpu, mem = row[0], row[1]
            ts = row[2] if len(row) == 3 else None
        else:
            raise ValueError(f"row {i}: expected [cpu, mem], [cpu, mem, ts] or a map")
        values.append([_finite(cpu, f"row {i} cpu"), _finite(mem, f"row {i} mem")])
        stamps.append(_timestamp(ts))
    return values, stamps


def data_dirs() -> list[Path]:
    """The folders ``load_csv`` reads, in search order: those of
    ``$CONTINUUM_FORECAST_DATA`` (read now), then :data:`BUNDLED_DIR`."""
    configured = os.environ.get(DATA_ENV, "")
    return [*(Path(d) for d in configured.split(os.pathsep) if d), BUNDLED_DIR]


def find_dataset(name: Any, roots: list[Path] | None = None) -> Path:
    """The file ``name`` in the first of ``roots`` (default: :func:`data_dirs`)
    that has it. ``name`` is a bare file name ending in ``.csv`` (no ``/``, no
    ``\\``, not starting with ``.``); a symbolic link must stay inside its folder.

    Anything else (a path, a file outside the folders, no such file) raises
    the same :class:`UnknownDataset`: what a caller learns says nothing about
    the node's file system.
    """
    if (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and name.lower().endswith(".csv")
        and not any(c in name for c in "/\\\x00")
    ):
        for root in roots if roots is not None else data_dirs():
            try:
                folder = root.resolve()
                path = (folder / name).resolve()
                if path.parent == folder and path.is_file():
                    return path
            except (OSError, RuntimeError):  # unreadable folder, a symlink loop
                continue
    shown = name[:255] if isinstance(name, str) else f"<{type(name).__name__}>"
    raise UnknownDataset(f"no dataset {shown!r} on this node", name=shown)


def read_series_csv(path: Path) -> tuple[list[list[float]], list[str | float | None]]:
    """``(values, timestamps)`` of a CSV with CPU/MEM (or input_1/input_2) columns,
    header names case-insensitive; a timestamp/time column is kept as text."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path.name}: empty file") from None

        def column(options: tuple[str, ...]) -> int | None:
            return next((header.index(c) for c in options if c in header), None)

        ci, mi, ti = column(_CPU_COLUMNS), column(_MEM_COLUMNS), column(_TIME_COLUMNS)
        if ci is None or mi is None:
            raise ValueError(f"{path.name}: needs CPU and MEM (or input_1 and input_2) columns")
        values: list[list[float]] = []
        stamps: list[str | float | None] = []
        for lineno, rec in enumerate(reader, start=2):
            if not rec or all(not f.strip() for f in rec):
                continue
            try:
                values.append(
                    [_finite(rec[ci], f"line {lineno} CPU"), _finite(rec[mi], f"line {lineno} MEM")]
                )
            except IndexError:
                raise ValueError(f"{path.name}: line {lineno} has too few fields") from None
            stamps.append(rec[ti] if ti is not None and ti < len(rec) else None)
    return values, stamps


def read_dataset(path: Path) -> tuple[list[list[float]], list[str | float | None]]:
    """:func:`read_series_csv` of a node's dataset, parsed once per version of
    the file (its size and modification time): a fleet of forecasters loading
    the same CSV (``load_csv``) shares one parse. The lists returned are
    shared: callers must not change them."""
    st = path.stat()
    return _read_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_cached(
    path: str, mtime_ns: int, size: int
) -> tuple[list[list[float]], list[str | float | None]]:
    return read_series_csv(Path(path))
