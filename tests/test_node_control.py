"""continuum_node._control: the control methods through the toolkit's Dispatcher
(whose fault an error is), without a node around them."""

from __future__ import annotations

from typing import Any

import pytest
from continuum_node._control import Control
from continuum_node._durability import Durability
from continuum_node._feeds import Bindings
from continuum_node._quarantine import Quarantined
from continuum_node._replication import Replication
from continuum_node._resident import Residents

from continuum_mqtt import ContinuumError
from continuum_mqtt.service import Request, Topics

from ._nodekit import TALLY, Tally

TOPICS = Topics("continuum/v1")
METRICS = TOPICS.metrics("d1")


@pytest.fixture
def control() -> Control:
    residents = Residents("n1")
    bindings = Bindings(lambda t: None, lambda t: None)
    durability = Durability(None, residents, bindings)

    def no_sync(*_: Any) -> Any:
        raise AssertionError("no replica is online")

    rep = Replication(
        "n1", TOPICS, no_sync, residents, durability, bindings, {TALLY: Tally}, lambda n: False
    )
    return Control("n1", TOPICS, {TALLY: Tally}, residents, durability, rep, bindings)


def _code(control: Control, method: str, /, **kwargs: Any) -> str:
    with pytest.raises(ContinuumError) as caught:
        control.dispatcher.dispatch(Request(method, [], kwargs))
    return caught.value.code


def _ok(control: Control, method: str, /, **kwargs: Any) -> Any:
    return control.dispatcher.dispatch(Request(method, ["ignored"], kwargs))


def test_the_callers_mistakes_are_bad_request(control: Control) -> None:
    assert _code(control, "create", obj="o") == "bad_request"  # no cls
    assert _code(control, "create", obj="o", cls=TALLY, _rid="x") == "bad_request"
    assert _code(control, "create", obj="o", cls=[TALLY]) == "bad_request"
    assert _code(control, "promote", obj="o", replicas=["a/b"]) == "bad_request"
    _ok(control, "create", obj="o", cls=TALLY)
    assert _code(control, "aliases", obj="o", aliases="one") == "bad_request"
    assert _code(control, "bind", obj="o", topic=METRICS, method=5) == "bad_request"
    assert _code(control, "bind", obj="o", topic=METRICS, method="nope") == "unknown_method"
    assert _code(control, "nothing") == "unknown_method"


def test_a_failure_inside_a_method_is_not_the_callers_fault(
    control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(res: Any) -> None:
        raise TypeError("a bug in the node, not in the request")

    monkeypatch.setattr(control.durability, "persist", broken)
    assert _code(control, "create", obj="o", cls=TALLY) == "method_error"


def test_bind_unbind_aliases_and_list(control: Control) -> None:
    _ok(control, "create", obj="o", cls=TALLY, aliases=["a"])
    assert _ok(control, "bind", obj="o", topic=METRICS, method="ingest") == {
        "id": "o",
        "feeds": {METRICS: "ingest"},
    }
    assert control.bindings.fed(METRICS)
    assert _ok(control, "unbind", obj="o", topic=METRICS) == {"id": "o", "feeds": {}}
    assert not control.bindings.fed(METRICS)
    assert _ok(control, "aliases", obj="o", aliases=["b", "c"]) == {
        "id": "o",
        "aliases": ["b", "c"],
    }
    [listed] = _ok(control, "list", anything="ignored")
    assert listed["aliases"] == ["b", "c"] and listed["quarantined"] is False


def test_a_quarantined_object_is_unavailable_but_can_be_deleted(control: Control) -> None:
    control.residents.quarantine.add(Quarantined("q", "torn", "journal", cls=TALLY))
    for method, kw in (
        ("create", {"cls": TALLY}),
        ("bind", {"topic": METRICS, "method": "ingest"}),
        ("aliases", {"aliases": []}),
        ("promote", {}),
    ):
        assert _code(control, method, obj="q", **kw) == "unavailable"
    [listed] = _ok(control, "list")
    assert listed["quarantined"] is True and listed["reason"] == "torn"
    assert _ok(control, "delete", obj="q") == {"id": "q", "deleted": True}
    assert _ok(control, "list") == []
