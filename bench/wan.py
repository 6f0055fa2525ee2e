"""continuum across a bridged edge-to-cloud topology, over an emulated WAN, beside
loopback: call latency, pipelined throughput, and the bytes that cross the bridge
per call and per metrics sample.

    sudo python -m bench.wan            # about a minute; needs root (network namespaces)
    python -m bench.wan --quick         # fewer calls (about 30 s)

It builds the topology of the tests (bench/_netns.py, docs/topology.md): an EDGE
and a CLOUD network namespace joined by a veth pair, a site mosquitto bridged
(deploy/bridge/, TLS, two connections) to a cloud mosquitto, a gateway and two
nodes on the cloud side, the WAN relay (bench/_wanrelay.py) on the bridge link and
tbf on the veth ends. Then, with the same processes:

* ``loopback``: a client on the cloud host talking to the cloud broker directly
  (one broker, no bridge, no WAN): the ordinary single-site figure;
* ``bridge``: an edge client on the site broker, across the bridge with the
  relay passing bytes through untouched and no tbf (the bridge's own cost);
* ``bridge+WAN``: the same with the WAN conditions (default 50 ms each way, 1 %
  segment loss as retransmission stalls, 10 Mbit/s each way).

Bytes across the bridge are counted by the relay (both directions, TLS records
and MQTT packets, not TCP/IP headers) over a series of sequential calls
(``Counter.add(1)``: request, reply and both PUBACKs) and over a series of
metrics samples (the agent's wire format, QoS 1, fed by the broker to a
``SampleSink`` on a node via ``bind_metrics``). The bridge's keepalive is 60 s
here, so pings add nothing to these counts.

The table goes to stdout, progress to stderr, the figures to
reports/bench-wan.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from continuum_dev.testing import wait_for

from ._common import columns, format_table, log, machine, options, parser, write_json
from ._timing import pipelined, sequential, summarize

CLASS = "examples.counter.Counter"
SINK = "examples.sink.SampleSink"

COLUMNS = columns(
    "path< | conditions< | p50:p50 ms> | p90:p90 ms> | p99:p99 ms> | rate:calls/s> | "
    "call_bytes:bytes/call> | sample_bytes:bytes/sample>"
)


def build_parser() -> argparse.ArgumentParser:
    p = parser(
        "wan",
        "Call latency, pipelined throughput and bridge bytes per call and per sample of "
        "continuum over a bridged edge-to-cloud topology with an emulated WAN, beside "
        "loopback. Builds (and removes) its own network namespaces: needs root.",
        quick="fewer calls and samples (about 30 s)",
    )
    options(
        p,
        """
        calls            300     sequential calls per path
        pipelined-calls  3000    calls in the throughput run
        window           64      calls in flight when pipelined
        samples          500     metrics samples per path
        warmup           20      warm-up calls per path
        delay-ms         50.0    WAN delay each way
        loss             0.01    WAN segment loss
        rate             10mbit  WAN bandwidth each way, tc syntax
        keep-logs        -       keep the processes' logs
        """,
    )
    return p


def _bytes(stats: dict[str, Any], n: int) -> dict[str, float]:
    up, down = stats["up"]["bytes"], stats["down"]["bytes"]
    return {
        "up": round(up / n, 1),
        "down": round(down / n, 1),
        "total": round((up + down) / n, 1),
        "loss_stalls": stats["up"]["stalls"] + stats["down"]["stalls"],
    }


def measure_calls(client: Any, args: argparse.Namespace, topo: Any | None) -> dict[str, Any]:
    obj = client.stub(CLASS).create(start=0)
    try:
        add = obj.add
        sequential(lambda: add(1), 0, args.warmup)
        if topo is not None:
            time.sleep(0.3)
            topo.relay.reset()
        lat = sequential(lambda: add(1), args.calls)
        out: dict[str, Any] = {"sequential": summarize(lat)}
        if topo is not None:
            time.sleep(0.5)  # the last PUBACKs cross too
            out["bridge_bytes_per_call"] = _bytes(topo.relay.stats(), args.calls)
        before = add(0)
        out["pipelined"] = pipelined(lambda: add.future(1), args.pipelined_calls, args.window)
        moved = add(0) - before
        if moved != args.pipelined_calls:
            raise RuntimeError(f"the counter moved by {moved}, not {args.pipelined_calls}")
        return out
    finally:
        client.delete(obj)


def measure_samples(cloud: Any, args: argparse.Namespace, topo: Any, device: str) -> dict[str, Any]:
    """``args.samples`` samples at 200/s from a publisher on the site broker into a
    sink on n2, watched from the cloud side (so that only the samples and their
    PUBACKs cross the bridge meanwhile); the bridge bytes per sample."""
    sink = cloud.stub(SINK).create(node="n2")
    try:
        cloud.bind_metrics(sink, device, "ingest")
        pub = topo.publisher(device)
        try:
            time.sleep(0.5)
            topo.relay.reset()
            t0 = time.perf_counter()
            for _ in range(args.samples):
                pub.publish()
                time.sleep(1 / 200)
            wait_for(
                lambda: len(sink.received()["seqs"]) >= args.samples,
                60,
                what=f"{args.samples} samples in the sink",
            )
            elapsed = time.perf_counter() - t0
            time.sleep(0.5)  # the last PUBACKs cross too
            stats = topo.relay.stats()
        finally:
            pub.close()
        got = sink.received()
        if got["seqs"] != list(range(1, args.samples + 1)):
            raise RuntimeError(f"the sink got {len(got['seqs'])} of {args.samples} samples")
        return {
            "bridge_bytes_per_sample": _bytes(stats, args.samples),
            "seconds": round(elapsed, 2),
        }
    finally:
        cloud.unbind_metrics(sink, device)
        cloud.delete(sink)


def _row(name: str, conditions: str, fig: dict[str, Any]) -> dict[str, Any]:
    seq = fig["calls"]["sequential"]
    call_b = fig["calls"].get("bridge_bytes_per_call")
    sample_b = fig.get("samples", {}).get("bridge_bytes_per_sample")
    return {
        "path": name,
        "conditions": conditions,
        "p50": f"{seq['p50_ms']:.2f}",
        "p90": f"{seq['p90_ms']:.2f}",
        "p99": f"{seq['p99_ms']:.2f}",
        "rate": f"{fig['calls']['pipelined']['calls_per_s']:.0f}",
        "call_bytes": f"{call_b['total']:.0f} ({call_b['up']:.0f} up)" if call_b else "-",
        "sample_bytes": f"{sample_b['total']:.0f} ({sample_b['up']:.0f} up)" if sample_b else "-",
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from ._netns import Topology, Wan, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"bench.wan: cannot build the topology: {reason}")
    wan = Wan(delay_ms=args.delay_ms, loss=args.loss, rate=args.rate or None)
    # start with no impairment; the WAN is switched on for the last path
    topo = Topology(tmp, Wan(delay_ms=0.0, loss=0.0, rate=None), keepalive=60, log_level="WARNING")
    results: dict[str, Any] = {}
    rows = []
    with topo:
        log(f"topology up: {topo.edge.name} <-> {topo.cloud.name}, logs in {tmp}")
        cloud = topo.cloud_client(timeout=30.0)
        try:
            log(f"loopback: {args.calls} sequential calls, {args.pipelined_calls} pipelined")
            fig: dict[str, Any] = {"calls": measure_calls(cloud, args, None)}
            results["loopback"] = fig
            rows.append(_row("loopback", "one broker, no bridge", fig))

            for name, cond in (("bridge", None), ("bridge+WAN", wan)):
                if cond is not None:
                    assert topo.relay is not None
                    topo.relay.set(cond.delay_ms, cond.loss)
                    topo.set_rate(cond.rate)
                    time.sleep(0.5)
                label = cond.describe() if cond is not None else "TLS bridge, no impairment"
                log(f"{name} ({label}): calls")
                edge = topo.client(timeout=60.0)
                try:
                    fig = {"calls": measure_calls(edge, args, topo)}
                finally:
                    edge.close()
                log(f"{name}: {args.samples} samples")
                fig["samples"] = measure_samples(
                    cloud, args, topo, f"bench-{name.replace('+', '-')}"
                )
                fig["conditions"] = label
                results[name] = fig
                rows.append(_row(name, label, fig))
        finally:
            cloud.close()
    return {"paths": results, "table": rows, "wan": wan.__dict__}


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **machine(args),
        "qos": 1,
        "bridge": "deploy/bridge/site-bridge.conf.j2 (TLS 1.2+, MQTT 5 + MQTT 3.1.1 replies)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.calls, args.pipelined_calls, args.samples = 100, 1000, 200
    if min(args.calls, args.pipelined_calls, args.window, args.samples) < 1:
        build_parser().error("counts and --window must be at least 1")
    meta = _meta(args)
    tmp = Path(tempfile.mkdtemp(prefix="continuum-bench-wan-"))
    t0 = time.monotonic()
    try:
        result = run(args, tmp)
    except KeyboardInterrupt:
        log("interrupted; the topology was torn down")
        return 130
    meta["seconds"] = round(time.monotonic() - t0, 1)
    result = {"meta": meta, **result}
    print(format_table(result["table"], COLUMNS))
    print(
        "\nbytes: both directions across the bridge (TLS records + MQTT), per call "
        "(request, reply, both PUBACKs) and per sample (PUBLISH + PUBACK); calls/s: "
        f"pipelined, {args.window} in flight"
    )
    write_json(args.json, result)
    if not args.keep_logs:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
