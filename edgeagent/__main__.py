"""``edgeagent``: operator commands on an edge board."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import continuum
from continuum._protocol import DEFAULT_ROOT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeagent",
        description="continuum edge agent. Runs on the board; needs no torch, numpy or model code.",
    )
    p.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default: %(default)s)"
    )
    p.add_argument("--root", default=DEFAULT_ROOT, help="topic root (default: %(default)s)")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="call deadline in seconds (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call", help="call an active method of an object, print the JSON result")
    call.add_argument("ref", help="object alias or id")
    call.add_argument("method", help="active method name")
    call.add_argument(
        "args",
        nargs="?",
        default="[]",
        help="JSON array of arguments or object of keyword arguments (default: [])",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "call":
        try:
            params = json.loads(args.args)
        except json.JSONDecodeError as exc:
            print(f"edgeagent: arguments are not JSON: {exc}", file=sys.stderr)
            return 2
        pos, kw = (
            (params, {})
            if isinstance(params, list)
            else ([], params)
            if isinstance(params, dict)
            else ([params], {})
        )
        try:
            with continuum.Client(args.broker, root=args.root, timeout=args.timeout) as client:
                obj = client.get(args.ref)
                result = getattr(obj, args.method).options(
                    on_progress=lambda u: print(json.dumps(u, default=repr), file=sys.stderr)
                )(*pos, **kw)
        except continuum.ContinuumError as exc:
            print(f"edgeagent: {type(exc).__name__} [{exc.code}]: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
