"""``continuum``: run the demo, or a whole local deployment for development
(installed by continuum-mqtt-dev; ``python -m continuum_dev`` is the same)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .demo import add_demo_arguments, add_up_arguments, run_demo, run_up

__all__ = ["build_parser", "main"]


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
            "Start a local deployment for development: mosquitto on --port "
            "(unless --broker is given), a gateway, and --nodes cloud nodes hosting "
            "the classes of the --module modules. Prints the broker URL to use."
        ),
    )
    add_up_arguments(up)
    up.set_defaults(run=run_up)
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
    add_demo_arguments(demo)
    demo.set_defaults(run=run_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
