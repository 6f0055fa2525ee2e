"""``continuum-gateway``: run the directory service, or one of its recovery
commands (``check``, ``backup``, ``rebuild``; see docs/recovery.md)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
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

log = logging.getLogger("continuum.gateway")

COMMANDS = ("check", "backup", "rebuild")
UNUSED_BY_FILE_COMMANDS = (
    "broker",
    "root",
    "log-level",
    "id",
    "node-timeout",
    "failover-delay",
    "tombstone-days",
    "metrics-port",
    "metrics-host",
    "fleet-metrics",
)
DESCRIPTION = """\
Run the continuum gateway: the directory of nodes, objects and aliases (SQLite,
WAL mode). It places new objects on live nodes and tracks node liveness from
their retained status and last will. Calls never pass through it.

At start it checks the directory file and refuses (exit 2) a damaged one, or an
empty one while nodes report objects. It deletes a node's copy of an object only
on a tombstone (deleted, moved by a failover, discarded after a failed create);
objects it does not know are adopted or reported, never deleted."""
EPILOG = """\
recovery commands (each has --help; see docs/recovery.md):
  continuum-gateway check --db PATH
      what the gateway would find at start (integrity, WAL, strays); 0 sound, 2 damaged
  continuum-gateway backup --db PATH OUT
      consistent copy with SQLite's online backup API, safe while the gateway runs
  continuum-gateway rebuild --db PATH --broker URL [--root ROOT]
      re-create a lost directory, aliases included, from what the online nodes hold
      (the gateway stopped; PATH absent, 0 bytes or without objects)

exit status: 0 stopped cleanly, 1 broker unreachable, 2 refused: a damaged
directory (0-byte file, damaged WAL, failed integrity check) or an empty one
while nodes report objects; the message says what to do."""


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default="continuum-directory.db",
        help="SQLite directory file (default: %(default)s)",
    )


def _add_gateway_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--id", dest="gateway_id", default="gateway", help="gateway id (default: %(default)s)"
    )
    p.add_argument(
        "--node-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a node to create, delete or list objects (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="continuum-gateway",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(p)
    _add_db(p)
    _add_gateway_options(p)
    add_rights_arguments(p)
    p.add_argument(
        "--max-objects",
        type=int,
        default=1000,
        help="objects one broker account may own; a create beyond gets 'quota_exceeded' "
        "(default: %(default)s; 0: no limit; admins and anonymous callers have none)",
    )
    p.add_argument(
        "--failover-delay",
        type=float,
        default=2.0,
        help="seconds a primary must stay offline before a replica is promoted (default: %(default)s)",
    )
    p.add_argument(
        "--tombstone-days",
        type=float,
        default=30.0,
        help="days a record of a deleted, moved or discarded object is kept; a node offline "
        "longer gets such objects back as adopted ones (default: %(default)s)",
    )
    add_metrics_arguments(p)
    p.add_argument(
        "--fleet-metrics",
        type=int,
        default=None,
        metavar="DEVICES",
        help="with --metrics-port: also export the edge agents' retained statuses "
        "(<root>/dev/+/status and dev/+/forecast) as fleet aggregates, and per-device series "
        "for the DEVICES devices with the deepest outbox (0: aggregates only; docs/metrics.md). "
        "Default: not exported",
    )
    return p


def _accept_gateway_keys(p: argparse.ArgumentParser, *keys: str) -> None:
    """Options of the gateway's config file a command does not use: accepted
    (hidden), so that ``--config gateway.toml`` works for every command."""
    for key in keys:
        dest = {"id": "gateway_id"}.get(key, key.replace("-", "_"))
        p.add_argument(f"--{key}", dest=dest, help=argparse.SUPPRESS)


def build_command_parser(command: str) -> argparse.ArgumentParser:
    if command == "check":
        p = argparse.ArgumentParser(
            prog="continuum-gateway check",
            description="Check a directory file as the gateway does at start, without "
            "modifying it: the 0-byte and header checks, the WAL's frames, SQLite's "
            "integrity_check; then the counts and the strays of the last reconciliations. "
            "Exit 0 sound, 2 damaged. Run it with the gateway stopped (a running gateway "
            "may be writing the WAL).",
        )
        _add_db(p)
        _accept_gateway_keys(p, *UNUSED_BY_FILE_COMMANDS)
        return p
    if command == "backup":
        p = argparse.ArgumentParser(
            prog="continuum-gateway backup",
            description="Copy the directory to OUT with SQLite's online backup API: a "
            "consistent snapshot, safe while the gateway runs. OUT is replaced atomically, "
            "only by a copy that passes the integrity check. Restoring: docs/recovery.md.",
        )
        _add_db(p)
        p.add_argument("out", metavar="OUT", help="the backup file to write")
        _accept_gateway_keys(p, *UNUSED_BY_FILE_COMMANDS)
        return p
    p = argparse.ArgumentParser(
        prog="continuum-gateway rebuild",
        description="Re-create the directory from what the online nodes hold (control "
        "'list'): objects, primaries, replicas, aliases, quarantine state. The gateway must "
        "be stopped; --db must not exist, be 0 bytes, or list no object (move a damaged file "
        "aside first). Objects of offline nodes are adopted when those nodes come back. "
        "Written to a temporary file, renamed over --db when complete. Takes --config like "
        "the gateway.",
    )
    add_common_arguments(p)
    _add_db(p)
    _add_gateway_options(p)
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for the broker's retained node statuses (default: %(default)s)",
    )
    _accept_gateway_keys(p, *UNUSED_BY_FILE_COMMANDS[5:])
    return p


def run_command(command: str, argv: Sequence[str]) -> int:
    from ._integrity import DirectoryRefused
    from ._recovery import RecoveryError, backup, check, rebuild

    args = parse_args(build_command_parser(command), argv)
    setup_logging(args.log_level or "WARNING")
    try:
        if command == "check":
            lines = check(args.db)
        elif command == "backup":
            lines = [backup(args.db, args.out)]
        else:
            lines = rebuild(
                args.broker,
                args.root,
                args.db,
                gateway_id=args.gateway_id,
                node_timeout=args.node_timeout,
                wait=args.wait,
            )
    except DirectoryRefused as exc:
        print(f"continuum-gateway {command}: {exc}", file=sys.stderr)
        return 2
    except RecoveryError as exc:
        print(f"continuum-gateway {command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # broker unreachable, I/O error
        print(f"continuum-gateway {command}: failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    args = parse_args(build_parser(), argv)
    setup_logging(args.log_level)
    from ._gateway import Gateway
    from ._integrity import DirectoryRefused

    db_dir = os.path.dirname(os.path.abspath(args.db))
    os.makedirs(db_dir, exist_ok=True)
    existed = os.path.exists(args.db)
    try:
        gw = Gateway(
            MqttTransport.for_service(args.broker, f"gw-{args.gateway_id}"),
            args.db,
            gateway_id=args.gateway_id,
            root=args.root,
            node_timeout=args.node_timeout,
            failover_delay=args.failover_delay,
            tombstone_days=args.tombstone_days,
            rights=rights_from(args),
            max_objects=args.max_objects,
        )
    except DirectoryRefused as exc:
        log.error("%s", exc)
        return 2
    if args.metrics_port is not None:  # prometheus_client only then (docs/metrics.md)
        from ._metrics import install

        try:
            install(gw, args.metrics_port, args.metrics_host, args.fleet_metrics)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s:%s: %s", args.metrics_host, args.metrics_port, exc
            )
            gw.stop()
            return 2
    try:
        return serve(gw)
    except DirectoryRefused as exc:
        log.error("%s", exc)
        gw.stop()
        if not existed:  # do not leave behind the empty file this run created
            for f in (args.db, f"{args.db}-wal", f"{args.db}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)
        return 2


if __name__ == "__main__":
    sys.exit(main())
