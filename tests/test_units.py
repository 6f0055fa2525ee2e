"""Unit tests of the pieces that need no broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest

import continuum_mqtt
from continuum_mqtt._codec import decode, encode, is_json
from continuum_mqtt._model import active_methods
from continuum_mqtt._mqtt import BrokerURL, publish_properties
from continuum_mqtt._protocol import Request, Topics


def test_active_bare_and_with_arguments() -> None:
    class A(continuum_mqtt.ActiveObject):
        @continuum_mqtt.active
        def a(self) -> int:
            return 1

        @continuum_mqtt.active(readonly=True)
        def b(self) -> int:
            return 2

        def c(self) -> int:
            return 3

    assert set(A.__active_methods__) == {"a", "b"}
    assert A.__active_methods__["b"] == continuum_mqtt.ActiveSpec(readonly=True)
    assert A().a() == 1 and A().b() == 2  # plain methods locally

    class B(A):
        @continuum_mqtt.active
        def d(self) -> None: ...

    assert set(active_methods(B)) == {"a", "b", "d"}


def test_active_refuses_private_names() -> None:
    with pytest.raises(TypeError):

        class Bad(continuum_mqtt.ActiveObject):
            @continuum_mqtt.active
            def _hidden(self) -> None: ...


def test_progress_is_a_noop_outside_a_call() -> None:
    continuum_mqtt.progress({"step": 1})


def test_codec_rejects_and_never_compiles_regex() -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(35, "(a+)+$"))
    assert decode(tagged) == cbor2.CBORTag(35, "(a+)+$")
    with pytest.raises(continuum_mqtt.BadRequest):
        decode(b"\x81" * 1000 + b"\x00")
    with pytest.raises(continuum_mqtt.BadRequest):
        decode(b"\xff")
    with pytest.raises(continuum_mqtt.UnencodableResult):
        encode(object())
    with pytest.raises(continuum_mqtt.UnencodableResult):
        encode(b"bytes", json_payload=True)


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -float("inf")}])
def test_json_never_writes_nan_or_infinity(value: Any) -> None:
    """Strict JSON (docs/protocol.md §10): a non-finite float is unencodable in
    JSON, like bytes; CBOR carries it."""
    with pytest.raises(continuum_mqtt.UnencodableResult, match="as JSON"):
        encode(value, json_payload=True)
    assert repr(decode(encode(value))) == repr(value)
    assert encode({"x": 1.5}, json_payload=True) == b'{"x":1.5}'


def test_manifest_says_how_to_construct_and_call() -> None:
    """describe_class (docs/protocol.md §15): constructor parameters, required
    names, plain defaults only, and whole first paragraphs of docstrings."""
    from continuum_mqtt._invoke import describe_class

    marker = object()

    class Thing(continuum_mqtt.ActiveObject):
        """First line of the class doc,
        still the first paragraph.

        Second paragraph, left out."""

        def __init__(self, size: int, *rest: int, name: str = "x", opt: object = marker) -> None:
            """Make a thing of ``size``
            (and a name)."""

        @continuum_mqtt.active
        def go(
            self, a: int, b: tuple[int, int] = (1, 2), c: float = float("nan"), **kw: int
        ) -> None:
            """Go."""

    d = describe_class(Thing)
    assert d["doc"] == "First line of the class doc, still the first paragraph."
    assert d["init"] == {
        "params": ["size", "rest", "name", "opt"],
        "required": ["size"],
        "defaults": {"name": "x"},
        "doc": "Make a thing of ``size`` (and a name).",
    }
    go = d["methods"]["go"]
    assert (go["params"], go["required"]) == (["a", "b", "c", "kw"], ["a"])
    assert go["defaults"] == {"b": [1, 2]} and go["doc"] == "Go."
    assert encode(d, json_payload=True)  # a JSON client can read every manifest
    plain = describe_class(type("Plain", (continuum_mqtt.ActiveObject,), {}))
    assert plain["init"] == {"params": [], "required": [], "defaults": {}, "doc": ""}


def test_json_detection() -> None:
    assert is_json(b"{}", None)
    assert is_json(b"[]", "application/json; charset=utf-8")
    assert not is_json(cbor2.dumps({"a": 1}), None)
    assert not is_json(b"{", "application/cbor")


def test_broker_url() -> None:
    u = BrokerURL.parse("mqtts://dev%40a:s3cret@broker.example:8884")
    assert (u.host, u.port, u.tls, u.username, u.password) == (
        "broker.example",
        8884,
        True,
        "dev@a",
        "s3cret",
    )
    assert BrokerURL.parse("localhost").port == 1883
    assert "s3cret" not in str(u)
    with pytest.raises(ValueError):
        BrokerURL.parse("http://x")


def test_prepacked_properties_match_paho() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    ref = Properties(PacketTypes.PUBLISH)
    ref.MessageExpiryInterval = 3
    ref.ContentType = "application/json"
    ref.ResponseTopic = "r/é"
    ref.CorrelationData = b"\x00\x01" * 100
    ours = publish_properties(
        response_topic="r/é",
        correlation=b"\x00\x01" * 100,
        content_type="application/json",
        expiry=2.5,
    )
    assert ours is not None and ours.pack() == ref.pack()
    assert ours.ResponseTopic == "r/é"


def test_topics_refuse_wildcards() -> None:
    t = Topics("continuum/v1")
    assert t.node_call("n1") == "continuum/v1/node/n1/call"
    assert t.node_of_status("continuum/v1/node/n7/status") == "n7"
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError):
            t.node_call(bad)


def test_request_roundtrip() -> None:
    req = Request("add", [1], {"x": 2}, id="7", obj="o", timeout_ms=100)
    assert Request.from_wire(decode(encode(req.to_wire()))) == req


def test_local_mode_validates_like_a_node() -> None:
    with continuum_mqtt.connect("local:") as c:
        obj = c.stub("examples.counter.Counter").create(start=1, alias="l")
        assert c.get("l").add(1) == 2
        with pytest.raises(continuum_mqtt.MethodNotActive):
            obj.reset()
        with pytest.raises(continuum_mqtt.BadArguments):
            obj.add(1, 2)
        with pytest.raises(continuum_mqtt.RemoteError):
            obj.fail()
        with pytest.raises(continuum_mqtt.UnencodableResult):
            obj.unencodable()
        with pytest.raises(continuum_mqtt.UnknownClass):
            c.stub("os.system").create()
        assert obj.echo(b"\x00") == b"\x00"


def test_shipped_broker_configs_carry_the_settings_we_depend_on() -> None:
    from pathlib import Path

    from continuum_dev.testing import BROKER_SETTINGS

    conf = (Path(__file__).parent.parent / "deploy" / "mosquitto-dev.conf").read_text()
    for line in BROKER_SETTINGS.splitlines():
        if line and not line.startswith("#"):
            assert line in conf.splitlines(), line


def test_cli_help_texts() -> None:
    import subprocess
    import sys

    for mod in (
        "continuum_dev",
        "continuum_gateway",
        "continuum_node",
        "continuum_edgeagent",
        "continuum_sim",
    ):
        out = subprocess.run(
            [sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "usage:" in out.stdout, (mod, out.stderr)


def test_reply_topics_are_confined_to_the_caller() -> None:
    t = Topics("continuum/v1")
    assert t.reply("client-1") == "continuum/v1/reply/client-1"
    # an authenticated client's replies live under its username (ACL %u)
    assert t.reply("client-1", "dev-a") == "continuum/v1/reply/dev-a/client-1"
    c = continuum_mqtt.Client("mqtt://dev-a:pw@127.0.0.1:1", client_id="c9")
    assert c._requester.reply_topic == "continuum/v1/reply/dev-a/c9"


def test_feed_order_puts_samples_back_in_sequence() -> None:
    import time as _time

    from continuum_node._feeds import FeedOrder

    order = FeedOrder()
    assert order.offer(5, "s5") == ["s5"]
    assert order.offer(7, "s7") == []  # 6 is missing: hold 7
    assert order.offer(6, "s6") == ["s6", "s7"]  # the gap filled: both, in order
    assert order.offer(6, "dup") == ["dup"]  # late or duplicate: passed on (consumers dedupe)
    assert order.offer(10, "s10") == []
    assert order.expire(60) == []
    order.since = _time.monotonic() - 61
    assert order.expire(60) == ["s10"]  # gave up on 8 and 9
    assert order.offer(11, "s11") == ["s11"]


def test_feed_order_never_drops_a_held_duplicate() -> None:
    from continuum_node._feeds import FeedOrder

    order = FeedOrder()
    assert order.offer(1, "a") == ["a"]
    assert order.offer(3, "b") == []
    assert order.offer(3, "b-again") == ["b-again"]  # passed on, not overwriting "b"
    assert order.offer(2, "c") == ["c", "b"]


def test_codec_leaves_amplifying_tags_raw() -> None:
    shared = cbor2.dumps([cbor2.CBORTag(28, [0]), cbor2.CBORTag(29, 0)])
    assert decode(shared) == [cbor2.CBORTag(28, [0]), cbor2.CBORTag(29, 0)]
    bomb = cbor2.dumps(cbor2.CBORTag(4, [10_000_000, 1]))
    assert decode(bomb) == cbor2.CBORTag(4, [10_000_000, 1])


def test_json_nesting_is_bounded_like_cbor() -> None:
    deep = b"[" * 100 + b"]" * 100
    with pytest.raises(continuum_mqtt.BadRequest):
        decode(b'{"method": "echo", "args": ' + deep + b"}", json_payload=True)
    assert decode(b'{"a": [[1]]}', json_payload=True) == {"a": [[1]]}


def test_service_config_keys_are_the_long_option_names(tmp_path: Path) -> None:
    from continuum_node.__main__ import build_parser

    from continuum_mqtt._service import parse_args

    cfg = tmp_path / "node.toml"
    cfg.write_text(
        'id = "n7"\nmodule = ["examples.counter", "continuum_node.forecast"]\n'
        'state-dir = "/var/lib/n7"\nmax_queue = 5\n'
    )
    args = parse_args(build_parser(), ["--config", str(cfg), "--max-queue", "9"])
    assert args.node_id == "n7" and args.modules == ["examples.counter", "continuum_node.forecast"]
    assert args.state_dir == "/var/lib/n7" and args.max_queue == 9  # the command line wins
    cfg.write_text("node_id = 'n8'\n")  # the dest works too
    assert parse_args(build_parser(), ["--config", str(cfg)]).node_id == "n8"
    cfg.write_text("nodeid = 'n8'\n")
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["--config", str(cfg)])


def test_an_out_of_range_number_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from continuum_node.__main__ import build_parser

    from continuum_mqtt._service import parse_args

    cfg = tmp_path / "node.toml"
    for key in ("workers", "long_workers", "max_payload", "checkpoint_every"):
        cfg.write_text(f"{key} = 0\n")  # from the file: no traceback, the key named
        with pytest.raises(SystemExit) as exc:
            parse_args(build_parser(), ["--config", str(cfg)])
        assert exc.value.code == 2 and f"bad value for {key!r}" in capsys.readouterr().err
        flag = "--" + key.replace("_", "-")
        with pytest.raises(SystemExit) as exc:
            parse_args(build_parser(), [flag, "0"])
        assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_a_resent_request_carries_the_time_left() -> None:
    import time

    from continuum_mqtt._client import Requester

    sent: list[tuple[str, bytes]] = []

    class Conn:
        def publish(self, topic: str, payload: bytes, **kw: object) -> None:
            sent.append((topic, payload))

    r = Requester(Topics("t"), "c1")
    r.start(Conn())  # type: ignore[arg-type]
    try:
        r.send("t/node/n1/call", Request("add", [1], {}, None, "o1"), timeout=10.0)
        time.sleep(0.3)
        r.resend_all()
        first, again = (decode(p) for _, p in sent)
        assert first["id"] == again["id"] and first["timeout_ms"] == 10_000
        assert 9_000 < again["timeout_ms"] <= 9_700
    finally:
        r.stop()


def test_gateway_does_not_start_an_expired_request(tmp_path: Path) -> None:
    from continuum_gateway._gateway import Gateway

    class Chan:
        errors: list[BaseException] = []

        def expired(self) -> bool:
            return True

        def error(self, exc: BaseException) -> None:
            self.errors.append(exc)

    gw = Gateway(BrokerURL.parse("mqtt://127.0.0.1:1"), str(tmp_path / "d.db"))
    chan = Chan()
    gw._serve(Request("create", [], {"cls": "examples.counter.Counter"}, "r1"), chan)  # type: ignore[arg-type]
    assert [type(e).__name__ for e in chan.errors] == ["DeadlineExpired"]
    assert gw.directory.objects() == []


@pytest.mark.parametrize("failure", ["timeout", "alias taken meanwhile"])
def test_gateway_takes_back_an_object_whose_create_did_not_complete(
    tmp_path: Path, failure: str
) -> None:
    from continuum_gateway._gateway import Gateway

    gw = Gateway(BrokerURL.parse("mqtt://127.0.0.1:1"), str(tmp_path / "d.db"))
    for n in ("n1", "n2"):
        gw.directory.node_status(
            n, {"state": "online", "classes": {"examples.counter.Counter": {}}}
        )
    calls: list[tuple[str, str, str]] = []

    def node_call(node: str, method: str, kwargs: dict[str, Any], deadline: object) -> None:
        calls.append((node, method, kwargs["obj"]))
        if method == "create":
            if failure == "timeout":
                raise continuum_mqtt.DeadlineExpired("no reply from the node")
            gw.directory.add_object("other", "examples.counter.Counter", "n2", "a", [])

    gw._node_call = node_call  # type: ignore[method-assign]
    with pytest.raises((continuum_mqtt.DeadlineExpired, continuum_mqtt.AliasTaken)):
        gw.create("examples.counter.Counter", alias="a", replicas=1)
    gw._pool.shutdown(wait=True)
    (primary, create, oid), *deletes = calls
    assert create == "create"
    replica = "n2" if primary == "n1" else "n1"
    assert sorted(deletes) == sorted([(primary, "delete", oid), (replica, "delete", oid)])
    assert oid not in [o["id"] for o in gw.directory.objects()]


def test_rights_options_from_a_config_file(tmp_path: Path) -> None:
    """A flag takes a boolean, a repeatable option a list; anything else is
    refused (a string for admins once made the accounts 'o', 'p', 's' admins)."""
    import argparse

    from continuum_mqtt.service import add_rights_arguments, parse_args, rights_from

    def parse(text: str) -> argparse.Namespace:
        cfg = tmp_path / "c.toml"
        cfg.write_text(text)
        p = argparse.ArgumentParser()
        add_rights_arguments(p)
        return parse_args(p, ["--config", str(cfg)])

    assert parse("no_anonymous = true").allow_anonymous is False
    assert parse("no-anonymous = false").allow_anonymous is True
    assert parse("allow_anonymous = false").allow_anonymous is False
    rights = rights_from(parse('admins = ["ops", "console"]'))
    assert rights.admins == {"ops", "console"}
    assert parse('admin = ["ops"]').admins == ["ops"]
    for bad in ('admins = "ops"', 'allow_anonymous = "false"', "no_anonymous = 1"):
        with pytest.raises(SystemExit):
            parse(bad)
