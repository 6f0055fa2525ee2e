"""``continuum-console``: run the operator console, or ``continuum-console
hash-password`` to make a password hash for its accounts file."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]

log = logging.getLogger("continuum.console")


def hash_password_main(argv: Sequence[str]) -> int:
    from ._auth import hash_password

    p = argparse.ArgumentParser(
        prog="continuum-console hash-password",
        description="Print the scrypt hash of a password, for the 'password' of an "
        "operator in the accounts file. The password is read from the terminal "
        "(twice), or as one line from stdin with --stdin.",
    )
    p.add_argument("--stdin", action="store_true", help="read the password from stdin")
    args = p.parse_args(argv)
    if args.stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("continuum-console: the passwords differ", file=sys.stderr)
            return 2
    if len(pw) < 8:
        print("continuum-console: a password needs at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(pw))
    return 0


def run(argv: Sequence[str] | None) -> int:
    import uvicorn

    from continuum_mqtt import Client, NotConnected
    from continuum_mqtt.service import BrokerURL, setup_logging

    from ._actions import Actions, AuditLog
    from ._app import Console, create_app
    from ._auth import AccountError, Accounts, Sessions
    from ._config import load_config
    from ._mqtt import Feed, GatewayPoller
    from ._state import FleetState

    cfg = load_config(argv)
    setup_logging(cfg.log_level)
    try:
        accounts = Accounts.load(cfg.accounts)
    except AccountError as exc:
        print(f"continuum-console: {exc}", file=sys.stderr)
        return 2
    if not len(accounts):
        print(f"continuum-console: {cfg.accounts}: no [operators]", file=sys.stderr)
        return 2
    try:
        audit = AuditLog(cfg.audit_log)
    except OSError as exc:
        print(f"continuum-console: audit log {cfg.audit_log}: {exc}", file=sys.stderr)
        return 2
    broker = BrokerURL.parse(cfg.broker)
    state = FleetState(
        history=cfg.history, max_devices=cfg.max_devices, offline_after=cfg.offline_after
    )
    feed = Feed(
        state, broker, cfg.root, name=cfg.name, ca_file=cfg.ca_file, metrics_qos=cfg.metrics_qos
    )
    client = Client(broker, root=cfg.root, ca_file=cfg.ca_file, timeout=30.0)
    try:
        feed.start()
        client.connect()
    except NotConnected as exc:
        log.error("%s", exc)
        feed.stop()
        return 1
    poller = GatewayPoller(state, client, cfg.objects_interval)
    actions = Actions(
        client,
        audit,
        forecaster_alias=cfg.forecaster_alias,
        retrain_epochs=cfg.retrain_epochs,
        on_change=poller.refresh,
    )
    console = Console(
        state=state,
        accounts=accounts,
        sessions=Sessions(idle=cfg.session_idle, ttl=cfg.session_ttl),
        audit=audit,
        actions=actions,
        secure_cookies=cfg.secure,
        push_interval=cfg.push_interval,
    )
    poller.start()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(console),
            host=cfg.listen,
            port=cfg.port,
            ssl_certfile=cfg.tls_cert,
            ssl_keyfile=cfg.tls_key,
            log_level=cfg.log_level.lower(),
            access_log=False,
            proxy_headers=True,
            timeout_graceful_shutdown=3,
        )
    )
    log.info("console on %s://%s:%d", "https" if cfg.tls_cert else "http", cfg.listen, cfg.port)
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again
    # under the handlers it found: these make that a no-op, so that the broker
    # connections are closed below and the exit status is 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run()  # until SIGTERM / SIGINT
    finally:
        poller.stop()
        client.close()
        feed.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hash-password"]:
        return hash_password_main(args[1:])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
