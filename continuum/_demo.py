"""Local deployments for development and the demo: broker, gateway and nodes
as child processes of one command."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ._client import Client
from ._devbroker import LocalBroker
from ._protocol import DEFAULT_ROOT
from ._service import setup_logging, wait_for_signal

__all__ = ["LocalDeployment", "add_arguments", "run_demo", "run_up"]

log = logging.getLogger("continuum")

DEFAULT_MODULES = ["examples.counter", "cloudnode.forecast"]


class LocalDeployment:
    """mosquitto (unless ``broker`` is given), a gateway and ``nodes`` cloud nodes."""

    def __init__(
        self,
        *,
        broker: str | None = None,
        port: int | None = None,
        state_dir: str | os.PathLike[str] = "var/continuum",
        modules: list[str] | None = None,
        nodes: int = 1,
        root: str = DEFAULT_ROOT,
        node_args: list[str] | None = None,
        durable: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.modules = modules or list(DEFAULT_MODULES)
        self.node_ids = [f"node{i + 1}" for i in range(nodes)]
        self.root = root
        self.node_args = node_args or []
        self.durable = durable
        self._broker = (
            None
            if broker
            else LocalBroker(port, log_path=str(self.state_dir / "logs" / "mosquitto.log"))
        )
        self.url = broker or self._broker.url  # type: ignore[union-attr]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logs = self.state_dir / "logs"
        with open(logs / f"{name}.log", "ab") as fh:
            proc = subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start(self, timeout: float = 60.0) -> LocalDeployment:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self._broker is not None:
            self._broker.start()
            log.info("mosquitto listening on %s", self.url)
        common = ["--broker", self.url, "--root", self.root]
        self._spawn(
            "gateway", ["-m", "gateway", *common, "--db", str(self.state_dir / "directory.db")]
        )
        for nid in self.node_ids:
            args = ["-m", "cloudnode", *common, "--id", nid, *self.node_args]
            for m in self.modules:
                args += ["--module", m]
            if self.durable:
                args += ["--state-dir", str(self.state_dir / nid)]
            self._spawn(nid, args)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        with Client(self.url, root=self.root, timeout=2.0) as c:
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited at start; see {self.state_dir / 'logs' / (name + '.log')}"
                        )
                try:
                    online = {n["id"] for n in c.nodes() if n["state"] == "online"}
                    if set(self.node_ids) <= online:
                        return
                except Exception:  # gateway not up yet
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(
                        f"deployment not ready within {timeout} s; logs in {self.state_dir / 'logs'}"
                    )
                time.sleep(0.1)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self._broker is not None:
            self._broker.stop()

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_up(args: Any) -> int:
    setup_logging("INFO")
    dep = LocalDeployment(
        broker=args.broker,
        port=None if args.broker else args.port,
        state_dir=args.state_dir,
        modules=args.modules,
        nodes=args.nodes,
        durable=True,
    )
    with dep:
        print(
            f"continuum is up: broker {dep.url}, nodes {', '.join(dep.node_ids)}; logs in {dep.state_dir}/logs"
        )
        print(f"try: python -m examples.counter_demo {dep.url}    (Ctrl-C to stop)")
        wait_for_signal()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``continuum demo``."""
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
        "--threads",
        type=int,
        default=None,
        help="torch threads on the node and baselines (default: cores - 1)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a fast smoke run: 1 seed, 3 epochs, small burst"
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def run_demo(args: Any) -> int:
    from ._forecast_report import run

    return run(args)
