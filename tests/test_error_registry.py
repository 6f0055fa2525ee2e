"""Error classes register themselves under their wire code; applications declare
namespaced codes; the board-side jobs decide by the code, never by the text.
In-process, no broker."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

import continuum_mqtt
from continuum_mqtt._errors import (
    _REGISTRY,
    ApplicationError,
    ContinuumError,
    RemoteError,
    error_class,
    error_from_envelope,
)
from continuum_mqtt._invoke import remote_error
from continuum_mqtt.samples import SERIES_TOO_SHORT

from ._cluster import REPO

# Every protocol code and its class name (the `type` on the wire): docs/protocol.md §8.
PROTOCOL = {
    "bad_request": "BadRequest",
    "payload_too_large": "PayloadTooLarge",
    "unknown_object": "UnknownObject",
    "object_not_here": "ObjectNotHere",
    "unknown_class": "UnknownClass",
    "unknown_method": "UnknownMethod",
    "method_not_active": "MethodNotActive",
    "bad_arguments": "BadArguments",
    "unencodable_result": "UnencodableResult",
    "deadline_expired": "DeadlineExpired",
    "cancelled": "Cancelled",
    "busy": "Busy",
    "unavailable": "Unavailable",
    "storage": "StorageError",
    "no_node": "NoNodeAvailable",
    "alias_taken": "AliasTaken",
    "not_connected": "NotConnected",
    "forbidden": "Forbidden",
    "quota_exceeded": "QuotaExceeded",
}


@pytest.fixture
def registry() -> Iterator[None]:
    """Classes defined by a test leave the registry as they found it."""
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_protocol_codes_are_registered_by_their_classes() -> None:
    protocol = {code: cls.__name__ for code, cls in _REGISTRY.items() if "." not in code}
    assert protocol == PROTOCOL
    for code, name in PROTOCOL.items():
        cls = error_class(code)
        assert cls is getattr(continuum_mqtt, name) and cls.code == code
        env = cls("m", node="n1").to_envelope()
        assert env == {"code": code, "type": name, "message": "m", "node": "n1"}
        again = error_from_envelope(env)
        assert type(again) is cls and again.data == {"node": "n1"}
    assert error_class("method_error") is None and error_class("internal") is None


def test_application_error_registers_and_round_trips(registry: None) -> None:
    class TooHot(ApplicationError):
        """Too hot."""

        code = "oven.too_hot"

    assert error_class("oven.too_hot") is TooHot
    err = TooHot("240 > 230", temp=240, limits=[0, 230], where={"zone": "a"})
    assert err.temp == 240 and err.data["where"] == {"zone": "a"}
    assert err.code == "oven.too_hot" and isinstance(err, continuum_mqtt.ContinuumError)
    env = err.to_envelope()
    assert env == {
        "code": "oven.too_hot",
        "type": "TooHot",
        "message": "240 > 230",
        "temp": 240,
        "limits": [0, 230],
        "where": {"zone": "a"},
    }
    back = error_from_envelope(env)
    assert type(back) is TooHot and back.message == "240 > 230" and back.temp == 240
    assert back.to_envelope() == env
    with pytest.raises(AttributeError):
        back.nothing  # noqa: B018


def test_rebuild_does_not_call_init_and_keeps_the_subclass_name(registry: None) -> None:
    class Refused(ApplicationError):
        code = "shop.refused"

        def __init__(self, item: str) -> None:  # an application's own signature
            super().__init__(f"no {item}", item=item)

    class RefusedToday(Refused):  # no code of its own: sent with its parent's
        pass

    env = RefusedToday("milk").to_envelope()
    assert env == {
        "code": "shop.refused",
        "type": "RefusedToday",
        "message": "no milk",
        "item": "milk",
    }
    back = error_from_envelope(env)
    assert type(back) is Refused and back.item == "milk" and back.to_envelope() == env


def test_unregistered_code_gives_remote_error_with_the_code() -> None:
    env = {"code": "nobody.here", "type": "Gone", "message": "m", "n": 1}
    err = error_from_envelope(env)
    assert type(err) is RemoteError
    assert err.code == err.remote_code == "nobody.here" and err.remote_type == "Gone"
    assert err.data == {"n": 1} and str(err) == "Gone: m"
    plain = error_from_envelope({"code": "method_error", "type": "ValueError", "message": "x"})
    assert type(plain) is RemoteError and plain.code == "method_error"


@pytest.mark.parametrize(
    "code",
    ["toohot", "Oven.too_hot", "oven.", ".too_hot", "oven..hot", "oven.too-hot", "oven.2hot", 5],
)
def test_application_codes_must_be_namespaced_lowercase(registry: None, code: Any) -> None:
    with pytest.raises(TypeError):
        type("Bad", (ApplicationError,), {"code": code})
    assert all(cls.__name__ != "Bad" for cls in _REGISTRY.values())


def test_protocol_codes_have_no_namespace(registry: None) -> None:
    with pytest.raises(TypeError, match="ApplicationError"):
        type("Bad", (ContinuumError,), {"code": "oven.too_hot"})


def test_a_code_taken_twice_is_refused(registry: None) -> None:
    type("First", (ApplicationError,), {"code": "dup.code"})
    with pytest.raises(TypeError, match="already taken"):
        type("Second", (ApplicationError,), {"code": "dup.code"})
    with pytest.raises(TypeError, match="already taken"):
        type("Again", (ContinuumError,), {"code": "busy"})
    assert error_class("busy") is continuum_mqtt.Busy


def test_the_same_class_defined_again_replaces_itself(registry: None) -> None:
    """A reloaded module defines its classes again: not a duplicate."""
    first = type("Reloaded", (ApplicationError,), {"code": "mod.reloaded", "__module__": "m"})
    second = type("Reloaded", (ApplicationError,), {"code": "mod.reloaded", "__module__": "m"})
    assert first is not second and error_class("mod.reloaded") is second


def test_extra_fields_are_plain_data_with_free_names() -> None:
    with pytest.raises(TypeError, match="plain data"):
        ApplicationError("x", when=object())
    with pytest.raises(TypeError, match="plain data"):
        ApplicationError("x", raw=b"bytes")
    with pytest.raises(TypeError, match="map keys"):
        ApplicationError("x", m={1: 2})
    for reserved in ("code", "type", "traceback"):
        with pytest.raises(TypeError, match="extra field"):
            ApplicationError("x", **{reserved: "y"})


def test_remote_error_keeps_codes_and_wraps_the_rest(registry: None) -> None:
    class Coded(ApplicationError):
        code = "app.coded"

    coded = Coded("m", n=1)
    assert remote_error(coded) is coded
    busy = continuum_mqtt.Busy("later")
    assert remote_error(busy) is busy
    nested = RemoteError("deep", remote_type="KeyError", traceback="tb")
    assert remote_error(nested) is nested  # a remote call's failure passes through
    for exc in (ApplicationError("uncoded"), ValueError("plain")):
        wrapped = remote_error(exc)
        assert type(wrapped) is RemoteError and wrapped.code == "method_error"
        env = wrapped.to_envelope()
        assert env["code"] == "method_error" and env["type"] == type(exc).__name__
        assert env["message"] == str(exc) and "traceback" in env


def test_series_too_short_is_registered_by_the_forecaster() -> None:
    pytest.importorskip("torch")
    from continuum_node.forecast import SeriesTooShort

    assert error_class(SERIES_TOO_SHORT) is SeriesTooShort
    assert issubclass(SeriesTooShort, ValueError)  # in-process callers catch ValueError


# -- the board-side jobs retry training on the code -----------------------------------------


def _failed(exc: BaseException) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_exception(exc)
    return f


class _Train:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def future(self, **kwargs: Any) -> Future[Any]:
        return _failed(self.exc)

    def options(self, **kwargs: Any) -> _Train:
        return self


class _Proxy:
    _id = "obj-1"

    def __init__(self, exc: BaseException) -> None:
        self.train = _Train(exc)


SHORT_BY_CODE = RemoteError("need more rows", remote_type="X", remote_code=SERIES_TOO_SHORT)
SHORT_BY_TEXT_ONLY = RemoteError("series too short", remote_type="ValueError")


def test_edge_agent_retries_training_on_the_code_not_the_text() -> None:
    from continuum_edgeagent._config import parse
    from continuum_edgeagent._jobs import Jobs

    cfg = parse({"device": "d1", "state_dir": "/nonexistent", "jobs": {"train_after": 8}})
    jobs = Jobs(cfg, lambda *a: None)
    jobs._n = 8
    jobs._train(_Proxy(SHORT_BY_CODE))
    assert jobs.counts["errors"] == 0 and jobs._next_train == 8 + 4
    jobs._train(_Proxy(SHORT_BY_TEXT_ONLY))
    assert jobs.counts["errors"] == 1 and jobs._next_train == 8 + 8


def test_firmware_sim_retries_training_on_the_code_not_the_text() -> None:
    if str(REPO / "firmware-sim") not in sys.path:
        sys.path.insert(0, str(REPO / "firmware-sim"))
    from continuum_sim._jobs import JobConfig, Jobs, _Dev

    jobs = Jobs.__new__(Jobs)  # no client: only the training decision is under test
    jobs.cfg = JobConfig()
    jobs._lock = threading.Lock()
    jobs.inflight = jobs.skipped = jobs.train_retries = jobs.trains_ok = jobs.trains_err = 0
    jobs.train_s, jobs.errors = [], []
    dev = _Dev("fc-1", 48)
    dev.n = 48
    dev.proxy = _Proxy(SHORT_BY_CODE)
    jobs._train(dev)
    assert (jobs.train_retries, jobs.trains_err, dev.next_train) == (1, 0, 52)
    dev.proxy = _Proxy(SHORT_BY_TEXT_ONLY)
    jobs._train(dev)
    assert (jobs.train_retries, jobs.trains_err) == (1, 1)


def test_trimmed_keeps_class_code_and_type_and_drops_the_fields(registry: None) -> None:
    class Custom(ApplicationError):
        code = "app.custom"

        def __init__(self, n: int) -> None:
            super().__init__("x" * 5000, n=n)

    t = Custom(3).trimmed()
    assert type(t) is Custom and t.data == {} and len(t.message) == 1000
    assert t.to_envelope() == {"code": "app.custom", "type": "Custom", "message": "x" * 1000}
    remote = RemoteError(
        "m" * 3000, remote_type="Big", traceback="t" * 9000, remote_code="a.b", k=1
    )
    env = remote.trimmed().to_envelope()
    assert (env["code"], env["type"], len(env["message"]), len(env["traceback"])) == (
        "a.b",
        "Big",
        1000,
        1000,
    )
    assert "k" not in env
    busy = continuum_mqtt.Busy("later", node="n1").trimmed()
    assert type(busy) is continuum_mqtt.Busy and busy.to_envelope() == {
        "code": "busy",
        "type": "Busy",
        "message": "later",
    }
