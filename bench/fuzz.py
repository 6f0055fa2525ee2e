"""Fuzz every inbound handler of node and gateway with >= 10,000 hypothesis cases
each, pipelined, and report outcomes, liveness and memory. Prints a table and
writes JSON.

    python -m bench.fuzz [--cases 10000] [--rounds 2] [--handlers node_call,...]
                         [--seed 1] [--window 256] [--batch 500]
                         [--json reports/bench-fuzz.json] [--include-known-bugs]

One run starts its own mosquitto (logging every packet, so the node's PUBACKs
can be counted), a gateway and a node (``--max-payload 65536``, Counter and
SampleSink) as real processes. Per handler and round it publishes the cases
(strategies in ``bench/_fuzz_strategies.py``: random bytes, random CBOR with
semantic tags, request envelopes with wrong-typed fields and private names,
JSON, deep and huge payloads, bad topic levels), up to ``--window`` awaiting a
reply, each with its own Correlation Data; after every ``--batch`` cases it
checks that both services are alive, never reconnected (no status republished),
answer a probe, and that a real ``continuum_mqtt.Client`` can create and call an
object. It counts outcomes (result, error code, no reply, BAD = unstructured),
and samples the services' RSS before and after each handler's run.

A leak is growth that goes on: round 1 includes warm-up (caches, the exactly-once
result tables filling to their cap), so the verdict compares round 2's growth.
Inputs that trigger a bug already known are skipped and counted (``skipped``);
``--include-known-bugs`` sends them too: the services then die, the run records
the batch, pins the culprit down on a fresh cluster, and starts a new one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter as Histogram
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cbor2
import psutil
from continuum_dev.testing import Deployment, LocalBroker
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

import continuum_mqtt

from . import _fuzz_strategies as fz
from ._common import (
    deployment,
    format_table,
    log,
    options,
    parser,
    terminate_as_interrupt,
    write_json,
)

HANDLERS = list(fz.HANDLERS)
MIB = 1024 * 1024
LEAK_MIB = 4.0  # round-2 growth above this (per handler run) counts as sustained


class AckTracker:
    """Reads the broker log incrementally: QoS 1 deliveries to the node not yet
    acknowledged."""

    def __init__(self, path: str, client_id: str) -> None:
        self.path, self.client_id = path, client_id
        self.offset = 0
        self.open: set[int] = set()

    def unacked(self) -> set[int]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            m = fz._SEND.search(line)
            if m and m.group(1) == self.client_id:
                self.open.add(int(m.group(2)))
                continue
            m = fz._ACK.search(line)
            if m and m.group(1) == self.client_id:
                self.open.discard(int(m.group(2)))
        return set(self.open)


class Rig:
    """Broker, gateway, node, the objects the cases aim at, and the fuzzer."""

    def __init__(self, broker: LocalBroker, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.cluster: Deployment | None = None
        self.fuzzer: fz.Fuzzer | None = None
        self.ctx: fz.Ctx | None = None
        self.admin: continuum_mqtt.Client | None = None
        self.ours: set[str] = set()
        self.sink_seq = 0
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        c = self.cluster = deployment(self.broker.url, self.tmp / f"cluster{self.starts}")
        self.fuzzer = fz.open_target(
            c, "--log-level", "WARNING", reply_timeout=20.0, window=256, optional_wait=0.5
        )
        self.ctx = self.fuzzer.ctx
        assert self.ctx is not None
        self.admin = c.client(timeout=30.0).connect()
        self.ours = {self.ctx.counter, self.ctx.sink}
        self.fresh_victim()
        self.acks = AckTracker(self.broker.log_path, "node-n1")

    def fresh_victim(self) -> None:
        """A new Counter (with an alias) for the control and gateway fuzz to bind,
        promote and delete."""
        assert self.admin is not None and self.ctx is not None and self.fuzzer is not None
        alias = f"fz-victim-{uuid.uuid4().hex[:6]}"
        victim = self.admin.stub(fz.COUNTER).create(alias=alias)
        self.ours.add(victim._id or "")
        self.ctx = dataclasses.replace(self.ctx, victim=victim._id or "", alias=alias)
        self.fuzzer.ctx = self.ctx

    def stop(self) -> None:
        for closer in (self.fuzzer, self.admin):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:  # a dead service must not stop the report
                    log(f"close: {exc!r}")
        self.fuzzer = self.admin = None
        if self.cluster is not None:
            for name in list(self.cluster.procs):
                self.cluster.kill(name)
            self.cluster = None

    # -- measurements ------------------------------------------------------------------------------
    def rss(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        assert self.cluster is not None
        procs = {**self.cluster.procs}
        for name in ("n1", "gateway"):
            p = procs.get(name)
            try:
                out[name] = psutil.Process(p.pid).memory_info().rss if p else None
            except psutil.Error:
                out[name] = None
        bp = self.broker.proc
        out["broker"] = psutil.Process(bp.pid).memory_info().rss if bp else None
        return out

    # -- liveness ------------------------------------------------------------------------------------
    def problems(self, handler: str, full: bool) -> list[str]:
        """What is wrong with the services now (empty: they are fine)."""
        f, c, ctx = self.fuzzer, self.cluster, self.ctx
        assert f is not None and c is not None and ctx is not None
        out = []
        for name in ("n1", "gateway"):
            if not c.alive(name):
                out.append(f"{name} exited")
            if f.flaps(name):
                out.append(f"{name} reconnected or went offline: {f.flaps(name)[:3]}")
        if f.disconnects:
            out.append(f"the broker dropped the fuzzer: {f.disconnects[:3]}")
        if out:
            return out
        probe = {"method": "get", "obj": ctx.counter, "id": f"probe-{uuid.uuid4().hex}"}
        reply = f.request(ctx.topics.node_call("n1"), probe, 20.0)
        if not (isinstance(reply, dict) and reply.get("kind") == "result"):
            out.append(f"node probe: {reply!r:.200}")
        reply = f.request(ctx.topics.gateway_call, {"method": "nodes"}, 20.0)
        if not (isinstance(reply, dict) and reply.get("kind") == "result"):
            out.append(f"gateway probe: {reply!r:.200}")
        if handler == "node_feed":
            out += self.sink_problems()
        if full and not out:
            try:
                with c.client(timeout=20.0) as client:
                    obj = client.stub(fz.COUNTER).create(start=1)
                    if obj.add(1) != 2:
                        out.append("Counter.add gave a wrong result")
                    client.delete(obj)
            except Exception as exc:
                out.append(f"continuum_mqtt.Client create+add failed: {exc!r:.200}")
        return out

    def sink_problems(self) -> list[str]:
        """The fed sink still answers, and a fresh sink bound to the same device
        gets a valid sample (see tests/test_fuzz.py Rig.probe_sink)."""
        f, ctx, c = self.fuzzer, self.ctx, self.cluster
        assert f is not None and ctx is not None and c is not None
        body = {"method": "received", "obj": ctx.sink, "id": f"probe-{uuid.uuid4().hex}"}
        reply = f.request(ctx.topics.node_call("n1"), body, 20.0)
        if not (
            isinstance(reply, dict)
            and (
                reply.get("kind") == "result"
                or (reply.get("error") or {}).get("code") == "payload_too_large"
            )
        ):
            return [f"the fed sink does not answer: {reply!r:.200}"]
        self.sink_seq += 1
        try:
            with c.client(timeout=20.0) as client:
                sentinel = client.stub(fz.SINK).create()
                client.bind_metrics(sentinel, ctx.device, "ingest")
                f.client.publish(
                    ctx.topics.metrics(ctx.device),
                    cbor2.dumps({"dev": "sentinel", "seq": self.sink_seq}),
                    qos=1,
                )
                end = time.monotonic() + 20
                while sentinel.received()["seqs"] != [self.sink_seq]:
                    if time.monotonic() > end:
                        return [f"sentinel sample {self.sink_seq} never arrived"]
                    time.sleep(0.05)
                client.delete(sentinel)
        except continuum_mqtt.ContinuumError as exc:
            return [f"sentinel sink: {exc!r:.200}"]
        return []

    # -- cleaning up between runs -----------------------------------------------------------------
    def clean(self) -> dict[str, int]:
        """Delete what the cases created (objects, aliases, feeds, junk statuses),
        so each run's memory figures start from the same state."""
        f, ctx, admin = self.fuzzer, self.ctx, self.admin
        assert f is not None and ctx is not None and admin is not None
        removed = {"node_objects": 0, "directory_objects": 0, "junk_statuses": 0}
        n = len(f.junk_status_topics)
        f.clear_junk_statuses()
        removed["junk_statuses"] = n
        for obj in admin.objects():
            if obj["id"] not in self.ours:
                try:
                    admin.delete(obj["id"])
                    removed["directory_objects"] += 1
                except continuum_mqtt.ContinuumError:
                    pass
        listing = f.request(ctx.topics.node_ctl("n1"), {"method": "list"}, 30.0)
        for obj in (listing or {}).get("value") or []:
            if obj["id"] not in self.ours:
                f.request(
                    ctx.topics.node_ctl("n1"), {"method": "delete", "kwargs": {"obj": obj["id"]}}
                )
                removed["node_objects"] += 1
        try:
            admin.delete(ctx.victim)
        except continuum_mqtt.ContinuumError:
            pass
        self.ours.discard(ctx.victim)
        self.fresh_victim()
        return removed


def client_traffic(rig: Rig, stop: threading.Event, box: dict[str, Any]) -> None:
    """A live client with calls in flight while its reply topic is fuzzed."""
    assert rig.cluster is not None
    try:
        with rig.cluster.client(timeout=60.0) as c:
            box["reply_topic"] = c._requester.reply_topic
            obj = c.stub(fz.COUNTER).create()
            box["ready"].set()
            done = errors = 0
            while not stop.is_set():
                futs: list[Future[Any]] = [obj.add.future(1) for _ in range(8)]
                for fut in futs:
                    try:
                        fut.result(90)
                        done += 1
                    except Exception as exc:
                        errors += 1
                        box.setdefault("first_error", repr(exc))
            final = obj.get()
            box.update(calls=done, errors=errors, consistent=final == done)
            c.delete(obj)
    except Exception as exc:
        box["crashed"] = repr(exc)
    finally:
        box["ready"].set()


def run_handler(
    rig: Rig, handler: str, cases: int, seed: int, batch: int, include_known: bool
) -> dict[str, Any]:
    f, ctx = rig.fuzzer, rig.ctx
    assert f is not None and ctx is not None
    skipped: Histogram[str] = Histogram()
    problems: list[str] = []
    unpublishable: list[str] = []
    suspects: list[fz.Case] = []
    current: list[fz.Case] = []
    state = {"dead": False, "batches": 0}
    traffic_stop = threading.Event()
    traffic: dict[str, Any] = {"ready": threading.Event()}
    thread = None
    if handler == "client_reply":
        thread = threading.Thread(target=client_traffic, args=(rig, traffic_stop, traffic))
        thread.start()
        traffic["ready"].wait(30)
        rig.ctx = dataclasses.replace(ctx, client_reply=traffic.get("reply_topic", ""))
        f.ctx = ctx = rig.ctx
    strategy = fz.cases_for(ctx, handler)

    def end_batch(final: bool = False) -> None:
        f.flush()
        state["batches"] += 1
        found = rig.problems(handler, full=final or state["batches"] % 5 == 0)
        if found:
            problems.extend(found)
            suspects.extend(current)
            state["dead"] = True
        current.clear()

    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def one(case: fz.Case) -> None:
        if state["dead"]:
            return
        if not include_known:
            bug = fz.known_bug(ctx, handler, case)
            if bug is not None:
                skipped[bug] += 1
                return
        try:
            f.submit(handler, case)
        except ValueError as exc:  # paho refuses to publish it: a harness bug
            unpublishable.append(f"{exc}: {case!r:.300}")
            return
        current.append(case)
        if len(current) >= batch:
            end_batch()

    before = rig.rss()
    sent0, fail0 = f.sent, len(f.failures)
    stats0 = Histogram(f.stats.get(handler, {}))
    t0 = time.perf_counter()
    one()
    if not state["dead"]:
        end_batch(final=True)
    seconds = time.perf_counter() - t0
    if thread is not None:
        traffic_stop.set()
        thread.join(120)
    unacked = sorted(rig.acks.unacked()) if handler == "node_feed" and not state["dead"] else []
    if unacked:
        problems.append(f"{len(unacked)} QoS 1 deliveries to the node never acknowledged")
    after = rig.rss()
    outcomes = Histogram(f.stats.get(handler, {}))
    outcomes.subtract(stats0)
    outcomes = +outcomes
    failures = f.failures[fail0:]
    row: dict[str, Any] = {
        "handler": handler,
        "cases": f.sent - sent0 + sum(skipped.values()),
        "sent": f.sent - sent0,
        "skipped": dict(skipped),
        "outcomes": dict(outcomes.most_common()),
        "failures": [
            {"outcome": x.outcome, "problem": x.problem, "case": x.case.reproducer()}
            for x in failures[:25]
        ],
        "failure_count": len(failures),
        "problems": problems,
        "unpublishable": unpublishable[:10],
        "suspect_batch": [c.reproducer() for c in suspects[:50]],
        "alive": not state["dead"],
        "seconds": round(seconds, 1),
        "cases_per_s": round((f.sent - sent0) / seconds, 1) if seconds else None,
        "rss_before": before,
        "rss_after": after,
        "rss_delta": {
            k: (after[k] - before[k]) if after.get(k) and before.get(k) else None  # type: ignore[operator]
            for k in before
        },
        "examples": f.examples.pop(handler, {}),
    }
    if handler == "client_reply":
        row["client_traffic"] = {k: v for k, v in traffic.items() if k != "ready"}
        if traffic.get("errors") or traffic.get("crashed") or not traffic.get("consistent", False):
            row["problems"].append(f"live client calls: {row['client_traffic']}")
    if suspects:
        row["_suspects"] = suspects  # for pinpointing; dropped from the JSON
    return row


def pinpoint(rig: Rig, handler: str, suspects: list[fz.Case]) -> dict[str, Any] | None:
    """Replay a batch one case at a time on a fresh cluster: the first case after
    which the services are not fine."""
    end = time.monotonic() + 300
    for i, case in enumerate(suspects):
        if time.monotonic() > end:
            log(f"  pinpoint: gave up after {i} cases")
            return None
        case = dataclasses.replace(case)
        assert rig.fuzzer is not None
        rig.fuzzer.submit(handler, case)
        rig.fuzzer.flush(30)
        found = rig.problems(handler, full=False)
        if found:
            return {"index": i, "case": case.reproducer(), "problems": found}
    return None


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:+.1f}"


def top_codes(outcomes: dict[str, int], k: int = 3) -> str:
    errs = [(o.removeprefix("error:"), n) for o, n in outcomes.items() if o.startswith("error:")]
    errs.sort(key=lambda x: -x[1])
    return ", ".join(f"{o} {n}" for o, n in errs[:k])


def main(argv: list[str] | None = None) -> int:
    ap = parser("fuzz", __doc__.split("\n\n")[0])
    ap.add_argument("--handlers", default=",".join(HANDLERS), help="comma-separated")
    options(
        ap,
        """
        cases               10000  cases per handler and round
        rounds              2      rounds (memory growth is compared)
        seed                1      hypothesis seed
        batch               500    cases between liveness checks
        include-known-bugs  -      send the inputs of known bugs too
        """,
    )
    args = ap.parse_args(argv)
    # the live client of client_reply logs each junk reply it ignores (as it should)
    logging.getLogger("continuum.client").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Generating overly large repr")
    handlers = [h for h in args.handlers.split(",") if h]
    for h in handlers:
        if h not in fz.HANDLERS:
            ap.error(f"unknown handler {h!r}; one of {', '.join(HANDLERS)}")
    tmp = Path(tempfile.mkdtemp(prefix="continuum-fuzz-"))
    rows: list[dict[str, Any]] = []
    pinned: list[dict[str, Any]] = []
    t_start = time.time()
    with terminate_as_interrupt():
        broker = LocalBroker(extra_config="log_type all\n", log_path=str(tmp / "mosquitto.log"))
        broker.start()
        rig = Rig(broker, tmp)
        try:
            rig.start()
            log(f"cluster up under {rig.ctx.root if rig.ctx else '?'}; logs in {tmp}")
            for rnd in range(1, args.rounds + 1):
                for i, handler in enumerate(handlers):
                    seed = args.seed * 1000 + rnd * 100 + i
                    log(f"round {rnd}: {handler}, {args.cases} cases (seed {seed})")
                    row = run_handler(
                        rig, handler, args.cases, seed, args.batch, args.include_known_bugs
                    )
                    row["round"] = rnd
                    suspects = row.pop("_suspects", [])
                    if row["alive"]:
                        row["cleaned"] = rig.clean()
                    log(
                        f"  {row['sent']} sent, {sum(row['skipped'].values())} skipped, "
                        f"{row['failure_count']} failures, alive={row['alive']}, "
                        f"{row['seconds']} s, node {mib(row['rss_delta']['n1'])} MiB, "
                        f"gateway {mib(row['rss_delta']['gateway'])} MiB"
                    )
                    for p in row["problems"][:5]:
                        log(f"  PROBLEM: {p}")
                    for x in row["failures"][:3]:
                        log(f"  FAILURE: {x['outcome']}: {x['problem'][:200]}")
                    rows.append(row)
                    if not row["alive"]:
                        log("  services not fine: restarting, then replaying the batch")
                        rig.stop()
                        rig.start()
                        found = pinpoint(rig, handler, suspects)
                        if found:
                            found.update(handler=handler, round=rnd)
                            pinned.append(found)
                            log(f"  culprit: {found['case']}")
                        rig.stop()
                        rig.start()
        finally:
            rig.stop()
            broker.stop()
    total_s = time.time() - t_start

    # -- the report ----------------------------------------------------------------------------------
    table = []
    for r in rows:
        o = r["outcomes"]
        table.append(
            {
                "round": r["round"],
                "handler": r["handler"],
                "cases": r["cases"],
                "skipped": sum(r["skipped"].values()),
                "results": sum(n for k, n in o.items() if "result" in k),
                "errors": sum(n for k, n in o.items() if k.startswith("error:")),
                "top": top_codes(o),
                "noreply": o.get("no_reply(ok)", 0),
                "bad": sum(n for k, n in o.items() if k.startswith("BAD") or k == "no_reply"),
                "alive": "yes" if r["alive"] and not r["problems"] else "NO",
                "rate": r["cases_per_s"],
                "node": mib(r["rss_delta"]["n1"]),
                "gw": mib(r["rss_delta"]["gateway"]),
                "node_after": f"{(r['rss_after']['n1'] or 0) / MIB:.0f}",
                "gw_after": f"{(r['rss_after']['gateway'] or 0) / MIB:.0f}",
            }
        )
    cols = (
        "round:rnd> | handler< | cases> | skipped:known> | results> | errors> | "
        "noreply:no reply ok> | bad:BAD> | alive< | rate:cases/s> | node:node dRSS MiB> | "
        "node_after:node RSS> | gw:gw dRSS MiB> | gw_after:gw RSS> | top:top error codes<"
    )
    leak: dict[str, Any] = {}
    if args.rounds >= 2:
        for h in handlers:
            runs = [r for r in rows if r["handler"] == h and r["alive"]]
            if len(runs) >= 2:
                last = runs[-1]["rss_delta"]
                leak[h] = {
                    "node_delta_mib_by_round": [
                        round((r["rss_delta"]["n1"] or 0) / MIB, 2) for r in runs
                    ],
                    "gateway_delta_mib_by_round": [
                        round((r["rss_delta"]["gateway"] or 0) / MIB, 2) for r in runs
                    ],
                    "verdict": "GROWS"
                    if max(last["n1"] or 0, last["gateway"] or 0) > LEAK_MIB * MIB
                    else "flat",
                }
    print(
        f"\nfuzz: {len(handlers)} handler(s) x {args.rounds} round(s) x {args.cases} cases, "
        f"seed {args.seed}, {os.cpu_count()} cores, {total_s / 60:.1f} min"
    )
    print(format_table(table, cols))
    if leak:
        print(f"\nmemory, round by round (MiB; 'GROWS' if the last round adds > {LEAK_MIB} MiB):")
        for h, v in leak.items():
            print(
                f"  {h:<14} node {v['node_delta_mib_by_round']}  "
                f"gateway {v['gateway_delta_mib_by_round']}  {v['verdict']}"
            )
    bad = [r for r in rows if r["failure_count"] or r["problems"] or not r["alive"]]
    for r in bad:
        print(f"\n{r['handler']} round {r['round']}: {r['problems'][:3]}")
        for x in r["failures"][:5]:
            print(f"  {x['outcome']}: {x['problem'][:160]}\n    {x['case']['payload_repr'][:200]}")
    for p in pinned:
        print(f"\nculprit ({p['handler']}): {p['case']}")
    report = {
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "minutes": round(total_s / 60, 1),
        "rows": rows,
        "leak_check": leak,
        "pinpointed": pinned,
        "table": table,
    }
    write_json(args.json, report, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
