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
    add_metrics_arguments,
    add_rights_arguments,
    parse_args,
    rights_from,
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
    add_rights_arguments(p)
    add_metrics_arguments(p)
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
        type=_count,
        default=16,
        help="worker threads running active methods (default: %(default)s)",
    )
    p.add_argument(
        "--caller-workers",
        type=_count,
        default=None,
        help="workers the calls (and feed samples) of one caller may hold at once; the "
        "workers serve the callers in turn, so one caller's long calls leave the others "
        "theirs (default: half of --workers, at least 1)",
    )
    p.add_argument(
        "--max-payload",
        type=_count,
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
        "--max-node-bytes",
        type=_count,
        default=512 * 1024 * 1024,
        help="request bytes of all calls queued or running before new ones get 'busy' "
        "(default: %(default)s = 512 MiB)",
    )
    p.add_argument(
        "--max-caller-calls",
        type=_count,
        default=1000,
        help="calls one caller (broker account; 'anonymous' for all without one) may have "
        "queued or running; beyond, 'quota_exceeded' (what: calls). Admin accounts have no "
        "such quota (default: %(default)s)",
    )
    p.add_argument(
        "--max-caller-bytes",
        type=_count,
        default=64 * 1024 * 1024,
        help="request bytes one caller may have queued or running; beyond, 'quota_exceeded' "
        "(what: bytes) (default: %(default)s = 64 MiB). A device's feed samples count "
        "against its account too, but are never refused: they wait, unacknowledged",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="directory for durable object snapshots; objects survive a restart (default: none, in memory)",
    )
    p.add_argument(
        "--pool-group",
        default="continuum",
        help="shared-subscription group the nodes serve pools with (default: %(default)s). "
        "Where devices have broker accounts, make it a secret shared by the nodes: "
        "mosquitto's ACL file does not refuse a SUBSCRIBE, and a device that joins the "
        "group takes a share of the pool's calls (docs/protocol.md section 21)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_count,
        default=1000,
        help="with --state-dir: journaled calls between full checkpoints of an object (default: %(default)s)",
    )
    p.add_argument(
        "--max-resident",
        type=_count,
        default=None,
        help="with --state-dir: objects kept loaded; beyond, the least recently used idle ones "
        "are evicted to the state dir and reloaded on their next call or feed sample "
        "(default: no bound)",
    )
    p.add_argument(
        "--status-every",
        type=float,
        default=10.0,
        metavar="S",
        help="how often the node measures its load (memory, queued and running jobs, load "
        "average) for its status, republished when it changed (default: 10 s; 0: only at "
        "each connect). Each status costs the gateway a directory write",
    )
    p.add_argument(
        "--memory-budget",
        type=_count,
        default=None,
        metavar="MIB",
        help="with --state-dir: while the node's RSS is above this many MiB, idle objects are "
        "evicted, least recently used first; while it is more than a tenth below, evicted "
        "objects are reloaded ahead of their next call, most recently used first (default: "
        "no budget). Without --state-dir nothing can be evicted: the budgets only warn",
    )
    p.add_argument(
        "--intra-op-threads",
        "--torch-threads",
        dest="intra_op_threads",
        type=_count,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="threads one computation may use (OpenMP/BLAS intra-op threads), whatever a "
        "hosted class imports and whenever: OMP_NUM_THREADS, MKL_NUM_THREADS, "
        "OPENBLAS_NUM_THREADS, NUMEXPR_NUM_THREADS... are set to it before the modules load "
        "(those already set in the environment stand), and torch.set_num_threads as soon as "
        "torch is imported, at load or inside a method (default: cores - 1 = %(default)s, "
        "leaving a core to the network and the broker)",
    )
    p.add_argument(
        "--interop-threads",
        type=_count,
        default=None,
        help="torch inter-op threads, set when torch is imported (default: torch's)",
    )
    p.add_argument(
        "--long-workers",
        type=_count,
        default=None,
        help="calls of methods marked @active(long=True) (training...) that may run at once; "
        "the other workers stay for light calls (default: (cores - 1) // --intra-op-threads, "
        "at least 1)",
    )
    p.add_argument(
        "--long-calls",
        choices=("thread", "process"),
        default="thread",
        help="where long calls (@active(long=True)) run: 'thread', a worker thread of the "
        "node; 'process', one of --long-workers worker processes started with the node (the "
        "object goes there and back as a snapshot each call), so that their Python code "
        "never holds the node's interpreter lock: light calls keep their latency during a "
        "training storm, for the workers' memory (each imports the hosted modules) and a "
        "snapshot round trip per long call (default: %(default)s)",
    )
    p.add_argument(
        "--long-priority",
        choices=("idle", "low"),
        default="idle",
        help="CPU priority of the --long-calls process workers: 'idle' (Linux SCHED_IDLE), "
        "only the CPU time nothing else wants, so light calls never wait behind a "
        "training; 'low', nice 10, which leaves trainings about a tenth of a busy core "
        "(for a node whose cores are never idle) (default: %(default)s)",
    )
    p.add_argument(
        "--long-idle-exit",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="a --long-calls process worker that ran no call for this long exits, giving "
        "its memory (its own interpreter with the hosted modules: about 300 MiB with "
        "torch) back to the node's resident objects until the next long call starts one "
        "again, which then waits a few seconds for it; 0: never (default: %(default)s)",
    )
    p.add_argument(
        "--switch-interval",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long a Python thread may hold the interpreter while others wait for it "
        "(sys.setswitchinterval; default: Python's, 0.005). Methods busy in Python hold it "
        "between their calls into native code: with several of them running, each step of "
        "another caller's call (the network thread's, its worker's) waits about this long "
        "per running method. 0.0002 cut such waits from seconds to tens of ms in "
        "bench/tenancy.py --phases long-cpu, for about 0.1 ms more on every call",
    )
    p.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long to wait for running active methods: they are "
        "cancelled (at their next continuum_mqtt.check_cancelled()) and the node exits "
        "without those still running after this (default: %(default)s)",
    )
    return p


def _count(text: str | int) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _has_long(cls: type) -> bool:
    methods = getattr(cls, "__active_methods__", None) or {}
    return any(getattr(spec, "long", False) for spec in methods.values())


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["quarantine"]:
        from ._repair import main as repair

        return repair(argv[1:])
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    from ._threads import default_long_workers, hold_torch_threads, set_thread_env

    # Before any hosted module loads: the OpenMP/BLAS runtimes read these when
    # they load, and size each thread's team from them (a worker thread that
    # touches torch later would otherwise get a team of one thread per core).
    set_thread_env(args.intra_op_threads)
    hold_torch_threads(args.intra_op_threads, args.interop_threads)
    from ._node import Node, load_classes
    from ._store import StateDirInUse

    try:
        classes = load_classes(args.modules, args.paths)
    except (ImportError, AttributeError) as exc:
        log.error("cannot load application classes: %s", exc)
        return 2
    from . import peer

    # the node's own client (continuum_node.peer.peer: drivers...), here and in
    # the long-call workers (before LongCalls: their setup carries the settings)
    peer.configure(args.broker, args.root)
    long_workers = args.long_workers or default_long_workers(args.intra_op_threads)
    long_calls = None
    if args.long_calls == "process" and any(_has_long(c) for c in classes.values()):
        from ._longproc import LongCalls

        long_calls = LongCalls(
            long_workers,
            modules=args.modules,
            paths=args.paths,
            threads=args.intra_op_threads,
            interop=args.interop_threads,
            priority=args.long_priority,
            idle_exit=args.long_idle_exit or None,
        )
    transport = MqttTransport.for_service(
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
            caller_workers=args.caller_workers,
            max_caller_calls=args.max_caller_calls,
            max_caller_bytes=args.max_caller_bytes,
            max_node_bytes=args.max_node_bytes,
            checkpoint_every=args.checkpoint_every,
            max_resident=args.max_resident,
            memory_budget=args.memory_budget and args.memory_budget << 20,
            stop_timeout=args.stop_timeout,
            rights=rights_from(args),
            pool_group=args.pool_group,
            long_workers=long_workers,
            long_calls=long_calls,
            status_every=max(0.0, args.status_every),
        )
    except StateDirInUse as exc:  # two nodes on one state dir would corrupt it
        log.error("%s", exc)
        return 2
    if args.metrics_port is not None:  # prometheus_client only then (docs/metrics.md)
        from ._metrics import install

        try:
            install(node, args.metrics_port, args.metrics_host)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s:%s: %s", args.metrics_host, args.metrics_port, exc
            )
            return 2
    code = serve(node)
    if not node.drained:
        # Methods that ignore cancellation still run in the pool's threads,
        # which the interpreter would wait for at exit: leave them, as a
        # crash would (their calls were not answered; a durable node's files
        # recover from a crash at any point).
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
