"""The forecaster offloaded through real processes gives what local training gives."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from continuum_node.forecast import BUNDLED_DIR, train_local

from ._cluster import REPO, Cluster

FORECASTER = "continuum_node.forecast.Forecaster"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The node runs torch with cores - 1 threads (1 here); match it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows() -> list[list[float]]:
    with open(Path(BUNDLED_DIR) / "node_3_utilisation.csv", newline="") as fh:
        return [[float(r["CPU"]), float(r["MEM"])] for r in csv.DictReader(fh)]


def test_offloaded_training_equals_local_training(bare_cluster: Cluster, one_thread: None) -> None:
    c = bare_cluster
    c.start_gateway()
    c.start_node("n1", "--torch-threads", "1", modules=("continuum_node.forecast",))
    series = rows()
    with c.client(timeout=300) as client:
        fed = client.stub(FORECASTER).create()
        for i in range(0, len(series), 400):
            fed.append(series[i : i + 400])
        loaded = client.stub(FORECASTER).create()
        loaded.load_csv("node_3_utilisation.csv")
        for seed in (0, 1):
            epochs: list[int] = []
            remote = fed.train.options(on_progress=lambda u, e=epochs: e.append(u["epoch"]))(
                epochs=3, seed=seed
            )
            assert epochs == [1, 2, 3]  # in order, before the result
            _, local = train_local(series, epochs=3, seed=seed)
            assert remote["state_hash"] == local["state_hash"]
            assert fed.evaluate()["cpu"] == _approx(local["evaluation"]["cpu"])
            assert fed.evaluate()["mem"] == _approx(local["evaluation"]["mem"])
            # rows streamed in through append == the CSV loaded server-side
            assert loaded.train(epochs=3, seed=seed)["state_hash"] == remote["state_hash"]
        timing = {"eval_seconds"}
        remote_base = {k: v for k, v in fed.baseline().items() if k not in timing}
        assert remote_base == {k: v for k, v in local["baseline"].items() if k not in timing}


def test_demo_quick_run_writes_the_report(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "continuum_dev", "demo", "--quick", "--no-figures", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "forecast-report.json").read_text())
    offloaded = report["table2_4_offloaded"]
    assert offloaded["same_weights_as_local"] is True
    assert offloaded["client_heavy_modules"] == []
    assert report["goals"]["no_heavy_modules_on_edge"]
    md = (tmp_path / "forecast-report.md").read_text()
    for section in (
        "Table 1 analogue",
        "Tables 2-4 analogue",
        "Table 5 analogue",
        "Table 6 analogue",
        "Goals",
    ):
        assert section in md
    assert "epoch" in run.stderr  # the live progress bar


def _approx(metrics: dict[str, float]) -> object:
    """Equal weights (state_hash) give metrics equal to about 1e-9: inference
    runs in NumPy, whose BLAS may sum in another order with other thread
    settings (the node's are not the test process's)."""
    return pytest.approx(metrics, rel=1e-6)
