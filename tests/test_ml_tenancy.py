"""Issue 16's tenancy hole: a ``continuum_node.ml.Driver`` fans out to blocks
with its node's client (the node's broker account, which may call every
block), so it must check that its own caller may call each block first
(``continuum_mqtt.current_call``), or a tenant could compute over another's
data through it. And the node's client is configured explicitly
(``continuum_node.peer``), so drivers work in ``--long-calls process``
workers too.

A secured broker: password accounts and the ACL of docs/protocol.md §21
(devices may publish only as themselves), services run ``--no-anonymous``;
tenant dev-a's dataset, tenant dev-b attacking it, an admin ``ops``; node n1
runs calls on threads, node n2 runs the drivers' long methods in a worker
process."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from continuum_dev.testing import Deployment, LocalBroker
from continuum_node import peer
from continuum_node.ml import NotOnANode, support_of

import continuum_mqtt
from continuum_mqtt import ActiveObject, CallContext, Forbidden, active, current_call
from continuum_mqtt.service import Rights, class_path, encode

from . import _nodekit as nodekit

BLOCK = "continuum_node.ml.Block"
DRIVER = "continuum_node.ml.Driver"
PASSWORDS = {"svc": "svc-pw-1", "ops": "ops-pw-1", "dev-a": "a-pw-1", "dev-b": "b-pw-1"}
ADMINS = ("--admin", "ops", "--admin", "svc", "--no-anonymous")
PROCESS = ("--long-calls", "process", "--long-workers", "1", "--intra-op-threads", "1")

ACL = """\
pattern read {root}/reply/%u/#
pattern write {root}/client/%c/status
pattern readwrite {root}/dev/%u/#
pattern write {root}/node/+/call/%u
pattern write {root}/pool/+/call/%u
pattern write {root}/gateway/call/%u
pattern read {root}/node/+/status
pattern read {root}/gateway/status

user svc
topic readwrite {root}/#

user ops
topic readwrite {root}/#
"""


# -- no processes --------------------------------------------------------------------------
class WhoAmI(ActiveObject):
    @active(readonly=True)
    def me(self) -> Any:
        call = current_call()
        return None if call is None else [call.caller, call.admin, call.obj]


def test_current_call_in_local_mode_and_outside_calls() -> None:
    assert current_call() is None
    assert WhoAmI().me() is None  # a plain method call
    with continuum_mqtt.connect("local:") as c:
        obj = c.stub(f"{__name__}.WhoAmI").create()
        assert obj.me() == ["anonymous", True, obj._id]  # no accounts: the admin caller
    ctx = CallContext("dev-a", False, "o1")
    with ctx.scope():
        assert current_call() == ctx and WhoAmI().me() == ["dev-a", False, "o1"]
    assert current_call() is None
    with pytest.raises(AttributeError):
        ctx.caller = "dev-b"  # type: ignore[misc]  # read-only


class PoolWho(ActiveObject, stateless=True):
    @active
    def me(self) -> Any:
        call = current_call()
        return None if call is None else [call.caller, call.admin, call.obj]


def test_a_node_tells_every_call_its_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    who, pool = class_path(WhoAmI), class_path(PoolWho)
    monkeypatch.setitem(nodekit.CLASSES, who, WhoAmI)
    monkeypatch.setitem(nodekit.CLASSES, pool, PoolWho)
    n = nodekit.NodeUnderTest(rights=Rights(["ops"]))
    try:
        n.create("w", who, owner="dev-a", grants=["dev-b"])
        for user, admin in (("dev-a", False), ("dev-b", False), ("ops", True)):
            assert n.reply_as(user, n.call_as(user, "w", "me"))["value"] == [user, admin, "w"]
        rid = "pooled"
        n.transport.inject(
            n.topics.pool_call(pool, "dev-b"),
            encode({"method": "me", "id": rid}),
            qos=1,
            response_topic=f"{nodekit.ROOT}/reply/dev-b/tester",
            correlation=rid.encode(),
        )
        assert n.reply_as("dev-b", rid)["value"] == ["dev-b", False, None]
    finally:
        n.close()
    assert current_call() is None  # nothing leaks into the caller's thread


def test_peer_settings_are_explicit_and_travel_as_a_map(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peer.settings() is None
    with pytest.raises(NotOnANode):  # not configured: no guessing from sys.argv
        peer.peer()
    monkeypatch.setenv("CONTINUUM_PASSWORD", "from-env")
    s = peer.configure("mqtt://svc-n1@broker.example:1884", "site/continuum/v1")
    try:
        assert s.broker.password == "from-env"  # read at start, not in the worker
        again = peer.PeerSettings.from_wire(s.wire())
        assert again == s and peer.settings() == s
    finally:
        peer.use(None)
    assert peer.settings() is None


# -- a secured deployment ------------------------------------------------------------------
def _accounts(tmp: Path, root: str) -> str:
    pw = tmp / "passwd"
    pw.write_text("")
    pw.chmod(0o600)
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
    acl = tmp / "acl"
    acl.write_text(ACL.format(root=root))
    return f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("ml-tenancy")
    root = f"ml-{uuid.uuid4().hex[:8]}/continuum/v1"
    broker = LocalBroker(extra_config=_accounts(tmp, root), log_path=str(tmp / "mosquitto.log"))
    broker.start()
    url = f"mqtt://svc:{PASSWORDS['svc']}@127.0.0.1:{broker.port}"  # the services' account
    d = Deployment(url, tmp / "run", root=root, cwd=request.config.rootpath)
    try:
        d.start_gateway(*ADMINS)
        d.start_node("n1", *ADMINS, modules=("continuum_node.ml",), wait=False)
        d.start_node("n2", *ADMINS, *PROCESS, modules=("continuum_node.ml",), wait=False)
        d.wait_nodes(["n1", "n2"], 90)
        with as_user(d, "dev-a") as a:
            ds = a.create_dataset("dev-a/points", BLOCK, 4, kwargs={"cols": 2})
            assert ds.nodes() == {"n1": 2, "n2": 2}
            gen = ds.fan_out("generate", rows=60, cols=2, per_block=[{"seed": i} for i in range(4)])
            assert gen.ok
        yield d
    finally:
        d.close()
        broker.stop()


def as_user(d: Deployment, user: str, **kw: Any) -> continuum_mqtt.Client:
    host = d.url.rsplit("@", 1)[1]
    kw.setdefault("timeout", 60.0)
    return continuum_mqtt.Client(f"mqtt://{user}:{PASSWORDS[user]}@{host}", root=d.root, **kw)


REFS = [f"dev-a/points#{i}" for i in range(4)]


def test_another_tenant_cannot_compute_over_the_blocks(secured: Deployment) -> None:
    with as_user(secured, "dev-b") as b, as_user(secured, "dev-a") as a:
        ids = a.dataset("dev-a/points").refs
        mine = b.create_dataset("dev-b/mine", BLOCK, 2, kwargs={"cols": 2})
        assert mine.fan_out("generate", rows=30, cols=2, per_block=[{"seed": 7}, {"seed": 8}]).ok
        for node in ("n1", "n2"):  # a thread, a worker process
            driver = b.stub(DRIVER).create(node=node)
            for refs in (REFS, ids):  # by name, or by ids it learnt
                with pytest.raises(Forbidden) as err:
                    driver.cascade_svm(refs)
                assert err.value.data["blocks"] == refs and err.value.data["caller"] == "dev-b"
            with pytest.raises(Forbidden) as err:  # shipping the points: the same
                driver.kmeans(REFS, k=2, ship=True)
            assert err.value.data["blocks"] == REFS
            # its own blocks with one of dev-a's: refused, naming that one only
            with pytest.raises(Forbidden) as err:
                driver.kmeans([*mine.refs, REFS[2]], k=2)
            assert err.value.data["blocks"] == [REFS[2]]
            # a name of no object is refused alike: no telling whether dev-a's exist
            with pytest.raises(Forbidden) as err:
                driver.cascade_svm(["dev-a/nothing#0", *mine.refs])
            assert err.value.data["blocks"] == ["dev-a/nothing#0"]
            # over its own blocks it computes
            assert mine.reduce(driver, "cascade_svm")["blocks"] == 2


def test_the_owner_and_an_admin_compute_in_a_thread_and_in_a_worker(secured: Deployment) -> None:
    with as_user(secured, "dev-a") as a, as_user(secured, "ops") as ops:
        ds = a.dataset("dev-a/points")
        in_worker = a.stub(DRIVER).create(node="n2")  # --long-calls process
        assert psutil.Process(secured.pid("n2")).children()  # its worker process
        updates: list[Any] = []
        mine = ds.reduce(in_worker, "cascade_svm", on_progress=updates.append)
        assert mine["blocks"] == 4 and {"step": "svm_fit", "done": 4, "total": 4} in updates
        shipped = ds.reduce(in_worker, "cascade_svm", ship=True)
        centres = ds.reduce(in_worker, "kmeans", k=2)
        assert centres["blocks"] == 4
        admins = ops.stub(DRIVER).create(node="n1")  # by ids: an admin sees them all
        theirs = admins.cascade_svm(ds.refs)
        for other in (shipped, theirs):  # the same model, bit for bit
            for got, want in zip(support_of(other), support_of(mine), strict=True):
                assert np.array_equal(got, want)


def test_grants_open_the_blocks_to_another_tenant(secured: Deployment) -> None:
    with as_user(secured, "dev-a") as a, as_user(secured, "dev-b") as b:
        ds = a.create_dataset("dev-a/shared", BLOCK, 3, kwargs={"cols": 2})
        assert ds.fan_out("generate", rows=40, cols=2, per_block=[{"seed": i} for i in range(3)]).ok
        refs = [f"dev-a/shared#{i}" for i in range(3)]
        a.grant(ds.blocks[0], "dev-b")
        a.grant(ds.blocks[1], "*")
        driver = b.stub(DRIVER).create(node="n2")
        with pytest.raises(Forbidden) as err:
            driver.cascade_svm(refs)
        assert err.value.data["blocks"] == [refs[2]]
        a.grant(ds.blocks[2], "dev-b")
        assert driver.cascade_svm(refs)["blocks"] == 3
        a.revoke(ds.blocks[0], "dev-b")
        with pytest.raises(Forbidden):
            driver.kmeans(refs, k=2)
