"""Tenancy: what one account's flood costs another account's calls on a node.

    python -m bench.tenancy                    # 4 phases of 10 s (about 1.5 minutes)
    python -m bench.tenancy --quick            # 4 s phases
    python -m bench.tenancy --objects 10000    # at fleet shape: 10,000 more objects resident

One run starts its own mosquitto (the project's broker settings), a gateway and
one cloud node (``examples.counter`` and this module's :class:`Hog`) as real
processes, and uses two accounts of that development broker: the victim
``dev-a`` and the attacker ``dev-b``. The victim calls ``Counter.add(1)`` on its
own object, one call after the other, for the whole run, and records every
latency. The attacker runs in a process of its own (so that its loops do not
share the victim's interpreter), one attack per phase:

1. ``baseline``: the victim alone.
2. ``long-calls``: dev-b holds ``--hogs`` objects of its own at once with a
   long call each (``Hog.hold``, which sleeps; twice the node's workers by
   default), for the phase. (``--phases long-cpu``: the same with calls busy
   in Python the whole time, ``Hog.spin``, which compete for the GIL.)
3. ``small-calls``: dev-b keeps ``--window`` calls of ``Hog.add(1)`` on its
   objects outstanding, far past its quota on the node (``--max-caller-calls``,
   1,000 by default).
4. ``metrics-flood``: dev-b blocks a Hog of its own with a long call and
   publishes metrics samples on its device's topic, which feeds that Hog, at
   ``--flood-rate`` per second for the phase; the Hog is let go 2 s after the
   last one. Then ``flood-drain``: the Hog works through them; every sample
   must arrive once (nothing lost).

Per phase: the victim's p50/p99/max latency and their ratio to the baseline,
its errors, the attacker's outcomes by code, and the node's largest RSS. The
table goes to stdout, the figures to ``reports/bench-tenancy.json``.

The attacker (internal): ``python -m bench.tenancy attack MODE ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from continuum_mqtt import ActiveObject, active, check_cancelled

from . import _common as common
from ._timing import summarize

COUNTER = "examples.counter.Counter"
HOG = "bench.tenancy.Hog"
VICTIM, ATTACKER = "dev-a", "dev-b"


class Hog(ActiveObject):
    """The attacker's object: a long call that stops at its deadline, a light
    call, and a feed of metrics samples that keeps each ``seq`` once."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0
        self.duplicates = 0
        self.last = 0

    @active(readonly=True)
    def hold(self, seconds: float) -> float:
        """Hold the object ``seconds`` (or to the call's deadline); returns
        when it let go (``time.monotonic()``: one clock for the machine)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            check_cancelled()
            time.sleep(0.01)
        return time.monotonic()

    @active(readonly=True)
    def spin(self, seconds: float) -> int:
        """Like :meth:`hold`, but busy in Python the whole time (holds the GIL)."""
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            check_cancelled()
            n += sum(range(200))
        return n

    @active
    def add(self, n: int = 1) -> int:
        self.value += n
        return self.value

    @active
    def ingest(self, sample: dict[str, Any]) -> None:
        seq = int(sample["seq"])
        if seq <= self.last:
            self.duplicates += 1
            return
        self.last = seq
        self.count += 1

    @active(readonly=True)
    def received(self) -> dict[str, int]:
        return {"count": self.count, "duplicates": self.duplicates, "last": self.last}


# -- the attacker process ---------------------------------------------------------------


def _client(broker: str, root: str, user: str, timeout: float) -> Any:
    import continuum_mqtt
    from continuum_mqtt.service import BrokerURL

    url = BrokerURL.parse(broker)
    return continuum_mqtt.Client(f"mqtt://{user}@{url.host}:{url.port}", root=root, timeout=timeout)


def _code(fut: Future[Any]) -> str:
    exc = fut.exception()
    return "ok" if exc is None else str(getattr(exc, "code", type(exc).__name__))


def attack_long(c: Any, ids: list[str], seconds: float, method: str = "hold") -> Tally[str]:
    """Every hog held at once by a long call that ends at the phase's end (its
    deadline): those past dev-b's share of the workers wait, then expire."""
    hogs = [c.get(i) for i in ids]
    # the first share runs its hold to the end (ok); the next calls start just
    # before their deadline and are cancelled at it; the rest expire unrun
    futs = [getattr(h, method).options(timeout=seconds + 0.5).future(seconds) for h in hogs]
    for f in futs:
        f.exception(seconds + 30)
    return Tally(_code(f) for f in futs)


def attack_small(c: Any, ids: list[str], seconds: float, window: int) -> Tally[str]:
    """``window`` light calls outstanding for the whole phase."""
    hogs = [c.get(i) for i in ids]
    slots = threading.Semaphore(window)
    outcomes: Tally[str] = Tally()
    lock = threading.Lock()

    def done(f: Future[Any]) -> None:
        with lock:
            outcomes[_code(f)] += 1
        slots.release()

    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        if not slots.acquire(timeout=0.1):
            continue
        f = hogs[i % len(hogs)].add.future(1)
        f.add_done_callback(done)
        i += 1
    for _ in range(window):  # the last ones' replies
        slots.acquire(timeout=60)
    return outcomes


def attack_flood(
    c: Any, broker: str, root: str, sink_id: str, seconds: float, rate: int, first: int
) -> tuple[Tally[str], dict[str, Any]]:
    """The sink held for the phase; meanwhile samples on dev-b's metrics topic
    (which feeds the sink) at ``rate`` per second."""
    import paho.mqtt.client as paho

    from continuum_mqtt.samples import encode_sample
    from continuum_mqtt.service import BrokerURL, Topics

    sink = c.get(sink_id)
    # held 2 s past the last sample: all of them wait at the node when it lets go
    blocked = sink.hold.options(timeout=seconds + 30).future(seconds + 2.2)
    time.sleep(0.2)
    url = BrokerURL.parse(broker)
    pub = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"flood-{time.time_ns() % 10**9}",
        protocol=paho.MQTTv5,
    )  # fmt: skip
    pub.username_pw_set(ATTACKER)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect(url.host, url.port)
    pub.loop_start()
    topic = Topics(root).metrics(ATTACKER)
    seq, t0 = first, time.monotonic()
    last: Any = None
    while (now := time.monotonic()) < t0 + seconds:
        due = first + int((now - t0) * rate)
        while seq <= due:
            body = encode_sample(ATTACKER, seq, time.time(), {"cpu": 50.0, "mem": 40.0})
            last = pub.publish(topic, body, qos=1)
            seq += 1
        time.sleep(0.002)
    if last is not None:
        last.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()
    publishing = time.monotonic() - t0
    released = blocked.result(30)
    outcome = Tally([_code(blocked)])
    return outcome, {
        "published": seq - first,
        "last": seq - 1,
        "publish_s": round(publishing, 2),
        "released": released,
    }


def attack_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tenancy attack")
    p.add_argument("mode", choices=["long", "cpu", "small", "flood"])
    p.add_argument("--broker", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--ids", required=True, help="the attacker's objects, comma separated")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--window", type=int, default=3000)
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--first", type=int, default=1)
    a = p.parse_args(argv)
    ids = a.ids.split(",")
    extra: dict[str, Any] = {}
    with _client(a.broker, a.root, ATTACKER, 30.0) as c:
        for i in ids:  # resolved before the phase starts
            c.get(i)
        start = time.monotonic()
        if a.mode in ("long", "cpu"):
            outcomes = attack_long(c, ids, a.seconds, "hold" if a.mode == "long" else "spin")
        elif a.mode == "small":
            outcomes = attack_small(c, ids, a.seconds, a.window)
        else:
            outcomes, extra = attack_flood(c, a.broker, a.root, ids[0], a.seconds, a.rate, a.first)
        end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "outcomes": dict(outcomes), **extra}))
    return 0


# -- the victim and the run ---------------------------------------------------------------


class Victim(threading.Thread):
    """dev-a's calls on its own object, one after the other: (start, ms, code)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(name="victim", daemon=True)
        self.call = call
        self.records: list[tuple[float, float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        clock = time.perf_counter
        while not self.stopping.is_set():
            t = time.monotonic()
            c0 = clock()
            code = "ok"
            try:
                self.call()
            except Exception as exc:
                code = str(getattr(exc, "code", type(exc).__name__))
            self.records.append((t, (clock() - c0) * 1000.0, code))

    def window(self, start: float, end: float) -> tuple[list[float], Tally[str]]:
        inside = [r for r in self.records if start <= r[0] < end]
        return [ms for _, ms, code in inside if code == "ok"], Tally(
            code for _, _, code in inside if code != "ok"
        )


class Rss(threading.Thread):
    """The node's RSS every 0.25 s: (time, bytes)."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss", daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except Exception:
                return

    def peak_mb(self, start: float, end: float) -> float:
        inside = [b for t, b in self.samples if start <= t <= end]
        return round(max(inside) / 2**20, 1) if inside else float("nan")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "tenancy",
        "Measure the latency of one account's calls on its own object while another "
        "account floods the same node: long calls, many small calls past its quota, "
        "metrics samples behind a blocked object. Starts and stops its own broker, "
        "gateway and cloud node.",
        quick="4 s phases (for a smoke run)",
    )
    common.options(
        p,
        """
        phase-seconds   10      seconds of each phase
        workers         16      the node's --workers (its --caller-workers: the node's default, half)
        hogs            32      the attacker's objects held by long calls (twice the default workers)
        window          3000    attacker calls outstanding in the small-calls phase
        flood-rate      2000    metrics samples per second in the flood phase
        objects         0       more objects resident on the node, owned by the victim (fleet shape)
        phases          all     the attacks after the baseline, comma separated (all: long-calls,small-calls,metrics-flood; also long-cpu: long calls busy in Python)
        victim-timeout  10.0    seconds a victim's call may take before it counts as an error
        durable         -       run the node with --state-dir (journal, checkpoints)
        node-args       none    more arguments of continuum-node, one string (write --node-args="--switch-interval 0.0002")
        keep-logs       -       keep the service logs (their folder is printed)
        """,
    )
    return p


def _attack(dep: Any, mode: str, ids: list[str], args: argparse.Namespace, **kw: Any) -> Any:
    argv = [
        sys.executable, "-m", "bench.tenancy", "attack", mode, "--broker", dep.url,
        "--root", dep.root, "--ids", ",".join(ids), "--seconds", str(args.phase_seconds),
        "--window", str(args.window), "--rate", str(args.flood_rate),
    ]  # fmt: skip
    argv += [f"--{k}={v}" for k, v in kw.items()]
    out = subprocess.run(
        argv, cwd=common.REPO, env=common.env(), capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"the attacker failed ({mode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fleet(client: Any, n: int) -> None:
    if n <= 0:
        return
    common.log(f"creating {n} more objects of {VICTIM} (fleet shape) ...")
    t0 = time.monotonic()
    stub = client.stub(COUNTER)
    with ThreadPoolExecutor(8) as pool:
        for i, _ in enumerate(pool.map(lambda _: stub.create(), range(n)), 1):
            if i % 1000 == 0:
                common.log(f"  {i}/{n} ({i / (time.monotonic() - t0):.0f}/s)")


def _drain(sink: Any, attack: dict[str, Any]) -> dict[str, Any]:
    """Wait until the sink has every sample published: how long after it was
    let go, and whether each came once."""
    published, got = attack["published"], {"count": 0, "duplicates": 0}
    while time.monotonic() - attack["released"] < 300:
        got = sink.received()
        if got["count"] >= published:
            break
        time.sleep(0.05)
    until = time.monotonic()
    return {
        "publish_s": attack["publish_s"],
        "published": published,
        "processed": got["count"],
        "duplicates": got["duplicates"],
        "lost": published - got["count"],
        "drain_s": round(until - attack["released"], 2),
        "until": until,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = common.machine(args)
    phases: list[dict[str, Any]] = []
    with common.deployment(keep=args.keep_logs) as dep:
        dep.start_gateway("--max-objects", "0")
        extra = ["--workers", str(args.workers)]
        if args.durable:
            extra += ["--state-dir", str(dep.tmp / "n1-state")]
        if args.node_args != "none":
            extra += args.node_args.split()
        dep.start_node("n1", *extra, modules=("examples.counter", "bench.tenancy"))
        if args.keep_logs:
            common.log(f"logs in {dep.logs}")
        broker, root = dep.url, dep.root
        with (
            _client(broker, root, VICTIM, args.victim_timeout) as a,
            _client(broker, root, ATTACKER, 30.0) as b,
        ):
            mine = a.stub(COUNTER).create()
            _fleet(a, args.objects)
            hogs = [b.stub(HOG).create()._id for _ in range(args.hogs)]
            sink = b.stub(HOG).create()
            b.bind_metrics(sink, ATTACKER, "ingest")
            victim = Victim(lambda: mine.add(1))
            rss = Rss(dep.pid("n1"))
            victim.start()
            rss.start()
            time.sleep(1.0)  # warm

            def phase(name: str, start: float, end: float, outcomes: dict[str, int]) -> None:
                ok, errors = victim.window(start, end)
                phases.append(
                    {
                        "phase": name,
                        "seconds": round(end - start, 1),
                        "victim": summarize(ok) if ok else {"n": 0},
                        "victim_errors": dict(errors),
                        "attacker": outcomes,
                        "node_rss_mb": rss.peak_mb(start, end),
                    }
                )
                v = phases[-1]["victim"]
                common.log(
                    f"{name}: victim {v['n']} calls, p50 {v.get('p50_ms', 0):.2f} ms, "
                    f"p99 {v.get('p99_ms', 0):.2f} ms, errors {dict(errors)}; attacker {outcomes}"
                )

            common.log(f"baseline: the victim alone for {args.phase_seconds} s")
            t = time.monotonic()
            time.sleep(args.phase_seconds)
            phase("baseline", t, time.monotonic(), {})
            calls = (
                ("long-calls", "long", f"{len(hogs)} long calls"),
                ("long-cpu", "cpu", f"{len(hogs)} long CPU-bound calls"),
                ("small-calls", "small", f"{args.window} calls outstanding"),
            )
            for name, kind, what in calls:
                if name in args.phases:
                    common.log(f"{name}: {what} of {ATTACKER}")
                    r = _attack(dep, kind, hogs, args)
                    phase(name, r["start"], r["end"], r["outcomes"])
                    time.sleep(1.0)
            if "metrics-flood" in args.phases:
                common.log(f"metrics-flood: {args.flood_rate} samples/s behind a blocked object")
                r = _attack(dep, "flood", [sink._id], args)
                phase("metrics-flood", r["start"], r["released"], r["outcomes"])
                phase_samples = _drain(sink, r)
                phase("flood-drain", r["released"], phase_samples.pop("until"), {})
                phases[-1]["samples"] = phase_samples
                common.log(f"flood: {phase_samples}")
            victim.stopping.set()
            rss.stopping.set()
            victim.join(args.victim_timeout + 5)
    base = phases[0]["victim"]
    for ph in phases:
        v = ph["victim"]
        for q in ("p50", "p99"):
            if v.get("n") and base.get("n"):
                ph[f"{q}_ratio"] = round(v[f"{q}_ms"] / base[f"{q}_ms"], 2)
    return {"meta": meta, "phases": phases, "table": _rows(phases)}


def _rows(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for ph in phases:
        v = ph["victim"]
        rows.append(
            {
                "phase": ph["phase"],
                "s": ph["seconds"],
                "calls": v.get("n", 0),
                "p50": f"{v['p50_ms']:.2f}" if v.get("n") else "-",
                "p99": f"{v['p99_ms']:.2f}" if v.get("n") else "-",
                "max": f"{v['max_ms']:.1f}" if v.get("n") else "-",
                "p50x": ph.get("p50_ratio", ""),
                "p99x": ph.get("p99_ratio", ""),
                "errors": sum(ph["victim_errors"].values()),
                "attacker": " ".join(f"{k}={n}" for k, n in sorted(ph["attacker"].items())),
                "rss": ph["node_rss_mb"],
            }
        )
    return rows


COLUMNS = (
    "phase< | s> | calls:victim calls> | p50:p50 ms> | p99:p99 ms> | max:max ms> | "
    "p50x:p50 x base> | p99x:p99 x base> | errors:victim errors> | "
    "attacker:attacker outcomes< | rss:node RSS MB>"
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["attack"]:
        return attack_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.quick:
        args.phase_seconds = 4
    known = ("long-calls", "long-cpu", "small-calls", "metrics-flood")
    args.phases = (
        ("long-calls", "small-calls", "metrics-flood")
        if args.phases == "all"
        else tuple(args.phases.split(","))
    )
    if any(ph not in known for ph in args.phases):
        build_parser().error(f"--phases: a comma separated list of {', '.join(known)}")
    if min(args.phase_seconds, args.workers, args.hogs, args.window, args.flood_rate) <= 0:
        build_parser().error("seconds and counts must be above 0")
    result = common.run_or_interrupted(run, args, COLUMNS)
    if result is None:
        return 130
    samples = result["phases"][-1].get("samples")
    if samples:
        print(
            f"\nmetrics flood: {samples['published']} samples published, "
            f"{samples['processed']} processed once, {samples['lost']} lost, "
            f"drained in {samples['drain_s']} s after the object was let go"
        )
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
