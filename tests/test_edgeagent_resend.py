"""The edge agent closes the broker's persistence window end to end: it keeps
each acknowledged sample ``[outbox] resend_window`` seconds and sends it again
after a reconnect, so a mosquitto SIGKILLed right after a PUBACK (before its
next save) loses nothing a durable node was to get; duplicates are dropped by
``seq``. Real mosquitto with the shipped persistence settings, real gateway,
durable node and ``edgeagent run``; and the outbox's window logic on its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_dev.testing import LocalBroker, free_port

from ._cluster import REPO, Cluster, wait_for

MODULES = ("examples.sink",)
DEVICE = "dev-r"


# -- the outbox's window, on its own -------------------------------------------------
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The outbox's uptime clock, set by the test."""
    import continuum_edgeagent._outbox as outbox_mod

    now = [0.0]
    monkeypatch.setattr(outbox_mod, "_uptime", lambda: now[0])
    return now


def _seqs(rows: list[tuple[int, bytes]]) -> list[int]:
    return [s for s, _ in rows]


def test_outbox_keeps_acknowledged_samples_for_the_window(
    tmp_path: Path, clock: list[float]
) -> None:
    from continuum_edgeagent._outbox import Outbox

    path = str(tmp_path / "o.sqlite")
    ob = Outbox(path)
    ob.window = 5.0
    for seq in range(1, 11):
        ob.add(seq, time.time(), b"s%d" % seq)
    clock[0] = 90.0
    ob.remove([1, 2])
    clock[0] = 100.0
    ob.remove([3, 4, 5, 6])
    # kept ones are not in the outbox's depth, not handed out, not bounded
    assert (len(ob), ob.kept) == (4, 6)
    assert _seqs(ob.after(0, 100)) == [7, 8, 9, 10]
    assert ob.enforce(max_samples=4, max_age=None, drop_oldest=True) == 0
    # nothing to resend before a connection is lost; the window follows the last PUBACK
    assert ob.resend_after(0, 100) == []
    assert ob.prune(force=True) == 2  # 1, 2: acknowledged more than 5 s before the last one
    assert ob.kept == 4

    # the connection is lost and comes back: 3-6 (acknowledged at 100, the last
    # PUBACK) go again first, in order
    clock[0] = 200.0
    assert ob.begin_resend()
    assert _seqs(ob.resend_after(0, 2)) == [3, 4]
    assert _seqs(ob.resend_after(4, 100)) == [5, 6]
    assert ob.prune(force=True) == 0  # a resend still to do keeps them
    ob.count_resent(4)
    ob.remove([3, 4])  # acknowledged again at 200: kept from then on
    assert (len(ob), ob.kept) == (4, 4)
    # lost again before 5 and 6 were acknowledged again: the unfinished resend
    # is not narrowed to the window before the last PUBACK (200)
    clock[0] = 300.0
    assert ob.begin_resend()
    assert _seqs(ob.resend_after(0, 100)) == [3, 4, 5, 6]
    ob.remove([3, 4, 5, 6])
    ob.resend_done()
    ob.remove([7, 8])  # first acknowledgements
    clock[0] = 305.5
    ob.remove([9])
    assert ob.prune(force=True) == 6  # 3-8: acknowledged at 300, 5.5 s before 9
    assert (ob.kept, len(ob)) == (1, 1)
    ob.close()

    # a restart does not know when the last connection was lost: all kept go again
    again = Outbox(path)
    again.window = 5.0
    assert (again.kept, len(again), again.next_seq, again.resent) == (1, 1, 11, 4)
    assert again.prune(force=True) == 0
    assert again.begin_resend()
    assert _seqs(again.resend_after(0, 100)) == [9]
    assert _seqs(again.after(0, 100)) == [10]
    again.close()


def test_outbox_without_window_or_space_keeps_nothing(
    tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import continuum_edgeagent._outbox as outbox_mod
    from continuum_edgeagent._outbox import Outbox

    ob = Outbox(str(tmp_path / "o.sqlite"))
    for seq in range(1, 21):
        ob.add(seq, time.time(), b"x" * 100)
    ob.remove([1, 2])  # no window (the outbox's own default): deleted
    assert (ob.kept, len(ob)) == (0, 18)
    assert not ob.begin_resend()
    ob.window = 5.0
    ob.remove(range(3, 11))
    assert ob.kept == 8
    ob.window = 0.0  # turned off by a reload: the next prune deletes them all
    assert not ob.begin_resend()
    assert ob.prune() == 8 and ob.kept == 0

    # low on space: the kept ones go first, and nothing more is kept
    ob.window = 5.0
    ob.remove([11, 12, 13])
    assert ob.kept == 3

    class Full:
        f_bavail, f_frsize = 1, 4096

    monkeypatch.setattr(outbox_mod.os, "statvfs", lambda p: Full())
    ob.can_grow()
    assert ob.tight and ob.kept == 0 and ob.shed == 3
    ob.remove([14])
    assert ob.kept == 0 and len(ob) == 6
    assert _seqs(ob.after(0, 100)) == [15, 16, 17, 18, 19, 20]
    ob.close()


def test_resend_window_is_in_the_config_with_its_range() -> None:
    from continuum_edgeagent._config import SAMPLE, ConfigError, parse

    assert parse({}, "t").outbox.resend_window == 5.0
    assert parse({"outbox": {"resend_window": 0}}, "t").outbox.resend_window == 0.0
    for bad in (-1, 301, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="resend_window"):
            parse({"outbox": {"resend_window": bad}}, "t")
    assert "resend_window = 5.0" in SAMPLE


# -- end to end: broker SIGKILL with a durable node offline ---------------------------
def _acked_upto(db: Path) -> int:
    """Every seq up to this one was acknowledged by the broker: below the
    lowest one still in the agent's outbox (or below the next seq)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
    except sqlite3.Error:
        return 0
    try:
        low = con.execute("SELECT MIN(seq) FROM samples").fetchone()[0]
        if low is None:
            low = con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        return int(low) - 1
    except (sqlite3.Error, TypeError):
        return 0
    finally:
        con.close()


def _agent_status(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "continuum_edgeagent", "status", "--json", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(out.stdout) if out.stdout else {}


def _retained_status(url: str, topic: str) -> dict[str, Any]:
    host, port = url.removeprefix("mqtt://").split(":")
    box: dict[str, Any] = {}
    got = threading.Event()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        box.update(cbor2.loads(msg.payload))
        got.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect(host, int(port))
    c.loop_start()
    try:
        got.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return box


def test_broker_sigkill_right_after_the_last_puback_loses_no_sample(tmp_path: Path) -> None:
    """The durable node is away; ``edgeagent run`` streams at 100 Hz and the broker
    acknowledges; mosquitto (saving every 1-2 s, the shipped setting) is SIGKILLed
    right after the agent took a PUBACK, without waiting for a save. Back on the
    same port and folder, then the node: every seq arrives at the sink."""
    want = int(os.environ.get("RESEND_TEST_SAMPLES", "1000"))  # 10 s at 100 Hz
    window = os.environ.get("RESEND_TEST_WINDOW", "5.0")  # 0: the control (loses)
    port = free_port()
    persist = str(tmp_path / "broker-data")
    with LocalBroker(
        port=port, persistence_dir=persist, log_path=str(tmp_path / "mosquitto.log")
    ) as b:
        c = Cluster(b.url, tmp_path)
        state = str(tmp_path / "n1-state")
        agent_state = tmp_path / "agent-state"
        config = tmp_path / "agent.toml"
        config.write_text(
            f'device = "{DEVICE}"\nstate_dir = "{agent_state}"\nstatus_interval = 0.2\n'
            f'[broker]\nurl = "{b.url}"\nroot = "{c.root}"\n'
            "backoff_min = 0.1\nbackoff_max = 0.5\nkeepalive = 5\n"
            "[forecaster]\nenabled = false\n"
            "[sampling]\ninterval = 0.01\n"
            f"[outbox]\ndrain_rate = 1000.0\nresend_window = {window}\n"
        )
        agent: subprocess.Popen[bytes] | None = None
        try:
            c.start_gateway()
            c.start_node("n1", "--state-dir", state, modules=MODULES)
            with c.client() as client:
                sink = client.stub("examples.sink.SampleSink").create(alias="sink")
                client.bind_metrics(sink, DEVICE, "ingest")
            c.stop("n1")  # its persistent session now queues the device's samples

            with open(tmp_path / "agent.log", "ab") as out:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "continuum_edgeagent", "run", "-c", str(config)],
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
            db = agent_state / "outbox.sqlite"
            wait_for(lambda: _acked_upto(db) >= want, timeout=60, interval=0.002)
            assert b.proc is not None
            b.proc.send_signal(signal.SIGKILL)  # no save since the last PUBACK
            acked_at_kill = _acked_upto(db)
            b.proc.wait()
            b.proc = None
            time.sleep(0.5)
            b.start()  # same port, same folder: what it saved last
            c.wait_gateway()
            c.start_node("n1", "--state-dir", state, modules=MODULES)
            if float(window):
                wait_for(lambda: _agent_status(config).get("resent", 0) > 0, timeout=30)
            else:
                wait_for(lambda: _agent_status(config).get("connected") is True, timeout=30)
            time.sleep(0.5)
            agent.send_signal(signal.SIGTERM)  # sends the rest of its outbox
            assert agent.wait(30) == 0
            st = _agent_status(config)
            assert st["outbox"]["depth"] == 0, st
            last = int(st["outbox"]["next_seq"]) - 1
            with c.client() as client:
                sink = client.get("sink")
                with contextlib.suppress(TimeoutError):  # the asserts say what is missing
                    wait_for(lambda: len(sink.received()["seqs"]) >= last, timeout=60)
                got = sink.received()
            device_status = _retained_status(b.url, c.topics.device(DEVICE, "status"))
        finally:
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()
            c.close()
        lost = sorted(set(range(1, last + 1)) - set(got["seqs"]))
        print(
            f"acked before the SIGKILL: {acked_at_kill}; sent in all: {last}; "
            f"lost: {len(lost)} {lost[:10]}; resent: {st['resent']}; "
            f"duplicates dropped by the sink: {got['duplicates']}"
        )
        assert not lost, f"{len(lost)} samples lost: {lost[:20]}"
        assert got["seqs"] == list(range(1, last + 1))  # in order, once each
        assert st["resent"] > 0 and device_status.get("resent") == st["resent"]
        # only the last window's worth went again (5 s of a 10 s stream), not everything
        assert st["resent"] < acked_at_kill
