"""The Node.js client of examples/js-client/, written from docs/protocol.md
alone, against a real deployment (the ``cluster`` fixture: mosquitto, a
gateway and node n1 hosting examples.counter), side by side with the Python
client. Needs ``node`` and ``npm`` on PATH: without them these tests fail
(they do not skip)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ._cluster import REPO, Cluster

JS = REPO / "examples" / "js-client"
COUNTER = "examples.counter.Counter"


@pytest.fixture(scope="session")
def js_client() -> Path:
    """``npm ci`` in examples/js-client, once per session."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found on PATH: the JS client tests need Node.js >= 20 "
            "and npm (Debian: apt-get install nodejs npm)",
            pytrace=False,
        )
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not version.startswith("v") or int(version[1:].split(".")[0]) < 20:
        pytest.fail(f"node {version or '?'} is too old: the JS client needs Node.js >= 20")
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"npm ci in {JS} failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )
    return JS


class Run:
    """The outcome of one CLI run: exit status and the JSON lines it printed."""

    def __init__(self, proc: subprocess.CompletedProcess[str], elapsed: float) -> None:
        self.rc = proc.returncode
        self.stderr = proc.stderr
        self.elapsed = elapsed
        try:
            self.lines: list[dict[str, Any]] = [
                json.loads(line) for line in proc.stdout.splitlines() if line.strip()
            ]
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not JSON lines: {proc.stdout!r} ({proc.stderr})") from exc

    @property
    def last(self) -> dict[str, Any]:
        assert self.lines, f"no output (rc {self.rc}): {self.stderr}"
        return self.lines[-1]

    @property
    def result(self) -> Any:
        assert self.rc == 0 and "result" in self.last, (self.rc, self.lines, self.stderr)
        return self.last["result"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.rc == 1 and "error" in self.last, (self.rc, self.lines, self.stderr)
        return self.last["error"]

    @property
    def progress(self) -> list[tuple[int, Any]]:
        return [(line["seq"], line["progress"]) for line in self.lines if "progress" in line]


def cli(js: Path, cluster: Cluster, *args: str, timeout: float = 60) -> Run:
    cmd = ["node", str(js / "cli.js"), "--broker", cluster.url, "--root", cluster.root, *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=js)
    return Run(proc, time.monotonic() - t0)


def test_create_call_progress_and_python_agrees(js_client: Path, cluster: Cluster) -> None:
    info = cli(
        js_client, cluster, "create", COUNTER, "--kwargs", '{"start": 5}', "--alias", "js-c"
    ).result
    assert info["class"] == COUNTER and info["node"] == "n1"
    assert info["aliases"] == ["js-c"] and len(info["id"]) == 32
    assert cli(js_client, cluster, "resolve", "js-c").result["id"] == info["id"]

    assert cli(js_client, cluster, "call", "js-c", "add", "2").result == 7
    assert cli(js_client, cluster, "call", info["id"], "add", "--kwargs", '{"n": 3}').result == 10

    run = cli(js_client, cluster, "call", "js-c", "count_to", "4", "--kwargs", '{"delay": 0.02}')
    assert run.result == 14
    assert run.progress == [(i, {"step": i, "of": 4}) for i in range(1, 5)]
    # every progress line comes before the result
    assert [("progress" in line) for line in run.lines] == [True] * 4 + [False]

    with cluster.client() as c:
        obj = c.get("js-c")
        assert obj.get() == 14
        assert obj.add(1) == 15
    assert cli(js_client, cluster, "call", "js-c", "get").result == 15


def test_json_encoding(js_client: Path, cluster: Cluster) -> None:
    info = cli(js_client, cluster, "--json", "create", COUNTER, "--alias", "js-json").result
    run = cli(js_client, cluster, "--json", "call", "js-json", "count_to", "2")
    assert run.result == 2
    assert run.progress == [(1, {"step": 1, "of": 2}), (2, {"step": 2, "of": 2})]
    assert cli(js_client, cluster, "--json", "call", info["id"], "echo", '"hi"').result == "hi"
    err = cli(
        js_client, cluster, "--json", "call", "js-json", "fail", "--kwargs", '{"message": "x"}'
    ).error
    assert (err["code"], err["type"], err["message"]) == ("method_error", "ValueError", "x")


def test_gateway_classes(js_client: Path, cluster: Cluster) -> None:
    classes = cli(js_client, cluster, "gateway", "classes").result
    counter = classes[COUNTER]
    assert counter["nodes"] == ["n1"]
    assert counter["methods"]["count_to"]["params"] == ["n", "delay"]
    assert counter["methods"]["count_to"]["required"] == ["n"]
    assert counter["methods"]["add"]["defaults"] == {"n": 1}
    nodes = cli(js_client, cluster, "gateway", "nodes").result
    assert [(n["id"], n["state"]) for n in nodes] == [("n1", "online")]


def test_errors(js_client: Path, cluster: Cluster) -> None:
    cli(js_client, cluster, "create", COUNTER, "--alias", "js-err").result  # noqa: B018
    err = cli(js_client, cluster, "call", "js-err", "nope").error
    assert (err["code"], err["type"], err["method"]) == ("unknown_method", "UnknownMethod", "nope")
    assert "local" not in err  # it came from the node
    for args in (["add", "1", "2", "3"], ["add", "--kwargs", '{"m": 1}'], ["count_to"]):
        err = cli(js_client, cluster, "call", "js-err", *args).error
        assert (err["code"], err["type"]) == ("bad_arguments", "BadArguments"), args
    err = cli(js_client, cluster, "call", "js-err", "reset").error
    assert (err["code"], err["method"]) == ("method_not_active", "reset")
    err = cli(js_client, cluster, "call", "js-err", "_secret").error
    assert err["code"] == "method_not_active"
    err = cli(js_client, cluster, "call", "js-err", "fail").error
    assert (err["code"], err["type"], err["message"]) == ("method_error", "ValueError", "boom")
    assert "ValueError: boom" in err["traceback"]
    err = cli(js_client, cluster, "call", "no-such-object", "get").error
    assert (err["code"], err["ref"]) == ("unknown_object", "no-such-object")
    err = cli(js_client, cluster, "create", COUNTER, "--alias", "js-err").error
    assert (err["code"], err["alias"]) == ("alias_taken", "js-err")
    err = cli(js_client, cluster, "create", "examples.counter.Nope").error
    assert err["code"] == "no_node"
    err = cli(js_client, cluster, "gateway", "frobnicate").error
    assert err["code"] == "unknown_method"
    # the failed calls did not change the object
    assert cli(js_client, cluster, "call", "js-err", "get").result == 0


def test_deadline(js_client: Path, cluster: Cluster) -> None:
    cli(js_client, cluster, "create", COUNTER, "--alias", "js-dl").result  # noqa: B018
    # the client gives up at its deadline, whatever the node does
    run = cli(js_client, cluster, "--timeout", "400", "call", "js-dl", "slow", "3")
    err = run.error
    assert (err["code"], err["type"]) == ("deadline_expired", "DeadlineExpired")
    assert run.elapsed < 2.5, run.elapsed

    # an add queued behind a slow call past its timeout_ms is not run by the node
    with cluster.client() as c:
        obj = c.get("js-dl")
        slow = obj.slow.future(1.5)  # ahead in the mailbox (and behind the first slow)
        time.sleep(0.3)
        run = cli(js_client, cluster, "--timeout", "300", "call", "js-dl", "add", "100")
        assert run.error["code"] == "deadline_expired"
        assert slow.result(timeout=15) == 1.5
        assert obj.get() == 0
    # a generous deadline works
    assert (
        cli(js_client, cluster, "--timeout", "5000", "call", "js-dl", "slow", "0.2").result == 0.2
    )


def test_reroute_on_object_not_here(js_client: Path, cluster: Cluster) -> None:
    """A call sent to the wrong node (stale cache) is answered object_not_here;
    the client resolves and resends the same request to the right node (§20.5)."""
    cluster.start_node("n2")
    script = textwrap.dedent(
        """
        const { Client } = require('./continuum');
        (async () => {
          const c = await Client.connect(process.env.URL, { root: process.env.ROOT });
          const info = await c.create('examples.counter.Counter', { node: 'n2', alias: 'moved' });
          c.cache.set('moved', { ...info, node: 'n1' });  // a stale location
          const v = await c.call('moved', 'add', { args: [7] });
          console.log(JSON.stringify({ node: info.node, value: v, cached: c.cache.get('moved').node }));
          await c.close();
        })().catch((e) => { console.log(JSON.stringify({ error: e.toJSON ? e.toJSON() : String(e) })); process.exit(1); });
        """
    )
    env = {**os.environ, "URL": cluster.url, "ROOT": cluster.root}
    proc = subprocess.run(
        ["node", "-e", script],
        cwd=js_client,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout) == {"node": "n2", "value": 7, "cached": "n2"}


def test_pipelined(js_client: Path, cluster: Cluster) -> None:
    run = cli(
        js_client,
        cluster,
        "bench",
        "--create",
        COUNTER,
        "--calls",
        "500",
        "--inflight",
        "50",
        timeout=120,
    )
    assert run.rc == 0, (run.lines, run.stderr)
    report = run.last
    assert report["ok"] == 500 and report["errors"] == {}
    assert report["all_results"] and report["in_order"], report
    with cluster.client() as c:
        assert c.get(report["object"]).get() == 500
    print(f"JS client, 500 add calls, 50 in flight: {report['calls_per_s']} calls/s")


def test_a_client_with_a_username_owns_what_it_creates(js_client: Path, cluster: Cluster) -> None:
    """§21: the JS client sends its username as the caller level; the object is
    its own, and another account cannot use it."""
    as_a = ("--username", "dev-a", "--password", "x")
    info = cli(js_client, cluster, *as_a, "create", COUNTER, "--alias", "dev-a/js").result
    assert info["owner"] == "dev-a"
    assert cli(js_client, cluster, *as_a, "call", info["id"], "add", "2").result == 2
    err = cli(js_client, cluster, "--username", "dev-b", "call", info["id"], "add", "1").error
    assert err["code"] == "unknown_object"  # the gateway does not even show it to dev-b
    err = cli(
        js_client, cluster, "--username", "dev-b", "create", COUNTER, "--alias", "dev-a/x"
    ).error
    assert err["code"] == "forbidden"
