"""The paper's distributed workload (Section 6, Figures 11 and 12): Cascade
SVM over a dataset's blocks spread across nodes, weak scaling from 1 to 4
nodes with a fixed number of points per node, small blocks and large blocks,
three ways with the same result:

* **active**: each block fits its SVC where it lives; a driver on the worker
  node ``w`` merges the support vectors (``Driver.cascade_svm``);
* **shipping**: every block's points are fetched to ``w``, which computes
  (``ship=True``: what a plain object store allows);
* **local**: one process (this one) on the same blocks in memory.

    python -m bench.cascade            # 1-4 nodes, 40,000 points of 8 features per node
    python -m bench.cascade --quick    # 1-2 nodes, 4,000 points per node (about a minute)
    python -m bench.cascade --kmeans   # also k-means on the same blocks (table rows only)

Topology: a hub network namespace holds mosquitto, the gateway and this
client; every node (storage nodes ``n1..n4``, worker ``w``) has a namespace
of its own, joined to the hub by a veth pair capped by ``tbf`` (``--rate``)
and the WAN relay of bench/_wanrelay.py (``--delay-ms`` each way, no loss):
a byte between a node and the broker costs what it costs between machines.
The relays count those bytes (every node's link, both ways: block data,
results, calls). Without root (no ``ip netns``) the nodes connect through
relays on loopback: delay and byte counts, but no bandwidth cap (said in
the report). Each node is pinned to ``--cores-per-node`` cores of its own
when the machine has enough (``taskset``); scikit-learn's SVC holds the GIL,
so a node fits one block at a time whatever its cores.

Regimes (the paper: 192 small blocks or 24 large ones per 48-core node,
scaled to 2 cores): small, 16 blocks per node; large, 2 blocks per node.
Table on stdout, JSON in reports/bench-cascade.json, figures
reports/cascade-small.png and reports/cascade-large.png (time and bytes
against nodes, in the style of the paper's Figures 11 and 12).
Goals: active >= 2x faster than shipping at the most nodes with large
blocks, never slower with small ones; >= 10x fewer bytes (``--quick``'s
blocks of 250 points keep a quarter of their points as support vectors:
its byte goal fails by design; it checks that everything runs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from continuum_dev.testing import BROKER_SETTINGS, find_mosquitto

import continuum_mqtt

from . import _common as common
from ._netns import Netns, RelayControl, unavailable_reason

BLOCK = "continuum_node.ml.Block"
DRIVER = "continuum_node.ml.Driver"
REGIMES = {"small": 16, "large": 2}  # blocks per node
WAYS = ("active", "shipping", "local")
RELAY_PORT = 18830
HUB_PORT = 1883
COLUMNS = (
    "regime< | nodes> | blocks> | points> | algorithm< | way< | seconds> | bytes:bytes moved> | "
    "accuracy> | same:same model< | speedup:vs shipping>"
)
GOALS_TEXT = {
    "large_speedup_min": 2.0,
    "small_speedup_min": 1.0,
    "bytes_ratio_min": 10.0,
}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(
        "cascade",
        "Cascade SVM weak scaling: computing where the blocks live against "
        "shipping them to one worker, nodes behind an emulated link.",
        quick="1-2 nodes, 4,000 points per node, no repeat (about a minute)",
    )
    common.options(
        p,
        """
        nodes            1,2,3,4  storage node counts (weak scaling)
        regimes          small,large  block regimes (small: 16 blocks per node, large: 2)
        points-per-node  40000    points per storage node
        cols             8        features per point
        rate             100mbit  tbf cap of every node's link (each way); 'none': no cap
        delay-ms         1.0      one-way delay of every node's link (WAN relay)
        cores-per-node   2        cores pinned to each node when the machine has enough
        shape            slab     the points (continuum_node.ml.make_points): slab (few support vectors) or ball
        max-iter         1        Cascade SVM iterations
        window           1        block calls in flight per node (the active way; SVC holds the GIL, so 1)
        repeat           2        runs per way and point; the fastest is reported
        seed             1        seed of the first block (block i: seed + i)
        figures          reports  folder of the PNG figures (relative to the repo root)
        kmeans           -        also k-means (k=8, 10 steps) on the same blocks, three ways (table only)
        no-netns         -        links on loopback even where namespaces work
        keep-logs        -        keep the service logs
        """,
    )
    return p


# -- the star topology ---------------------------------------------------------------------
def _sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=15)


class Star:
    """mosquitto and the gateway in a hub; each node behind its own link
    (namespace + veth + tbf + relay, or a loopback relay without root)."""

    def __init__(self, tmp: Path, args: argparse.Namespace, node_ids: list[str]) -> None:
        self.args = args
        self.node_ids = node_ids
        self.netns = not args.no_netns and unavailable_reason() is None
        self.tag = uuid.uuid4().hex[:6]
        self.hub = Netns(f"ctm-hub-{self.tag}") if self.netns else None
        self.spaces: dict[str, Netns] = {}
        self.relays: dict[str, Any] = {}
        self.dep = common.deployment(
            f"mqtt://127.0.0.1:{HUB_PORT}" if self.netns else None,
            tmp,
            log_level="WARNING",
            keep=args.keep_logs,
            prefix=self.hub.exec_args() if self.hub else (),
        )
        self.cores = _core_sets(len(node_ids), args.cores_per_node)

    def describe(self) -> str:
        cap = "no cap" if self.args.rate == "none" or not self.netns else self.args.rate
        where = "namespaces, veth + tbf" if self.netns else "loopback (no root: no rate cap)"
        return f"{where}; {cap}, {self.args.delay_ms:g} ms each way per node link"

    def start(self) -> None:
        if self.hub is not None:
            self.hub.create()
            conf = Path(self.dep.tmp) / "hub-broker.conf"
            conf.write_text(
                f"listener {HUB_PORT} 0.0.0.0\nallow_anonymous true\npersistence false\n"
                f"user root\nlog_type error\nlog_type warning\n{BROKER_SETTINGS}\n"
            )
            conf.chmod(0o644)
            self.dep.spawn("broker", [find_mosquitto() or "mosquitto", "-c", str(conf)])
            time.sleep(0.5)
        else:
            self.dep.open()
        self.dep.start_gateway(wait=False)  # waited for below, from inside the hub
        for i, nid in enumerate(self.node_ids, start=1):
            self._start_node(i, nid)
        with self.client() as c:
            self.dep.wait_nodes(self.node_ids, 60, client=c)

    def _start_node(self, i: int, nid: str) -> None:
        target = ("127.0.0.1", self.dep.broker.port if self.dep.broker else HUB_PORT)
        prefix: list[str] = []
        if self.hub is not None:
            ns = Netns(f"ctm-{nid}-{self.tag}").create()
            self.spaces[nid] = ns
            hub_if, node_if = f"ctmh{self.tag}{i}", f"ctmn{self.tag}{i}"
            _sh("ip", "link", "add", hub_if, "netns", self.hub.name, "type", "veth",
                "peer", "name", node_if, "netns", ns.name)  # fmt: skip
            self.hub.ip("addr", "add", f"10.78.{i}.1/24", "dev", hub_if)
            ns.ip("addr", "add", f"10.78.{i}.2/24", "dev", node_if)
            self.hub.ip("link", "set", hub_if, "up")
            ns.ip("link", "set", node_if, "up")
            if self.args.rate != "none":
                for space, dev in ((self.hub, hub_if), (ns, node_if)):
                    space.run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                              self.args.rate, "burst", "32kb", "latency", "200ms")  # fmt: skip
            target = (f"10.78.{i}.1", HUB_PORT)
            prefix = ns.exec_args()
        relay = self.dep.spawn(
            f"relay-{nid}",
            [sys.executable, "-m", "bench._wanrelay", "--listen", "127.0.0.1:0",
             "--target", f"{target[0]}:{target[1]}", "--delay-ms", str(self.args.delay_ms),
             "--loss", "0", "--max-buffer", str(4 << 20)],
            prefix=prefix, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )  # fmt: skip
        control = RelayControl(relay)
        port = control.read_line(15)["port"]
        self.relays[nid] = control
        pin = ["taskset", "-c", self.cores[i - 1]] if self.cores else []
        self.dep.start_node(
            nid,
            "--broker", f"mqtt://127.0.0.1:{port}",
            modules=["continuum_node.ml"],
            prefix=[*prefix, *pin],
            wait=False,
        )  # fmt: skip

    @contextlib.contextmanager
    def client(self) -> Iterator[continuum_mqtt.Client]:
        c = continuum_mqtt.Client(self.dep.url, root=self.dep.root, timeout=600)
        if self.hub is not None:
            with self.hub.entered():
                c.connect()
        else:
            c.connect()
        end = time.monotonic() + 30
        while "" not in c._node_state and time.monotonic() < end:  # the gateway's status
            time.sleep(0.02)
        try:
            yield c
        finally:
            c.close()

    def reset_bytes(self) -> None:
        for r in self.relays.values():
            r.reset()

    def bytes_moved(self) -> int:
        total = 0
        for r in self.relays.values():
            s = r.stats()
            total += int(s["up"]["bytes"]) + int(s["down"]["bytes"])
        return total

    def stop(self) -> None:
        self.dep.close()
        for ns in [*self.spaces.values(), *([self.hub] if self.hub else [])]:
            with contextlib.suppress(Exception):
                ns.delete()


def _core_sets(count: int, per: int) -> list[str]:
    """A ``taskset`` core list per node, or none when the machine has too few."""
    cores = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cores) < count * per:
        return []
    return [",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(count)]


# -- one point of the figures -----------------------------------------------------------------
def measure(
    star: Star, c: continuum_mqtt.Client, driver: Any, regime: str, n: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from continuum_node import ml

    per_node = REGIMES[regime]
    count = n * per_node
    rows = args.points_per_node // per_node
    seeds = [args.seed + i for i in range(count)]
    nodes = [f"n{i}" for i in range(1, n + 1)]
    name = f"cascade-{regime}-{n}-{uuid.uuid4().hex[:6]}"
    ds = c.create_dataset(name, BLOCK, count, kwargs={"cols": args.cols}, nodes=nodes)
    try:
        filled = ds.fan_out(
            "generate",
            rows=rows,
            cols=args.cols,
            shape=args.shape,
            per_block=[{"seed": s} for s in seeds],
            timeout=300,
        )
        filled.raise_first()
        params = {"C": 1.0, "gamma": 1.0 / args.cols}
        test_x, test_y = ml.make_points(10**6, 2000, args.cols, args.shape)
        results: dict[str, dict[str, Any]] = {}
        out = []
        for way in WAYS:
            best: dict[str, Any] | None = None
            for _ in range(args.repeat):
                star.reset_bytes()
                t0 = time.monotonic()
                if way == "local":
                    blocks = ml.blocks_of(seeds, rows, args.cols, args.shape)
                    t0 = time.monotonic()  # the data is resident in the other ways too
                    res = ml.cascade_svm_local(blocks, params, args.max_iter)
                else:
                    res = ds.reduce(
                        driver, "cascade_svm", params=params, max_iter=args.max_iter,
                        ship=way == "shipping", window=args.window, budget=3000, timeout=3600,
                    )  # fmt: skip
                seconds = time.monotonic() - t0
                moved = 0 if way == "local" else star.bytes_moved()
                if best is None or seconds < best["seconds"]:
                    best = {"seconds": seconds, "bytes": moved, "result": res}
            assert best is not None
            results[way] = best["result"]
            out.append(
                {
                    "regime": regime,
                    "algorithm": "svm",
                    "nodes": n,
                    "blocks": count,
                    "points": count * rows,
                    "way": way,
                    "seconds": round(best["seconds"], 2),
                    "bytes": best["bytes"],
                    "accuracy": round(ml.accuracy(best["result"], test_x, test_y), 4),
                    "support_vectors": len(ml.support_of(best["result"])[0]),
                }
            )
        ref = ml.support_of(results["local"])
        for row in out:
            got = ml.support_of(results[row["way"]])
            row["same"] = bool(
                got[0].shape == ref[0].shape
                and (got[0] == ref[0]).all()
                and (got[1] == ref[1]).all()
            )
        ship = next(r for r in out if r["way"] == "shipping")
        for row in out:
            row["speedup"] = round(ship["seconds"] / row["seconds"], 2) if row["seconds"] else ""
        common.log(
            f"{regime} x{n}: "
            + ", ".join(f"{r['way']} {r['seconds']} s {r['bytes']} B" for r in out)
        )
        if args.kmeans:
            out += measure_kmeans(star, ds, driver, seeds, rows, out[0], args)
        return out
    finally:
        ds.delete()


def measure_kmeans(
    star: Star,
    ds: Any,
    driver: Any,
    seeds: list[int],
    rows: int,
    base: dict[str, Any],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """k-means (k=8, at most 10 Lloyd steps) on the same blocks, three ways:
    rows of the table with ``algorithm`` kmeans (no accuracy: the inertia).
    Each step is a fan-out of light calls (numpy, not the GIL-bound SVC), so
    8 in flight per node: latency, not compute, is what a step costs."""
    from continuum_node import ml

    out, centres = [], {}
    for way in WAYS:
        star.reset_bytes()
        if way == "local":
            blocks = ml.blocks_of(seeds, rows, args.cols, args.shape)
            t0 = time.monotonic()
            res = ml.kmeans_local(blocks, 8, max_iter=10)
        else:
            t0 = time.monotonic()
            res = ds.reduce(
                driver, "kmeans", k=8, max_iter=10, ship=way == "shipping",
                window=8, budget=3000, timeout=3600,
            )  # fmt: skip
        seconds = time.monotonic() - t0
        centres[way] = ml.unpack(res["centres"])
        out.append(
            {
                **{k: base[k] for k in ("regime", "nodes", "blocks", "points")},
                "algorithm": "kmeans",
                "way": way,
                "seconds": round(seconds, 2),
                "bytes": 0 if way == "local" else star.bytes_moved(),
                "accuracy": f"inertia {res['inertia']:.1f}",
            }
        )
    ship = next(r for r in out if r["way"] == "shipping")
    for row in out:
        row["same"] = bool((centres[row["way"]] == centres["local"]).all())
        row["speedup"] = round(ship["seconds"] / row["seconds"], 2) if row["seconds"] else ""
    return out


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def pick(regime: str, way: str, n: int) -> dict[str, Any] | None:
        return next(
            (r for r in rows if (r["regime"], r["way"], r["nodes"]) == (regime, way, n)), None
        )

    out = []
    top = max((r["nodes"] for r in rows), default=0)
    a, s = pick("large", "active", top), pick("large", "shipping", top)
    if a and s:
        x = s["seconds"] / a["seconds"]
        out.append(
            {
                "goal": f"large blocks, {top} nodes: active >= 2x faster",
                "value": round(x, 2),
                "pass": x >= 2,
            }
        )
    small = [
        (pick("small", "active", n), pick("small", "shipping", n))
        for n in sorted({r["nodes"] for r in rows})
    ]
    small = [(a, s) for a, s in small if a and s]
    if small:
        worst = min(s["seconds"] / a["seconds"] for a, s in small if a and s)
        out.append(
            {
                "goal": "small blocks: active never slower",
                "value": round(worst, 2),
                "pass": worst >= 1,
            }
        )
    ratios = [
        s["bytes"] / max(1, a["bytes"])
        for a, s in (
            (pick(r["regime"], "active", r["nodes"]), r) for r in rows if r["way"] == "shipping"
        )
        if a
    ]
    if ratios:
        out.append(
            {
                "goal": "bytes moved >= 10x fewer",
                "value": round(min(ratios), 1),
                "pass": min(ratios) >= 10,
            }
        )
    agree = all(r["same"] for r in rows)
    out.append({"goal": "the three ways give the same model", "value": agree, "pass": agree})
    return out


# -- figures -----------------------------------------------------------------------------------
def figures(rows: list[dict[str, Any]], folder: Path, link: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    style = {"active": ("tab:blue", "o"), "shipping": ("tab:red", "s"), "local": ("tab:gray", "^")}
    for regime in sorted({r["regime"] for r in rows}):
        mine = [r for r in rows if r["regime"] == regime]
        fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
        for way in WAYS:
            pts = sorted((r["nodes"], r["seconds"], r["bytes"]) for r in mine if r["way"] == way)
            if not pts:
                continue
            color, marker = style[way]
            ax_t.plot(
                [p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=way
            )
            if way != "local":
                ax_b.plot(
                    [p[0] for p in pts],
                    [max(1, p[2]) / 1e6 for p in pts],
                    marker=marker,
                    color=color,
                    label=way,
                )
        per = REGIMES[regime]
        ax_t.set_title(f"Cascade SVM, {regime} blocks ({per} per node): time")
        ax_t.set_xlabel("nodes (fixed points per node)")
        ax_t.set_ylabel("execution time (s)")
        ax_t.set_ylim(bottom=0)
        ax_b.set_title("bytes over the node links")
        ax_b.set_xlabel("nodes")
        ax_b.set_ylabel("MB (log)")
        ax_b.set_yscale("log")
        for ax in (ax_t, ax_b):
            ax.set_xticks(sorted({r["nodes"] for r in mine}))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(link, fontsize=9)
        fig.tight_layout()
        path = folder / f"cascade-{regime}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = common.machine(args)
    counts = sorted({int(x) for x in str(args.nodes).split(",")})
    regimes = [r for r in str(args.regimes).split(",") if r]
    for r in regimes:
        if r not in REGIMES:
            raise SystemExit(f"unknown regime {r!r}: {sorted(REGIMES)}")
    node_ids = [f"n{i}" for i in range(1, max(counts) + 1)] + ["w"]
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cascade-") as tmp:
        star = Star(Path(tmp), args, node_ids)
        try:
            star.start()
            meta["link"] = star.describe()
            meta["pinned"] = star.cores
            common.log(f"nodes {node_ids} up; {meta['link']}")
            with star.client() as c:
                driver = c.stub(DRIVER).create(node="w")
                warm = c.create_dataset(
                    f"warm-{star.tag}", BLOCK, len(node_ids) - 1, kwargs={"cols": 4}
                )
                warm.fan_out("generate", seed=0, rows=50, cols=4).raise_first()
                warm.reduce(driver, "cascade_svm", timeout=120)  # scikit-learn loaded on every node
                warm.reduce(driver, "cascade_svm", ship=True, timeout=120)
                warm.delete()
                for regime in regimes:
                    for n in counts:
                        rows += measure(star, c, driver, regime, n, args)
        finally:
            star.stop()
    meta["seconds"] = round(time.monotonic() - t0, 1)
    svm = [r for r in rows if r["algorithm"] == "svm"]
    written = figures(svm, common.REPO / args.figures, meta.get("link", ""))
    report = goals(svm)
    if len(svm) < len(rows):
        agree = all(r["same"] for r in rows if r["algorithm"] != "svm")
        report.append({"goal": "k-means: the three ways agree", "value": agree, "pass": agree})
    return {"meta": meta, "table": rows, "goals": report, "figures": written}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.nodes, args.points_per_node, args.repeat = "1,2", 4000, 1
    result = common.run_or_interrupted(run, args, COLUMNS)
    if result is None:
        return 130
    print()
    for g in result["goals"]:
        print(f"{'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']}")
    print(f"figures: {', '.join(result['figures'])}")
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
