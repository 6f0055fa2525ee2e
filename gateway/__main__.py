"""``continuum-gateway``: run the directory service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from continuum._mqtt import BrokerURL
from continuum._service import add_common_arguments, parse_args, serve, setup_logging

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
    add_common_arguments(p)
    p.add_argument(
        "--db",
        default="continuum-directory.db",
        help="SQLite directory file (default: %(default)s)",
    )
    p.add_argument(
        "--id", dest="gateway_id", default="gateway", help="gateway id (default: %(default)s)"
    )
    p.add_argument(
        "--node-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a node to create or delete an object (default: %(default)s)",
    )
    p.add_argument(
        "--failover-delay",
        type=float,
        default=2.0,
        help="seconds a primary must stay offline before a replica is promoted (default: %(default)s)",
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
        failover_delay=args.failover_delay,
    )
    return serve(gw)


if __name__ == "__main__":
    sys.exit(main())
