"""``continuum-gateway``: run the directory service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from continuum._errors import NotConnected
from continuum._mqtt import BrokerURL
from continuum._protocol import DEFAULT_ROOT
from continuum._service import parse_args, sd_notify, setup_logging, wait_for_signal

log = logging.getLogger("continuum.gateway")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum-gateway",
        description=(
            "Run the continuum gateway: the directory of nodes, objects and aliases "
            "(SQLite, WAL mode). It places new objects on live nodes and tracks node "
            "liveness from their retained status and last will. Calls never pass through it."
        ),
    )
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="broker URL (default: %(default)s); password from CONTINUUM_PASSWORD",
    )
    p.add_argument(
        "--db",
        default="continuum-directory.db",
        help="SQLite directory file (default: %(default)s)",
    )
    p.add_argument(
        "--id", dest="gateway_id", default="gateway", help="gateway id (default: %(default)s)"
    )
    p.add_argument("--root", default=DEFAULT_ROOT, help="topic root (default: %(default)s)")
    p.add_argument(
        "--node-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a node to create or delete an object (default: %(default)s)",
    )
    p.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    from ._gateway import Gateway

    db_dir = os.path.dirname(os.path.abspath(args.db))
    os.makedirs(db_dir, exist_ok=True)
    gw = Gateway(
        BrokerURL.parse(args.broker),
        args.db,
        gateway_id=args.gateway_id,
        root=args.root,
        node_timeout=args.node_timeout,
    )
    try:
        gw.start()
    except NotConnected as exc:
        log.error("%s", exc)
        return 1
    sd_notify("READY=1")
    try:
        wait_for_signal()
    finally:
        gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
