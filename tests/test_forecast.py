"""The node-side LSTM forecaster (continuum_node.forecast): pure local tests, no broker."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from continuum_node.forecast import (  # noqa: E402
    BUNDLED_DIR,
    DATA_ENV,
    Forecaster,
    TrainParams,
    UnknownDataset,
    configure_torch_threads,
    data_dirs,
    prepare,
    state_hash,
    train_local,
)
from continuum_node.forecast._data import (  # noqa: E402
    make_windows,
    metrics_per_variable,
    persistence_predictions,
    read_series_csv,
    smape,
)

from continuum_mqtt._invoke import invoke  # noqa: E402
from continuum_mqtt._model import class_path  # noqa: E402

NODE3 = "node_3_utilisation.csv"
REPO = Path(__file__).resolve().parent.parent

# Paper, Table 5 (20 seeds, 100 epochs): MSE mean +- std per variable.
PAPER_CPU_MSE = (7.651, 0.539)
PAPER_MEM_MSE = (0.871, 0.353)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """What a node does at start-up. With PyTorch's default of one OpenMP thread per
    core, training on a 2-core box slows down 5-20x as soon as anything else (an
    integration test's node, a broker) keeps a core busy."""
    before = torch.get_num_threads()
    configure_torch_threads(1)
    yield
    configure_torch_threads(before)


@pytest.fixture(scope="module")
def node3() -> list[list[float]]:
    values, _ = read_series_csv(BUNDLED_DIR / NODE3)
    return values


@pytest.fixture(scope="module")
def trained() -> Forecaster:
    """node_3 trained for a few epochs (enough for API tests, not for accuracy)."""
    f = Forecaster(device="cpu")
    f.load_csv(NODE3)
    f.train(epochs=2, seed=0)
    return f


def _is_plain(value: Any) -> bool:
    """Only the types the codec is meant to carry: no numpy scalars, no tensors."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) is list:
        return all(_is_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    return False


# -- data preparation ----------------------------------------------------------


def test_window_counts_match_the_paper(node3: list[list[float]]) -> None:
    assert len(node3) == 1989
    prep = prepare(np.asarray(node3), lookback=6)
    assert prep.n_train == 1585
    assert prep.n_test == 392
    assert prep.x_train.shape == (1585, 6, 2)
    assert prep.y_train.shape == (1585, 2)
    assert prep.x_test.shape == (392, 6, 2)
    assert prep.x_train.dtype == np.float32


def test_scaler_is_fitted_on_the_training_part_only(node3: list[list[float]]) -> None:
    values = np.asarray(node3)
    prep = prepare(values)
    train_part = values[: int(len(values) * 0.8)]
    assert np.array_equal(prep.scaler.data_min, train_part.min(axis=0))
    assert np.array_equal(prep.scaler.data_max, train_part.max(axis=0))
    assert not np.array_equal(
        prep.scaler.data_max, values.max(axis=0)
    )  # the test part peaks higher
    assert prep.x_train.min() == 0.0 and prep.x_train.max() == pytest.approx(1.0)
    # A test value above the training maximum scales above 1: nothing leaked from the test part.
    assert prep.x_test.max() > 1.0 or prep.y_test.max() > 1.0


def test_scaler_on_a_tiny_series_with_a_test_spike() -> None:
    values = np.array([[0, 10], [2, 10], [4, 30], [6, 20], [100, 20]], dtype=float)
    prep = prepare(values, lookback=1)  # train rows 0..3, test row 4
    assert prep.scaler.to_dict() == {"min": [0.0, 10.0], "max": [6.0, 30.0]}
    assert prep.n_test == 0  # one test row is not a window
    np.testing.assert_allclose(prep.y_train, [[1 / 3, 0.0], [2 / 3, 1.0], [1.0, 0.5]], rtol=1e-6)


def test_windows_are_oldest_first_with_the_next_step_as_target() -> None:
    scaled = np.arange(10, dtype=float).reshape(5, 2)  # rows [0,1],[2,3],...,[8,9]
    x, y = make_windows(scaled, 3)
    assert x.shape == (2, 3, 2)
    assert x[0].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert y.tolist() == [[6, 7], [8, 9]]
    assert x[1].tolist() == [[2, 3], [4, 5], [6, 7]]


# -- metrics and baseline --------------------------------------------------------


def test_metrics_and_smape_on_a_hand_computed_example() -> None:
    pred = np.array([[1.0, 10.0], [3.0, 10.0]])
    true = np.array([[2.0, 10.0], [3.0, 12.0]])
    m = metrics_per_variable(pred, true)
    assert set(m) == {"cpu", "mem"}
    assert set(m["cpu"]) == {"mse", "mae", "smape", "rmse"}
    # cpu errors: -1, 0; mem errors: 0, -2
    assert m["cpu"]["mse"] == pytest.approx(0.5)
    assert m["cpu"]["mae"] == pytest.approx(0.5)
    assert m["cpu"]["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["cpu"]["smape"] == pytest.approx(200 * (1 / 3 + 0) / 2)  # 33.33
    assert m["mem"]["mse"] == pytest.approx(2.0)
    assert m["mem"]["mae"] == pytest.approx(1.0)
    assert m["mem"]["rmse"] == pytest.approx(math.sqrt(2.0))
    assert m["mem"]["smape"] == pytest.approx(200 * (0 + 2 / 22) / 2)  # 9.09
    assert smape(np.zeros(2), np.zeros(2)) == 0.0  # 0/0 terms count as 0
    assert _is_plain(m)


def test_persistence_baseline_on_a_tiny_series() -> None:
    # 20 rows, cpu = i, mem = 2 i; train_frac 0.8 -> test rows 16..19; lookback 2 ->
    # targets rows 18, 19, persistence predictions rows 17, 18.
    rows = [[float(i), float(2 * i)] for i in range(20)]
    pred, true = persistence_predictions(np.asarray(rows[16:]), 2)
    assert pred.tolist() == [[17, 34], [18, 36]]
    assert true.tolist() == [[18, 36], [19, 38]]

    f = Forecaster(device="cpu", rows=rows)
    f.train(epochs=1, lookback=2, batch_size=4)
    b = f.baseline()
    assert b["n_test"] == 2 == f.evaluate()["n_test"]
    assert b["cpu"]["mse"] == pytest.approx(1.0)
    assert b["cpu"]["mae"] == pytest.approx(1.0)
    assert b["cpu"]["rmse"] == pytest.approx(1.0)
    assert b["cpu"]["smape"] == pytest.approx(100 * (1 / 35 + 1 / 37))
    assert b["mem"]["mse"] == pytest.approx(4.0)
    assert b["mem"]["smape"] == pytest.approx(100 * (2 / 70 + 2 / 74))


# -- training determinism ---------------------------------------------------------


def test_same_seed_gives_the_same_weights(trained: Forecaster) -> None:
    again = Forecaster(device="cpu")
    again.load_csv(NODE3)
    first = again.train(epochs=2, seed=0)
    assert first["state_hash"] == trained.state_hash()
    assert again.train(epochs=2, seed=0)["state_hash"] == first["state_hash"]
    assert again.train(epochs=2, seed=1)["state_hash"] != first["state_hash"]
    assert len(first["state_hash"]) == 64


def test_global_rng_state_does_not_change_the_result(trained: Forecaster) -> None:
    torch.manual_seed(12345)
    np.random.seed(6789)
    f = Forecaster(device="cpu")
    f.load_csv(NODE3)
    assert f.train(epochs=2, seed=0)["state_hash"] == trained.state_hash()


def test_appended_rows_train_like_load_csv(node3: list[list[float]], trained: Forecaster) -> None:
    _, stamps = read_series_csv(BUNDLED_DIR / NODE3)
    f = Forecaster(device="cpu")
    half = len(node3) // 2
    # streamed the way devices send them: maps with timestamps, then plain pairs
    f.append(
        [
            {"cpu": c, "mem": m, "ts": t}
            for (c, m), t in zip(node3[:half], stamps[:half], strict=True)
        ]
    )
    assert f.append(node3[half:]) == 1989
    assert f.train(epochs=2, seed=0)["state_hash"] == trained.state_hash()


def test_train_local_matches_the_active_method(
    node3: list[list[float]], trained: Forecaster
) -> None:
    model, metrics = train_local(node3, epochs=2, seed=0)
    assert metrics["state_hash"] == state_hash(model) == trained.state_hash()
    assert metrics["evaluation"]["cpu"]["mse"] == trained.evaluate()["cpu"]["mse"]
    assert metrics["baseline"]["cpu"] == trained.baseline()["cpu"]
    assert _is_plain(metrics)


def test_same_weights_in_a_fresh_process(trained: Forecaster) -> None:
    code = (
        "from continuum_node.forecast import Forecaster\n"
        "f = Forecaster(device='cpu'); f.load_csv('node_3_utilisation.csv')\n"
        "print(f.train(epochs=2, seed=0)['state_hash'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == trained.state_hash()


def test_train_reports_progress_every_epoch() -> None:
    f = Forecaster(device="cpu", rows=[[float(i % 7), float(i % 5)] for i in range(60)])
    updates: list[Any] = []
    result = invoke(f, "train", [], {"epochs": 3, "seed": 4}, on_progress=updates.append)
    assert [u["epoch"] for u in updates] == [1, 2, 3]
    assert all(u["epochs"] == 3 and type(u["loss"]) is float for u in updates)
    assert result["losses"] == [u["loss"] for u in updates]
    assert result["final_loss"] == updates[-1]["loss"]


def test_train_rejects_bad_parameters(trained: Forecaster) -> None:
    with pytest.raises(TypeError):
        trained.train(epochs="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        trained.train(lookback=0)
    with pytest.raises(TypeError):
        TrainParams.from_kwargs(momentum=0.9)
    short = Forecaster(device="cpu", rows=[[1.0, 2.0]] * 5)
    with pytest.raises(ValueError, match="too short"):
        short.train(epochs=1)
    assert TrainParams.from_kwargs(lr=1).lr == 1.0


# -- results -----------------------------------------------------------------


def test_predict_returns_two_floats(trained: Forecaster, node3: list[list[float]]) -> None:
    nxt = trained.predict()
    assert type(nxt) is list and len(nxt) == 2
    assert all(type(v) is float and math.isfinite(v) for v in nxt)
    assert trained.predict(node3[-6:]) == nxt  # the same window given explicitly
    assert 0.0 < nxt[0] < 100.0 and 0.0 < nxt[1] < 100.0


def test_results_are_plain_and_cbor_encodable(trained: Forecaster) -> None:
    results: dict[str, Any] = {
        "evaluate": trained.evaluate(),
        "baseline": trained.baseline(),
        "predict": trained.predict(),
        "model_size_mb": trained.model_size_mb(),
        "state_hash": trained.state_hash(),
        "info": trained.info(),
        "forecast_series": trained.forecast_series(),
        "tail": trained.tail(3),
    }
    for name, value in results.items():
        assert _is_plain(value), name
        assert cbor2.loads(cbor2.dumps(value)) == value, name
    ev = results["evaluate"]
    assert set(ev) >= {"cpu", "mem", "eval_seconds"}
    assert set(ev["cpu"]) == set(ev["mem"]) == {"mse", "mae", "smape", "rmse"}
    series = results["forecast_series"]
    assert len(series["cpu"]["predicted"]) == len(series["timestamps"]) == 392
    assert series["timestamps"][-1] == "2024-09-09 11:35:00"
    # Same parameter count as the paper (0.0707 MB there; the file format adds bytes).
    assert 0.06 < results["model_size_mb"] < 0.08
    info = results["info"]
    assert info["trained"] and info["n_train"] == 1585 and info["device"] == "cpu"


def test_train_result_is_plain(trained: Forecaster) -> None:
    f = Forecaster(device="cpu", rows=[[float(i % 7), float(i % 5)] for i in range(40)])
    result = f.train(epochs=1)
    assert _is_plain(result)
    cbor2.dumps(result)
    assert set(result) >= {"train_seconds", "final_loss", "n_train", "n_test", "state_hash"}
    assert _is_plain(Forecaster(device="cpu").info())


def test_forecast_series_survives_a_replaced_series(trained: Forecaster) -> None:
    f = pickle.loads(pickle.dumps(trained))
    before = f.forecast_series()
    f.load_csv("orangepi_sample.csv")  # the model stays; its test curves too
    assert f.forecast_series() == before
    assert f.info()["stale"] is True
    assert len(f.predict()) == 2  # from the latest rows of the new series


def test_untrained_forecaster_refuses_model_methods() -> None:
    f = Forecaster(device="cpu")
    for method in (f.evaluate, f.predict, f.state_hash, f.model_size_mb, f.forecast_series):
        with pytest.raises(RuntimeError, match="train"):
            method()
    assert f.info()["trained"] is False


def test_snapshot_roundtrip_keeps_the_model(trained: Forecaster) -> None:
    copy = pickle.loads(pickle.dumps(trained))
    assert copy.state_hash() == trained.state_hash()
    assert copy.predict() == trained.predict()


# -- input handling ---------------------------------------------------------------


def test_load_csv_takes_bare_names_only_with_one_error_for_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not found, not allowed, a path, a folder outside: the same error, so
    that load_csv tells a caller nothing about the node's files."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(DATA_ENV, str(data))
    outside = tmp_path / "outside.csv"
    outside.write_text("CPU,MEM\n1,2\n")
    (data / "link.csv").symlink_to(outside)
    (data / ".hidden.csv").write_text("CPU,MEM\n1,2\n")
    (data / "notes.txt").write_text("CPU,MEM\n1,2\n")
    f = Forecaster(device="cpu")
    bads: list[Any] = [
        "../../etc/passwd",
        "/etc/passwd",
        str(outside),
        str(BUNDLED_DIR / NODE3),  # absolute, even inside a data folder
        f"../datasets/{NODE3}",
        "link.csv",  # a link out of its folder
        ".hidden.csv",
        "notes.txt",
        "nope.csv",
        "",
        "a\x00.csv",
        7,
    ]
    for bad in bads:
        with pytest.raises(UnknownDataset) as info:
            f.load_csv(bad)
        assert info.value.code == "forecast.unknown_dataset"
        assert info.value.message == f"no dataset {info.value.data['name']!r} on this node"
    assert f.info()["rows"] == 0
    assert not hasattr(f, "data_dir")


def test_load_csv_from_the_configured_folders_then_the_bundled_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "dev.csv").write_text("time,cpu,mem\nt0,1.5,2.5\nt1,3,4\n")
    (second / "dev.csv").write_text("cpu,mem\n9,9\n")  # hidden by the first folder's
    (second / "other.csv").write_text("cpu,mem\n7,8\n")
    monkeypatch.setenv(DATA_ENV, f"{first}{os.pathsep}{second}")
    assert data_dirs() == [first, second, BUNDLED_DIR]
    f = Forecaster(device="cpu")
    assert f.load_csv("dev.csv") == 2
    assert f.tail(5) == [[1.5, 2.5], [3.0, 4.0]]
    assert f.load_csv("other.csv", replace=False) == 3
    assert f.load_csv("orangepi_sample.csv", replace=False) == 3 + 499
    assert f.tail(1) == [[83.7, 10.6]]
    assert f.info()["has_timestamps"]
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(UnknownDataset):
        f.load_csv("dev.csv")  # configuration is read at each call
    assert f.info()["rows"] == 3 + 499


def test_data_dir_is_no_constructor_argument_and_old_objects_still_load() -> None:
    with pytest.raises(TypeError):
        Forecaster(device="cpu", data_dir="/tmp")  # type: ignore[call-arg]
    old = Forecaster(device="cpu", rows=[[1.0, 2.0]] * 3)
    old.__dict__["data_dir"] = "/etc"  # what an object created before kept
    again = pickle.loads(pickle.dumps(old))
    assert not hasattr(again, "data_dir")
    assert again.tail(5) == [[1.0, 2.0]] * 3
    with pytest.raises(UnknownDataset):
        again.load_csv("passwd.csv")


def test_append_validates_rows_all_or_nothing() -> None:
    f = Forecaster(device="cpu")
    assert f.append([[1, 2], (3.5, 4.5, "2024-01-01 00:00:00"), {"CPU": 5, "MEM": 6}]) == 3
    bads: list[Any] = [
        [[1]],
        [[1, "x"]],
        [{"cpu": 1}],
        [[1, float("nan")]],
        [[True, 1]],
        {"cpu": 1},
    ]
    for bad in bads:
        with pytest.raises((TypeError, ValueError)):
            f.append(bad)
    assert f.info()["rows"] == 3
    assert f.clear() == 0 and f.info()["rows"] == 0


def test_ingest_takes_feed_samples_and_drops_redeliveries() -> None:
    f = Forecaster(device="cpu")
    sample = {"dev": "pi1", "seq": 1, "ts": 1.7e9, "cpu": 12.5, "mem": 40.0, "temp": 51.0}
    assert f.ingest(sample) == 1
    assert f.ingest(sample) == 1  # QoS 1 redelivery: same seq
    assert f.ingest({**sample, "seq": 2, "cpu": 13.0}) == 2
    assert f.ingest({**sample, "dev": "pi2", "seq": 1}) == 3  # seq is per device
    assert f.ingest({"cpu": 1.0, "mem": 2.0}) == 4  # no seq: always kept
    with pytest.raises(ValueError):
        f.ingest({"dev": "pi1", "seq": 9, "cpu": 1.0})
    assert f.tail(2) == [[12.5, 40.0], [1.0, 2.0]]
    assert f.info()["has_timestamps"]


def test_trained_object_snapshot_stays_small(trained: Forecaster) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    size = len(cloudpickle.dumps(trained, protocol=5))
    # series (1,989 rows with timestamps) + weights + test windows; no training windows
    assert size < 250_000, size


# -- packaging and threads --------------------------------------------------------


def test_class_path_and_readonly_marks() -> None:
    assert class_path(Forecaster) == "continuum_node.forecast.Forecaster"
    specs = Forecaster.__active_methods__
    readonly = {name for name, spec in specs.items() if spec.readonly}
    assert {"append", "load_csv", "train", "clear"} <= set(specs) - readonly
    assert {
        "evaluate",
        "baseline",
        "predict",
        "model_size_mb",
        "state_hash",
        "info",
        "forecast_series",
    } <= readonly


def test_bundled_datasets_keep_their_attribution() -> None:
    readme = (BUNDLED_DIR / "README.md").read_text()
    assert "Apache License 2.0" in readme and "icos-project/intelligence-module" in readme
    assert (BUNDLED_DIR / "orangepi_sample.csv").is_file()


def test_configure_torch_threads_leaves_the_count_when_none() -> None:
    current = torch.get_num_threads()
    assert configure_torch_threads(None) == current
    assert configure_torch_threads(current) == current
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            configure_torch_threads(bad)  # type: ignore[arg-type]


# -- accuracy (the paper's full run) ----------------------------------------------


def test_full_training_lands_in_the_paper_band(node3: list[list[float]]) -> None:
    """The paper's settings (``paper=True``), 100 epochs on node_3 (about 3.5 s
    on one core). Paper, Table 5: CPU MSE 7.651 +- 0.539, MEM MSE 0.871 +- 0.353
    (20 seeds)."""
    _, m = train_local(node3, paper=True, seed=0)
    ev, base = m["evaluation"], m["baseline"]
    cpu_mean, cpu_sd = PAPER_CPU_MSE
    mem_mean, mem_sd = PAPER_MEM_MSE
    assert m["n_train"] == 1585 and m["n_test"] == 392
    assert cpu_mean - 2 * cpu_sd <= ev["cpu"]["mse"] <= cpu_mean + 2 * cpu_sd
    assert ev["mem"]["mse"] <= mem_mean + 2 * mem_sd
    assert ev["cpu"]["mse"] < base["cpu"]["mse"]  # beats persistence on CPU
