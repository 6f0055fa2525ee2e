"""The forecaster's bounded, compact series (issue 14): a retention window of rows
and/or age, float64 arrays instead of Python lists, old checkpoints migrated, and
its memory per object (asserted loosely, to catch regressions; no timing).

``python tests/test_forecast_retention.py`` prints the memory figures (pickle,
tracemalloc, RSS per object of 100 objects with 2,000 rows).
"""

from __future__ import annotations

import copy
import gc
import math
import os
import pickle
import sys
import tracemalloc
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from continuum_node.forecast import BUNDLED_DIR, Forecaster, prepare  # noqa: E402
from continuum_node.forecast._data import read_series_csv  # noqa: E402
from continuum_node.forecast._series import DEFAULT_MAX_ROWS, Series  # noqa: E402

NODE3 = "node_3_utilisation.csv"


def rows_2000() -> list[list[Any]]:
    """node_3's rows with their timestamps, repeated up to 2,000 rows."""
    values, stamps = read_series_csv(BUNDLED_DIR / NODE3)
    rows = [[c, m, t] for (c, m), t in zip(values, stamps, strict=True)]
    return (rows + rows)[:2000]


def weights_bytes(f: Forecaster) -> int:
    assert f._trained is not None
    return f._trained.weights.nbytes


def footprint(f: Forecaster | None = None, train: bool = False) -> dict[str, float]:
    """KiB of one forecaster with 2,000 rows: Python and numpy memory (tracemalloc:
    the packed weights are a numpy array), the weights alone, and the pickle."""
    rows = rows_2000()
    Forecaster(device="cpu", rows=rows)  # one-time caches (the parsed timestamps)
    gc.collect()
    tracemalloc.start()
    try:
        f = Forecaster(device="cpu")
        f.append(rows)
        if train:
            f.train(epochs=1)
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tensors = weights_bytes(f) if train else 0
    return {
        "traced_kib": traced / 1024,
        "tensors_kib": tensors / 1024,
        "resident_kib": traced / 1024,
        "pickle_kib": len(pickle.dumps(f)) / 1024,
    }


# -- retention -----------------------------------------------------------------


def test_max_rows_keeps_the_newest_rows() -> None:
    f = Forecaster(device="cpu", max_rows=100)
    rows = [[float(i), float(i % 7)] for i in range(250)]
    assert f.append(rows[:150]) == 100
    assert f.append(rows[150:]) == 100
    assert f.tail(100) == rows[150:]
    for i in range(250, 400):  # one sample at a time, as a feed sends them
        assert f.ingest({"cpu": float(i), "mem": 1.0, "dev": "d", "seq": i}) == 100
    assert f.tail(1) == [[399.0, 1.0]] and f.tail(100)[0] == [300.0, 1.0]
    info = f.info()
    assert info["rows"] == 100 and info["rows_total"] == 400 and info["max_rows"] == 100


def test_default_window_and_no_limit() -> None:
    assert Forecaster(device="cpu").info()["max_rows"] == DEFAULT_MAX_ROWS == 10_000
    f = Forecaster(device="cpu", max_rows=None)
    f.append([[1.0, 2.0]] * 12_000)
    assert f.info()["rows"] == 12_000
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            Forecaster(device="cpu", max_rows=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Forecaster(device="cpu", max_age=0)


def test_max_age_drops_rows_older_than_the_newest_timestamp() -> None:
    f = Forecaster(device="cpu", max_age=300.0)
    for t in range(0, 3000, 60):  # one sample a minute, numeric timestamps
        f.ingest({"cpu": 1.0, "mem": 2.0, "ts": float(t)})
    assert f.info()["rows"] == 6  # 2640 .. 2940: within 300 s of the newest
    text = Forecaster(device="cpu", max_age=3600.0)
    text.load_csv(NODE3)  # 5-minute samples with text timestamps
    assert text.info()["rows"] == 13  # the last hour, both ends included
    values, _ = read_series_csv(BUNDLED_DIR / NODE3)
    assert text.tail(13) == values[-13:]


def test_the_window_applies_while_training_sees_only_kept_rows() -> None:
    values, _ = read_series_csv(BUNDLED_DIR / NODE3)
    f = Forecaster(device="cpu", max_rows=500)
    f.load_csv(NODE3)
    result = f.train(epochs=1)
    assert result["n_train"] + result["n_test"] == 500 - 2 * 6
    assert f.tail(500) == values[-500:]
    assert f.info()["stale"] is False
    f.ingest({"cpu": 1.0, "mem": 2.0})
    assert f.info()["stale"] is True and f.info()["rows"] == 500


# -- compact storage ---------------------------------------------------------------


def test_rows_live_in_one_float64_array_grown_geometrically() -> None:
    s = Series(max_rows=None)
    buffers = set()
    for i in range(5000):
        s.extend([[float(i), 1.0]], [float(i)])
        buffers.add(id(s._buf))
    assert len(s) == 5000
    assert s._buf.dtype == np.float64 and s._buf.shape[1] == 2
    assert len(buffers) < 40  # amortised growth, not a copy per sample
    assert s.nbytes <= 5000 * 16 * 1.3 + 16 * 16  # times on a grid: no bytes a row
    assert s.values().shape == (5000, 2) and s.values().flags.c_contiguous


def test_a_bounded_series_moves_rows_down_instead_of_growing() -> None:
    s = Series(max_rows=1000)
    for i in range(20_000):
        s.extend([[float(i), 0.0]], [None])
    assert len(s) == 1000 and s.total == 20_000
    assert s.nbytes <= (1000 + 16) * 16
    assert s.tail(1).tolist() == [[19_999.0, 0.0]]
    copy = pickle.loads(pickle.dumps(s))
    assert copy.nbytes == 1000 * 16  # a snapshot carries no spare capacity
    assert np.array_equal(copy.values(), s.values())
    jittered = Series(max_rows=1000)  # every time off the grid: 8 bytes a row more
    for i in range(20_000):
        jittered.extend([[float(i), 0.0]], [300.0 * i + (i % 7) / 8])
    assert jittered.nbytes <= (1000 + 16) * 16 + (1000 + 1000 // 64 + 17) * 8
    assert jittered.stamps(999).to_list() == [300.0 * 19_999 + (19_999 % 7) / 8]


def test_times_off_the_grid_cost_8_bytes_a_row_until_they_leave() -> None:
    s = Series(max_rows=1000)
    t = 1.7e9
    s.extend([[1.0, 2.0]] * 1000, [t + 300.0 * i for i in range(1000)])
    assert s.nbytes == 1000 * 16  # the grid: three numbers
    jittered = [t + 300.0 * (1000 + i) + 0.25 * (i % 3) for i in range(100)]
    for stamp in jittered:  # a board's own clock: on the grid, then not
        s.extend([[1.0, 2.0]], [stamp])
    assert 100 * 8 <= s._times.nbytes <= 200 * 8
    assert s.stamps(900).to_list() == jittered
    for i in range(1100, 2200):  # back on the grid: once the jittered rows leave the
        s.extend([[1.0, 2.0]], [t + 300.0 * i])  # window, the grid takes over again
    assert s._times.nbytes == 0
    assert s.stamps().to_list() == [t + 300.0 * i for i in range(1200, 2200)]


def test_any_mix_of_rows_windows_and_snapshots_gives_the_times_back() -> None:
    """Seeded random appends (on a grid, off it, without a time, of another
    kind), windows by rows and age, snapshots: every row and time as given."""
    rng = np.random.default_rng(14)
    for trial in range(300):
        max_rows = [None, 5, 50][trial % 3]
        s = Series(max_rows, [None, 900.0][trial % 2])
        rows: list[list[float]] = []
        stamps: list[Any] = []
        t = 1.7e9
        for _ in range(int(rng.integers(1, 40))):
            for _ in range(int(rng.integers(1, 5))):
                q = rng.random()
                t += 300.0 if q < 0.8 else 17.25
                stamps.append(t if q < 0.6 or q >= 0.8 else [None, "2024-09-02 13:55:00"][q < 0.7])
                rows.append([float(rng.random()), float(rng.random())])
                s.extend([rows[-1]], [stamps[-1]])
            if rng.random() < 0.2:
                s = pickle.loads(pickle.dumps(s))
            n = len(s)
            assert s.values().tolist() == rows[len(rows) - n :]
            assert s.stamps().to_list() == stamps[len(stamps) - n :]
            assert s.stamps(n // 2).to_list() == stamps[len(stamps) - n + n // 2 :]
            assert s.has_stamps() == any(x is not None for x in stamps[len(stamps) - n :])


def test_timestamps_come_back_as_given() -> None:
    cases: list[list[Any]] = [
        ["2024-09-02 13:55:00", "2024-09-02 14:00:00", None],
        ["2024-09-02T13:55:00", None, "2024-09-02T14:00:00"],
        [1.7e9, 1.7e9 + 300.5, None],
        [1_700_000_000, 1_700_000_300, 1_700_000_600],
        # mixed kinds and texts no format takes: kept aside, exactly
        ["2024-09-02 13:55:00", 1.5, "yesterday", "2024-09-02 13:55:00.250", 7],
    ]
    for stamps in cases:
        s = Series()
        s.extend([[1.0, 2.0]] * len(stamps), stamps)
        got = s.stamps().to_list()
        assert got == stamps
        assert [type(v) for v in got] == [type(v) for v in stamps]
        assert pickle.loads(pickle.dumps(s)).stamps(1).to_list() == stamps[1:]


def test_forecast_series_timestamps_after_the_window_moved() -> None:
    f = Forecaster(device="cpu", max_rows=400)
    f.load_csv(NODE3)
    f.train(epochs=1)
    stamps = f.forecast_series()["timestamps"]
    assert len(stamps) == 400 - int(400 * 0.8) - 6
    assert stamps[-1] == "2024-09-09 11:35:00"


# -- old checkpoints ---------------------------------------------------------------


def _old_format(f: Forecaster) -> dict[str, Any]:
    """What a forecaster pickled before retention held: lists of rows and stamps,
    its test stamps as a list, every loss and its test windows."""
    state = f.__getstate__()
    series = state.pop("_series")
    state.pop("_trained_total")
    state["_values"] = series.values().tolist()
    state["_stamps"] = series.stamps().to_list()
    state["_test_stamps"] = state["_test_stamps"].to_list()
    if state["_trained"] is not None:  # before packing: the module itself
        trained = copy.copy(state["_trained"])
        module = trained.model
        del trained.__dict__["weights"]
        trained.__dict__["model"] = module
        state["_trained"] = trained
    return state


def test_an_old_checkpoint_loads_and_migrates() -> None:
    f = Forecaster(device="cpu")
    f.load_csv(NODE3)
    f.train(paper=True, epochs=2)
    expected = (f.tail(3), f.predict(), f.forecast_series(), f.evaluate()["cpu"], f.state_hash())
    old = Forecaster.__new__(Forecaster)
    state = _old_format(f)
    trained = state["_trained"]
    trained.losses = [0.5, 0.25]
    trained.prepared = prepare(np.asarray(state["_values"]), 6)  # with its windows
    del trained.__dict__["model"].__dict__["residual"]  # pickled before residual existed
    for name in ("residual", "val_frac", "patience", "clip", "huber", "snap"):
        del trained.params.__dict__[name]  # parameters pickled before they existed
    old.__dict__.update(state)
    # pickled with the old layout (getstate passes __dict__ on), loaded with the new class
    blob = pickle.dumps(old)
    again = pickle.loads(blob)
    assert isinstance(again._series, Series) and not hasattr(again, "_values")
    assert again.info()["rows"] == 1989 and again.info()["stale"] is False
    assert again.info()["final_loss"] == 0.25
    got = (
        again.tail(3),
        again.predict(),
        again.forecast_series(),
        again.evaluate()["cpu"],
        again.state_hash(),
    )
    assert got[:3] == expected[:3]
    assert got[3]["mse"] == expected[3]["mse"] and got[4] == expected[4]
    assert again.ingest({"cpu": 1.0, "mem": 2.0}) == 1990
    assert again.info()["stale"] is True
    assert again.info()["params"]["residual"] is False
    assert again.train(warm_start=True, epochs=1)["warm_start"] is True


def test_a_series_pickled_with_a_column_of_seconds_loads() -> None:
    """Before Times, a row's seconds were the array's third column, and the
    test targets' stamps one float64 each: both load, every time as given."""
    values, stamps = read_series_csv(BUNDLED_DIR / NODE3)
    s = Series.from_lists(values, stamps, max_rows=1000)
    state = s.__getstate__()
    seconds = state.pop("_times").seconds()
    state["_buf"] = np.column_stack([state["_buf"], seconds])  # the old layout
    old = Series.__new__(Series)
    old.__setstate__(state)
    assert old.stamps().to_list() == stamps[-1000:] and old.values().tolist() == values[-1000:]
    assert old.nbytes == 1000 * 16  # back on the grid
    old.extend([[1.0, 2.0]], ["2024-09-09 12:00:00"])
    assert old.stamps(998).to_list() == [stamps[-1], "2024-09-09 12:00:00"]
    test_stamps = s.stamps(990)
    blob = pickle.dumps(test_stamps)
    before = pickle.loads(blob)
    before.__setstate__({"seconds": seconds[-10:], "kind": s._kind, "odd": {}})
    assert before.to_list() == test_stamps.to_list() == stamps[-10:]


def test_an_old_untrained_checkpoint_applies_the_default_window() -> None:
    old = Forecaster.__new__(Forecaster)
    old.__dict__.update(
        {
            "requested_device": "cpu",
            "_values": [[float(i), 1.0] for i in range(DEFAULT_MAX_ROWS + 5)],
            "_stamps": [None] * (DEFAULT_MAX_ROWS + 5),
            "_trained": None,
            "_trained_rows": 0,
            "_test_stamps": [],
            "_last_seq": {"d": 3},
            "source": None,
        }
    )
    again = pickle.loads(pickle.dumps(old))
    assert again.info()["rows"] == DEFAULT_MAX_ROWS
    assert again.tail(1) == [[float(DEFAULT_MAX_ROWS + 4), 1.0]]
    assert again.ingest({"cpu": 1.0, "mem": 1.0, "dev": "d", "seq": 3}) == DEFAULT_MAX_ROWS


# -- memory ------------------------------------------------------------------------


def test_memory_of_an_object_with_2000_rows() -> None:
    """Measured: about 33 KiB untrained, 114 KiB trained (70.5 KiB of it the
    packed float32 weights); before issue 14, 318 and 879 KiB. Loose bounds."""
    idle = footprint()
    assert idle["resident_kib"] < 100, idle
    assert idle["pickle_kib"] < 100, idle
    trained = footprint(train=True)
    assert trained["resident_kib"] < 300, trained
    assert trained["pickle_kib"] < 200, trained
    assert 60 < trained["tensors_kib"] < 80  # float32 weights, no optimizer state


def test_a_trained_object_keeps_no_training_history() -> None:
    f = Forecaster(device="cpu", rows=rows_2000())
    result = f.train(epochs=3)
    assert len(result["losses"]) == 3
    trained = f._trained
    assert trained is not None
    assert trained.losses == result["losses"][-1:]
    assert len(trained.prepared.x_train) == len(trained.prepared.x_test) == 0
    assert trained.prepared.test_raw.base is None  # a copy, not a view of the series
    assert trained.weights.flat.dtype == np.float32  # packed: no module, no gradients
    assert "model" not in vars(trained)


def test_an_object_trained_before_compaction_is_compacted_when_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = Forecaster(device="cpu", rows=rows_2000())
    f.train(epochs=1)
    trained = f._trained
    assert trained is not None and not trained.prepared.has_windows
    data = pickle.dumps(f)
    with monkeypatch.context() as m:  # a compact one is not copied again when loaded
        m.setattr(type(trained.prepared), "without_training_windows", None)
        again = pickle.loads(data)._trained
    assert again is not None and not again.prepared.has_windows
    full = prepare(f._series.values(), trained.params.lookback)  # as pickled before issue 14
    assert full.has_windows
    trained.prepared = full
    old = pickle.loads(pickle.dumps(f))._trained
    assert old is not None and not old.prepared.has_windows
    assert np.array_equal(old.prepared.test_raw, full.test_raw)  # what evaluation needs, kept


def _rss_per_object(n: int, train: bool) -> float:
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rows = rows_2000()
    warm = Forecaster(device="cpu", rows=rows)
    warm.train(epochs=1)  # torch's one-time allocations
    gc.collect()
    before = rss()
    objs = []
    for _ in range(n):
        f = Forecaster(device="cpu", rows=rows)
        if train:
            f.train(epochs=1)
        objs.append(f)
    gc.collect()
    return (rss() - before) / n / 1024


if __name__ == "__main__":
    torch.set_num_threads(1)
    for label, train in (("untrained", False), ("trained", True)):
        fp = footprint(train=train)
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
        fp["rss_per_object_kib"] = _rss_per_object(n, train)
        print(label, {k: round(v, 1) if math.isfinite(v) else v for k, v in fp.items()})
