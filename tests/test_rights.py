"""Issue 13: the rights checks, fuzzed. The toolkit's rules (Rights, scoped
request ids, caller levels) as properties, and the gateway's directory
methods driven in-process by random callers against a model of who owns
and may see what: every outcome must be the model's (allowed, or refused with
``forbidden`` / ``unknown_object``), and no listing shows more than the model."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from continuum_gateway._api import DirectoryApi
from continuum_gateway._directory import Directory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuum_mqtt import AliasTaken, BadRequest, ContinuumError, Forbidden, UnknownObject
from continuum_mqtt.service import (
    ANONYMOUS,
    EVERYONE,
    Access,
    Dispatcher,
    Request,
    Rights,
    Topics,
    as_caller,
    scoped_id,
    split_call,
)

from ._gatewaykit import directory_api

users = st.sampled_from(["dev-a", "dev-b", "dev-c", "ops", ANONYMOUS])
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)


@given(owner=users, grants=st.lists(st.sampled_from(["dev-a", "dev-b", EVERYONE]), max_size=3),
       caller=users, admins=st.lists(users, max_size=2), is_open=st.booleans())  # fmt: skip
def test_who_may_call_and_manage(
    owner: str, grants: list[str], caller: str, admins: list[str], is_open: bool
) -> None:
    r, a = Rights(admins), Access(owner, tuple(grants))
    admin = caller in admins or caller == ANONYMOUS  # anonymous: a development broker's admin
    assert r.may_call(a, caller, is_open) == (
        is_open or caller == owner or caller in grants or EVERYONE in grants or admin
    )
    assert r.may_manage(a, caller) == (caller == owner or admin)


@given(caller=st.sampled_from(["dev-a", "dev-b", "a", "dev"]), name=names)
def test_a_device_takes_only_names_in_its_namespace(caller: str, name: str) -> None:
    r = Rights(["ops"])
    try:
        taken = r.check_alias(name, caller)
    except (Forbidden, BadRequest):
        return
    assert taken.startswith(caller + "/") and len(taken) > len(caller) + 1
    assert r.check_alias(name, "ops") == name  # an admin names anything


@given(a=users, b=users, x=names, y=names)
def test_request_ids_of_two_callers_never_meet(a: str, b: str, x: str, y: str) -> None:
    if a != b:
        assert scoped_id(a, x) != scoped_id(b, y)


@given(user=st.sampled_from(["dev-a", "call", "anonymous-not", "x.y"]), extra=names)
def test_the_caller_level(user: str, extra: str) -> None:
    base = Topics("r").node_call("n1")
    assert split_call(base, base) == ANONYMOUS
    assert split_call(as_caller(base, user), base) == user
    assert split_call(f"{base}/{user}/{extra}", base) is None
    assert split_call(base + "x", base) is None


# -- the gateway's methods against a model ---------------------------------------------
COUNTER = "examples.counter.Counter"
ADMIN = "ops"


class Model:
    def __init__(self) -> None:
        self.owner: dict[str, str] = {}  # object id -> owner
        self.grants: dict[str, set[str]] = {}
        self.aliases: dict[str, str] = {}  # alias -> object id

    def sees(self, caller: str, oid: str) -> bool:
        g = self.grants[oid]
        return caller in (self.owner[oid], ADMIN) or caller in g or EVERYONE in g

    def manages(self, caller: str, oid: str) -> bool:
        return caller in (self.owner[oid], ADMIN)


def _api(tmp: Path) -> tuple[DirectoryApi, Dispatcher]:
    return directory_api(tmp / f"dir-{next(_seq)}.db", [COUNTER], [ADMIN])


_seq = itertools.count()

ops = st.lists(
    st.tuples(
        st.sampled_from(["create", "resolve", "delete", "alias", "grant", "revoke", "objects"]),
        st.sampled_from(["dev-a", "dev-b", ADMIN]),
        st.integers(0, 3),  # which object (by creation order)
        st.sampled_from(["dev-a", "dev-b", EVERYONE]),  # a grantee, or an alias's namespace
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
def test_the_gateway_enforces_the_model(
    tmp_path: Path, steps: list[tuple[str, str, int, str]]
) -> None:
    _, d = _api(tmp_path)
    model, created = Model(), []

    def run(caller: str, method: str, **kw: Any) -> tuple[bool, Any]:
        try:
            return True, d.dispatch(Request(method, [], kw), caller=caller, rid=None)
        except ContinuumError as exc:
            return False, exc

    for op, caller, index, other in steps:
        if op == "create":
            alias = f"{other}/c{len(created)}" if other != EVERYONE else None
            ok, value = run(caller, "create", cls=COUNTER, alias=alias)
            allowed = alias is None or other == caller or caller == ADMIN
            assert ok == allowed, (op, caller, alias, value)
            if ok:
                created.append(value["id"])
                model.owner[value["id"]], model.grants[value["id"]] = caller, set()
                if alias:
                    model.aliases[alias] = value["id"]
            else:
                assert isinstance(value, Forbidden)
            continue
        if op == "objects":
            ok, value = run(caller, "objects")
            assert ok
            assert {o["id"] for o in value} == {o for o in model.owner if model.sees(caller, o)}
            continue
        if not created:
            continue
        oid = created[index % len(created)]
        exists = oid in model.owner
        kw: dict[str, Any] = {"ref": oid}
        if op in ("grant", "revoke"):
            kw["user"] = other
        if op == "alias":
            kw["name"] = f"{other}/a{index}"
        ok, value = run(caller, op, **kw)
        if not exists or not model.sees(caller, oid):
            assert not ok and isinstance(value, UnknownObject), (op, caller, value)
            continue
        if op == "resolve":
            assert ok and value["owner"] == model.owner[oid]
            continue
        if not model.manages(caller, oid):
            assert not ok and isinstance(value, Forbidden), (op, caller, value)
            continue
        if op == "alias" and other != caller and caller != ADMIN:
            assert not ok and isinstance(value, Forbidden), (op, caller, value)
            continue
        if op == "alias" and not ok:
            assert isinstance(value, AliasTaken | BadRequest), value
            continue
        assert ok, (op, caller, value)
        if op == "delete":
            del model.owner[oid]
        elif op == "grant":
            model.grants[oid].add(other)
        elif op == "revoke":
            model.grants[oid].discard(other)


@pytest.mark.parametrize("caller", ["dev-b", ANONYMOUS])
def test_the_gateway_refuses_anonymous_only_when_told(tmp_path: Path, caller: str) -> None:
    directory = Directory(str(tmp_path / "d.db"))
    directory.node_status("n1", {"state": "online", "classes": {COUNTER: {"methods": {}}}})
    pool = ThreadPoolExecutor(1)
    api = DirectoryApi(
        directory,
        Topics("t"),
        lambda *a: {},
        pool=pool,
        alias_pool=pool,
        rights=Rights(allow_anonymous=False),
    )
    d = Dispatcher("gateway").register(api)
    req = Request("create", [], {"cls": COUNTER})
    if caller == ANONYMOUS:
        with pytest.raises(Forbidden):
            d.dispatch(req, caller=caller)
    else:
        assert d.dispatch(req, caller=caller)["owner"] == "dev-b"


def test_outcomes_are_bounded_per_caller() -> None:
    from continuum_mqtt.service import MemoryOutcomes

    kept = MemoryOutcomes(max_entries=3, max_bytes=1000)
    kept.put("dev-a/r1", "add", (True, 1))
    for i in range(10):
        kept.put(f"dev-b/r{i}", "add", (True, i))
    assert kept.get("dev-a/r1") == (True, 1)  # dev-b's traffic did not push it out
    assert [r for r in kept if r.startswith("dev-b/")] == ["dev-b/r7", "dev-b/r8", "dev-b/r9"]
    kept.put("dev-c/big", "x", (True, "y" * 5000))  # over the bytes: kept, being the newest
    kept.put("dev-c/next", "x", (True, 1))
    assert "dev-c/big" not in kept and "dev-c/next" in kept
    assert kept.get("dev-a/r1") == (True, 1)


def test_an_account_owns_at_most_max_objects(tmp_path: Path) -> None:
    from continuum_mqtt import QuotaExceeded

    api, d = _api(tmp_path)
    api.max_objects = 2
    create = Request("create", [], {"cls": COUNTER})
    for _ in range(2):
        d.dispatch(create, caller="dev-b")
    with pytest.raises(QuotaExceeded) as err:
        d.dispatch(create, caller="dev-b")
    assert err.value.data["limit"] == 2
    d.dispatch(create, caller="dev-a")  # another account is not affected
    d.dispatch(create, caller=ADMIN)
    d.dispatch(
        Request(
            "delete", [], {"ref": d.dispatch(Request("objects", [], {}), caller="dev-b")[0]["id"]}
        ),
        caller="dev-b",
    )
    d.dispatch(create, caller="dev-b")  # room again
