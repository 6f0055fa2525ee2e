"""The edge agent against bad numbers, bad state directories, a full disk and
a wrong password (issue 11, finding 6): config ranges as fast unit tests; the
rest with the real `edgeagent run`, a real mosquitto and real file systems (a
small tmpfs mounted by the test)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from continuum_dev.testing import LocalBroker, free_port

from ._cluster import wait_for
from ._tmpfs import fill, tmpfs
from .test_edgeagent import Agent, Collector, agent_config, final_seq, run_agent

# -- config: every number finite and in range --------------------------------------


def _numeric_keys() -> list[tuple[str, Any]]:
    from continuum_edgeagent._config import _SECTIONS, AgentConfig

    out: list[tuple[str, Any]] = []
    for section, cls in [("", AgentConfig), *_SECTIONS.items()]:
        inst = cls()
        for f in dataclasses.fields(cls):
            value = getattr(inst, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                key = f.name.rstrip("_")
                out.append((f"[{section}] {key}" if section else key, value))
    return out


def _as_data(key: str, value: Any) -> dict[str, Any]:
    section, _, name = key.rpartition(" ")
    return {section.strip("[]"): {name: value}} if section else {name: value}


def test_every_number_in_the_config_has_a_range_holding_its_default() -> None:
    from continuum_edgeagent._config import RANGES

    keys = _numeric_keys()
    assert {k for k, _ in keys} == set(RANGES)
    for key, default in keys:
        low, high, _ = RANGES[key]
        assert low <= default <= high, key


@pytest.mark.parametrize("key", [k for k, _ in _numeric_keys()])
def test_inf_nan_negative_and_absurd_numbers_are_refused(key: str) -> None:
    from continuum_edgeagent._config import ConfigError, parse

    default = dict(_numeric_keys())[key]
    huge = 2**62 if isinstance(default, int) else 1e300
    for bad in (float("inf"), float("-inf"), float("nan"), -1, huge):
        with pytest.raises(ConfigError) as err:
            parse(_as_data(key, bad), "/etc/edgeagent/x.toml")
        assert key in str(err.value) and "/etc/edgeagent/x.toml" in str(err.value), (key, bad)


# -- state directory and outbox problems: exit 2, one line, nothing started ---------


def _run_on(tmp_path: Path, state: Path, device: str) -> subprocess.CompletedProcess[str]:
    """``edgeagent run`` with its state directory at ``state`` (the broker is
    unreachable: a bad state directory stops it before it connects)."""
    return run_agent(
        agent_config(tmp_path / "a.toml", "mqtt://127.0.0.1:1", "h", device, state_dir=state)
    )


def _one_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line on stderr of a run that exited with ``code``."""
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def _other_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, body TEXT)")
    db.commit()
    db.close()


def _damaged_outbox(path: Path) -> None:
    from continuum_edgeagent._outbox import Outbox

    ob = Outbox(str(path))
    for seq in range(1, 2001):
        ob.add(seq, time.time(), b"x" * 60)
    ob.close()
    with open(path, "r+b") as fh:  # a b-tree page in the middle: garbage
        fh.seek(4096 * 5)
        fh.write(b"\xa5" * 4096)


def _a_file(state: Path) -> None:
    state.write_text("not a directory\n")


def _garbage(state: Path) -> None:
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(os.urandom(8192))


def _another_database(state: Path) -> None:
    state.mkdir()
    _other_sqlite(state / "outbox.sqlite")


def _damaged(state: Path) -> None:
    state.mkdir()
    _damaged_outbox(state / "outbox.sqlite")


def _outbox_dir(state: Path) -> None:
    (state / "outbox.sqlite").mkdir(parents=True)


BAD_STATE = {
    "a file": _a_file,
    "garbage outbox": _garbage,
    "another database": _another_database,
    "damaged outbox": _damaged,
    "outbox is a directory": _outbox_dir,
}


@pytest.mark.parametrize("case", list(BAD_STATE))
def test_unusable_state_dir_or_outbox_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    state = tmp_path / "state"
    BAD_STATE[case](state)
    before = _snapshot(state)
    line = _one_line(_run_on(tmp_path, state, "dev-s"), 2)
    assert str(tmp_path / "a.toml") in line and str(state) in line, line
    assert _snapshot(state) == before  # the bad file is left as it was, for inspection


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_read_only_state_dir_exits_2(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        line = _one_line(_run_on(tmp_path, ro / "st", "dev-ro"), 2)
        assert str(ro / "st") in line, line


def test_reload_to_an_unusable_state_dir_is_refused_and_the_agent_goes_on(
    tmp_path: Path, broker: LocalBroker
) -> None:
    cfg = agent_config(tmp_path / "a.toml", broker.url, "h3", "dev-hup")
    good = cfg.read_text()
    agent = Agent(cfg, tmp_path / "agent.log").start()
    assert agent.proc is not None
    try:
        wait_for(lambda: agent.status().get("acked", 0) >= 5)
        for case in BAD_STATE:
            state = tmp_path / f"bad-{case.replace(' ', '-')}"
            BAD_STATE[case](state)
            cfg.write_text(good.replace(str(tmp_path / "state-dev-hup"), str(state)))
            agent.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda s=state: any(
                    "reload refused" in line and str(s) in line
                    for line in agent.text().splitlines()
                )
            )
        with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:  # not writable
            cfg.write_text(good.replace(str(tmp_path / "state-dev-hup"), str(ro / "st")))
            agent.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda: any(
                    "reload refused" in line and str(ro / "st") in line
                    for line in agent.text().splitlines()
                )
            )
        cfg.write_text(good)  # for `edgeagent status`, which reads the file
        agent.proc.send_signal(signal.SIGHUP)
        acked = agent.status()["acked"]
        wait_for(lambda: agent.status().get("acked", 0) > acked + 5)  # still sending
        assert agent.proc.poll() is None
        assert "Traceback" not in agent.text()
    finally:
        cfg.write_text(good)
        assert agent.stop() == 0


# -- a full disk --------------------------------------------------------------------


def test_outbox_on_a_full_file_system_counts_failures_and_uses_no_seq(tmp_path: Path) -> None:
    from continuum_edgeagent._outbox import WAL_LIMIT, Outbox

    with tmpfs(tmp_path / "fs", "1m") as fs:
        path = fs / "outbox.sqlite"
        ob = Outbox(str(path))
        for seq in range(1, 301):
            assert ob.add(seq, time.time(), b"x" * 80)
        filler = fill(fs)
        results = [ob.add(ob.next_seq, time.time(), b"y" * 80) for _ in range(200)]
        assert False in results  # the file had to grow: it could not
        stored = results.count(True)
        assert ob.failed == results.count(False) and ob.error and "full" in ob.error
        assert ob.next_seq == 301 + stored  # a failed sample took no number
        ob.remove(range(1, 101))  # acknowledged; the deletion may fail on a full disk
        assert len(ob) == 300 + stored - 100
        assert [s for s, _ in ob.after(0, 1)] == [101]
        filler.unlink()  # space is back
        assert ob.add(ob.next_seq, time.time(), b"z" * 80)
        assert ob.error is None and ob.unremoved == 0
        failed, last = ob.failed, ob.next_seq - 1
        assert os.path.getsize(f"{path}-wal") <= WAL_LIMIT + 16 * 4096
        ob.close()
        again = Outbox(str(path))
        assert again.failed == failed and again.next_seq == last + 1
        seqs = [s for s, _ in again.after(0, 10_000)]
        assert seqs == list(range(101, last + 1))  # no gap: every number is a stored sample
        again.close()


def test_the_wal_stays_small(tmp_path: Path) -> None:
    from continuum_edgeagent._outbox import WAL_LIMIT, Outbox

    ob = Outbox(str(tmp_path / "o.sqlite"))
    for seq in range(1, 3001):
        ob.add(seq, time.time(), b"x" * 80)
        if seq % 7 == 0:
            ob.remove(range(seq - 6, seq + 1))
    wal = os.path.getsize(tmp_path / "o.sqlite-wal")
    assert wal <= WAL_LIMIT + 16 * 4096, wal  # the default (1000 pages) would be ~4 MB
    ob.close()


def _status_payload(url: str, topic: str) -> dict[str, Any]:
    host, port = url.removeprefix("mqtt://").split(":")
    box: list[dict[str, Any]] = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.on_message = lambda cl, u, m: box.append(cbor2.loads(m.payload))
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect(host, int(port))
    c.loop_start()
    try:
        wait_for(lambda: bool(box))
    finally:
        c.disconnect()
        c.loop_stop()
    return box[-1]


def test_full_disk_under_the_running_agent(tmp_path: Path) -> None:
    """A 2 MB tmpfs as the state directory, filled to the last byte while the
    broker is away, then the broker back, then the space: the agent lives on,
    says what it could not store, sends what it had, stores again once it can,
    and the consumer gets every stored sample in order (no seq taken by a
    sample that was not stored)."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    persist = str(tmp_path / "broker-data")  # the collector's session survives the restart
    broker = LocalBroker(port=port, persistence_dir=persist).start()
    col = Collector(port, "h4/dev/dev-full/metrics")
    with tmpfs(tmp_path / "fs", "2m") as fs:
        cfg = agent_config(tmp_path / "a.toml", url, "h4", "dev-full", state_dir=fs / "st")
        agent = Agent(cfg, tmp_path / "agent.log").start()
        assert agent.proc is not None
        try:
            wait_for(lambda: agent.status().get("acked", 0) >= 20)
            broker.stop()
            wait_for(lambda: agent.status()["outbox"]["depth"] >= 30)
            filler = fill(fs)
            wait_for(
                lambda: (
                    agent.status()["outbox"]["failed"] + agent.status()["outbox"]["dropped_full"]
                    >= 10
                )
            )
            full = agent.status()
            stored = full["outbox"]["depth"]
            broker = LocalBroker(port=port, persistence_dir=persist).start()
            # what was stored goes out although nothing can be written
            wait_for(lambda: agent.status()["acked"] >= full["acked"] + stored, timeout=90)
            assert agent.proc.poll() is None
            filler.unlink()
            # storing again, and sending: a sample taken after the space came back
            wait_for(lambda: agent.status()["outbox"]["error"] is None, timeout=30)
            after = agent.status()["outbox"]["next_seq"]
            wait_for(lambda: max(col.seqs(), default=0) >= after, timeout=30)
            # the retained device status carries the count too
            wait_for(
                lambda: (
                    _status_payload(url, "h4/dev/dev-full/status").get("failed")
                    == agent.status()["outbox"]["failed"]
                )
            )
        finally:
            assert agent.stop() == 0
        last = final_seq(agent)
        st = agent.status()
        text = agent.text()
        assert "Traceback" not in text
        assert "cannot store samples" in text or "KiB free" in text
        failed = st["outbox"]["failed"]
        dropped = st["outbox"]["dropped_full"]
        assert failed + dropped >= 10
        wait_for(lambda: len(set(col.seqs())) >= last - dropped)
        got = sorted(set(col.seqs()))
        missing = sorted(set(range(1, last + 1)) - set(got))
        # gaps only where the outbox dropped its oldest (counted; one in flight when
        # the broker stopped may have arrived anyway), never for a failed sample
        assert len(missing) <= dropped, missing
        assert got == sorted(set(range(1, last + 1)) - set(missing))
        print(f"{last} stored, {failed} failed, {dropped} dropped (full disk), all delivered")
    col.close()
    broker.stop()


def test_agent_started_on_a_full_file_system_exits_1_with_a_message(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "1m") as fs:
        fill(fs)
        line = _one_line(_run_on(tmp_path, fs / "st", "dev-f0"), 1)
        assert str(fs / "st") in line, line


# -- authentication -----------------------------------------------------------------


@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
def test_a_refused_login_says_not_authorised_and_backs_off(tmp_path: Path, who: str) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "dev-a", "right"], check=True)
    broker = LocalBroker(extra_config=f"allow_anonymous false\npassword_file {pwfile}\n").start()
    secret = tmp_path / "pw"
    secret.write_text("wrong\n" if who == "wrong password" else "right\n")
    user = "dev-a" if who == "wrong password" else "nobody"
    cfg = agent_config(
        tmp_path / "a.toml",
        broker.url,
        "h6",
        "dev-a",
        broker=f'backoff_min = 0.2\nbackoff_max = 1.0\nkeepalive = 5\nusername = "{user}"\n'
        f'password_file = "{secret}"',
    )
    t0 = time.monotonic()
    agent = Agent(cfg, tmp_path / "agent.log").start()
    try:
        wait_for(lambda: "not authorised" in (agent.status().get("last_error") or ""))
        time.sleep(2.0)
        elapsed = time.monotonic() - t0
        attempts = Path(broker.log_path).read_text().count("not authorised")
        assert 1 <= attempts <= elapsed / 0.2 + 2  # never more often than backoff_min
        text = agent.text()
        assert "not authorised" in text and "bad username or password" in text
        assert "Protocol error" not in text
        assert agent.proc is not None and agent.proc.poll() is None
        # the operator fixes it: the next attempt reads the file again and gets in
        if who == "unknown user":
            cfg.write_text(cfg.read_text().replace('username = "nobody"', 'username = "dev-a"'))
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGHUP)
        else:
            secret.write_text("right\n")
        wait_for(lambda: agent.status().get("acked", 0) >= 5, timeout=30)
    finally:
        assert agent.stop() == 0
        broker.stop()


def test_refusal_text_names_the_login() -> None:
    from continuum_edgeagent._link import refusal_text
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from continuum_mqtt._mqtt import BrokerURL

    url = BrokerURL.parse("mqtt://dev-1:pw@b:1883")
    for code in (0x86, 0x87):
        text = refusal_text(url, ReasonCode(PacketTypes.CONNACK, identifier=code))
        assert text.startswith("not authorised") and "'dev-1'" in text
    other = refusal_text(url, ReasonCode(PacketTypes.CONNACK, identifier=0x88))
    assert "not authorised" not in other and "0x88" in other
