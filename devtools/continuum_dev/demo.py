"""``continuum demo``: the paper's workload end to end; ``continuum up``: a
local deployment for development.

The demo runs on one machine: a local deployment (mosquitto, a gateway, one
node hosting ``continuum_node.forecast``), the one-process baselines
(:mod:`continuum_dev.baselines`), the edge client process (no torch;
``examples.forecast_edge``, found in the folder ``--project``, default the
current directory), a fresh-versus-after-burst training comparison and the
install footprints; then :mod:`continuum_dev.report` writes
``forecast-report.md``, ``forecast-report.json`` and PNG figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import continuum_mqtt
from continuum_mqtt.service import DEFAULT_ROOT, setup_logging, wait_for_signal

from . import report
from .testing import Deployment, rss_mb

__all__ = ["add_demo_arguments", "add_up_arguments", "fresh_vs_burst", "run_demo", "run_up"]

DEFAULT_MODULES = ["examples.counter", "continuum_node.forecast"]
DATASET = "node_3_utilisation.csv"


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- continuum up ---------------------------------------------------------------------------
def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="use this broker instead of starting one")
    p.add_argument(
        "--port", type=int, default=1883, help="port of the broker started (default: %(default)s)"
    )
    p.add_argument(
        "--nodes", type=int, default=1, help="number of cloud nodes (default: %(default)s)"
    )
    p.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=None,
        help="module of application classes (repeatable; default: examples.counter and "
        "continuum_node.forecast; found in the current directory or installed)",
    )
    p.add_argument(
        "--state-dir",
        default="var/continuum",
        help="gateway DB, node snapshots and logs (default: %(default)s)",
    )


def run_up(args: argparse.Namespace) -> int:
    setup_logging("INFO")
    state = Path(args.state_dir)
    dep = Deployment(
        args.broker,
        state,
        root=DEFAULT_ROOT,
        logs=state / "logs",
        broker_options={"port": args.port},
    )
    nodes = [f"node{i + 1}" for i in range(args.nodes)]
    with dep:
        dep.start(nodes, modules=args.modules or DEFAULT_MODULES, durable=True)
        print(f"continuum is up: broker {dep.url}, nodes {', '.join(nodes)}; logs in {dep.logs}")
        print(f"try: python -m examples.counter_demo {dep.url}    (Ctrl-C to stop)")
        wait_for_signal()
    return 0


# -- continuum demo ---------------------------------------------------------------------------
def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="training runs, seeds 0..N-1 (paper: 20; default: %(default)s)",
    )
    p.add_argument(
        "--epochs", type=int, default=100, help="epochs per training (default: %(default)s)"
    )
    p.add_argument("--broker", help="use this broker instead of starting a local mosquitto")
    p.add_argument(
        "--out", default="reports", help="folder for the report and figures (default: %(default)s)"
    )
    p.add_argument(
        "--project",
        default=".",
        help="folder holding examples/ (the edge client, examples.forecast_edge) "
        "(default: the current directory)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads on the node and baselines (default: cores - 1)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a fast smoke run: 1 seed, 3 epochs, small burst"
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def _json_run(args: list[str], timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _baseline(mode: str, epochs: int, threads: int, seed: int = 0) -> dict[str, Any]:
    """One run of continuum_dev.baselines in a fresh process."""
    argv = ["--seed", str(seed), "--epochs", str(epochs), "--threads", str(threads)]
    return _json_run(["-m", "continuum_dev.baselines", mode, *argv])


def fresh_vs_burst(
    url: str, root: str, epochs: int, burst_epochs: int, calls: int
) -> dict[str, Any]:
    """Train on a fresh node, serve calls from 4 threads, train again."""
    with continuum_mqtt.Client(url, root=root, timeout=600) as c:
        F = c.stub("continuum_node.forecast.Forecaster")
        f = F.create()
        f.load_csv(DATASET)
        fresh = f.train(epochs=epochs, seed=0, paper=True)["train_seconds"]
        others = [F.create() for _ in range(4)]
        for o in others:
            o.load_csv(DATASET)

        def worker(o: Any) -> None:
            o.train(epochs=burst_epochs, seed=1, paper=True)
            for _ in range(calls):
                o.evaluate()
                o.predict()

        threads = [threading.Thread(target=worker, args=(o,)) for o in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = f.train(epochs=epochs, seed=0, paper=True)["train_seconds"]
        for o in [f, *others]:
            c.delete(o)
    return {"fresh_train_s": fresh, "after_burst_train_s": after}


def run_demo(args: argparse.Namespace) -> int:
    seeds, epochs = (1, 3) if args.quick else (args.seeds, args.epochs)
    threads = args.threads or max(1, (os.cpu_count() or 2) - 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    project = Path(args.project).resolve()
    t_begin = time.time()
    with tempfile.TemporaryDirectory(prefix="continuum-demo-") as tmp:
        say(
            f"starting {'a local mosquitto, ' if not args.broker else ''}a gateway and a cloud node"
        )
        dep = Deployment(args.broker, tmp, root=DEFAULT_ROOT, cwd=project, logs=Path(tmp) / "logs")
        with dep:
            dep.start(
                ["node1"], "--torch-threads", str(threads), modules=["continuum_node.forecast"],
                timeout=120,
            )  # fmt: skip
            say(
                f"baseline: training locally in one process with torch ({seeds} seed(s), {epochs} epochs)"
            )
            base = [_baseline("local", epochs, threads, s) for s in range(seeds)]
            plain = _baseline("plain", epochs, threads)
            say("edge client (no torch) offloading to the node:")
            edge_json = Path(tmp) / "edge.json"
            subprocess.run(
                [sys.executable, "-m", "examples.forecast_edge", "--broker", dep.url, "--root", dep.root,
                 "--seeds", str(seeds), "--epochs", str(epochs), "--json", str(edge_json)],
                cwd=project, env=dep.env, check=True, timeout=3600,
            )  # fmt: skip
            edge = json.loads(edge_json.read_text())
            node_rss, node_peak = rss_mb(dep.pid("node1"))
            say("training on the fresh node, then again after a burst of calls from 4 threads")
            burst = fresh_vs_burst(
                dep.url, dep.root, epochs, 2 if args.quick else 20, 5 if args.quick else 50
            )
    foot = report.footprint()
    r = report.build_report(
        args, seeds, epochs, threads, base, plain, edge, node_peak, node_rss, burst, foot
    )
    r["seconds"] = time.time() - t_begin
    (out / "forecast-report.json").write_text(json.dumps(r, indent=2))
    md = report.markdown(r)
    (out / "forecast-report.md").write_text(md)
    if not args.no_figures:
        r["figures"] = report.figures(r, edge, out)
    print(md)
    say(
        f"report: {out / 'forecast-report.md'} (and .json{', figures' if r.get('figures') else ''})"
    )
    return 0
