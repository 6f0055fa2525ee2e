"""``continuum-node``: run a cloud node (``continuum-node quarantine ...``:
resolve quarantined objects of a stopped node, see :mod:`continuum_node._repair`)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

from continuum_mqtt.service import (
    MqttTransport,
    add_common_arguments,
    parse_args,
    serve,
    setup_logging,
)

log = logging.getLogger("continuum.node")

SESSION_EXPIRY = 24 * 3600  # seconds the broker keeps a durable node's session


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum-node",
        description=(
            "Run a continuum cloud node: it imports the application modules given with "
            "--module, hosts instances of their ActiveObject classes, and runs their "
            "active methods for callers on the broker. Only classes from these modules "
            "can ever be created."
        ),
        epilog="Example: continuum-node --id node1 --path . --module examples.counter. "
        "Quarantined objects (damaged files): continuum-node quarantine --help",
    )
    add_common_arguments(p)
    p.add_argument(
        "--id",
        dest="node_id",
        default=socket.gethostname(),
        help="node id, unique in the deployment (default: host name)",
    )
    p.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=[],
        help="module to load classes from, or module.Class (repeatable)",
    )
    p.add_argument(
        "--path",
        dest="paths",
        action="append",
        default=[],
        help="directory added to the import path first (repeatable)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=16,
        help="worker threads running active methods (default: %(default)s)",
    )
    p.add_argument(
        "--max-payload",
        type=int,
        default=8 * 1024 * 1024,
        help="largest request accepted, bytes (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=10_000,
        help="calls waiting for one object before new ones get a 'busy' error (default: %(default)s)",
    )
    p.add_argument(
        "--max-node-queue",
        type=int,
        default=100_000,
        help="calls waiting on the whole node before new ones get 'busy' (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="directory for durable object snapshots; objects survive a restart (default: none, in memory)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="with --state-dir: journaled calls between full checkpoints of an object (default: %(default)s)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="intra-op threads for torch, set once at start (default: cores - 1 = %(default)s, "
        "leaving a core to the network and the broker)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["quarantine"]:
        from ._repair import main as repair

        return repair(argv[1:])
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    from ._node import Node, load_classes
    from ._store import StateDirInUse

    try:
        classes = load_classes(args.modules, args.paths)
    except (ImportError, AttributeError) as exc:
        log.error("cannot load application classes: %s", exc)
        return 2
    if "torch" in sys.modules:
        # One intra-op team, sized once, before any call runs: each worker thread
        # that touches torch would otherwise get its own OpenMP team and the
        # cores end up oversubscribed (the reference slowed 1.9 s -> 5.3 s).
        torch = sys.modules["torch"]
        torch.set_num_threads(args.torch_threads)
        log.info("torch: %d intra-op thread(s)", torch.get_num_threads())
    transport = MqttTransport(
        args.broker,
        f"node-{args.node_id}",
        # A durable node keeps its broker session across restarts, so the
        # samples published to its feeds meanwhile wait for it.
        session_expiry=SESSION_EXPIRY if args.state_dir else None,
        manual_ack=True,  # a sample is acknowledged once committed
    )
    try:
        node = Node(
            args.node_id,
            transport,
            classes,
            root=args.root,
            workers=args.workers,
            max_payload=args.max_payload,
            state_dir=args.state_dir,
            max_queue=args.max_queue,
            max_node_queue=args.max_node_queue,
            checkpoint_every=args.checkpoint_every,
        )
    except StateDirInUse as exc:  # two nodes on one state dir would corrupt it
        log.error("%s", exc)
        return 2
    return serve(node)


if __name__ == "__main__":
    sys.exit(main())
