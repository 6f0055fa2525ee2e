"""The forecaster's limits on expensive training parameters (issue 13: one
``train(hidden=1024, num_layers=8)`` cost a node 508 MB and a 240 MB
checkpoint): ``bad_arguments`` naming the limit, before any work; the paper's
settings stay valid; the limits are node configuration."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from continuum_node.forecast import Forecaster, TrainParams

from continuum_mqtt import BadArguments
from continuum_mqtt._invoke import invoke

PAPER = {"epochs": 100, "batch_size": 64, "lookback": 6, "hidden": 64, "num_layers": 1}


def test_the_papers_settings_and_each_limit_itself_are_valid() -> None:
    assert TrainParams.from_kwargs(paper=True, **PAPER) == TrainParams.paper()
    assert TrainParams.from_kwargs(**PAPER).residual  # the default beside the paper's
    limits = TrainParams.limits
    for name in ("epochs", "batch_size", "lookback", "hidden", "num_layers"):
        assert getattr(TrainParams.from_kwargs(**{name: limits[name]}), name) == limits[name]
    inside = {"batch_size": 64, "lookback": 288, "hidden": 64, "num_layers": 2}
    assert TrainParams.from_kwargs(**inside).lookback == 288  # a day of samples, 2 layers


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 10**9},
        {"hidden": 1024},
        {"num_layers": 8},
        {"batch_size": 10**6},
        {"lookback": 10**5},
        {"hidden": 1024, "num_layers": 8},
    ],
)
def test_beyond_a_limit_is_bad_arguments_naming_it(kwargs: dict[str, Any]) -> None:
    with pytest.raises(BadArguments) as info:
        TrainParams.from_kwargs(**kwargs)
    err = info.value
    assert err.code == "bad_arguments"
    param = err.data["param"]
    assert param in kwargs and err.data["limit"] == TrainParams.limits[param]
    assert param in err.message and str(TrainParams.limits[param]) in err.message


def test_each_limit_alone_cannot_add_up_to_a_memory_bomb() -> None:
    limits = TrainParams.limits
    every_max = {k: limits[k] for k in ("batch_size", "lookback", "hidden", "num_layers")}
    with pytest.raises(BadArguments) as info:
        TrainParams.from_kwargs(**every_max)
    assert info.value.data == {"param": "batch_work", "limit": limits["batch_work"]}


def test_the_wire_sees_bad_arguments_and_the_object_is_untouched() -> None:
    f = Forecaster(device="cpu", rows=[[float(i % 7), float(i % 5)] for i in range(40)])
    before = f.info()
    with pytest.raises(BadArguments) as info:
        invoke(f, "train", [], {"hidden": 1024, "num_layers": 8})
    env = info.value.to_envelope()
    assert (env["code"], env["type"], env["param"]) == ("bad_arguments", "BadArguments", "hidden")
    assert f.info() == before and before["trained"] is False


def test_an_operator_may_change_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TrainParams.limits, "epochs", 50_000)
    assert TrainParams.from_kwargs(epochs=50_000).epochs == 50_000
    monkeypatch.setitem(TrainParams.limits, "hidden", 32)
    with pytest.raises(BadArguments):
        TrainParams.from_kwargs()  # hidden=64, the default, is now above it
