"""``continuum``: run the demo, or a whole local deployment for development."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum",
        description="continuum: active objects over MQTT for the edge-to-cloud continuum.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up",
        help="run a broker (unless --broker), a gateway and cloud nodes on this machine until Ctrl-C",
        description=(
            "Start a local deployment for development: mosquitto on a free port "
            "(unless --broker is given), a gateway, and --nodes cloud nodes hosting "
            "the classes of the --module modules. Prints the broker URL to use."
        ),
    )
    up.add_argument("--broker", help="use this broker instead of starting one")
    up.add_argument(
        "--port", type=int, default=1883, help="port of the broker started (default: %(default)s)"
    )
    up.add_argument(
        "--nodes", type=int, default=1, help="number of cloud nodes (default: %(default)s)"
    )
    up.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=None,
        help="module of application classes (repeatable; default: examples.counter and cloudnode.forecast)",
    )
    up.add_argument(
        "--state-dir",
        default="var/continuum",
        help="gateway DB and node snapshots (default: %(default)s)",
    )
    demo = sub.add_parser(
        "demo",
        help="the paper's workload end to end: an edge client with no torch trains an LSTM on a node",
        description=(
            "Start a broker (unless --broker), a gateway and a cloud node; run the local "
            "baseline and an edge client process (no torch) that creates a Forecaster, "
            "feeds it the dataset, trains it remotely with live progress and prints the "
            "results; write the report (markdown, JSON, PNG figures)."
        ),
    )
    from ._demo import add_arguments

    add_arguments(demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        from ._demo import run_up

        return run_up(args)
    from ._demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
