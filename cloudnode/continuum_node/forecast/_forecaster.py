"""``Forecaster``: a device's utilisation series and the LSTM trained on it, as one
active object living on a cloud node (the paper's offloaded workload)."""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from continuum_mqtt import ActiveObject, active, check_cancelled, progress

from ._data import (
    find_dataset,
    parse_rows,
    persistence_predictions,
    prepare,
    read_dataset,
)
from ._evaluate import baseline_metrics, evaluate_model, predict_next, test_predictions
from ._export import edge_export as _edge_export
from ._params import PAPER, TrainParams
from ._series import DEFAULT_MAX_ROWS, Series
from ._stamps import Stamps, Times

if TYPE_CHECKING:
    from ._trained import Trained

__all__ = ["WARM_EPOCHS", "Forecaster"]

WARM_EPOCHS = 10
"""``train(warm_start=True)``'s default epochs."""

DEVICES = ("auto", "cpu", "cuda")


def _where(requested: str, *, load: bool = True) -> str:
    """The device a forecaster asking for ``requested`` trains on here; torch
    is imported only to answer ``"auto"`` or ``"cuda"`` (is CUDA there?), and
    with ``load=False`` not at all: ``requested`` stands unresolved then."""
    if requested == "cpu" or (not load and "torch" not in sys.modules):
        return requested
    from ._model import resolve_device

    return str(resolve_device(requested))


class Forecaster(ActiveObject):
    """CPU/MEM utilisation series of one device and the paper's LSTM forecaster
    (5-minute-ahead), trained where the series lives.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``
    (falls back to CPU when CUDA is not available). ``rows``: initial rows, as for
    :meth:`append`. Every result is a plain Python value (CBOR-encodable).

    Retention: the object keeps at most ``max_rows`` rows (default 10,000: 35
    days of 5-minute samples; ``None``: no limit) and, with ``max_age``
    (seconds, default ``None``), none older than that before the newest
    timestamp; older rows are dropped as new ones arrive. Rows are stored as
    a float64 array (16 bytes a row; timestamps on a regular grid cost
    nothing more, others 8 bytes each). A trained model keeps its float32
    weights packed in one array (no ``nn.Module``: inference runs in NumPy,
    so serving a trained forecaster imports no torch), its scaler and its
    test rows, no optimizer state and no loss history (``train`` returns
    it). Measured with 2,000 rows (node_3): 33 KiB untrained and 114 KiB
    trained, 70.5 KiB of it the weights (tracemalloc; the figures and the
    command are in ``datasets/README.md``).

    Node configuration, never a caller's: the folders ``load_csv`` reads
    (``$CONTINUUM_FORECAST_DATA``, then the bundled datasets) and the limits
    on ``train``'s parameters (``TrainParams.limits``: epochs <= 10,000,
    batch_size <= 1,024, lookback <= 288, hidden <= 256, num_layers <= 4, and
    batch_size * lookback * hidden * num_layers <= 2**22; beyond, the call
    fails with ``bad_arguments`` naming the limit). ``train`` stops at the end
    of an epoch when its call is cancelled (deadline passed, node stopping),
    leaving the object as it was.
    """

    def __init__(
        self,
        device: str = "auto",
        rows: list[Any] | None = None,
        max_rows: int | None = DEFAULT_MAX_ROWS,
        max_age: float | None = None,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        self.requested_device = device
        self._series = Series(max_rows, max_age)
        self._trained: Trained | None = None
        self._trained_rows = 0
        self._trained_total = 0  # Series.total when trained: stale when it moved
        self._test_stamps = Stamps(Times(), None, {})
        self._last_seq: dict[str, int] = {}
        self.source: str | None = None
        if rows:
            self.append(rows)

    __continuum_warm_up_long__ = True  # the warm-up is train's (90 MB of lazy torch modules)

    @classmethod
    def __continuum_warm_up__(cls) -> None:
        """torch builds its first Adam optimizer lazily (about 1 s here): do it
        at node start, not in a caller's first ``train``."""
        from ._model import warm_up_torch

        warm_up_torch()

    # -- series ------------------------------------------------------------------

    @active
    def append(self, rows: list[Any]) -> int:
        """Append rows streamed from a device: ``[cpu, mem]``, ``[cpu, mem, ts]`` or
        ``{"cpu": .., "mem": ..[, "ts": ..]}``. All-or-nothing; returns the new length."""
        values, stamps = parse_rows(rows)
        return self._series.extend(values, stamps)

    @active
    def ingest(self, sample: dict[str, Any]) -> int:
        """One metrics sample of a device feed (``Client.bind_metrics(obj, device,
        "ingest")``): a map with ``cpu``, ``mem`` and optionally ``ts``, ``dev``,
        ``seq`` (other fields ignored). A sample whose ``seq`` is not above the last
        one seen from its ``dev`` is a redelivery and is dropped. Returns the length."""
        if not isinstance(sample, dict):
            raise TypeError("a sample is a map with 'cpu' and 'mem'")
        seq = sample.get("seq")
        dev = str(sample.get("dev", ""))
        if seq is not None:
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise TypeError("seq must be an int")
            last = self._last_seq.get(dev)
            if last is not None and seq <= last:
                return len(self._series)
        row = {"cpu": sample.get("cpu"), "mem": sample.get("mem"), "ts": sample.get("ts")}
        if row["cpu"] is None or row["mem"] is None:
            raise ValueError("a sample needs 'cpu' and 'mem'")
        values, stamps = parse_rows([row])
        n = self._series.extend(values, stamps)
        if seq is not None:
            self._last_seq[dev] = seq
        return n

    @active(snapshot=True)
    def load_csv(self, name: str, replace: bool = True) -> int:
        """Load a CSV that lives on the node (columns CPU/MEM or input_1/input_2, an
        optional timestamp/time column): ``name`` is a bare file name (``*.csv``, no
        path), looked up in the node's folders of ``$CONTINUUM_FORECAST_DATA``, then in
        the bundled datasets; anything else, or no such file, is
        ``forecast.unknown_dataset``. Replaces the series (``replace=False``: appends
        to it); returns the new length."""
        values, stamps = read_dataset(find_dataset(name))
        if replace:
            self._series.clear()
        n = self._series.extend(values, stamps)
        self.source = name
        return n

    @active
    def clear(self) -> int:
        """Drop the series (a trained model is kept); returns 0."""
        self._series.clear()
        self.source = None
        return 0

    @active(readonly=True)
    def tail(self, n: int = 12) -> list[list[float]]:
        """The last ``n`` rows ``[cpu, mem]``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("n must be a non-negative int")
        return self._series.tail(n).tolist() if n else []

    # -- model -------------------------------------------------------------------

    @active(snapshot=True, long=True)
    def train(
        self,
        epochs: int | None = None,
        seed: int = 0,
        *,
        paper: bool = False,
        warm_start: bool = False,
        **params: Any,
    ) -> dict[str, Any]:
        """Train the model on the current series, seeded and deterministic (on CPU).
        Sends ``{"epoch", "epochs", "loss"}`` progress after every epoch. Returns
        ``train_seconds, final_loss, losses, epochs, epochs_run, best_epoch,
        val_loss, warm_start, n_train, n_test, state_hash, device, threads, params``.

        ``params`` are :class:`TrainParams` fields (``lr``, ``batch_size``,
        ``lookback``, ``hidden``, ``num_layers``, ``train_frac``, ``shuffle``,
        ``residual``, ``val_frac``, ``patience``, ``clip``, ``huber``). The default
        (``TrainParams()``) is the paper's network trained to beat persistence:
        residual prediction, early stopping on a validation split, up to 200
        epochs; ``paper=True`` starts from the paper's exact settings instead
        (100 epochs, level prediction, :data:`PAPER`).

        ``warm_start=True``: continue from the current model's weights (a fresh
        optimizer, ``epochs`` default 10) on the current series, with the
        scaler fitted at the first training kept (the weights were learnt in
        its units; values beyond its range scale beyond [0, 1], which the
        residual model handles since it predicts changes). With a validation
        split the weights before the first epoch compete too, so the validation
        loss never gets worse. Without a model it trains from scratch. The
        architecture (``lookback``, ``hidden``, ``num_layers``, ``residual``)
        must be the model's.

        Limits (``TrainParams.limits``, node configuration): epochs <= 10,000,
        batch_size <= 1,024, lookback <= 288, hidden <= 256, num_layers <= 4,
        batch_size * lookback * hidden * num_layers <= 2**22; beyond one the call
        fails with ``bad_arguments`` (fields ``param``, ``limit``) before any work.
        After every epoch it calls ``continuum_mqtt.check_cancelled()``: a call
        whose deadline passed, or whose node is stopping, ends there with
        ``cancelled`` and the object keeps its previous model."""
        from ._model import fit, train_summary  # torch: where trainings run

        if not isinstance(warm_start, bool):
            raise TypeError("warm_start must be a bool")
        previous = self._trained if warm_start else None
        if previous is not None:
            base = previous.params.to_dict()
            for name in ("epochs", "seed", "shuffle"):
                base.pop(name)
            params = {**base, **params}
            if epochs is None:
                epochs = WARM_EPOCHS
        if epochs is not None:
            params["epochs"] = epochs
        p = TrainParams.from_kwargs(paper=paper, seed=seed, **params)
        scaler = previous.prepared.scaler if previous is not None else None
        prepared = prepare(self._series.values(), p.lookback, p.train_frac, scaler)

        def report(epoch: int, total: int, loss: float) -> None:
            progress({"epoch": epoch, "epochs": total, "loss": loss})
            check_cancelled()  # nothing of self changed yet: it is assigned below

        device = _where(self.requested_device)
        trained = fit(prepared, p, device, report, previous.model if previous else None)
        summary = train_summary(trained)
        trained.prepared = prepared.without_training_windows()
        trained.losses = trained.losses[-1:]  # the call's result has them all
        self._trained = trained
        self._trained_rows = len(self._series)
        self._trained_total = self._series.total
        # timestamps of the test targets, kept for forecast_series whatever the series becomes
        first = len(self._series) - len(prepared.test_raw) + p.lookback
        self._test_stamps = self._series.stamps(first if prepared.n_test else len(self._series))
        return summary

    @active(readonly=True)
    def evaluate(self) -> dict[str, Any]:
        """``{"cpu": {mse, mae, smape, rmse}, "mem": {...}, "eval_seconds", "n_test"}``
        of the de-normalised test predictions of the trained model."""
        return evaluate_model(self._need_model())

    @active(readonly=True)
    def baseline(self) -> dict[str, Any]:
        """The same metrics for the persistence baseline ``x(t) = x(t-1)`` on the same
        test targets (those of the last training; the current series if untrained)."""
        if self._trained is not None:
            return baseline_metrics(self._trained.prepared)
        return baseline_metrics(prepare(self._series.values()))

    @active(readonly=True)
    def predict(self, window: list[Any] | None = None) -> list[float]:
        """The next 5-minute step ``[cpu, mem]`` after the latest ``lookback`` rows of
        the series (or of ``window``, rows as for :meth:`append`), de-normalised."""
        trained = self._need_model()
        if window is None:
            rows = self._series.tail(trained.prepared.lookback)
        else:
            rows = np.asarray(parse_rows(window)[0], dtype=np.float64)
        return predict_next(trained, rows)

    @active(readonly=True)
    def forecast_series(self) -> dict[str, Any]:
        """Test-set curves for plotting: ``{"timestamps", "cpu": {"predicted",
        "actual", "persistence"}, "mem": {...}}`` (lists of floats, de-normalised;
        ``timestamps`` of the targets, or None when the rows had none)."""
        trained = self._need_model()
        pred, true = test_predictions(trained)
        prep = trained.prepared
        naive, _ = persistence_predictions(prep.test_raw, prep.lookback)
        stamps = self._test_stamps.to_list()
        has_stamps = len(stamps) == len(true) and any(s is not None for s in stamps)
        out: dict[str, Any] = {"timestamps": stamps if has_stamps else None}
        for j, var in enumerate(("cpu", "mem")):
            out[var] = {
                "predicted": [float(v) for v in pred[:, j]],
                "actual": [float(v) for v in true[:, j]],
                "persistence": [float(v) for v in naive[:, j]],
            }
        return out

    @active(readonly=True)
    def model_size_mb(self) -> float:
        """Size of the saved state dict in MB (the paper: 0.0707 MB)."""
        return self._need_model().size_mb()

    @active(readonly=True)
    def state_hash(self) -> str:
        """SHA-256 hex of the model's weights (equal for bit-identical weights)."""
        return self._need_model().weights.state_hash()

    @active(readonly=True)
    def edge_export(self) -> dict[str, Any]:
        """What a board needs to forecast by itself (docs/protocol.md §24): the
        weights (float32 bytes), scaler, look-back, residual flag and snapping of
        the trained model, versioned by its ``state_hash``."""
        return _edge_export(self._need_model(), self._trained_rows)

    @active(readonly=True)
    def info(self) -> dict[str, Any]:
        """Series length, source, device, and whether (and on what) the model is trained.
        ``cuda_available`` and ``threads`` (torch's intra-op threads) are None,
        and ``device`` is the requested one unresolved (``"auto"``), where
        this process has not imported torch: a node whose trainings run in
        worker processes never needs it there."""
        trained = self._trained
        torch = sys.modules.get("torch")  # not imported for this: see the docstring
        out: dict[str, Any] = {
            "rows": len(self._series),
            "rows_total": self._series.total,
            "max_rows": self._series.max_rows,
            "max_age": self._series.max_age,
            "source": self.source,
            "has_timestamps": self._series.has_stamps(),
            "device": _where(self.requested_device, load=False),
            "requested_device": self.requested_device,
            "cuda_available": None if torch is None else bool(torch.cuda.is_available()),
            "threads": None if torch is None else int(torch.get_num_threads()),
            "trained": trained is not None,
            "trained_rows": self._trained_rows if trained else 0,
            "stale": trained is not None and self._trained_total != self._series.total,
        }
        if trained is not None:
            out.update(
                {
                    "n_train": trained.prepared.n_train,
                    "n_test": trained.prepared.n_test,
                    "params": trained.params.to_dict(),
                    "final_loss": float(trained.final_loss),
                    "best_epoch": int(trained.best_epoch),
                    "warm_start": bool(trained.warm_start),
                    "train_seconds": float(trained.train_seconds),
                    "scaler": trained.prepared.scaler.to_dict(),
                    "model_size_mb": trained.size_mb(),
                    "state_hash": trained.weights.state_hash(),
                }
            )
        return out

    # -- internals ---------------------------------------------------------------

    def _need_model(self) -> Trained:
        if self._trained is None:
            raise RuntimeError("no trained model: call train() first")
        return self._trained

    # Snapshots: the packed weights are NumPy (CPU) arrays, so a snapshot restores
    # on any node; the device is resolved again where the object is restored.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_device", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.pop("data_dir", None)  # older objects kept a caller-chosen folder: ignored
        if "_values" in state:  # before retention: Python lists, kept for ever
            state["_series"] = Series.from_lists(state.pop("_values"), state.pop("_stamps"))
            state.setdefault("_trained_total", state.get("_trained_rows", 0))
        old_stamps = state.get("_test_stamps", [])
        if isinstance(old_stamps, list):
            state["_test_stamps"] = Series.from_lists(
                [[0.0, 0.0]] * len(old_stamps), old_stamps, max_rows=None
            ).stamps()
        self.__dict__.update(state)
        self.__dict__.setdefault("_last_seq", {})
        trained = self._trained
        if trained is not None:
            if trained.prepared.has_windows:  # before compaction: windows, every loss
                trained.prepared = trained.prepared.without_training_windows()
            trained.losses = trained.losses[-1:]
            known = vars(trained.params)
            if any(f.name not in known for f in dataclasses.fields(TrainParams)):
                # trained before the options existed: with the paper's settings
                trained.params = dataclasses.replace(PAPER, **known)
            if trained.device != "cpu":
                trained.device = _where(self.requested_device)  # where a module would go
