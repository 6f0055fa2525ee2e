"""Packed weights (continuum_node.forecast._packed): NumPy inference equal to
the module's forward, the module rebuilt bit for bit, old pickles migrated,
and a trained forecaster served by a process that never imports torch."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from continuum_node.forecast import Forecaster, LSTMNet  # noqa: E402
from continuum_node.forecast._model import model_size_mb, state_hash  # noqa: E402
from continuum_node.forecast._packed import Packed, _layout  # noqa: E402


def _module(hidden: int, layers: int, residual: bool, seed: int = 0) -> LSTMNet:
    torch.manual_seed(seed)
    m = LSTMNet(2, hidden, 2, layers, residual)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
        if residual:
            m.step_scale.copy_(torch.tensor([0.05, 0.2]))
    return m.eval()


@pytest.mark.parametrize(
    ("hidden", "layers", "residual"), [(64, 1, True), (64, 1, False), (8, 2, False), (16, 3, True)]
)
def test_numpy_inference_equals_the_modules_forward(
    hidden: int, layers: int, residual: bool
) -> None:
    m = _module(hidden, layers, residual)
    packed = Packed.from_module(m)
    x = np.random.default_rng(1).uniform(-0.5, 1.5, (300, 6, 2)).astype(np.float32)
    with torch.inference_mode():
        expected = m(torch.from_numpy(x)).numpy()
    got = packed.forward(x)
    assert got.shape == (300, 2) and got.dtype == np.float64
    assert np.abs(got - expected).max() < 1e-5
    assert packed.forward(x[:1]) == pytest.approx(got[:1], abs=1e-6)  # one window alone
    assert packed.forward(x[:0]).shape == (0, 2)


@pytest.mark.parametrize(("hidden", "layers", "residual"), [(64, 1, True), (8, 3, False)])
def test_the_layout_is_the_modules_state_dict(hidden: int, layers: int, residual: bool) -> None:
    state = _module(hidden, layers, residual).state_dict()
    layout = _layout(hidden, layers, residual)
    assert [(n, s) for n, s, _, _ in layout] == [(k, tuple(v.shape)) for k, v in state.items()]
    assert layout[-1][3] == sum(v.numel() for v in state.values())


def test_the_module_comes_back_bit_for_bit() -> None:
    m = _module(32, 2, True)
    packed = Packed.from_module(m)
    assert packed.nbytes == sum(t.numel() * 4 for t in m.state_dict().values())
    again = packed.module()
    assert state_hash(again) == state_hash(m) == state_hash(packed)
    assert model_size_mb(packed) == model_size_mb(m)
    assert not again.training and all(p.grad is None for p in again.parameters())
    # the module owns its tensors: training it leaves the packed weights as they were
    with torch.no_grad():
        next(again.parameters()).add_(1.0)
    assert state_hash(packed) == state_hash(m)


def test_a_forecaster_keeps_no_module_and_a_trained_pickle_with_one_still_loads() -> None:
    f = Forecaster(device="cpu")
    f.load_csv("orangepi_sample.csv")
    f.train(epochs=2, hidden=8)
    trained = f._trained
    assert trained is not None and "model" not in vars(trained)
    before = (f.predict(), f.state_hash(), f.evaluate()["cpu"])
    # a forecaster checkpointed before packing held the module itself
    old = pickle.loads(pickle.dumps(f))
    assert old._trained is not None
    module = old._trained.model
    del old._trained.__dict__["weights"]
    old._trained.__dict__["model"] = module
    again = pickle.loads(pickle.dumps(old))
    assert again._trained is not None and "model" not in vars(again._trained)
    assert (again.predict(), again.state_hash(), again.evaluate()["cpu"]) == before
    assert again.train(warm_start=True, epochs=1)["warm_start"] is True


def test_a_trained_forecaster_is_served_without_importing_torch(tmp_path: Path) -> None:
    """What a node does in its own process with --long-calls process: load a
    trained forecaster's checkpoint, serve it and snapshot it, torch-free."""
    f = Forecaster(device="cpu")
    f.load_csv("orangepi_sample.csv")
    f.train(epochs=1, hidden=8)
    blob = tmp_path / "f.pickle"
    blob.write_bytes(cloudpickle.dumps(f))
    expected = [f.predict(), f.state_hash(), f.model_size_mb(), f.evaluate()["cpu"]["mse"]]
    code = f"""
import json, pickle, sys
import continuum_node.forecast
f = pickle.loads(open({str(blob)!r}, "rb").read())
f.ingest({{"cpu": 1.0, "mem": 2.0}})
out = [f.predict(), f.state_hash(), f.model_size_mb(), f.evaluate()["cpu"]["mse"]]
info = f.info()
auto = continuum_node.forecast.Forecaster()  # "auto": resolving it would need torch
assert auto.info()["device"] == "auto" and "torch" not in sys.modules
f.edge_export(), f.forecast_series(), pickle.dumps(f)
print(json.dumps([out, info["cuda_available"], info["threads"], "torch" in sys.modules]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out, cuda, threads, imported = json.loads(run.stdout)
    assert imported is False and cuda is None and threads is None
    assert out[1:3] == expected[1:3]
    assert out[3] == pytest.approx(expected[3], rel=1e-6)
    assert len(out[0]) == 2
