"""The edge export of a trained forecaster and its pure-Python inference
(docs/protocol.md §24): the board's next-step forecast equals the node's
``predict`` on the same window within 1e-4. In-process forecasters (fast)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from continuum_node.forecast import BUNDLED_DIR, Forecaster
from continuum_node.forecast._data import read_series_csv
from continuum_node.forecast._export import EXPORT_FORMAT

from continuum_mqtt import EdgeLSTM, ExportError
from continuum_mqtt._codec import decode, encode

from ._cluster import REPO

DATASETS = ("node_3_utilisation.csv", "orangepi_sample.csv")


def _trained(name: str, **params: object) -> Forecaster:
    f = Forecaster(device="cpu")
    f.load_csv(name)
    f.train(seed=0, **params)
    return f


def _windows(name: str, lookback: int, count: int = 12) -> list[list[list[float]]]:
    values, _ = read_series_csv(BUNDLED_DIR / name)
    step = max(1, (len(values) - lookback) // count)
    return [values[i : i + lookback + 3] for i in range(0, len(values) - lookback - 3, step)][
        :count
    ]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("node_3_utilisation.csv", {"epochs": 3}),  # the default: residual, snapped
        ("orangepi_sample.csv", {"epochs": 3}),
        ("node_3_utilisation.csv", {"epochs": 2, "paper": True}),  # level prediction
        ("orangepi_sample.csv", {"epochs": 2, "hidden": 16, "num_layers": 2, "lookback": 4}),
    ],
)
def test_local_forecast_equals_the_nodes(name: str, params: dict[str, object]) -> None:
    f = _trained(name, **params)
    export = decode(encode(f.edge_export()))  # what crosses the wire
    assert export["format"] == EXPORT_FORMAT and export["state_hash"] == f.state_hash()
    model = EdgeLSTM(export)
    assert model.state_hash == f.state_hash()
    windows = _windows(name, model.lookback)
    assert len(windows) >= 10
    for window in windows:
        remote = f.predict(window)
        local = model.predict(window)
        assert local == pytest.approx(remote, abs=1e-4), window
    # the node's own series tail, as predict() with no window uses
    tail = f.tail(model.lookback)
    assert model.predict(tail) == pytest.approx(f.predict(), abs=1e-4)


def test_export_is_compact_and_versioned() -> None:
    f = _trained("node_3_utilisation.csv", epochs=1)
    export = f.edge_export()
    size = len(encode(export))
    assert 60_000 < size < 100_000  # float32 bytes: the 70.5 KiB of weights and little else
    assert export["lookback"] == 6 and export["residual"] is True and export["hidden"] == 64
    assert export["trained_rows"] == f.info()["trained_rows"]
    before = export["state_hash"]
    f.train(epochs=1, seed=1)
    assert f.edge_export()["state_hash"] != before  # a new training, a new version


def test_untrained_has_no_export() -> None:
    f = Forecaster(device="cpu", rows=[[1.0, 2.0]] * 20)
    with pytest.raises(RuntimeError):
        f.edge_export()


def test_bad_exports_are_refused() -> None:
    export = _trained("orangepi_sample.csv", epochs=1, hidden=8).edge_export()
    with pytest.raises(ExportError):
        EdgeLSTM({**export, "format": "other"})
    with pytest.raises(ExportError):
        EdgeLSTM({**export, "version": 99})
    bad = dict(export["tensors"])
    bad["fc.bias"] = {"shape": [2], "f32le": b"\x00" * 4}
    with pytest.raises(ExportError):
        EdgeLSTM({**export, "tensors": bad})
    nan = dict(export["tensors"])
    nan["fc.bias"] = {"shape": [2], "f32le": b"\x00\x00\xc0\x7f" * 2}
    with pytest.raises(ExportError):
        EdgeLSTM({**export, "tensors": nan})
    model = EdgeLSTM(export)
    with pytest.raises(ValueError):
        model.predict([[1.0, 2.0]])
    with pytest.raises(ValueError):
        model.predict([[1.0, 2.0, 3.0]] * 6)


def test_edge_inference_imports_nothing_heavy() -> None:
    export = _trained("orangepi_sample.csv", epochs=1, hidden=8).edge_export()
    blob = encode(export)
    script = textwrap.dedent(
        f"""
        import sys
        from continuum_mqtt import EdgeLSTM
        from continuum_mqtt._codec import decode
        m = EdgeLSTM(decode({blob!r}))
        print(m.predict([[10.0, 20.0]] * m.lookback))
        print([x for x in ("torch", "numpy", "pandas", "cloudpickle") if x in sys.modules])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
